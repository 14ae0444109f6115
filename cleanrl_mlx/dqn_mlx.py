"""DQN for discrete actions (classic control) in MLX, as CleanRL's dqn.py: same defaults, TD target, loss and logged tags.

Twin: cleanrl_torch_reference/dqn_torch.py. Docs: docs/dqn.md. Run: python cleanrl_mlx/dqn_mlx.py --env-id CartPole-v1
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

# Linux mlx[cpu] bundles a reference BLAS ~30x slower than OpenBLAS: load the system's before MLX so MLX binds to it
BLAS = "accelerate" if sys.platform == "darwin" else "bundled"  # opt out on Linux: CLEANRL_MLX_BLAS=bundled
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

sys.modules.setdefault("torch", None)  # tensorboardX imports torch if installed (~1.5 s, ~180 MB): hide it
from tensorboardX import SummaryWriter  # noqa: E402

if sys.modules["torch"] is None:  # let later code import torch again
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
        **{k: (getattr(args, k) > 0, "positive") for k in ("total_timesteps", "learning_rate", "buffer_size", "batch_size")},
        **{k: (getattr(args, k) > 0, "positive") for k in ("target_network_frequency", "train_frequency")},
        "eval_episodes": (args.eval_episodes >= 0, "non-negative"),
        **{k: (0 <= getattr(args, k) <= 1, "in [0, 1]") for k in ("gamma", "start_e", "end_e")},
        **{k: (0 < getattr(args, k) <= 1, "in (0, 1]") for k in ("tau", "exploration_fraction")},
        "learning_starts": (0 <= args.learning_starts < args.total_timesteps, "non-negative and less than --total-timesteps"),
        "num_envs": (args.num_envs == 1, "1 (vectorized envs are not supported, as in CleanRL)"),
        "device": (args.device in ("gpu", "cpu"), '"gpu" or "cpu"'),
    }
    for name, (valid, must) in limits.items():
        if not valid:
            raise SystemExit(f"{script}: --{name.replace('_', '-')} must be {must}, got {getattr(args, name)}")
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


def finished_episodes(infos):
    """(return, length) of every env whose episode ended this step (SAME_STEP autoreset: in final_info)."""
    if "final_info" not in infos or "episode" not in infos["final_info"]:
        return []
    final = infos["final_info"]
    return [(float(final["episode"]["r"][i]), int(final["episode"]["l"][i])) for i in np.flatnonzero(final["_episode"])]


def forward(layers, x):
    for layer in layers:
        x = layer(x)
    return x


# ALGO LOGIC: initialize agent here:
class QNetwork(nn.Module):
    # a list, not nn.Sequential: parameter names are torch's (`network.0.weight`, ...); MLX's Linear init is torch's
    def __init__(self, obs_dim, n_actions):
        super().__init__()
        self.network = [nn.Linear(obs_dim, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, n_actions)]

    def __call__(self, x):
        return forward(self.network, x)


class ReplayBuffer:
    """Preallocated ring buffer. `dones` holds terminations only (a truncated episode still bootstraps from its true final
    observation); sampling is one gather from numpy's global RNG, so same-seed twins draw the same indices."""

    def __init__(self, buffer_size, obs_shape):
        self.buffer_size, self.pos, self.size = buffer_size, 0, 0
        self.observations = np.zeros((buffer_size, *obs_shape), dtype=np.float32)
        self.next_observations = np.zeros((buffer_size, *obs_shape), dtype=np.float32)
        self.actions = np.zeros(buffer_size, dtype=np.int32)
        self.rewards = np.zeros(buffer_size, dtype=np.float32)
        self.dones = np.zeros(buffer_size, dtype=np.float32)

    def add(self, obs, next_obs, actions, rewards, terminations):
        idx = (self.pos + np.arange(len(obs))) % self.buffer_size  # one transition per env
        self.observations[idx] = obs
        self.next_observations[idx] = next_obs
        self.actions[idx] = actions
        self.rewards[idx] = rewards
        self.dones[idx] = terminations
        self.pos, self.size = (self.pos + len(obs)) % self.buffer_size, min(self.size + len(obs), self.buffer_size)

    def sample(self, batch_size):
        idx = np.random.randint(0, self.size, size=batch_size)
        return self.observations[idx], self.actions[idx], self.rewards[idx], self.next_observations[idx], self.dones[idx]


def real_next_obs(next_obs, infos):
    """next_obs with each finished env's true last observation put back (SAME_STEP autoreset: in infos["final_obs"])."""
    real = next_obs.copy()
    for i in np.flatnonzero(infos.get("_final_obs", [])):
        real[i] = infos["final_obs"][i]
    return real


def linear_schedule(start_e: float, end_e: float, duration: int, t: int):
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


def td_target(target_network, next_obs, rewards, dones, gamma):
    """r + gamma * max_a Q_target(s', a), not bootstrapped past a termination."""
    target_max = target_network(next_obs).max(axis=1)
    return mx.stop_gradient(rewards + gamma * target_max * (1 - dones))


def dqn_loss(q_network, obs, actions, target):
    """Mean squared TD error of Q(s, a). Returns (loss, Q(s, a)); only `loss` is differentiated."""
    old_val = mx.take_along_axis(q_network(obs), actions[:, None], axis=1).squeeze(1)
    return ((target - old_val) ** 2).mean(), old_val


def make_optimizer(q_network, args):
    """Adam as CleanRL's dqn.py builds it: its learning rate, eps 1e-8, bias-corrected steps."""
    optimizer = optim.Adam(learning_rate=args.learning_rate, bias_correction=True)
    optimizer.init(q_network.trainable_parameters())  # the compiled step captures this state, so it must exist
    return optimizer


def train_step(q_network, target_network, optimizer, obs, actions, rewards, next_obs, dones, *, gamma):
    """One gradient step on a replay batch. Returns (TD loss, mean Q(s, a)) for logging."""
    target = td_target(target_network, next_obs, rewards, dones, gamma)
    (loss, old_val), grads = nn.value_and_grad(q_network, partial(dqn_loss, q_network))(obs, actions, target)

    # optimize the model
    optimizer.update(q_network, grads)
    return loss, old_val.mean()


def polyak_update(online, target, tau):
    """target <- tau * online + (1 - tau) * target, for every parameter (tau = 1 is a hard copy)."""
    target.update(tree_map(lambda o, t: tau * o + (1 - tau) * t, online.parameters(), target.parameters()))


def evaluate(model_path, make_env, env_id, eval_episodes, run_name, Model, device, capture_video=True, seed=1, epsilon=0.05):
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
            actions = np.array(mx.argmax(model(mx.array(obs, dtype=mx.float32)), axis=1))
        obs, _, _, _, infos = envs.step(actions)
        for episodic_return, _ in finished_episodes(infos):
            print(f"eval_episode={len(episodic_returns)}, episodic_return={episodic_return}")
            episodic_returns.append(episodic_return)
    envs.close()
    return episodic_returns


if __name__ == "__main__":
    args = tyro.cli(Args)
    check_args(args, os.path.basename(__file__))
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    mx.random.seed(args.seed)
    args.device = "gpu" if args.device == "gpu" and mx.is_available(mx.gpu) else "cpu"  # cpu where MLX has no GPU
    device = mx.gpu if args.device == "gpu" else mx.cpu
    mx.set_default_device(device)
    print(f"{os.path.basename(__file__)}: mlx {mx.__version__}, device {args.device}, BLAS {BLAS}")

    config = vars(args) | {"framework": "mlx", "algo": "dqn", "blas": BLAS}
    if args.track:
        import wandb

        sys.modules.setdefault("torch", None)  # W&B's TensorBoard patch imports torch too: hide it, as above
        wandb.tensorboard.patch(root_logdir=f"runs/{run_name}")  # named here, W&B does not spend 10 s at exit inferring it
        del sys.modules["torch"]
        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=config,
            name=run_name,
            group=f"dqn__{args.env_id}",
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

    obs_dim, n_actions = int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n)
    q_network = QNetwork(obs_dim, n_actions)
    optimizer = make_optimizer(q_network, args)
    target_network = QNetwork(obs_dim, n_actions)
    target_network.update(q_network.parameters())
    mx.eval(q_network.state, target_network.state, optimizer.state)

    # epsilon-greedy draws on the host as the twin does: a compiled greedy forward is ~30% cheaper than one drawing from mx.random
    act = mx.compile(lambda obs: mx.argmax(q_network(obs), axis=1), inputs=[q_network.state])
    state = [q_network.state, target_network.state, optimizer.state]
    train = mx.compile(partial(train_step, q_network, target_network, optimizer, gamma=args.gamma), inputs=state, outputs=state)
    update_target = mx.compile(partial(polyak_update, q_network, target_network, args.tau), inputs=state, outputs=state)

    rb = ReplayBuffer(args.buffer_size, envs.single_observation_space.shape)

    # TRY NOT TO MODIFY: start the game
    start_time = time.time()
    obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    timing = dict.fromkeys(("env", "inference", "update"), 0.0)  # seconds per phase since the last log
    last_log_step, last_return = 0, float("nan")
    for global_step in (progress := tqdm(range(args.total_timesteps), disable=not sys.stderr.isatty())):
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
        for last_return, length in finished_episodes(infos):
            tqdm.write(f"global_step={global_step}, episodic_return={last_return}")
            writer.add_scalar("charts/episodic_return", last_return, global_step)
            writer.add_scalar("charts/episodic_length", length, global_step)

        # TRY NOT TO MODIFY: save data to reply buffer; handle `final_obs`
        rb.add(obs, real_next_obs(next_obs, infos), actions, rewards, terminations)

        # TRY NOT TO MODIFY: CRUCIAL step easy to overlook
        obs = next_obs
        timing["inference"] += t1 - t0
        timing["env"] += time.perf_counter() - t1

        # ALGO LOGIC: training.
        if global_step > args.learning_starts:
            if global_step % args.train_frequency == 0:
                t0 = time.perf_counter()
                loss, q_values = train(*(mx.array(x) for x in rb.sample(args.batch_size)))
                mx.eval(loss, q_values, q_network.state, optimizer.state)  # one sync per gradient step
                timing["update"] += time.perf_counter() - t0

                if global_step % 100 == 0:
                    steps_since_log, last_log_step = global_step - last_log_step, global_step
                    sps = int(global_step / (time.time() - start_time))
                    writer.add_scalar("losses/td_loss", loss.item(), global_step)
                    writer.add_scalar("losses/q_values", q_values.item(), global_step)
                    writer.add_scalar("charts/SPS", sps, global_step)
                    for phase, seconds in timing.items():
                        writer.add_scalar(f"timing/{phase}_us", 1e6 * seconds / steps_since_log, global_step)
                    timing = dict.fromkeys(timing, 0.0)
                    progress.set_postfix(SPS=sps, ret=last_return)
                    if progress.disable:
                        print("SPS:", sps)

            # update target network
            if global_step % args.target_network_frequency == 0:
                t0 = time.perf_counter()
                update_target()
                mx.eval(target_network.state)
                timing["update"] += time.perf_counter() - t0

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
            QNetwork,
            device,
            args.capture_video,
            args.seed,
            epsilon=args.end_e,
        )
        for idx, episodic_return in enumerate(episodic_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)

    envs.close()
    writer.close()
