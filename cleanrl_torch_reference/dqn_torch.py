"""DQN for discrete actions (classic control) in PyTorch: the reference twin of cleanrl_mlx/dqn_mlx.py.

Mirrors CleanRL's dqn.py (https://docs.cleanrl.dev/rl-algorithms/dqn/#dqnpy): same defaults, same TD
target and loss, same logged tags.

Usage: python cleanrl_torch_reference/dqn_torch.py --env-id CartPole-v1
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
import torch.nn.functional as F
import torch.optim as optim
import tyro
from safetensors.torch import load_file, save_file
from tensorboardX import SummaryWriter
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
    num_envs: int = 1
    """the number of parallel game environments"""
    buffer_size: int = 10000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 1.0
    """the target network update rate"""
    target_network_frequency: int = 500
    """the timesteps it takes to update the target network"""
    batch_size: int = 128
    """the batch size of sample from the reply memory"""
    start_e: float = 1
    """the starting epsilon for exploration"""
    end_e: float = 0.05
    """the ending epsilon for exploration"""
    exploration_fraction: float = 0.5
    """the fraction of `total-timesteps` it takes from start-e to go end-e"""
    learning_starts: int = 10000
    """timestep to start learning"""
    train_frequency: int = 10
    """the frequency of training"""


def check_args(args: Args, script: str) -> None:
    """Reject bad input with one clear line before anything is created."""
    limits = {  # field: (valid?, what it must be)
        "eval_episodes": (args.eval_episodes >= 0, "non-negative"),
        "total_timesteps": (args.total_timesteps > 0, "positive"),
        "learning_rate": (args.learning_rate > 0, "positive"),
        "buffer_size": (args.buffer_size > 0, "positive"),
        "gamma": (0 <= args.gamma <= 1, "in [0, 1]"),
        "tau": (0 < args.tau <= 1, "in (0, 1]"),
        "target_network_frequency": (args.target_network_frequency > 0, "positive"),
        "batch_size": (args.batch_size > 0, "positive"),
        "start_e": (0 <= args.start_e <= 1, "in [0, 1]"),
        "end_e": (0 <= args.end_e <= 1, "in [0, 1]"),
        "exploration_fraction": (0 < args.exploration_fraction <= 1, "in (0, 1]"),
        "learning_starts": (args.learning_starts >= 0, "non-negative"),
        "train_frequency": (args.train_frequency > 0, "positive"),
    }
    for name, (valid, must) in limits.items():
        if not valid:
            raise SystemExit(f"{script}: --{name.replace('_', '-')} must be {must}, got {getattr(args, name)}")
    if args.num_envs != 1:
        raise SystemExit(
            f"{script}: --num-envs must be 1 (vectorized envs are not supported, as in CleanRL), got {args.num_envs}"
        )
    if args.learning_starts >= args.total_timesteps:
        raise SystemExit(
            f"{script}: --learning-starts {args.learning_starts} must be less than --total-timesteps {args.total_timesteps}"
        )
    if args.env_id not in gym.registry:
        raise SystemExit(f"{script}: unknown env id {args.env_id!r} (not in gymnasium's registry)")
    try:
        env = gym.make(args.env_id)
    except gym.error.DependencyNotInstalled as e:
        raise SystemExit(f"{script}: {args.env_id} needs a package that is not installed: {e}") from None
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        raise SystemExit(f"{script}: only flat Box observation spaces are supported; {args.env_id} has {env.observation_space}")
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise SystemExit(f"{script}: only discrete action spaces are supported; {args.env_id} has {env.action_space}")
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


# ALGO LOGIC: initialize agent here:
class QNetwork(nn.Module):
    def __init__(self, obs_dim, n_actions):
        super().__init__()
        self.network = nn.Sequential(nn.Linear(obs_dim, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, n_actions))

    def forward(self, x):
        return self.network(x)


class ReplayBuffer:
    """Preallocated numpy ring buffer. `dones` holds terminations only (a truncated episode still
    bootstraps from its true final observation); sampling is one vectorised gather from numpy's
    global RNG, so twins with the same seed draw the same indices."""

    def __init__(self, buffer_size, obs_shape, obs_dtype=np.float32):
        self.buffer_size, self.pos, self.full = buffer_size, 0, False
        self.observations = np.zeros((buffer_size,) + obs_shape, dtype=obs_dtype)
        self.next_observations = np.zeros((buffer_size,) + obs_shape, dtype=obs_dtype)
        self.actions = np.zeros(buffer_size, dtype=np.int64)
        self.rewards = np.zeros(buffer_size, dtype=np.float32)
        self.dones = np.zeros(buffer_size, dtype=np.float32)

    def __len__(self):
        return self.buffer_size if self.full else self.pos

    def add(self, obs, next_obs, actions, rewards, terminations):
        """Store one transition per env (leading axis = envs)."""
        idx = (self.pos + np.arange(len(obs))) % self.buffer_size
        self.observations[idx] = obs
        self.next_observations[idx] = next_obs
        self.actions[idx] = actions
        self.rewards[idx] = rewards
        self.dones[idx] = terminations
        self.full = self.full or self.pos + len(obs) >= self.buffer_size
        self.pos = (self.pos + len(obs)) % self.buffer_size

    def sample(self, batch_size):
        idx = np.random.randint(0, len(self), size=batch_size)
        return self.observations[idx], self.actions[idx], self.rewards[idx], self.next_observations[idx], self.dones[idx]


def real_next_obs(next_obs, infos):
    """With SAME_STEP autoreset a finished env's `next_obs` is already its next episode's first
    observation; the true last one is in infos["final_obs"]. Returns next_obs with those put back."""
    real = next_obs.copy()
    if "_final_obs" in infos:
        for i in np.flatnonzero(infos["_final_obs"]):
            real[i] = infos["final_obs"][i]
    return real


def linear_schedule(start_e: float, end_e: float, duration: int, t: int):
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


@torch.no_grad()
def td_target(target_network, next_obs, rewards, dones, gamma):
    """r + gamma * max_a Q_target(s', a), not bootstrapped past a termination."""
    target_max, _ = target_network(next_obs).max(dim=1)
    return rewards + gamma * target_max * (1 - dones)


def dqn_loss(q_network, obs, actions, target):
    """Mean squared TD error of Q(s, a). Returns (loss, Q(s, a)); only `loss` is differentiated."""
    old_val = q_network(obs).gather(1, actions[:, None]).squeeze(1)
    return F.mse_loss(target, old_val), old_val


def make_optimizer(q_network, args):
    """Adam as CleanRL's dqn.py builds it: its learning rate, eps 1e-8, bias-corrected steps."""
    return optim.Adam(q_network.parameters(), lr=args.learning_rate)


def train_step(q_network, target_network, optimizer, obs, actions, rewards, next_obs, dones, *, gamma):
    """One gradient step on a replay batch. Returns (TD loss, mean Q(s, a)) for logging."""
    target = td_target(target_network, next_obs, rewards, dones, gamma)
    loss, old_val = dqn_loss(q_network, obs, actions, target)

    # optimize the model
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss, old_val.mean()


@torch.no_grad()
def polyak_update(online, target, tau):
    """target <- tau * online + (1 - tau) * target, for every parameter (tau = 1 is a hard copy)."""
    for target_param, param in zip(target.parameters(), online.parameters()):
        target_param.data.copy_(tau * param.data + (1 - tau) * target_param.data)


def evaluate(
    model_path,
    make_env,
    env_id,
    eval_episodes,
    run_name,
    Model,
    device=torch.device("cpu"),
    epsilon=0.05,
    capture_video=True,
    seed=1,
):
    """Roll out a saved Q-network epsilon-greedily (as CleanRL's dqn_eval does) for `eval_episodes` episodes."""
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, 0, capture_video, run_name)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    model = Model(int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n)).to(device)
    model.load_state_dict(load_file(model_path, device=str(device)))
    model.eval()
    obs, _ = envs.reset(seed=seed)
    envs.action_space.seed(seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        if random.random() < epsilon:
            actions = envs.action_space.sample()
        else:
            with torch.no_grad():
                actions = torch.argmax(model(torch.Tensor(obs).to(device)), dim=1).cpu().numpy()
        obs, _, _, _, infos = envs.step(actions)
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
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"

    # env setup
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )

    # TRY NOT TO MODIFY: device, seeding, logging
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    print(f"dqn_torch: torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
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
            config=vars(args) | {"framework": "torch", "algo": "dqn"},
            name=run_name,
            group=f"dqn__{args.env_id}",
            monitor_gym=True,
            save_code=True,
        )
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s"
        % ("\n".join([f"|{key}|{value}|" for key, value in (vars(args) | {"framework": "torch"}).items()])),
    )

    obs_dim, n_actions = int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n)
    q_network = QNetwork(obs_dim, n_actions).to(device)
    optimizer = make_optimizer(q_network, args)
    target_network = QNetwork(obs_dim, n_actions).to(device)
    target_network.load_state_dict(q_network.state_dict())
    train = partial(train_step, q_network, target_network, optimizer, gamma=args.gamma)
    update_target = partial(polyak_update, q_network, target_network, args.tau)

    rb = ReplayBuffer(args.buffer_size, envs.single_observation_space.shape)

    # TRY NOT TO MODIFY: start the game
    start_time = time.time()
    obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    env_time = inference_time = update_time = 0.0  # seconds since the last log
    last_log_step, last_return = 0, float("nan")
    progress = tqdm(total=args.total_timesteps, disable=not sys.stderr.isatty(), unit="step")
    for global_step in range(args.total_timesteps):
        # ALGO LOGIC: put action logic here
        t0 = time.perf_counter()
        epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, global_step)
        if random.random() < epsilon:
            actions = envs.action_space.sample()
        else:
            with torch.no_grad():
                q_values = q_network(torch.Tensor(obs).to(device))
            actions = torch.argmax(q_values, dim=1).cpu().numpy()
        t1 = time.perf_counter()

        # TRY NOT TO MODIFY: execute the game and log data.
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        if "final_info" in infos:
            for i in np.flatnonzero(infos["final_info"]["_episode"]):
                last_return = float(infos["final_info"]["episode"]["r"][i])
                tqdm.write(f"global_step={global_step}, episodic_return={last_return}")
                writer.add_scalar("charts/episodic_return", last_return, global_step)
                writer.add_scalar("charts/episodic_length", infos["final_info"]["episode"]["l"][i], global_step)

        # TRY NOT TO MODIFY: save data to reply buffer; handle `final_obs`
        rb.add(obs, real_next_obs(next_obs, infos), actions, rewards, terminations)

        # TRY NOT TO MODIFY: CRUCIAL step easy to overlook
        obs = next_obs
        t2 = time.perf_counter()
        inference_time += t1 - t0
        env_time += t2 - t1

        # ALGO LOGIC: training.
        if global_step > args.learning_starts:
            if global_step % args.train_frequency == 0:
                t0 = time.perf_counter()
                data = rb.sample(args.batch_size)
                loss, q_values = train(*(torch.as_tensor(x, device=device) for x in data))
                if device.type == "cuda":
                    torch.cuda.synchronize()  # the update is only done when the device is
                update_time += time.perf_counter() - t0

                if global_step % 100 == 0:
                    steps_since_log, last_log_step = global_step - last_log_step, global_step
                    sps = int(global_step / (time.time() - start_time))
                    writer.add_scalar("losses/td_loss", loss.item(), global_step)
                    writer.add_scalar("losses/q_values", q_values.item(), global_step)
                    writer.add_scalar("charts/SPS", sps, global_step)
                    writer.add_scalar("timing/env_us", 1e6 * env_time / steps_since_log, global_step)
                    writer.add_scalar("timing/inference_us", 1e6 * inference_time / steps_since_log, global_step)
                    writer.add_scalar("timing/update_us", 1e6 * update_time / steps_since_log, global_step)
                    env_time = inference_time = update_time = 0.0
                    progress.update(global_step - progress.n)
                    progress.set_postfix(SPS=sps, ret=last_return)
                    if progress.disable:  # no bar (not a TTY): print SPS as CleanRL does
                        print("SPS:", sps)

            # update target network
            if global_step % args.target_network_frequency == 0:
                t0 = time.perf_counter()
                update_target()
                update_time += time.perf_counter() - t0

    progress.close()
    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in q_network.state_dict().items()}, model_path)
        print(f"model saved to {model_path}")
        episodic_returns = evaluate(
            model_path,
            make_env,
            args.env_id,
            args.eval_episodes,
            f"{run_name}-eval",
            QNetwork,
            device=device,
            epsilon=args.end_e,
            capture_video=args.capture_video,
            seed=args.seed,
        )
        for idx, episodic_return in enumerate(episodic_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)

    envs.close()
    writer.close()
