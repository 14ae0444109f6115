"""C51 (categorical DQN) for discrete actions (classic control) in MLX, as CleanRL's c51.py: same defaults, loss and logged tags.

Twin: cleanrl_torch_reference/c51_torch.py. Docs: docs/c51.md. Run: python cleanrl_mlx/c51_mlx.py --env-id CartPole-v1
"""

import contextlib
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
    n_atoms: int = 101
    """the number of atoms"""
    v_min: float = -100
    """the return lower bound"""
    v_max: float = 100
    """the return upper bound"""
    buffer_size: int = 10000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
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
        "exploration_fraction": (0 < args.exploration_fraction <= 1, "in (0, 1]"),
        "n_atoms": (args.n_atoms >= 2, "at least 2"),
        "learning_starts": (0 <= args.learning_starts < args.total_timesteps, "non-negative and less than --total-timesteps"),
        "num_envs": (args.num_envs == 1, "1 (vectorized envs are not supported, as in CleanRL)"),
        "device": (args.device in ("gpu", "cpu"), '"gpu" or "cpu"'),
    }
    for name, (valid, must) in limits.items():
        if not valid:
            raise SystemExit(f"{script}: --{name.replace('_', '-')} must be {must}, got {getattr(args, name)}")
    if args.v_min >= args.v_max:
        raise SystemExit(f"{script}: need --v-min < --v-max, got [{args.v_min}, {args.v_max}]")
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


# Linux CPU backend: mx.softmax takes exp one element at a time; a fused one cuts update time ~11% and lifts SPS ~6%
# (benchmark/results/issue21-c51): exp(t) = 2^(t log2 e) = 2^n 2^f, n rounded (adding 1.5 * 2^23) into the exponent
# bits, 2^f (|f| <= 1/2) a minimax polynomial
MATH = "fused softmax" if sys.platform.startswith("linux") and os.environ.get("CLEANRL_MLX_FAST_MATH") != "0" else "mlx"


# Linux CPU backend: every mx.eval wakes MLX's stream thread, ~50 us on another, idle core of a VM: the run keeps every
# thread on one core, the stream thread yielding to the main one (SCHED_BATCH): SPS +18-23% (benchmark/results/issue21-s11-*)
THREADS = "one core" if sys.platform.startswith("linux") and os.environ.get("CLEANRL_MLX_ONE_CORE") != "0" else "free"


def share_core():
    """Every thread, MLX's stream thread among them, on the core the main thread runs on (field 39 of /proc/self/stat),
    the others SCHED_BATCH: they run when the main thread waits. Called again every iteration (or 1000 steps), for
    threads started since (a new thread inherits the core, not the policy); a thread that ends meanwhile is skipped."""
    if THREADS == "free":
        return
    here = {int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[36])}
    for tid in map(int, os.listdir("/proc/self/task")):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, here)
            if tid != os.getpid():
                os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))


@mx.custom_function
def softmax(x):
    if MATH == "mlx" or x.size < 1024:  # MLX's kernel on Metal, CUDA, macOS, with the opt-out, and on one step's action
        return mx.softmax(x, axis=-1)
    t = mx.maximum(x - x.max(-1, keepdims=True), -87.0) * 1.4426950408889634
    n = (t + 12582912.0) - 12582912.0
    f = t - n
    p = 1.00000005 + f * (0.693146712 + f * (0.240221421 + f * (0.0555104709 + f * (0.00967526712 + f * 0.00131856535))))
    e = p * ((n.astype(mx.int32) + 127) << 23).view(mx.float32)
    return e * (1 / e.sum(-1, keepdims=True))  # within 1e-6 of mx.softmax and torch's (tests/test_fast_math.py)


@softmax.vjp
def softmax_vjp(primals, cotangent, output):
    return output * (cotangent - (cotangent * output).sum(-1, keepdims=True))


# ALGO LOGIC: initialize agent here:
class QNetwork(nn.Module):
    # a list, not nn.Sequential: parameter names are torch's (`network.0.weight`, ...); MLX's Linear init is torch's
    def __init__(self, obs_dim, n_actions, n_atoms=101, v_min=-100, v_max=100):
        super().__init__()
        self.n, self.n_atoms = n_actions, n_atoms
        self.atoms = mx.linspace(v_min, v_max, n_atoms)  # saved like torch's registered buffer `atoms`
        self.freeze(keys=["atoms"], recurse=False)  # ... and, like a buffer, never trained
        self.network = [nn.Linear(obs_dim, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, n_actions * n_atoms)]

    def get_action(self, x, action=None):
        logits = forward(self.network, x).reshape(len(x), self.n, self.n_atoms)
        if action is None:
            # probability mass function for each action
            pmfs = softmax(logits)
            action = mx.argmax((pmfs * self.atoms).sum(2), axis=1)
            return action, mx.take_along_axis(pmfs, action[:, None, None], axis=1).squeeze(1)
        # each action's pmf is its own softmax: with the action given, MLX takes only its atoms' (half the exp)
        return action, softmax(mx.take_along_axis(logits, action[:, None, None], axis=1).squeeze(1))


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


def categorical_projection(next_pmfs, rewards, dones, atoms, gamma, v_min, v_max):
    """Project r + gamma * z (z: atoms, no bootstrap past a termination) onto the atoms, splitting each atom's mass
    between its two neighbours. Returns [batch, n_atoms]."""
    n_atoms = atoms.shape[0]
    next_atoms = rewards[:, None] + gamma * atoms * (1 - dones[:, None])
    delta_z = atoms[1] - atoms[0]
    tz = mx.clip(next_atoms, v_min, v_max)
    b = (tz - v_min) / delta_z
    l = mx.clip(mx.floor(b), 0, n_atoms - 1)  # noqa: E741 (CleanRL's names: lower and upper neighbour)
    u = mx.clip(mx.ceil(b), 0, n_atoms - 1)
    # (l == u) handles the case where b is exactly an integer: all the mass goes to l
    d_m_l = (u + (l == u) - b) * next_pmfs
    d_m_u = (b - l) * next_pmfs
    # each row's two neighbours in one scatter-add (repeated indices accumulate)
    index, mass = mx.concatenate([l, u], axis=1).astype(mx.int32), mx.concatenate([d_m_l, d_m_u], axis=1)
    # MLX lacks a scatter-add along an axis; take_along_axis's gradient is one, 7x faster than `.at[].add` (micro/mlx_cpu_ops)
    _, (target_pmfs,) = mx.vjp(lambda p: mx.take_along_axis(p, index, axis=1), [mx.zeros_like(next_pmfs)], [mass])
    return mx.stop_gradient(target_pmfs)


def c51_loss(q_network, obs, actions, target_pmfs):
    """Cross-entropy of the projected target and Q(s, a)'s predicted pmfs. Returns (loss, pmfs); only `loss` is differentiated."""
    _, old_pmfs = q_network.get_action(obs, actions)
    loss = (-(target_pmfs * mx.log(mx.clip(old_pmfs, 1e-5, 1 - 1e-5))).sum(-1)).mean()
    return loss, old_pmfs


def make_optimizer(q_network, args):
    """Adam as CleanRL's c51.py builds it: its learning rate, eps 0.01 / batch_size, bias-corrected steps."""
    optimizer = optim.Adam(learning_rate=args.learning_rate, eps=0.01 / args.batch_size, bias_correction=True)
    optimizer.init(q_network.trainable_parameters())  # the compiled step captures this state, so it must exist
    return optimizer


def train_step(q_network, target_network, optimizer, obs, actions, rewards, next_obs, dones, *, gamma, v_min, v_max):
    """One gradient step on a replay batch. Returns (cross-entropy loss, mean Q(s, a)) for logging."""
    _, next_pmfs = target_network.get_action(next_obs)
    target_pmfs = categorical_projection(next_pmfs, rewards, dones, target_network.atoms, gamma, v_min, v_max)
    (loss, old_pmfs), grads = nn.value_and_grad(q_network, partial(c51_loss, q_network))(obs, actions, target_pmfs)

    # optimize the model
    optimizer.update(q_network, grads)
    return loss, (old_pmfs * q_network.atoms).sum(1).mean()


def polyak_update(online, target, tau):
    """target <- tau * online + (1 - tau) * target, for every parameter (tau = 1 is a hard copy)."""
    target.update(tree_map(lambda o, t: tau * o + (1 - tau) * t, online.parameters(), target.parameters()))


def evaluate(model_path, make_env, env_id, eval_episodes, run_name, Model, device, capture_video=True, seed=1, epsilon=0.05):
    """Roll out a saved Q-network epsilon-greedily (as CleanRL's c51_eval does) for `eval_episodes` episodes."""
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
            actions = np.array(model.get_action(mx.array(obs, dtype=mx.float32))[0])
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
    MATH, THREADS = (MATH, THREADS) if args.device == "cpu" else ("mlx", "free")  # the GPU backends: their own kernels
    print(
        f"{os.path.basename(__file__)}: mlx {mx.__version__}, device {args.device}, BLAS {BLAS}, math {MATH}, threads {THREADS}"
    )

    config = vars(args) | {"framework": "mlx", "algo": "c51", "blas": BLAS, "math": MATH, "threads": THREADS}
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
            group=f"c51__{args.env_id}",
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
    Model = partial(QNetwork, n_atoms=args.n_atoms, v_min=args.v_min, v_max=args.v_max)
    q_network = Model(obs_dim, n_actions)
    optimizer = make_optimizer(q_network, args)
    target_network = Model(obs_dim, n_actions)
    target_network.update(q_network.parameters())
    mx.eval(q_network.state, target_network.state, optimizer.state)

    # epsilon-greedy draws on the host as the twin does: a compiled greedy forward is ~30% cheaper than one drawing from mx.random
    act = mx.compile(lambda obs: q_network.get_action(obs)[0], inputs=[q_network.state])
    state = [q_network.state, target_network.state, optimizer.state]
    hyper = dict(gamma=args.gamma, v_min=args.v_min, v_max=args.v_max)
    train = mx.compile(partial(train_step, q_network, target_network, optimizer, **hyper), inputs=state, outputs=state)
    # CleanRL's C51 copies the online network into the target network outright (tau = 1)
    update_target = mx.compile(partial(polyak_update, q_network, target_network, 1.0), inputs=state, outputs=state)

    rb = ReplayBuffer(args.buffer_size, envs.single_observation_space.shape)

    # TRY NOT TO MODIFY: start the game
    start_time = time.time()
    obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    timing = dict.fromkeys(("env", "inference", "update"), 0.0)  # seconds per phase since the last log
    last_log_step, last_return = 0, float("nan")
    for global_step in (progress := tqdm(range(args.total_timesteps), disable=not sys.stderr.isatty())):
        if global_step % 1000 == 0:
            share_core()
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
                    writer.add_scalar("losses/loss", loss.item(), global_step)
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
            Model,
            device,
            args.capture_video,
            args.seed,
            epsilon=args.end_e,
        )
        for idx, episodic_return in enumerate(episodic_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)

    envs.close()
    writer.close()
