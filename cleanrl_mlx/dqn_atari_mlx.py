"""DQN on Atari (Nature CNN, 84x84x4 frames) in MLX as CleanRL's dqn_atari.py: same defaults, preprocessing, loss, tags.

Twin: cleanrl_torch_reference/dqn_atari_torch.py. Docs: docs/dqn_atari.md. Run: python cleanrl_mlx/dqn_atari_mlx.py
"""

import ctypes
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import ale_py
import gymnasium as gym
import numpy as np
import safetensors.numpy
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
from mlx.utils import tree_flatten, tree_map  # noqa: E402

sys.modules.setdefault("torch", None)  # tensorboardX imports torch if installed (~1.5 s, ~180 MB): hide it
from tensorboardX import SummaryWriter  # noqa: E402

if sys.modules["torch"] is None:  # let later code import torch again
    del sys.modules["torch"]

gym.register_envs(ale_py)


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
    checkpoint_every: int = 0
    """write a checkpoint to runs/{run_name}/checkpoints every N environment steps (0: off); Ctrl-C/SIGTERM write one too"""
    keep_checkpoints: int = 2
    """how many of the newest checkpoints to keep"""
    resume: Optional[str] = None
    """continue the run saved in this run folder (its newest checkpoint) or checkpoint folder"""

    # Algorithm specific arguments
    env_id: str = "BreakoutNoFrameskip-v4"
    """the id of an ALE env (made with frameskip=1: MaxAndSkipEnv's skip of 4 is the only one)"""
    total_timesteps: int = 10000000
    """total timesteps of the experiments"""
    learning_rate: float = 1e-4
    """the learning rate of the optimizer"""
    num_envs: int = 1
    """the number of parallel game environments"""
    buffer_size: int = 1000000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 1.0
    """the target network update rate"""
    target_network_frequency: int = 1000
    """the timesteps it takes to update the target network"""
    batch_size: int = 32
    """the batch size of sample from the reply memory"""
    start_e: float = 1
    """the starting epsilon for exploration"""
    end_e: float = 0.01
    """the ending epsilon for exploration"""
    exploration_fraction: float = 0.10
    """the fraction of `total-timesteps` it takes from start-e to go end-e"""
    learning_starts: int = 80000
    """timestep to start learning"""
    train_frequency: int = 4
    """the frequency of training"""


def check_args(args: Args, script: str) -> None:
    """Reject bad input with one clear line before anything is created."""
    positive = "total_timesteps learning_rate buffer_size target_network_frequency batch_size train_frequency".split()
    limits = {name: (getattr(args, name) > 0, "positive") for name in positive}  # field: (valid?, what it must be)
    limits |= {name: (getattr(args, name) >= 0, "non-negative") for name in ("learning_starts", "eval_episodes")}
    limits |= {name: (0 <= getattr(args, name) <= 1, "in [0, 1]") for name in ("gamma", "start_e", "end_e")}
    limits |= {name: (0 < getattr(args, name) <= 1, "in (0, 1]") for name in ("tau", "exploration_fraction")}
    limits["checkpoint_every"] = (args.checkpoint_every >= 0, "non-negative")
    limits["keep_checkpoints"] = (args.keep_checkpoints > 0, "positive")
    limits["num_envs"] = (args.num_envs == 1, "1 (vectorized envs are not supported, as in CleanRL)")
    limits["device"] = (args.device in ("gpu", "cpu"), '"gpu" or "cpu"')
    for name, (valid, must) in limits.items():
        if not valid:
            raise SystemExit(f"{script}: --{name.replace('_', '-')} must be {must}, got {getattr(args, name)}")
    if args.learning_starts >= args.total_timesteps:
        raise SystemExit(
            f"{script}: --learning-starts {args.learning_starts} must be less than --total-timesteps {args.total_timesteps}"
        )
    if args.env_id not in gym.registry:
        raise SystemExit(f"{script}: unknown env id {args.env_id!r} (not in gymnasium's registry)")
    if "ale_py" not in str(gym.spec(args.env_id).entry_point):
        raise SystemExit(f"{script}: {args.env_id!r} is not an Atari (ALE) env; try {script.replace('_atari', '')}")
    try:
        env = gym.make(args.env_id, frameskip=1)  # as make_env makes it
    except gym.error.DependencyNotInstalled as e:
        raise SystemExit(f"{script}: {args.env_id} needs a package that is not installed: {e}") from None
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise SystemExit(f"{script}: only discrete action spaces are supported; {args.env_id} has {env.action_space}")
    env.close()


# Atari preprocessing as CleanRL's (SB3's wrappers, written out): the episode statistics wrap the raw game, so a logged
# return is a real game score over all lives. Every ALE id is made with frameskip=1: MaxAndSkipEnv's skip is the only one.
class NoopResetEnv(gym.Wrapper):
    """On reset, play a random number (1..noop_max) of no-ops so episodes start in different states."""

    noop_max = 30

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        for _ in range(self.unwrapped.np_random.integers(1, self.noop_max + 1)):
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset()
        return obs, info


class MaxAndSkipEnv(gym.Wrapper):
    """Repeat each action `skip` frames, sum the rewards, return the max of the last two frames (sprites flicker) or, if the
    game ended early, its last frame."""

    skip = 4

    def step(self, action):
        total_reward, frames = 0.0, []
        for _ in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total_reward += reward
            frames.append(obs)
            if terminated or truncated:
                break
        frame = np.maximum(frames[-2], frames[-1]) if len(frames) == self.skip else obs
        return frame, total_reward, terminated, truncated, info


class EpisodicLifeEnv(gym.Wrapper):
    """End the episode (for learning) when a life is lost, but reset the game only when it is really
    over: the reset after a lost life is a no-op step. The statistics wrapper below sees real games."""

    lives, was_real_done = 0, True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.was_real_done = terminated or truncated
        lost_life = 0 < self.unwrapped.ale.lives() < self.lives
        self.lives = self.unwrapped.ale.lives()
        return obs, reward, terminated or lost_life, truncated, info

    def reset(self, **kwargs):
        if not self.was_real_done:  # a lost life: go on with a no-op step, not a new game
            obs, _, terminated, truncated, info = self.env.step(0)
        if self.was_real_done or terminated or truncated:
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


def make_env(env_id, idx, capture_video, run_name):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array", frameskip=1)
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id, frameskip=1)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = NoopResetEnv(env)
        env = MaxAndSkipEnv(env)
        env = EpisodicLifeEnv(env)
        if "FIRE" in env.unwrapped.get_action_meanings():
            env = FireResetEnv(env)
        env = gym.wrappers.TransformReward(env, np.sign)  # learn from the reward's sign; the logged return stays the raw score
        env = gym.wrappers.ResizeObservation(env, (84, 84))
        env = gym.wrappers.GrayscaleObservation(env)
        return gym.wrappers.FrameStackObservation(env, 4)  # uint8 (4, 84, 84); starts repeat the first frame

    return thunk


def finished_episodes(infos):
    """(return, length) of every env whose *game* ended this step (SAME_STEP autoreset: in final_info). A lost life also
    ends an episode for the vector env, but only a real game end carries RecordEpisodeStatistics' "episode" entry."""
    if "final_info" not in infos or "episode" not in infos["final_info"]:
        return []
    final = infos["final_info"]
    return [(float(final["episode"]["r"][i]), int(final["episode"]["l"][i])) for i in np.flatnonzero(final["_episode"])]


class Conv2d(nn.Module):
    """torch's nn.Conv2d(in, out, k, stride) on NHWC input, its weight in torch's (out, in, k, k) layout so a saved file
    loads in either twin. MLX's CPU backend takes a slow path for a strided conv's input gradient (~70x slower): with
    k % stride == 0 the conv equals a stride-1 conv with a (k/s)x(k/s) kernel on the space-to-depth(s) input: input pixel
    (i*s+p, j*s+q, c) becomes channel (p, q, c) of block (i, j), weight tap (a*s+p, b*s+q) becomes tap (a, b)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1):
        super().__init__()
        assert kernel_size % stride == 0, "space-to-depth needs kernel_size % stride == 0"
        scale = np.sqrt(1.0 / (in_channels * kernel_size * kernel_size))  # torch's default init range
        self.weight = mx.random.uniform(-scale, scale, (out_channels, in_channels, kernel_size, kernel_size))
        self.bias = mx.random.uniform(-scale, scale, (out_channels,))
        self.stride = stride

    def __call__(self, x):
        (out_c, in_c, k, _), (n, h, w, _), s = self.weight.shape, x.shape, self.stride
        m, oh, ow = k // s, (h - k) // s + 1, (w - k) // s + 1
        x = x[:, : (oh - 1) * s + k, : (ow - 1) * s + k, :].reshape(n, oh - 1 + m, s, ow - 1 + m, s, in_c)
        x = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, oh - 1 + m, ow - 1 + m, s * s * in_c)
        weight = self.weight.reshape(out_c, in_c, m, s, m, s).transpose(0, 2, 4, 3, 5, 1).reshape(out_c, m, m, s * s * in_c)
        return mx.conv2d(x, weight) + self.bias


class Flatten(nn.Module):  # NHWC feature maps flattened in torch's (C, H, W) order, so the next Linear's weight is the twin's
    def __call__(self, x):
        return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


# ALGO LOGIC: initialize agent here (torch's default init, as CleanRL's dqn_atari uses)
class QNetwork(nn.Module):
    def __init__(self, n_actions):
        super().__init__()
        self.network = [  # a list, not nn.Sequential: parameter names are `network.0.weight`, ..., the torch twin's
            Conv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, n_actions),
        ]

    def __call__(self, x):  # x: uint8 frames (N, 4, 84, 84) as stored; scaled here, as CleanRL's x / 255.0
        x = (x.astype(mx.float32) / 255.0).transpose(0, 2, 3, 1)
        for layer in self.network:
            x = layer(x)
        return x


class FrameReplayBuffer:
    """Replay buffer for one env of frame stacks that stores every 84x84 uint8 frame once and rebuilds the stacks when
    sampling: ~7 GB for 1M transitions, where a buffer of (obs, next_obs) stacks needs 56 GB. Sampling returns exactly
    what such a buffer would (same ring slots, same numpy index draws).

    An episode is frames x_0 (reset), x_1, ..., x_T (true final observation, also on truncation); the observation at step
    t is the stack [x_{t-3}, ..., x_t] with indices below 0 reading x_0, as FrameStackObservation pads. Transition number
    g (t-th of its episode) stores its next frame x_{t+1} in `frames[g % (buffer_size + 4)]`; the 4 extra frames keep
    the history of the oldest transition alive. x_0 of each episode is kept in `first_frames`, keyed by the number of its
    first transition, until no stored transition reads it any more. `dones` holds terminations only."""

    def __init__(self, buffer_size, frame_shape=(84, 84), stack=4):
        self.buffer_size, self.stack, self.n_frames = buffer_size, stack, buffer_size + stack
        self.frames = np.zeros((self.n_frames,) + frame_shape, dtype=np.uint8)
        self.first_frames = {}
        self.steps = np.zeros(buffer_size, dtype=np.int64)  # t of each transition within its episode
        self.actions = np.zeros(buffer_size, dtype=np.int32)
        self.rewards = np.zeros(buffer_size, dtype=np.float32)
        self.dones = np.zeros(buffer_size, dtype=np.float32)
        self.count, self.t, self.new_episode = 0, 0, True

    def __len__(self):
        return min(self.count, self.buffer_size)

    def add(self, obs, next_obs, actions, rewards, terminations, truncations):
        """Store one transition of the single env (leading axis = envs, of size 1)."""
        g, slot = self.count, self.count % self.buffer_size
        self.t = 0 if self.new_episode else self.t + 1
        if self.new_episode:
            self.first_frames[g] = obs[0, -1].copy()
        self.frames[g % self.n_frames] = next_obs[0, -1]
        self.steps[slot], self.actions[slot] = self.t, actions[0]
        self.rewards[slot], self.dones[slot] = rewards[0], terminations[0]
        self.new_episode = bool(terminations[0] or truncations[0])
        self.count += 1
        # transitions g0 .. g0+stack-1 read x_0 of an episode starting at g0; drop it when they are gone
        self.first_frames.pop(self.count - self.buffer_size - self.stack, None)

    def sample(self, batch_size):
        idx = np.random.randint(0, len(self), size=batch_size)  # ring slots, as a plain buffer draws them
        g = self.count - 1 - (self.count - 1 - idx) % self.buffer_size  # transition number in each slot
        t = self.steps[idx]
        j = np.maximum(t[:, None] + np.arange(-self.stack + 1, 2), 0)  # frames x_j for obs and next_obs
        stacks = self.frames[(g[:, None] - t[:, None] + j - 1) % self.n_frames]
        for b, k in zip(*np.nonzero(j == 0)):
            stacks[b, k] = self.first_frames[g[b] - t[b]]
        return stacks[:, :-1], self.actions[idx], self.rewards[idx], stacks[:, 1:], self.dones[idx]

    def checkpoint(self):
        """(arrays, counters): the filled part of every array, the frames as they are held in memory, and the counters."""
        arrays = {f"rb.{k}": getattr(self, k)[: self.count] for k in ("frames", "steps", "actions", "rewards", "dones")}
        arrays["rb.first_frame_ids"] = np.array(list(self.first_frames), dtype=np.int64)
        arrays["rb.first_frames"] = np.array(list(self.first_frames.values()), np.uint8).reshape((-1,) + self.frames.shape[1:])
        return arrays, {"rb_count": self.count, "rb_t": self.t, "rb_new_episode": self.new_episode}

    def restore(self, arrays, counters, where):
        """Back as checkpoint() saw it; one line and exit for an array whose shape differs (another --buffer-size)."""
        self.count, self.t, self.new_episode = counters["rb_count"], counters["rb_t"], counters["rb_new_episode"]
        for k in ("frames", "steps", "actions", "rewards", "dones"):
            saved, here = arrays[f"rb.{k}"], getattr(self, k)[: self.count]
            if saved.shape != here.shape:
                raise SystemExit(f"{where}: rb.{k} has shape {saved.shape} in the checkpoint, {here.shape} here")
            if len(here) < len(getattr(self, k)):
                here[:] = saved
            else:  # full: taken over, not copied (a 1M buffer's frames are 7 GB)
                setattr(self, k, saved)
        self.first_frames = dict(zip(arrays["rb.first_frame_ids"].tolist(), arrays["rb.first_frames"]))


def real_next_obs(next_obs, infos):
    """With SAME_STEP autoreset a finished env's `next_obs` is already its next episode's first observation; the true
    last one is in infos["final_obs"]. Returns next_obs with those put back."""
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
    """CleanRL's Adam (default eps 1e-8) at args.learning_rate."""
    optimizer = optim.Adam(learning_rate=args.learning_rate, eps=1e-8, bias_correction=True)  # torch's Adam
    optimizer.init(q_network.trainable_parameters())  # the compiled step captures this state, so it must exist
    return optimizer


def train_step(q_network, target_network, optimizer, obs, actions, rewards, next_obs, dones, gamma):
    """One gradient step: the TD target from the target network, the squared TD error of Q(s, a), Adam.
    Returns (loss, mean Q(s, a))."""
    target = td_target(target_network, next_obs, rewards, dones, gamma)
    (loss, old_val), grads = nn.value_and_grad(q_network, partial(dqn_loss, q_network))(obs, actions, target)
    optimizer.update(q_network, grads)
    return loss, old_val.mean()


def polyak_update(online, target, tau):
    """target <- tau * online + (1 - tau) * target, for every parameter (tau = 1 is a hard copy)."""
    target.update(tree_map(lambda o, t: tau * o + (1 - tau) * t, online.parameters(), target.parameters()))


def evaluate(model_path, make_env, env_id, eval_episodes, run_name, Model, device, capture_video=True, seed=1, epsilon=0.05):
    """Roll out a saved Q-network epsilon-greedily (as CleanRL's dqn_eval does) for `eval_episodes` games."""
    mx.set_default_device(device)
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, 0, capture_video, run_name)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    model = Model(int(envs.single_action_space.n))
    model.load_weights(model_path)  # torch's layout: a file saved by either twin loads here
    obs, _ = envs.reset(seed=seed)
    envs.single_action_space.seed(seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        if random.random() < epsilon:
            actions = np.array([envs.single_action_space.sample() for _ in range(envs.num_envs)])
        else:
            actions = np.array(mx.argmax(model(mx.array(obs)), axis=1))
        obs, _, _, _, infos = envs.step(actions)
        for episodic_return, _ in finished_episodes(infos):
            print(f"eval_episode={len(episodic_returns)}, episodic_return={episodic_return}")
            episodic_returns.append(episodic_return)
    envs.close()
    return episodic_returns


def save_checkpoint(run_dir, arrays, state, keep):
    """Write `arrays` (name -> numpy array) and `state` (JSON) to run_dir/checkpoints/step_<global_step>, atomically
    (a temporary folder renamed into place), with python's and numpy's RNG states and a sha256 of every file; keeps
    the newest `keep` checkpoints. Arrays over 256 MB go to .npy files, which np.save writes without a copy."""
    root, step = Path(run_dir) / "checkpoints", f"step_{state['global_step']:012d}"
    tmp, final = root / f".tmp_{step}", root / step
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    arrays = arrays | {"rng.numpy": keys}
    big = {k for k, v in arrays.items() if v.nbytes > 2**28}
    safetensors.numpy.save_file(  # a 0-d array as it is: np.ascontiguousarray would make it shape (1,)
        {k: np.ascontiguousarray(v) if v.ndim else v for k, v in arrays.items() if k not in big}, tmp / "arrays.safetensors"
    )
    for k in big:
        np.save(tmp / f"{k}.npy", arrays[k])
    state = state | {"rng": {"python": random.getstate(), "numpy": [int(pos), int(has_gauss), float(gauss)]}}
    state["sha256"] = {p.name: sha256(p) for p in sorted(tmp.iterdir())}
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # atomic: a crash before this line leaves the previous checkpoints as they were
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old)
    return final


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_checkpoint(path, script, args):
    """(arrays, state) of the checkpoint at `path` (a checkpoint folder, or a run folder: its newest checkpoint); one line
    and exit for a missing path, no checkpoint, another algorithm, env id or num_envs, a checksum mismatch, or a budget
    already reached. Python's and numpy's RNG are restored later, by restore_rng, once the run is seeded."""

    def fail(why):
        raise SystemExit(f"{script}: --resume {path}: {why}")

    path, name = Path(path), script.rsplit("_", 1)[0]
    if not path.exists():
        fail("no such file or directory")
    folders = [path] if (path / "state.json").is_file() else sorted(p.parent for p in path.glob("checkpoints/step_*/state.json"))
    if not folders:
        fail("no checkpoint found")
    state = json.loads((folders[-1] / "state.json").read_text())
    for key, what in (
        ("script", "a checkpoint of {}, not {}"),
        ("env_id", "made on {}, not {}"),
        ("num_envs", "made with --num-envs {}, not {}"),
    ):
        if state[key] != (name if key == "script" else getattr(args, key)):
            fail(what.format(state[key], name if key == "script" else getattr(args, key)))
    for file, digest in state["sha256"].items():
        if not (folders[-1] / file).is_file() or sha256(folders[-1] / file) != digest:
            fail(f"{file} is corrupted (checksum mismatch)")
    if state["global_step"] >= args.total_timesteps:
        fail(f"the run is at step {state['global_step']}, --total-timesteps {args.total_timesteps} is already reached")
    arrays = safetensors.numpy.load_file(folders[-1] / "arrays.safetensors") | {
        p.stem: np.load(p) for p in folders[-1].glob("*.npy")
    }
    return arrays, state


def restore_rng(arrays, state):
    """Python's and numpy's global RNG as they were when the checkpoint was written."""
    random.setstate((state["rng"]["python"][0], tuple(state["rng"]["python"][1]), state["rng"]["python"][2]))
    np.random.set_state(("MT19937", arrays["rng.numpy"], *state["rng"]["numpy"]))


def checkpoint_arrays(models, optimizers):
    """The parameters of `models`, the Adam state of `optimizers` (keyed "<optimizer>.<model>") and the MLX RNG as numpy
    arrays, under the names both twins use (torch's Adam names: exp_avg, exp_avg_sq, step, lr)."""
    adam = {"m": "exp_avg", "v": "exp_avg_sq", "step": "step", "learning_rate": "lr"}
    arrays = {f"{k}.{n}": v for k, model in models.items() for n, v in tree_flatten(model.parameters())}
    for k, optimizer in optimizers.items():
        name, model = k.split(".")
        for n, v in tree_flatten(optimizer.state):
            path, _, leaf = n.rpartition(".")  # MLX's names: "<parameter>.m", "<parameter>.v", "step", "learning_rate"
            arrays[f"{name}.{model}.{path}.{adam[leaf]}" if path else f"{name}.{adam[leaf]}"] = v
    arrays = {k: np.array(v.astype(mx.int64) if k.endswith(".step") else v) for k, v in arrays.items()}
    return arrays | {"rng.mlx": np.array(mx.random.state[0])}


def restore_arrays(arrays, models, optimizers, where, seed):
    """Put the checkpoint's `arrays` back into `models`, `optimizers` and the MLX RNG in place (the compiled graphs hold
    them), the RNG restarting from `seed` for a torch checkpoint; one line and exit for the first array whose shape differs."""
    for k, v in checkpoint_arrays(models, optimizers).items():
        if not k.startswith("rng.") and (k not in arrays or arrays[k].shape != v.shape):
            raise SystemExit(f"{where}: {k} has shape {getattr(arrays.get(k), 'shape', None)} in the checkpoint, {v.shape} here")
    names = iter(checkpoint_arrays(models, optimizers))  # the checkpoint's names, in mlx.utils.tree_flatten's order
    for tree in [*models.values(), *(optimizer.state for optimizer in optimizers.values())]:
        params = tree.parameters() if isinstance(tree, nn.Module) else tree
        # mlx's tree_map keeps a layer without parameters (a ReLU) at the end of a list, where tree_unflatten drops it
        tree.update(tree_map(lambda v: mx.array(arrays[next(names)]).astype(v.dtype), params))
    if "rng.mlx" in arrays:  # mx.random.state takes no item assignment; seed(s) sets the key to (s >> 32, s & 0xFFFFFFFF)
        hi, lo = arrays["rng.mlx"].tolist()
        mx.random.seed(hi << 32 | lo)
    else:
        mx.random.seed(seed)
        print(f"{where}: a torch checkpoint; the mlx RNG restarts from seed {seed}")


if __name__ == "__main__":
    args = tyro.cli(Args)
    script = os.path.basename(__file__)
    check_args(args, script)
    arrays, resumed = load_checkpoint(args.resume, script, args) if args.resume else ({}, {})
    start_step = resumed.get("global_step", 0)
    run_name = resumed.get("run_name", f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}")

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    mx.random.seed(args.seed)
    args.device = "gpu" if args.device == "gpu" and mx.is_available(mx.gpu) else "cpu"  # cpu where MLX has no GPU
    device = mx.gpu if args.device == "gpu" else mx.cpu
    mx.set_default_device(device)
    # The CPU allocator keeps only 32 MB of freed buffers: the CNN's im2col temporaries would be page-faulted in afresh on
    # every gradient step. Keeping them makes a batch-32 forward+backward ~10% faster (33.7 vs 37.4 ms on the CPU:
    # python -m benchmark.micro.conv_s2d --batch 32); ppo_atari's batch 256 (~100 MB of temporaries) gains ~1.9x.
    mx.set_cache_limit(mx.get_memory_limit())
    print(f"{os.path.basename(__file__)}: mlx {mx.__version__}, device {args.device}, BLAS {BLAS}")

    config = vars(args) | {"framework": "mlx", "algo": "dqn_atari", "blas": BLAS}
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
            group=f"dqn_atari__{args.env_id}",
            monitor_gym=True,
            save_code=True,
            id=resumed.get("wandb_id"),
            resume="allow",
        )
    writer = SummaryWriter(f"runs/{run_name}", purge_step=start_step if args.resume else None)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in config.items()))

    # env setup
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )

    n_actions = int(envs.single_action_space.n)
    q_network = QNetwork(n_actions)
    optimizer = make_optimizer(q_network, args)
    target_network = QNetwork(n_actions)
    target_network.update(q_network.parameters())
    mx.eval(q_network.state, target_network.state, optimizer.state)
    state = [q_network.state, target_network.state, optimizer.state]
    train = mx.compile(partial(train_step, q_network, target_network, optimizer, gamma=args.gamma), inputs=state, outputs=state)

    # exploration is decided on the host (random.random(), as CleanRL): the network runs only for greedy steps
    @partial(mx.compile, inputs=[q_network.state])
    def greedy_action(obs):
        return mx.argmax(q_network(obs), axis=1)

    rb = FrameReplayBuffer(args.buffer_size, envs.single_observation_space.shape[1:], envs.single_observation_space.shape[0])

    # TRY NOT TO MODIFY: start the game
    start_time = time.time()
    obs, _ = envs.reset(seed=args.seed + start_step)
    envs.action_space.seed(args.seed + start_step)
    envs.single_action_space.seed(args.seed + start_step)  # what random exploration samples from
    timing = dict.fromkeys(("env", "inference", "update"), 0.0)  # seconds per phase since the last log
    counters = resumed.get("counters", dict(last_log_step=0))
    last_log_step, last_return = counters["last_log_step"], float("nan")
    models, named_optimizers = {"q_network": q_network, "target_network": target_network}, {"optimizer.q_network": optimizer}
    if args.resume:  # continue the saved run as it was at its checkpoint; the envs (EzPickle: never pickled) restart
        restore_arrays(arrays, models, named_optimizers, f"{script}: --resume {args.resume}", args.seed + start_step)
        restore_rng(arrays, resumed)
        rb.restore(arrays, counters, f"{script}: --resume {args.resume}")
        rb.new_episode = True  # the envs restart: the next transition begins an episode
        arrays.clear()  # nothing keeps a second copy of the buffer
        print(f"{script}: the envs do not pickle; resumed envs restart from seed {args.seed + start_step}")
    stop = []  # the first Ctrl-C/SIGTERM: checkpoint and exit; a second Ctrl-C interrupts at once

    def on_signal(signum, frame):
        stop.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    steps = range(start_step, args.total_timesteps)
    for global_step in (progress := tqdm(steps, initial=start_step, total=args.total_timesteps, disable=not sys.stderr.isatty())):
        # ALGO LOGIC: put action logic here (np.array(...) is the one host sync of a greedy step)
        t0 = time.perf_counter()
        epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, global_step)
        if random.random() < epsilon:
            actions = np.array([envs.single_action_space.sample() for _ in range(envs.num_envs)])
        else:
            actions = np.array(greedy_action(mx.array(obs)))
        t1 = time.perf_counter()

        # TRY NOT TO MODIFY: execute the game and log data.
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        for last_return, length in finished_episodes(infos):
            tqdm.write(f"global_step={global_step}, episodic_return={last_return}")
            writer.add_scalar("charts/episodic_return", last_return, global_step)
            writer.add_scalar("charts/episodic_length", length, global_step)

        # TRY NOT TO MODIFY: save data to reply buffer; handle `final_obs`
        rb.add(obs, real_next_obs(next_obs, infos), actions, rewards, terminations, truncations)

        # TRY NOT TO MODIFY: CRUCIAL step easy to overlook
        obs = next_obs
        timing["inference"] += t1 - t0
        timing["env"] += time.perf_counter() - t1

        # ALGO LOGIC: training.
        if global_step > args.learning_starts:
            if global_step % args.train_frequency == 0:
                t0 = time.perf_counter()
                data = rb.sample(args.batch_size)  # frames stay uint8
                loss, q_values = train(*(mx.array(x) for x in data))
                mx.eval(loss, q_values, q_network.state, optimizer.state)  # one sync per gradient step
                timing["update"] += time.perf_counter() - t0

                if global_step % 100 == 0:
                    steps_since_log, last_log_step = global_step - last_log_step, global_step
                    sps = int((global_step - start_step) / (time.time() - start_time))
                    writer.add_scalar("losses/td_loss", loss.item(), global_step)
                    writer.add_scalar("losses/q_values", q_values.item(), global_step)
                    writer.add_scalar("charts/SPS", sps, global_step)
                    for phase, seconds in timing.items():
                        writer.add_scalar(f"timing/{phase}_us", 1e6 * seconds / steps_since_log, global_step)
                    timing = dict.fromkeys(timing, 0.0)
                    progress.set_postfix(SPS=sps, ret=last_return)
                    if progress.disable:  # no bar (not a TTY): print SPS as CleanRL does
                        print("SPS:", sps)

            # update target network
            if global_step % args.target_network_frequency == 0:
                t0 = time.perf_counter()
                polyak_update(q_network, target_network, args.tau)
                mx.eval(target_network.state)
                timing["update"] += time.perf_counter() - t0

        # checkpoint every checkpoint_every steps, once this step's update is done, and on Ctrl-C/SIGTERM (then stop)
        if stop or args.checkpoint_every and (global_step + 1) % args.checkpoint_every == 0:
            rb_arrays, rb_counters = rb.checkpoint()
            checkpoint = checkpoint_arrays(models, named_optimizers) | rb_arrays
            counters = dict(last_log_step=last_log_step) | rb_counters
            meta = {"script": "dqn_atari", "framework": "mlx", "run_name": run_name, "env_id": args.env_id}
            meta |= {"num_envs": args.num_envs, "global_step": global_step + 1, "counters": counters}
            meta |= {"wandb_id": wandb.run.id if args.track else None, "args": vars(args)}
            writer.flush()  # the logs up to the checkpoint survive a kill
            save_checkpoint(f"runs/{run_name}", checkpoint, meta, args.keep_checkpoints)
            if stop:
                print(f"{script}: stopped at step {global_step + 1}; resume with --resume runs/{run_name}")
                break

    if args.save_model and not stop:
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
