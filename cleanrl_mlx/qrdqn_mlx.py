"""QR-DQN for discrete actions (classic control) in MLX; its PyTorch twin is cleanrl_torch_reference/qrdqn_torch.py.

Written in the shape of CleanRL's dqn.py; the algorithm is QR-DQN (quantile regression DQN, Dabney et
al. 2018) as sb3-contrib defines it (quantile midpoints, quantile Huber loss with kappa = 1, greedy
target action from the mean of the target network's quantiles) with rl-zoo's tuned CartPole-v1
hyperparameters as defaults. Exploration follows CleanRL's linear epsilon schedule from the first step
(sb3 instead acts uniformly at random until learning_starts; with these defaults epsilon is still above
0.88 there).

Usage: python cleanrl_mlx/qrdqn_mlx.py --env-id CartPole-v1
"""

import ctypes
import os
import random
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Optional

import gymnasium as gym
import numpy as np
import tyro
from tqdm import tqdm

# The Linux `mlx[cpu]` wheel bundles the netlib reference BLAS, ~30x slower than OpenBLAS on these
# matmuls. Loading a system OpenBLAS with RTLD_GLOBAL before MLX is imported makes MLX bind to it.
# Opt out with CLEANRL_MLX_BLAS=bundled. (macOS uses Accelerate.)
BLAS = "accelerate" if sys.platform == "darwin" else "bundled"
if sys.platform.startswith("linux") and os.environ.get("CLEANRL_MLX_BLAS") != "bundled":
    try:
        ctypes.CDLL("libopenblas.so.0", mode=ctypes.RTLD_GLOBAL)
        BLAS = "openblas"
    except OSError:
        BLAS = "bundled (libopenblas.so.0 not found: apt install libopenblas0-pthread)"

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
from mlx.utils import tree_map  # noqa: E402

# tensorboardX imports torch whenever it is installed (~1.5 s and ~180 MB that an MLX run never uses): a None
# entry in sys.modules makes that import fail, so tensorboardX goes on without it
sys.modules.setdefault("torch", None)
from tensorboardX import SummaryWriter  # noqa: E402

if sys.modules["torch"] is None:
    del sys.modules["torch"]


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    device: str = "gpu"
    """MLX device, "gpu" (Metal or CUDA) or "cpu"; falls back to cpu where MLX has no GPU backend"""
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
    total_timesteps: int = 50000
    """total timesteps of the experiments"""
    learning_rate: float = 2.3e-3
    """the learning rate of the optimizer"""
    num_envs: int = 1
    """the number of parallel game environments"""
    n_quantiles: int = 10
    """the number of quantiles"""
    net_arch: tuple[int, ...] = (256, 256)
    """the hidden layer sizes of the quantile network"""
    buffer_size: int = 100000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 1.0
    """the target network update rate"""
    target_network_frequency: int = 10
    """the timesteps it takes to update the target network"""
    batch_size: int = 64
    """the batch size of sample from the reply memory"""
    start_e: float = 1
    """the starting epsilon for exploration"""
    end_e: float = 0.04
    """the ending epsilon for exploration"""
    exploration_fraction: float = 0.16
    """the fraction of `total-timesteps` it takes from start-e to go end-e"""
    learning_starts: int = 1000
    """timestep to start learning"""
    train_frequency: int = 256
    """the frequency of training"""
    gradient_steps: int = 128
    """the number of gradient steps each time the model is trained"""


def check_args(args: Args, script: str) -> None:
    """Reject bad input with one clear line before anything is created."""
    limits = {  # field: (valid?, what it must be)
        "eval_episodes": (args.eval_episodes >= 0, "non-negative"),
        "total_timesteps": (args.total_timesteps > 0, "positive"),
        "learning_rate": (args.learning_rate > 0, "positive"),
        "n_quantiles": (args.n_quantiles > 0, "positive"),
        "net_arch": (all(size > 0 for size in args.net_arch), "positive"),
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
        "gradient_steps": (args.gradient_steps > 0, "positive"),
    }
    for name, (valid, must) in limits.items():
        if not valid:
            raise SystemExit(f"{script}: --{name.replace('_', '-')} must be {must}, got {getattr(args, name)}")
    if args.device not in ("gpu", "cpu"):
        raise SystemExit(f'{script}: --device must be "gpu" or "cpu", got {args.device!r}')
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


def forward(layers, x):
    for layer in layers:
        x = layer(x)
    return x


# ALGO LOGIC: initialize agent here:
class QNetwork(nn.Module):
    # a plain list (not nn.Sequential) so parameter names are `network.0.weight`, ..., the torch twin's;
    # MLX's default Linear init is torch's: U(-1/sqrt(in), 1/sqrt(in))
    def __init__(self, obs_dim, n_actions, n_quantiles=10, net_arch=(256, 256)):
        super().__init__()
        self.n, self.n_quantiles = n_actions, n_quantiles
        sizes = [obs_dim, *net_arch]
        self.network = [layer for i, o in zip(sizes[:-1], sizes[1:]) for layer in (nn.Linear(i, o), nn.ReLU())]
        self.network.append(nn.Linear(sizes[-1], n_actions * n_quantiles))

    def __call__(self, x):
        """The quantiles of every action: [batch, n_quantiles, n_actions] (sb3-contrib's layout)."""
        return forward(self.network, x).reshape(len(x), self.n_quantiles, self.n)

    def get_action(self, x):
        """The greedy action: the one with the highest mean over its quantiles."""
        return mx.argmax(self(x).mean(axis=1), axis=1)


class ReplayBuffer:
    """Preallocated numpy ring buffer. `dones` holds terminations only (a truncated episode still
    bootstraps from its true final observation); sampling is one vectorised gather from numpy's
    global RNG, so twins with the same seed draw the same indices."""

    def __init__(self, buffer_size, obs_shape, obs_dtype=np.float32):
        self.buffer_size, self.pos, self.full = buffer_size, 0, False
        self.observations = np.zeros((buffer_size,) + obs_shape, dtype=obs_dtype)
        self.next_observations = np.zeros((buffer_size,) + obs_shape, dtype=obs_dtype)
        self.actions = np.zeros(buffer_size, dtype=np.int32)
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


def qrdqn_target(target_network, next_obs, rewards, dones, gamma):
    """r + gamma * (quantiles of the target network at s' for its greedy action), not bootstrapped
    past a termination. Returns [batch, n_quantiles]."""
    next_quantiles = target_network(next_obs)
    next_greedy_actions = mx.argmax(next_quantiles.mean(axis=1), axis=1)
    next_quantiles = mx.take_along_axis(next_quantiles, next_greedy_actions[:, None, None], axis=2).squeeze(2)
    return mx.stop_gradient(rewards[:, None] + (1 - dones[:, None]) * gamma * next_quantiles)


def quantile_huber_loss(current_quantiles, target_quantiles):
    """Quantile Huber loss (kappa = 1) of current [batch, N] against target [batch, N'] quantiles at the
    midpoints tau_i = (i + 0.5) / N: summed over current quantiles, averaged over targets and batch."""
    n_quantiles = current_quantiles.shape[-1]
    cum_prob = ((mx.arange(n_quantiles, dtype=mx.float32) + 0.5) / n_quantiles)[None, :, None]
    pairwise_delta = target_quantiles[:, None, :] - current_quantiles[:, :, None]  # [batch, N, N']
    abs_pairwise_delta = mx.abs(pairwise_delta)
    huber_loss = mx.where(abs_pairwise_delta > 1, abs_pairwise_delta - 0.5, pairwise_delta**2 * 0.5)
    loss = mx.abs(cum_prob - mx.stop_gradient(pairwise_delta < 0).astype(mx.float32)) * huber_loss
    return loss.sum(axis=1).mean()


def qrdqn_loss(q_network, obs, actions, target_quantiles):
    """Quantile Huber loss of the quantiles of Q(s, a). Returns (loss, quantiles of Q(s, a)); only
    `loss` is differentiated."""
    current_quantiles = mx.take_along_axis(q_network(obs), actions[:, None, None], axis=2).squeeze(2)
    return quantile_huber_loss(current_quantiles, target_quantiles), current_quantiles


def make_optimizer(q_network, args):
    """Adam with sb3-contrib's settings for QR-DQN: the learning rate, eps 0.01 / batch_size (as in the
    paper), bias-corrected steps."""
    optimizer = optim.Adam(learning_rate=args.learning_rate, eps=0.01 / args.batch_size, bias_correction=True)
    optimizer.init(q_network.trainable_parameters())  # the compiled step captures this state, so it must exist
    return optimizer


def train_step(q_network, target_network, optimizer, obs, actions, rewards, next_obs, dones, *, gamma):
    """One gradient step on a replay batch. Returns (quantile Huber loss, mean quantile of Q(s, a)) for logging."""
    target_quantiles = qrdqn_target(target_network, next_obs, rewards, dones, gamma)
    (loss, current_quantiles), grads = nn.value_and_grad(q_network, partial(qrdqn_loss, q_network))(
        obs, actions, target_quantiles
    )

    # optimize the model
    optimizer.update(q_network, grads)
    return loss, current_quantiles.mean()


def polyak_update(online, target, tau):
    """target <- tau * online + (1 - tau) * target, for every parameter (tau = 1 is a hard copy)."""
    target.update(tree_map(lambda o, t: tau * o + (1 - tau) * t, online.parameters(), target.parameters()))


def evaluate(
    model_path, make_env, env_id, eval_episodes, run_name, Model, device=mx.cpu, epsilon=0.05, capture_video=True, seed=1
):
    """Roll out a saved Q-network epsilon-greedily (as CleanRL's dqn_eval does) for `eval_episodes` episodes."""
    mx.set_default_device(device)
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, 0, capture_video, run_name)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    model = Model(int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n))
    model.load_weights(model_path)
    obs, _ = envs.reset(seed=seed)
    envs.action_space.seed(seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        if random.random() < epsilon:
            actions = envs.action_space.sample()
        else:
            actions = np.array(model.get_action(mx.array(obs, dtype=mx.float32)))
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
    if args.device == "gpu" and not mx.is_available(mx.gpu):
        print("qrdqn_mlx: MLX has no GPU backend here, running on cpu")
        args.device = "cpu"
    mx.set_default_device(mx.gpu if args.device == "gpu" else mx.cpu)
    print(f"qrdqn_mlx: mlx {mx.__version__}, device {args.device}, BLAS {BLAS}")
    random.seed(args.seed)
    np.random.seed(args.seed)
    mx.random.seed(args.seed)

    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args) | {"framework": "mlx", "algo": "qrdqn", "blas": BLAS},
            name=run_name,
            group=f"qrdqn__{args.env_id}",
            monitor_gym=True,
            save_code=True,
        )
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s"
        % ("\n".join([f"|{key}|{value}|" for key, value in (vars(args) | {"framework": "mlx", "blas": BLAS}).items()])),
    )

    obs_dim, n_actions = int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n)
    Model = partial(QNetwork, n_quantiles=args.n_quantiles, net_arch=args.net_arch)
    q_network = Model(obs_dim, n_actions)
    optimizer = make_optimizer(q_network, args)
    target_network = Model(obs_dim, n_actions)
    target_network.update(q_network.parameters())
    mx.eval(q_network.state, target_network.state, optimizer.state)

    # ALGO LOGIC: compiled hot paths. Each captures the live module state (no copies, no state dicts).
    # Epsilon-greedy draws on the host, as the twin does: a step that explores never calls MLX, and a
    # compiled greedy forward is ~30% cheaper per call than one that also draws from mx.random.
    @partial(mx.compile, inputs=[q_network.state])
    def act(obs):
        return q_network.get_action(obs)

    state = [q_network.state, target_network.state, optimizer.state]
    train = mx.compile(partial(train_step, q_network, target_network, optimizer, gamma=args.gamma), inputs=state, outputs=state)
    update_target = mx.compile(partial(polyak_update, q_network, target_network, args.tau), inputs=state, outputs=state)

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
            actions = np.array(act(mx.array(obs, dtype=mx.float32)))  # the one host sync per step
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

        # ALGO LOGIC: training: every train_frequency steps, gradient_steps updates in a row (as sb3 does)
        if global_step > args.learning_starts:
            if global_step % args.train_frequency == 0:
                t0 = time.perf_counter()
                for _ in range(args.gradient_steps):
                    data = rb.sample(args.batch_size)
                    loss, q_values = train(*(mx.array(x) for x in data))
                    mx.eval(loss, q_values, q_network.state, optimizer.state)  # one sync per gradient step
                update_time += time.perf_counter() - t0

                # one log per training phase (losses of its last gradient step)
                steps_since_log, last_log_step = global_step - last_log_step, global_step
                sps = int(global_step / (time.time() - start_time))
                writer.add_scalar("losses/loss", loss.item(), global_step)
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
                mx.eval(target_network.state)
                update_time += time.perf_counter() - t0

    progress.close()
    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.safetensors"
        q_network.save_weights(model_path)
        print(f"model saved to {model_path}")
        episodic_returns = evaluate(
            model_path,
            make_env,
            args.env_id,
            args.eval_episodes,
            f"{run_name}-eval",
            Model,
            device=mx.default_device(),
            epsilon=args.end_e,
            capture_video=args.capture_video,
            seed=args.seed,
        )
        for idx, episodic_return in enumerate(episodic_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)

    envs.close()
    writer.close()
