"""PPO on Atari (Nature CNN, 84x84x4 grayscale frames) in PyTorch: the reference twin of cleanrl_mlx/ppo_atari_mlx.py.

CleanRL's ppo_atari.py (https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_ataripy): same defaults, same
preprocessing, same loss, same logged tags. Every ALE env is made with frameskip=1, so MaxAndSkipEnv's
skip of 4 is the only one (ALE/...-v5 and ...-v4 ids would otherwise skip frames of their own too).

Usage: python cleanrl_torch_reference/ppo_atari_torch.py --env-id BreakoutNoFrameskip-v4
"""

import os
import random
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Optional

import ale_py
import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import tyro
from safetensors.torch import load_file, save_file
from tensorboardX import SummaryWriter
from torch.distributions.categorical import Categorical
from tqdm import tqdm

gym.register_envs(ale_py)


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=False`"""
    cuda: bool = True
    """if toggled, cuda will be enabled by default"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "cleanrl-mlx"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """whether to capture videos of the agent performances (check out `videos` folder)"""
    save_model: bool = False
    """whether to save model into the `runs/{run_name}` folder, then evaluate it"""
    eval_episodes: int = 10
    """the number of episodes to evaluate the saved model on"""

    # Algorithm specific arguments
    env_id: str = "BreakoutNoFrameskip-v4"
    """the id of an ALE env (made with frameskip=1: MaxAndSkipEnv's skip of 4 is the only one)"""
    total_timesteps: int = 10000000
    """total timesteps of the experiments"""
    learning_rate: float = 2.5e-4
    """the learning rate of the optimizer"""
    num_envs: int = 8
    """the number of parallel game environments"""
    num_steps: int = 128
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """Toggle learning rate annealing for policy and value networks"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 4
    """the number of mini-batches"""
    update_epochs: int = 4
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """Toggles advantages normalization"""
    clip_coef: float = 0.1
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """Toggles whether or not to use a clipped loss for the value function, as per the paper."""
    ent_coef: float = 0.01
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: Optional[float] = None
    """the target KL divergence threshold"""

    # to be filled in runtime
    batch_size: int = 0
    """the batch size (computed in runtime)"""
    minibatch_size: int = 0
    """the mini-batch size (computed in runtime)"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


def check_args(args: Args, script: str) -> None:
    """Reject bad input with one clear line before anything is created."""
    limits = {  # field: (valid?, what it must be)
        "total_timesteps": (args.total_timesteps > 0, "positive"),
        "learning_rate": (args.learning_rate > 0, "positive"),
        "num_envs": (args.num_envs > 0, "positive"),
        "num_steps": (args.num_steps > 0, "positive"),
        "gamma": (0 <= args.gamma <= 1, "in [0, 1]"),
        "gae_lambda": (0 <= args.gae_lambda <= 1, "in [0, 1]"),
        "num_minibatches": (args.num_minibatches > 0, "positive"),
        "update_epochs": (args.update_epochs > 0, "positive"),
        "clip_coef": (args.clip_coef > 0, "positive"),
        "ent_coef": (args.ent_coef >= 0, "non-negative"),
        "vf_coef": (args.vf_coef >= 0, "non-negative"),
        "max_grad_norm": (args.max_grad_norm > 0, "positive"),
        "target_kl": (args.target_kl is None or args.target_kl > 0, "None or positive"),
        "eval_episodes": (args.eval_episodes >= 0, "non-negative"),
    }
    for name, (valid, must) in limits.items():
        if not valid:
            raise SystemExit(f"{script}: --{name.replace('_', '-')} must be {must}, got {getattr(args, name)}")
    if (args.num_envs * args.num_steps) % args.num_minibatches != 0:
        raise SystemExit(
            f"{script}: num_envs*num_steps = {args.num_envs * args.num_steps} is not divisible by "
            f"num_minibatches = {args.num_minibatches}"
        )
    if args.total_timesteps < args.num_envs * args.num_steps:
        raise SystemExit(
            f"{script}: --total-timesteps {args.total_timesteps} is less than one rollout "
            f"(num_envs*num_steps = {args.num_envs * args.num_steps})"
        )
    if args.env_id not in gym.registry:
        raise SystemExit(f"{script}: unknown env id {args.env_id!r} (not in gymnasium's registry)")
    if "ale_py" not in str(gym.spec(args.env_id).entry_point):
        raise SystemExit(
            f"{script}: {args.env_id!r} is not an Atari (ALE) env; use {script.replace('_atari', '')} for vector observations"
        )
    try:
        env = gym.make(args.env_id, frameskip=1)  # as make_env makes it
    except gym.error.DependencyNotInstalled as e:
        raise SystemExit(f"{script}: {args.env_id} needs a package that is not installed: {e}") from None
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise SystemExit(f"{script}: only discrete action spaces are supported; {args.env_id} has {env.action_space}")
    env.close()


# Atari preprocessing as CleanRL's Atari scripts apply it (the wrappers they take from SB3, written
# out here): the episode statistics wrap the raw game, so returns are real game scores over all lives.
class NoopResetEnv(gym.Wrapper):
    """On reset, play a random number (1..noop_max) of no-ops so episodes start in different states."""

    def __init__(self, env, noop_max=30):
        super().__init__(env)
        self.noop_max = noop_max

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        for _ in range(self.unwrapped.np_random.integers(1, self.noop_max + 1)):
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset()
        return obs, info


class MaxAndSkipEnv(gym.Wrapper):
    """Repeat each action `skip` frames, sum the rewards, and return the pixel-wise max of the last two
    frames (Atari sprites flicker between frames)."""

    def __init__(self, env, skip=4):
        super().__init__(env)
        self.skip = skip

    def step(self, action):
        total_reward, last_frames = 0.0, []
        for i in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total_reward += reward
            if i >= self.skip - 2:
                last_frames.append(obs)
            if terminated or truncated:
                break
        frame = np.maximum(last_frames[0], last_frames[-1]) if last_frames else obs
        return frame, total_reward, terminated, truncated, info


class EpisodicLifeEnv(gym.Wrapper):
    """End the episode (for learning) when a life is lost, but reset the game only when it is really
    over: the reset after a lost life is a no-op step. The statistics wrapper below sees real games."""

    def __init__(self, env):
        super().__init__(env)
        self.lives, self.was_real_done = 0, True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.was_real_done = terminated or truncated
        lives = self.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs):
        if self.was_real_done:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self.lives = self.unwrapped.ale.lives()
        return obs, info


class FireResetEnv(gym.Wrapper):
    """Press FIRE (then action 2) after a reset, for games that wait for it to start."""

    def reset(self, **kwargs):
        self.env.reset(**kwargs)
        for action in (1, 2):
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


class ClipRewardEnv(gym.RewardWrapper):
    """Learn from the sign of the reward (-1, 0, +1); the logged return stays the raw score."""

    def reward(self, reward):
        return np.sign(reward)


def make_env(env_id, idx, capture_video, run_name):
    def thunk():
        # frameskip=1 for every ALE id: MaxAndSkipEnv below is the only frame skip (ALE/...-v5 would skip 4x4)
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array", frameskip=1)
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id, frameskip=1)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = NoopResetEnv(env, noop_max=30)
        env = MaxAndSkipEnv(env, skip=4)
        env = EpisodicLifeEnv(env)
        if "FIRE" in env.unwrapped.get_action_meanings():
            env = FireResetEnv(env)
        env = ClipRewardEnv(env)
        env = gym.wrappers.ResizeObservation(env, (84, 84))
        env = gym.wrappers.GrayscaleObservation(env)
        env = gym.wrappers.FrameStackObservation(env, 4)  # uint8 (4, 84, 84); starts repeat the first frame
        return env

    return thunk


def finished_episodes(infos):
    """(return, length) of every env whose *game* ended this step. A lost life also ends an episode for
    the vector env, but only a real game end carries RecordEpisodeStatistics' "episode" entry."""
    if "final_info" not in infos or "episode" not in infos["final_info"]:
        return []
    final = infos["final_info"]
    return [(float(final["episode"]["r"][i]), int(final["episode"]["l"][i])) for i in np.flatnonzero(final["_episode"])]


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, n_actions):
        super().__init__()
        self.network = nn.Sequential(
            layer_init(nn.Conv2d(4, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, 512)),
            nn.ReLU(),
        )
        self.actor = layer_init(nn.Linear(512, n_actions), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1)

    def hidden(self, x):
        # x: uint8 frames (N, 4, 84, 84) as stored; scaled here, as CleanRL's x / 255.0
        return self.network(x.float() / 255.0)

    def get_value(self, x):
        return self.critic(self.hidden(x)).squeeze(-1)

    def get_logits(self, x):
        return self.actor(self.hidden(x))

    def get_logits_and_value(self, x):
        hidden = self.hidden(x)
        return self.actor(hidden), self.critic(hidden).squeeze(-1)


def categorical_logprob_entropy(logits, action):
    """log pi(action) and entropy of a categorical distribution given by unnormalised logits."""
    probs = Categorical(logits=logits)
    return probs.log_prob(action), probs.entropy()


def compute_gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    """CleanRL's GAE over a [num_steps, num_envs] rollout (numpy). dones[t] marks that obs[t] starts a
    new episode, so step t-1 does not bootstrap through it."""
    advantages = np.zeros_like(rewards)
    lastgaelam = 0.0
    num_steps = rewards.shape[0]
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            nextnonterminal = 1.0 - next_done
            nextvalues = next_value
        else:
            nextnonterminal = 1.0 - dones[t + 1]
            nextvalues = values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
    return advantages, advantages + values


def ppo_loss(agent, obs, actions, logprobs, advantages, returns, values, clip_coef, ent_coef, vf_coef, norm_adv, clip_vloss):
    """CleanRL's PPO loss on one minibatch. Returns (loss, (pg_loss, v_loss, entropy, old_approx_kl,
    approx_kl, clipfrac)); only `loss` is differentiated."""
    logits, newvalue = agent.get_logits_and_value(obs)  # one CNN pass for both heads
    newlogprob, entropy = categorical_logprob_entropy(logits, actions)
    logratio = newlogprob - logprobs
    ratio = logratio.exp()

    # calculate approx_kl http://joschu.net/blog/kl-approx.html
    with torch.no_grad():
        old_approx_kl = (-logratio).mean()
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()

    if norm_adv:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

    # Policy loss
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

    # Value loss
    if clip_vloss:
        v_loss_unclipped = (newvalue - returns) ** 2
        v_clipped = values + torch.clamp(newvalue - values, -clip_coef, clip_coef)
        v_loss_clipped = (v_clipped - returns) ** 2
        v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
    else:
        v_loss = 0.5 * ((newvalue - returns) ** 2).mean()

    entropy_loss = entropy.mean()
    loss = pg_loss - ent_coef * entropy_loss + v_loss * vf_coef
    return loss, (pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac)


def make_optimizer(agent, args):
    """CleanRL's Adam (eps 1e-5) at the initial learning rate."""
    return optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)


def train_step(
    agent, optimizer, mb_inds, b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values,
    clip_coef, ent_coef, vf_coef, norm_adv, clip_vloss, max_grad_norm,
):  # fmt: skip
    """One gradient step on the minibatch `mb_inds` of the batch: PPO loss, gradient clipping to a global
    norm of max_grad_norm, Adam. Returns the loss terms (pg_loss, v_loss, entropy, old_approx_kl,
    approx_kl, clipfrac)."""
    loss, stats = ppo_loss(
        agent,
        b_obs[mb_inds], b_actions[mb_inds], b_logprobs[mb_inds], b_advantages[mb_inds], b_returns[mb_inds], b_values[mb_inds],
        clip_coef, ent_coef, vf_coef, norm_adv, clip_vloss,
    )  # fmt: skip
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
    optimizer.step()
    return stats


def evaluate(
    model_path,
    make_env,
    env_id,
    eval_episodes,
    run_name,
    Model,
    device=torch.device("cpu"),
    capture_video=True,
    seed=1,
):
    """Roll out a saved policy (sampling actions, as CleanRL's ppo_eval does) for `eval_episodes` episodes."""
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, 0, capture_video, run_name)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    agent = Model(int(envs.single_action_space.n)).to(device)
    agent.load_state_dict(load_file(model_path, device=str(device)))  # torch's layout: either twin's file loads
    agent.eval()
    obs, _ = envs.reset(seed=seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        with torch.no_grad():
            actions = Categorical(logits=agent.get_logits(torch.as_tensor(obs, device=device))).sample()
        obs, _, _, _, infos = envs.step(actions.cpu().numpy())
        for episodic_return, _ in finished_episodes(infos):
            print(f"eval_episode={len(episodic_returns)}, episodic_return={episodic_return}")
            episodic_returns.append(episodic_return)
    envs.close()
    return episodic_returns


if __name__ == "__main__":
    args = tyro.cli(Args)
    check_args(args, os.path.basename(__file__))
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"

    # env setup
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )

    # TRY NOT TO MODIFY: device, seeding, logging
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    print(f"ppo_atari_torch: torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic

    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args) | {"framework": "torch", "algo": "ppo_atari"},
            name=run_name,
            group=f"ppo_atari__{args.env_id}",
            monitor_gym=True,
            save_code=True,
        )
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s"
        % ("\n".join([f"|{key}|{value}|" for key, value in (vars(args) | {"framework": "torch"}).items()])),
    )

    agent = Agent(int(envs.single_action_space.n)).to(device)
    optimizer = make_optimizer(agent, args)
    train = partial(
        train_step, agent, optimizer, clip_coef=args.clip_coef, ent_coef=args.ent_coef, vf_coef=args.vf_coef,
        norm_adv=args.norm_adv, clip_vloss=args.clip_vloss, max_grad_norm=args.max_grad_norm,
    )  # fmt: skip

    # ALGO Logic: Storage setup (numpy: rollouts are written one step at a time on the host; frames stay uint8)
    obs = np.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=np.uint8)
    actions = np.zeros((args.num_steps, args.num_envs), dtype=np.int64)
    logprobs = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    rewards = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    dones = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    values = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    start_time = time.time()
    next_obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    next_done = np.zeros(args.num_envs, dtype=np.float32)
    env_time = inference_time = update_time = 0.0  # seconds since the last log
    last_return = float("nan")
    progress = tqdm(total=args.total_timesteps, disable=not sys.stderr.isatty(), unit="step")

    for iteration in range(1, args.num_iterations + 1):
        # Annealing the rate if instructed to do so.
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            optimizer.param_groups[0]["lr"] = frac * args.learning_rate

        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done

            # ALGO LOGIC: action logic (.cpu().numpy() is the host sync)
            t0 = time.perf_counter()
            with torch.no_grad():
                logits, value = agent.get_logits_and_value(torch.as_tensor(next_obs, device=device))
                action = Categorical(logits=logits).sample()
                logprob, _ = categorical_logprob_entropy(logits, action)
            actions[step] = action.cpu().numpy()
            logprobs[step] = logprob.cpu().numpy()
            values[step] = value.cpu().numpy()
            t1 = time.perf_counter()

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, reward, terminations, truncations, infos = envs.step(actions[step])
            next_done = np.logical_or(terminations, truncations).astype(np.float32)
            rewards[step] = reward
            for last_return, length in finished_episodes(infos):
                tqdm.write(f"global_step={global_step}, episodic_return={last_return}")
                writer.add_scalar("charts/episodic_return", last_return, global_step)
                writer.add_scalar("charts/episodic_length", length, global_step)
            t2 = time.perf_counter()
            inference_time += t1 - t0
            env_time += t2 - t1

        # bootstrap value if not done
        t0 = time.perf_counter()
        with torch.no_grad():
            next_value = agent.get_value(torch.as_tensor(next_obs, device=device)).cpu().numpy()
        advantages, returns = compute_gae(rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda)

        # flatten the batch
        b_obs = torch.tensor(obs.reshape((-1,) + envs.single_observation_space.shape), device=device)
        b_actions = torch.tensor(actions.reshape(-1), device=device)
        b_logprobs = torch.tensor(logprobs.reshape(-1), device=device)
        b_advantages = torch.tensor(advantages.reshape(-1), device=device)
        b_returns = torch.tensor(returns.reshape(-1), device=device)
        b_values = torch.tensor(values.reshape(-1), device=device)

        # Optimizing the policy and value network
        b_inds = np.arange(args.batch_size)
        clipfracs = []
        for epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                mb_inds = torch.as_tensor(b_inds[start : start + args.minibatch_size], device=device)
                stats = train(mb_inds, b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values)
                clipfracs.append(stats[5])
            if args.target_kl is not None and stats[4].item() > args.target_kl:
                break
        if device.type == "cuda":
            torch.cuda.synchronize()  # the update is only done when the device is
        update_time += time.perf_counter() - t0

        # TRY NOT TO MODIFY: record rewards for plotting purposes (read back once per iteration)
        pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, _ = (s.item() for s in stats)
        y_pred, y_true = values.reshape(-1), returns.reshape(-1)
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        steps_since_log = args.batch_size
        sps = int(global_step / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("losses/value_loss", v_loss, global_step)
        writer.add_scalar("losses/policy_loss", pg_loss, global_step)
        writer.add_scalar("losses/entropy", entropy_loss, global_step)
        writer.add_scalar("losses/old_approx_kl", old_approx_kl, global_step)
        writer.add_scalar("losses/approx_kl", approx_kl, global_step)
        writer.add_scalar("losses/clipfrac", torch.stack(clipfracs).mean().item(), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        writer.add_scalar("timing/env_us", 1e6 * env_time / steps_since_log, global_step)
        writer.add_scalar("timing/inference_us", 1e6 * inference_time / steps_since_log, global_step)
        writer.add_scalar("timing/update_us", 1e6 * update_time / steps_since_log, global_step)
        env_time = inference_time = update_time = 0.0
        progress.update(args.batch_size)
        progress.set_postfix(SPS=sps, ret=last_return)
        if progress.disable:  # no bar (not a TTY): print SPS as CleanRL does
            print("SPS:", sps)

    progress.close()
    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in agent.state_dict().items()}, model_path)
        print(f"model saved to {model_path}")
        episodic_returns = evaluate(
            model_path,
            make_env,
            args.env_id,
            args.eval_episodes,
            f"{run_name}-eval",
            Agent,
            device=device,
            capture_video=args.capture_video,
            seed=args.seed,
        )
        for idx, episodic_return in enumerate(episodic_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)

    envs.close()
    writer.close()
