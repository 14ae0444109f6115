"""PPO for discrete actions (classic control) in eager PyTorch, as CleanRL's ppo.py: same defaults, loss and logged tags.

Reference twin of cleanrl_mlx/ppo_mlx.py. Docs: docs/ppo.md. Run: python cleanrl_torch_reference/ppo_torch.py --env-id CartPole-v1
"""

import os
import random
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Optional

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
    env_id: str = "CartPole-v1"
    """the id of the environment"""
    total_timesteps: int = 500000
    """total timesteps of the experiments"""
    learning_rate: float = 2.5e-4
    """the learning rate of the optimizer"""
    num_envs: int = 4
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
    clip_coef: float = 0.2
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
        **{k: (getattr(args, k) > 0, "positive") for k in ("total_timesteps", "learning_rate", "num_envs", "num_steps")},
        **{k: (getattr(args, k) > 0, "positive") for k in ("num_minibatches", "update_epochs", "clip_coef", "max_grad_norm")},
        **{k: (0 <= getattr(args, k) <= 1, "in [0, 1]") for k in ("gamma", "gae_lambda")},
        **{k: (getattr(args, k) >= 0, "non-negative") for k in ("ent_coef", "vf_coef")},
        "target_kl": (args.target_kl is None or args.target_kl > 0, "None or positive"),
        "eval_episodes": (args.eval_episodes > 0, "positive"),
    }
    for name, (valid, must) in limits.items():
        if not valid:
            raise SystemExit(f"{script}: --{name.replace('_', '-')} must be {must}, got {getattr(args, name)}")
    rollout = args.num_envs * args.num_steps
    if rollout % args.num_minibatches != 0:
        raise SystemExit(f"{script}: num_envs*num_steps = {rollout} is not divisible by num_minibatches = {args.num_minibatches}")
    if args.total_timesteps < rollout:
        raise SystemExit(f"{script}: --total-timesteps {args.total_timesteps} is less than one rollout ({rollout} steps)")
    if args.env_id not in gym.registry:
        raise SystemExit(f"{script}: unknown env id {args.env_id!r} (not in gymnasium's registry)")
    try:
        env = gym.make(args.env_id)
    except gym.error.DependencyNotInstalled as e:
        raise SystemExit(f"{script}: {args.env_id} needs a package that is not installed: {e}") from None
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise SystemExit(
            f"{script}: only discrete action spaces are supported; {args.env_id} has {env.action_space} "
            f"(use {script.replace('ppo', 'ppo_continuous_action', 1)})"
        )
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        raise SystemExit(f"{script}: only flat Box observation spaces are supported; {args.env_id} has {env.observation_space}")
    env.close()


def make_env(env_id, idx, capture_video, run_name):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        return env

    return thunk


def finished_episodes(infos):
    """(return, length) of every env whose episode ended this step (SAME_STEP autoreset: in final_info)."""
    if "final_info" not in infos or "episode" not in infos["final_info"]:
        return []
    final = infos["final_info"]
    return [(float(final["episode"]["r"][i]), int(final["episode"]["l"][i])) for i in np.flatnonzero(final["_episode"])]


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim, n_actions):
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, n_actions), std=0.01),
        )

    def get_value(self, x):
        return self.critic(x).squeeze(-1)

    def get_logits(self, x):
        return self.actor(x)


def categorical_logprob_entropy(logits, action):
    """log pi(action) and entropy of a categorical distribution given by unnormalised logits."""
    probs = Categorical(logits=logits)
    return probs.log_prob(action), probs.entropy()


def compute_gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    """CleanRL's GAE over a [num_steps, num_envs] rollout; dones[t] marks that obs[t] starts a new episode."""
    advantages = np.zeros_like(rewards)
    lastgaelam = 0.0
    for t in reversed(range(len(rewards))):
        nextnonterminal = 1.0 - (dones[t + 1] if t + 1 < len(dones) else next_done)
        nextvalues = values[t + 1] if t + 1 < len(values) else next_value
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
    return advantages, advantages + values


def ppo_loss(agent, obs, actions, logprobs, advantages, returns, values, clip_coef, ent_coef, vf_coef, norm_adv, clip_vloss):
    """CleanRL's PPO loss on one minibatch: (loss, (pg_loss, v_loss, entropy, old_approx_kl, approx_kl, clipfrac))."""
    newlogprob, entropy = categorical_logprob_entropy(agent.get_logits(obs), actions)
    newvalue = agent.get_value(obs)
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
    """CleanRL's Adam: the learning rate from args, eps 1e-5."""
    return optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)


def train_step(agent, optimizer, mb_inds, *batch, max_grad_norm, **loss_coefs):
    """One gradient step on rows mb_inds of batch (obs, actions, logprobs, advantages, returns, values): PPO loss,
    global-norm gradient clipping, Adam. Returns the loss terms of ppo_loss."""
    loss, stats = ppo_loss(agent, *[b[mb_inds] for b in batch], **loss_coefs)
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
    optimizer.step()
    return stats


def evaluate(model_path, make_env, env_id, eval_episodes, run_name, Model, device, capture_video=True, seed=1):
    """Roll out a saved policy (sampling actions, as CleanRL's ppo_eval does) for `eval_episodes` episodes."""
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, 0, capture_video, run_name)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    agent = Model(int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n)).to(device)
    agent.load_state_dict(load_file(model_path, device=str(device)))
    obs, _ = envs.reset(seed=seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        with torch.no_grad():
            actions = Categorical(logits=agent.get_logits(torch.Tensor(obs).to(device))).sample()
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

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    print(f"{os.path.basename(__file__)}: torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")

    config = vars(args) | {"framework": "torch", "algo": "ppo"}
    if args.track:
        import wandb

        wandb.tensorboard.patch(root_logdir=f"runs/{run_name}")  # named here, W&B does not spend 10 s at exit inferring it
        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=config,
            name=run_name,
            group=f"ppo__{args.env_id}",
            monitor_gym=True,
            save_code=True,
        )
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in config.items()))

    # env setup
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )

    agent = Agent(int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n)).to(device)
    optimizer = make_optimizer(agent, args)
    coefs = {k: getattr(args, k) for k in ("max_grad_norm", "clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss")}
    train = partial(train_step, agent, optimizer, **coefs)

    @torch.no_grad()
    def act(x):
        logits = agent.get_logits(x)
        action = Categorical(logits=logits).sample()
        logprob, _ = categorical_logprob_entropy(logits, action)
        return action, logprob, agent.get_value(x)

    # ALGO Logic: Storage setup (numpy: rollouts are written one step at a time on the host)
    obs = np.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=np.float32)
    actions = np.zeros((args.num_steps, args.num_envs), dtype=np.int64)
    logprobs, rewards, dones, values = (np.zeros((args.num_steps, args.num_envs), dtype=np.float32) for _ in range(4))

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    start_time = time.time()
    next_obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    next_done = np.zeros(args.num_envs, dtype=np.float32)
    timing = dict.fromkeys(("env", "inference", "update"), 0.0)  # seconds per phase since the last log
    last_return = float("nan")

    for iteration in (progress := tqdm(range(1, args.num_iterations + 1), disable=not sys.stderr.isatty())):
        if args.anneal_lr:  # Annealing the rate if instructed to do so.
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done

            # ALGO LOGIC: action logic
            t0 = time.perf_counter()
            action, logprob, value = act(torch.Tensor(next_obs).to(device))
            actions[step], logprobs[step], values[step] = action.cpu().numpy(), logprob.cpu().numpy(), value.cpu().numpy()
            t1 = time.perf_counter()

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, reward, terminations, truncations, infos = envs.step(actions[step])
            next_done = np.logical_or(terminations, truncations).astype(np.float32)
            rewards[step] = reward
            for last_return, length in finished_episodes(infos):
                tqdm.write(f"global_step={global_step}, episodic_return={last_return}")
                writer.add_scalar("charts/episodic_return", last_return, global_step)
                writer.add_scalar("charts/episodic_length", length, global_step)
            timing["inference"] += t1 - t0
            timing["env"] += time.perf_counter() - t1

        # bootstrap value if not done
        t0 = time.perf_counter()
        with torch.no_grad():
            next_value = agent.get_value(torch.Tensor(next_obs).to(device)).cpu().numpy()
        advantages, returns = compute_gae(rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda)
        # flatten the batch (sent to the device once per iteration)
        batch = [torch.tensor(x, device=device).flatten(0, 1) for x in (obs, actions, logprobs, advantages, returns, values)]

        # Optimizing the policy and value network
        b_inds = np.arange(args.batch_size)
        clipfracs = []
        for epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                stats = train(torch.as_tensor(b_inds[start : start + args.minibatch_size], device=device), *batch)
                clipfracs.append(stats[5])
            if args.target_kl is not None and stats[4].item() > args.target_kl:
                break
        if device.type == "cuda":
            torch.cuda.synchronize()  # the update is only done when the device is
        timing["update"] += time.perf_counter() - t0

        # TRY NOT TO MODIFY: record rewards for plotting purposes (read back once per iteration)
        losses = dict(zip(("policy_loss", "value_loss", "entropy", "old_approx_kl", "approx_kl"), (s.item() for s in stats)))
        losses["clipfrac"] = torch.stack(clipfracs).mean().item()
        var_y = np.var(returns)
        losses["explained_variance"] = np.nan if var_y == 0 else 1 - np.var(returns - values) / var_y
        sps = int(global_step / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        for name, loss in losses.items():
            writer.add_scalar(f"losses/{name}", loss, global_step)
        for phase, seconds in timing.items():
            writer.add_scalar(f"timing/{phase}_us", 1e6 * seconds / args.batch_size, global_step)
        timing = dict.fromkeys(timing, 0.0)
        progress.set_postfix(SPS=sps, ret=last_return)
        if progress.disable:
            print("SPS:", sps)

    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.safetensors"
        save_file(agent.state_dict(), model_path)
        print(f"model saved to {model_path}")
        episodic_returns = evaluate(
            model_path,
            make_env,
            args.env_id,
            args.eval_episodes,
            f"{run_name}-eval",
            Agent,
            device,
            args.capture_video,
            args.seed,
        )
        for idx, episodic_return in enumerate(episodic_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)

    envs.close()
    writer.close()
