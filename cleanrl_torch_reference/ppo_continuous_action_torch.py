"""PPO for continuous actions (MuJoCo, classic control) in eager PyTorch: the reference twin of
cleanrl_mlx/ppo_continuous_action_mlx.py.

Mirrors CleanRL's ppo_continuous_action.py
(https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_continuous_actionpy): same defaults, same wrapper
chain, same loss, same logged tags. Unlike CleanRL, `--save-model` also saves the observation
normalisation statistics and evaluation uses them.

Usage: python cleanrl_torch_reference/ppo_continuous_action_torch.py --env-id HalfCheetah-v5
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
from torch.distributions.normal import Normal
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
    env_id: str = "HalfCheetah-v5"
    """the id of the environment"""
    total_timesteps: int = 1000000
    """total timesteps of the experiments"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    num_envs: int = 1
    """the number of parallel game environments"""
    num_steps: int = 2048
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """Toggle learning rate annealing for policy and value networks"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 32
    """the number of mini-batches"""
    update_epochs: int = 10
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """Toggles advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """Toggles whether or not to use a clipped loss for the value function, as per the paper."""
    ent_coef: float = 0.0
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
    try:
        env = gym.make(args.env_id)
    except gym.error.DependencyNotInstalled as e:
        raise SystemExit(f"{script}: {args.env_id} needs a package that is not installed: {e}") from None
    if not isinstance(env.action_space, gym.spaces.Box):  # make_env's ClipAction would fail with a stack trace
        raise SystemExit(
            f"{script}: only continuous action spaces are supported; {args.env_id} has {env.action_space} "
            f"(use {script.replace('_continuous_action', '')})"
        )
    env.close()


def make_env(env_id, idx, capture_video, run_name, gamma):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        env = gym.wrappers.FlattenObservation(env)  # deal with dm_control's Dict observation space
        env = gym.wrappers.RecordEpisodeStatistics(env)  # before normalisation: logs the true returns
        env = gym.wrappers.ClipAction(env)
        env = gym.wrappers.NormalizeObservation(env)
        # gymnasium 1.x needs the transformed space; clipping to +-10 is what the policy sees
        clipped = gym.spaces.Box(-10.0, 10.0, env.observation_space.shape, np.float32)
        env = gym.wrappers.TransformObservation(env, lambda obs: np.clip(obs, -10, 10), clipped)
        env = gym.wrappers.NormalizeReward(env, gamma=gamma)
        env = gym.wrappers.TransformReward(env, lambda reward: np.clip(reward, -10, 10))
        return env

    return thunk


def obs_normalizer(env):
    """The NormalizeObservation wrapper inside one env built by make_env (its running mean/var/count are
    part of the policy: the network only ever sees normalised observations)."""
    while not isinstance(env, gym.wrappers.NormalizeObservation):
        env = env.env
    return env


def pooled_obs_rms(envs):
    """Mean, variance and count of every env's observation statistics pooled into one (exact for
    num_envs > 1; with one env they are that env's own)."""
    stats = [obs_normalizer(env).obs_rms for env in envs.envs]
    count = sum(rms.count for rms in stats)
    mean = sum(rms.count * rms.mean for rms in stats) / count
    var = sum(rms.count * (rms.var + (rms.mean - mean) ** 2) for rms in stats) / count
    return {"mean": mean, "var": var, "count": np.array(count)}


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim, action_dim):
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor_mean = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, action_dim), std=0.01),
        )
        # state-independent log standard deviation, a trained parameter
        self.actor_logstd = nn.Parameter(torch.zeros(1, action_dim))

    def get_value(self, x):
        return self.critic(x).squeeze(-1)

    def get_action_mean(self, x):
        return self.actor_mean(x)


def normal_logprob_entropy(mean, logstd, action):
    """log pi(action) and entropy of a diagonal Gaussian, each summed over the action dimensions."""
    probs = Normal(mean, logstd.expand_as(mean).exp())
    return probs.log_prob(action).sum(-1), probs.entropy().sum(-1)


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
    newlogprob, entropy = normal_logprob_entropy(agent.get_action_mean(obs), agent.actor_logstd, actions)
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


def train_step(
    agent, optimizer, mb_inds, b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values, max_grad_norm, **loss_coefs
):
    """One gradient step on the minibatch mb_inds of the batch: PPO loss, global-norm gradient clipping, Adam.
    Returns the loss terms of ppo_loss."""
    minibatch = [b[mb_inds] for b in (b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values)]
    loss, stats = ppo_loss(agent, *minibatch, **loss_coefs)
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
    gamma=0.99,
    seed=1,
):
    """Roll out a saved policy (sampling actions, as CleanRL's ppo_eval does) for `eval_episodes` episodes,
    normalising observations with the statistics saved next to the weights, frozen."""
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, 0, capture_video, run_name, gamma)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    agent = Model(int(np.prod(envs.single_observation_space.shape)), int(np.prod(envs.single_action_space.shape))).to(device)
    agent.load_state_dict(load_file(model_path, device=str(device)))
    agent.eval()
    normalizer = obs_normalizer(envs.envs[0])
    with np.load(model_path.replace(".safetensors", ".obs_rms.npz")) as saved:
        rms = normalizer.obs_rms
        rms.mean, rms.var, rms.count = saved["mean"], saved["var"], float(saved["count"])
    normalizer.update_running_mean = False  # evaluation uses the training statistics as they were
    obs, _ = envs.reset(seed=seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        with torch.no_grad():
            action_mean = agent.get_action_mean(torch.Tensor(obs).to(device))
            actions = Normal(action_mean, agent.actor_logstd.expand_as(action_mean).exp()).sample()
        obs, _, _, _, infos = envs.step(actions.cpu().numpy())
        if "final_info" in infos:
            for i in np.flatnonzero(infos["final_info"]["_episode"]):
                episodic_return = infos["final_info"]["episode"]["r"][i]
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
        [make_env(args.env_id, i, args.capture_video, run_name, args.gamma) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )

    # TRY NOT TO MODIFY: device, seeding, logging
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    print(f"ppo_continuous_action_torch: torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
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
            config=vars(args) | {"framework": "torch", "algo": "ppo_continuous_action"},
            name=run_name,
            group=f"ppo_continuous_action__{args.env_id}",
            monitor_gym=True,
            save_code=True,
        )
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s"
        % ("\n".join([f"|{key}|{value}|" for key, value in (vars(args) | {"framework": "torch"}).items()])),
    )

    obs_dim = int(np.prod(envs.single_observation_space.shape))
    action_dim = int(np.prod(envs.single_action_space.shape))
    agent = Agent(obs_dim, action_dim).to(device)
    optimizer = make_optimizer(agent, args)
    train = partial(
        train_step,
        agent,
        optimizer,
        max_grad_norm=args.max_grad_norm,
        clip_coef=args.clip_coef,
        ent_coef=args.ent_coef,
        vf_coef=args.vf_coef,
        norm_adv=args.norm_adv,
        clip_vloss=args.clip_vloss,
    )

    # ALGO Logic: Storage setup (numpy: rollouts are written one step at a time on the host)
    obs = np.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=np.float32)
    actions = np.zeros((args.num_steps, args.num_envs) + envs.single_action_space.shape, dtype=np.float32)
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
                x = torch.Tensor(next_obs).to(device)
                action_mean = agent.get_action_mean(x)
                action = Normal(action_mean, agent.actor_logstd.expand_as(action_mean).exp()).sample()
                logprob, _ = normal_logprob_entropy(action_mean, agent.actor_logstd, action)
                value = agent.get_value(x)
            actions[step] = action.cpu().numpy()
            logprobs[step] = logprob.cpu().numpy()
            values[step] = value.cpu().numpy()
            t1 = time.perf_counter()

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, reward, terminations, truncations, infos = envs.step(actions[step])
            next_done = np.logical_or(terminations, truncations).astype(np.float32)
            rewards[step] = reward
            if "final_info" in infos:
                for i in np.flatnonzero(infos["final_info"]["_episode"]):
                    last_return = float(infos["final_info"]["episode"]["r"][i])
                    tqdm.write(f"global_step={global_step}, episodic_return={last_return}")
                    writer.add_scalar("charts/episodic_return", last_return, global_step)
                    writer.add_scalar("charts/episodic_length", infos["final_info"]["episode"]["l"][i], global_step)
            t2 = time.perf_counter()
            inference_time += t1 - t0
            env_time += t2 - t1

        # bootstrap value if not done
        t0 = time.perf_counter()
        with torch.no_grad():
            next_value = agent.get_value(torch.Tensor(next_obs).to(device)).cpu().numpy()
        advantages, returns = compute_gae(rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda)

        # flatten the batch (sent to the device once per iteration)
        b_obs = torch.tensor(obs.reshape((-1,) + envs.single_observation_space.shape), device=device)
        b_actions = torch.tensor(actions.reshape((-1,) + envs.single_action_space.shape), device=device)
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
        np.savez(model_path.replace(".safetensors", ".obs_rms.npz"), **pooled_obs_rms(envs))
        print(f"model saved to {model_path} (observation statistics: .obs_rms.npz)")
        episodic_returns = evaluate(
            model_path,
            make_env,
            args.env_id,
            args.eval_episodes,
            f"{run_name}-eval",
            Agent,
            device=device,
            capture_video=args.capture_video,
            gamma=args.gamma,
            seed=args.seed,
        )
        for idx, episodic_return in enumerate(episodic_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)

    envs.close()
    writer.close()
