"""PPO on Atari with envpool's C++ vector env (Nature CNN, 84x84x4 frames) in MLX as CleanRL's ppo_atari_envpool.py.

Twin: cleanrl_torch_reference/ppo_atari_envpool_torch.py. Docs: docs/ppo_atari_envpool.md. Run: python cleanrl_mlx/ppo_atari_envpool_mlx.py
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
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import gymnasium as gym
import numpy as np
import safetensors.numpy
import tyro
from gymnasium.utils.save_video import capped_cubic_video_schedule, save_video
from tqdm import tqdm

try:
    import envpool
except ImportError:  # no wheel for this platform or Python (see requirements-mlx.txt): check_args says what to install
    envpool = None

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
    env_id: str = "Breakout-v5"
    """the id of an envpool Atari env (<Game>-v5)"""
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
    positive = "total_timesteps learning_rate num_envs num_steps num_minibatches update_epochs clip_coef max_grad_norm".split()
    limits = {name: (getattr(args, name) > 0, "positive") for name in positive}  # field: (valid?, what it must be)
    limits |= {name: (getattr(args, name) >= 0, "non-negative") for name in ("ent_coef", "vf_coef", "eval_episodes")}
    limits |= {name: (0 <= getattr(args, name) <= 1, "in [0, 1]") for name in ("gamma", "gae_lambda")}
    limits["checkpoint_every"] = (args.checkpoint_every >= 0, "non-negative")
    limits["keep_checkpoints"] = (args.keep_checkpoints > 0, "positive")
    limits["target_kl"] = (args.target_kl is None or args.target_kl > 0, "None or positive")
    limits["device"] = (args.device in ("gpu", "cpu"), '"gpu" or "cpu"')
    for name, (valid, must) in limits.items():
        if not valid:
            raise SystemExit(f"{script}: --{name.replace('_', '-')} must be {must}, got {getattr(args, name)}")
    rollout = args.num_envs * args.num_steps
    if rollout % args.num_minibatches != 0:
        raise SystemExit(f"{script}: num_envs*num_steps = {rollout} is not divisible by num_minibatches = {args.num_minibatches}")
    if args.total_timesteps < rollout:
        raise SystemExit(f"{script}: --total-timesteps {args.total_timesteps} is less than one rollout ({rollout} steps)")
    if envpool is None:
        wheels = "CPython 3.11-3.14 on Linux x86_64/aarch64, macOS arm64, Windows x64"
        raise SystemExit(f"{script}: needs envpool, which is not installed: pip install envpool==1.2.5 (wheels: {wheels})")
    if args.env_id not in envpool.list_all_envs():  # gymnasium's ALE ids (BreakoutNoFrameskip-v4) are ppo_atari's
        hint = f"envpool's Atari ids are <Game>-v5, e.g. Breakout-v5; gymnasium's are for {script.replace('_envpool', '')}"
        raise SystemExit(f"{script}: unknown env id {args.env_id!r} (not in envpool's registry: {hint})")
    if envpool.registration.registry.specs[args.env_id][0] != "envpool.atari":
        raise SystemExit(f"{script}: {args.env_id!r} is not an envpool Atari env; try {script.replace('_atari_envpool', '')}")


class RecordEpisodeStatistics(gym.vector.VectorWrapper):
    """CleanRL's episode statistics for envpool: the raw (unclipped) reward of every step, summed over all lives of a game,
    so a logged return is a real game score. infos["r"] and infos["l"] hold each env's return and length so far (agent
    steps, counting the reset step that follows each lost life); infos["game_ended"] marks the envs whose game ended this
    step (game over, or the time limit), after which both start again from zero."""

    def reset(self, **kwargs):
        observations, infos = super().reset(**kwargs)
        self.episode_returns = np.zeros(self.num_envs, dtype=np.float32)
        self.episode_lengths = np.zeros(self.num_envs, dtype=np.int32)
        return observations, infos

    def step(self, actions):
        observations, rewards, terminations, truncations, infos = super().step(actions)
        self.episode_returns += infos["reward"]  # envpool's raw reward; `rewards` is clipped to its sign
        self.episode_lengths += 1
        infos["r"], infos["l"] = self.episode_returns.copy(), self.episode_lengths.copy()
        infos["game_ended"] = infos["terminated"].astype(bool) | truncations  # "terminated": the game is over, not a life
        self.episode_returns[infos["game_ended"]] = 0
        self.episode_lengths[infos["game_ended"]] = 0
        return observations, rewards, terminations, truncations, infos


class RecordVideo(gym.vector.VectorWrapper):
    """Env 0's games as mp4 files in `folder`, those gymnasium's RecordVideo would pick (0, 1, 8, 27, ...), made of the
    frames the agent sees (the newest 84x84 grayscale frame of each observation), as CleanRL's envpool evaluation does."""

    def __init__(self, env, folder):
        super().__init__(env)
        self.folder, self.frames, self.game = folder, [], 0

    def step(self, actions):
        observations, rewards, terminations, truncations, infos = super().step(actions)
        if capped_cubic_video_schedule(self.game):
            self.frames.append(np.repeat(observations[0, -1, :, :, None], 3, axis=-1))
        if infos["game_ended"][0]:  # 15 frames per second: the game runs at 60, an agent step is 4 of its frames
            save_video(self.frames, self.folder, episode_index=self.game, fps=15)
            self.frames, self.game = [], self.game + 1
        return observations, rewards, terminations, truncations, infos


def make_env(env_id, seed, num_envs, capture_video, run_name):
    def thunk():
        # envpool's own Atari preprocessing (its defaults, as CleanRL uses them): no-op reset (up to 30), fire reset,
        # 4-frame max-and-skip, 84x84 grayscale, 4-frame stack, the 27,000-step limit, no sticky actions; env i is seeded
        # seed + i. A lost life ends an episode for learning: the next step (its action ignored) starts the next life.
        envs = envpool.make(env_id, env_type="gymnasium", num_envs=num_envs, episodic_life=True, reward_clip=True, seed=seed)
        envs = RecordEpisodeStatistics(envs)
        return RecordVideo(envs, f"videos/{run_name}") if capture_video else envs  # uint8 (num_envs, 4, 84, 84)

    return thunk


def finished_episodes(infos):
    """(return, length) of every env whose *game* ended this step. A lost life also ends an episode for learning, but only
    a game over (or the time limit) ends a logged one."""
    return [(float(infos["r"][i]), int(infos["l"][i])) for i in np.flatnonzero(infos["game_ended"])]


def orthogonal(shape, gain):
    """torch's orthogonal_ init: a conv weight is a (out, in*kh*kw) matrix. The QR runs on the tall
    (max, min) matrix, as torch's does (nn.init.orthogonal factors a square max x max one: 3136^2 here)."""
    rows, cols = shape[0], int(np.prod(shape[1:]))
    q, r = mx.linalg.qr(mx.random.normal((max(rows, cols), min(rows, cols))), stream=mx.cpu)
    q = q * mx.sign(mx.diag(r))
    return (q.T if rows < cols else q).reshape(shape) * float(gain)


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    layer.weight = orthogonal(layer.weight.shape, std)
    layer.bias = mx.full(layer.bias.shape, bias_const)
    return layer


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


class Agent(nn.Module):
    def __init__(self, n_actions):
        super().__init__()
        self.network = [  # a list, not nn.Sequential: parameter names are `network.0.weight`, ..., the torch twin's
            layer_init(Conv2d(4, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, 512)),
            nn.ReLU(),
        ]
        self.actor = layer_init(nn.Linear(512, n_actions), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1)

    def hidden(self, x):  # x: uint8 frames (N, 4, 84, 84) as stored; scaled here, as CleanRL's x / 255.0
        x = (x.astype(mx.float32) / 255.0).transpose(0, 2, 3, 1)
        for layer in self.network:
            x = layer(x)
        return x

    def get_value(self, x):
        return self.critic(self.hidden(x)).squeeze(-1)

    def get_logits(self, x):
        return self.actor(self.hidden(x))

    def get_logits_and_value(self, x):
        hidden = self.hidden(x)
        return self.actor(hidden), self.critic(hidden).squeeze(-1)


def categorical_logprob_entropy(logits, action):
    """log pi(action) and entropy of a categorical distribution given by unnormalised logits."""
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    logprob = mx.take_along_axis(logp, action[:, None], axis=-1).squeeze(-1)
    return logprob, -(mx.exp(logp) * logp).sum(-1)


def compute_gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    """CleanRL's GAE over a [num_steps, num_envs] rollout (numpy). dones[t] marks that obs[t] starts a
    new episode, so step t-1 does not bootstrap through it."""
    advantages, lastgaelam, last = np.zeros_like(rewards), 0.0, len(rewards) - 1
    for t in reversed(range(len(rewards))):
        nextnonterminal = 1.0 - (next_done if t == last else dones[t + 1])
        nextvalues = next_value if t == last else values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
    return advantages, advantages + values


def ppo_loss(agent, obs, actions, logprobs, advantages, returns, values, clip_coef, ent_coef, vf_coef, norm_adv, clip_vloss):
    """CleanRL's PPO loss on one minibatch. Returns (loss, (pg_loss, v_loss, entropy, old_approx_kl,
    approx_kl, clipfrac)); only `loss` is differentiated."""
    logits, newvalue = agent.get_logits_and_value(obs)  # one CNN pass for both heads
    newlogprob, entropy = categorical_logprob_entropy(logits, actions)
    logratio = newlogprob - logprobs
    ratio = mx.exp(logratio)

    # calculate approx_kl http://joschu.net/blog/kl-approx.html
    old_approx_kl = mx.stop_gradient((-logratio).mean())
    approx_kl = mx.stop_gradient(((ratio - 1) - logratio).mean())
    clipfrac = mx.stop_gradient((mx.abs(ratio - 1.0) > clip_coef).astype(mx.float32).mean())

    if norm_adv:  # torch's .std() is the unbiased one: ddof=1
        advantages = (advantages - advantages.mean()) / (mx.std(advantages, ddof=1) + 1e-8)

    # Policy loss
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * mx.clip(ratio, 1 - clip_coef, 1 + clip_coef)
    pg_loss = mx.maximum(pg_loss1, pg_loss2).mean()

    # Value loss
    v_loss_unclipped = (newvalue - returns) ** 2
    if clip_vloss:
        v_clipped = values + mx.clip(newvalue - values, -clip_coef, clip_coef)
        v_loss = 0.5 * mx.maximum(v_loss_unclipped, (v_clipped - returns) ** 2).mean()
    else:
        v_loss = 0.5 * v_loss_unclipped.mean()

    entropy_loss = entropy.mean()
    loss = pg_loss - ent_coef * entropy_loss + v_loss * vf_coef
    return loss, (pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac)


def make_optimizer(agent, args):
    """CleanRL's Adam (eps 1e-5) at the initial learning rate."""
    optimizer = optim.Adam(learning_rate=args.learning_rate, eps=1e-5, bias_correction=True)  # torch's Adam
    optimizer.init(agent.trainable_parameters())  # the compiled step captures this state, so it must exist
    return optimizer


def train_step(agent, optimizer, mb_inds, batch, clip_coef, ent_coef, vf_coef, norm_adv, clip_vloss, max_grad_norm):
    """One gradient step on the minibatch `mb_inds` of `batch` (obs, actions, logprobs, advantages, returns, values): PPO
    loss, gradients clipped to a global norm of max_grad_norm, Adam. Returns the loss terms (ppo_loss's stats)."""
    loss_and_grad = nn.value_and_grad(agent, partial(ppo_loss, agent))
    (loss, stats), grads = loss_and_grad(*(b[mb_inds] for b in batch), clip_coef, ent_coef, vf_coef, norm_adv, clip_vloss)
    grads, _ = optim.clip_grad_norm(grads, max_grad_norm)
    optimizer.update(agent, grads)
    return stats


def evaluate(model_path, make_env, env_id, eval_episodes, run_name, Model, device, capture_video=True, seed=1):
    """Roll out a saved policy (sampling actions, as CleanRL's ppo_envpool_jax_eval does) for `eval_episodes` games."""
    mx.set_default_device(device)
    envs = make_env(env_id, seed, 1, capture_video, run_name)()
    agent = Model(int(envs.single_action_space.n))
    agent.load_weights(model_path)  # torch's layout: a file saved by either twin loads here
    obs, _ = envs.reset()
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        actions = np.array(mx.random.categorical(agent.get_logits(mx.array(obs))))
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
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    mx.random.seed(args.seed)
    args.device = "gpu" if args.device == "gpu" and mx.is_available(mx.gpu) else "cpu"  # cpu where MLX has no GPU
    device = mx.gpu if args.device == "gpu" else mx.cpu
    mx.set_default_device(device)
    # The CPU allocator keeps only 32 MB of freed buffers: the CNN's ~100 MB im2col temporaries would be page-faulted in
    # afresh on every gradient step. Keeping them makes the CPU update ~1.9x faster.
    mx.set_cache_limit(mx.get_memory_limit())
    print(f"{os.path.basename(__file__)}: mlx {mx.__version__}, device {args.device}, BLAS {BLAS}")

    config = vars(args) | {"framework": "mlx", "algo": "ppo_atari_envpool", "blas": BLAS}
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
            group=f"ppo_atari_envpool__{args.env_id}",
            monitor_gym=True,
            save_code=True,
            id=resumed.get("wandb_id"),
            resume="allow",
        )
    # the checkpoint's own iteration logged at start_step: a resumed run drops only what was logged after it
    writer = SummaryWriter(f"runs/{run_name}", purge_step=start_step + 1 if args.resume else None)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in config.items()))

    # env setup (envpool's envs do not pickle: a resumed run makes them anew, seeded from its step)
    envs = make_env(args.env_id, args.seed + start_step, args.num_envs, args.capture_video, run_name)()

    agent = Agent(int(envs.single_action_space.n))
    optimizer = make_optimizer(agent, args)
    hyper = {k: getattr(args, k) for k in ("clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss", "max_grad_norm")}
    # the learning rate lives in optimizer.state, so annealing it never recompiles
    state = [agent.state, optimizer.state]
    train = mx.compile(partial(train_step, agent, optimizer, **hyper), inputs=state, outputs=state)

    @partial(mx.compile, inputs=[agent.state, mx.random.state], outputs=[mx.random.state])
    def act(x):
        logits, value = agent.get_logits_and_value(x)
        action = mx.random.categorical(logits)
        return action, categorical_logprob_entropy(logits, action)[0], value

    # ALGO Logic: Storage setup (numpy: rollouts are written one step at a time on the host; frames stay uint8)
    obs = np.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=np.uint8)
    actions = np.zeros((args.num_steps, args.num_envs), dtype=np.int32)
    logprobs, rewards, dones, values = (np.zeros((args.num_steps, args.num_envs), dtype=np.float32) for _ in range(4))
    avg_returns = deque(maxlen=20)  # CleanRL's charts/avg_episodic_return: the mean of the last 20 games

    # TRY NOT TO MODIFY: start the game
    global_step = start_step
    start_time = time.time()
    next_obs, _ = envs.reset()
    next_done = np.zeros(args.num_envs, dtype=np.float32)
    timing = dict.fromkeys(("env", "inference", "update"), 0.0)  # seconds per phase since the last log
    last_return = float("nan")
    counters = resumed.get("counters", dict(iteration=0))
    models, named_optimizers = {"agent": agent}, {"optimizer.agent": optimizer}
    if args.resume:  # continue the saved run as it was at its checkpoint; the envs restart
        restore_arrays(arrays, models, named_optimizers, f"{script}: --resume {args.resume}", args.seed + start_step)
        restore_rng(arrays, resumed)
        print(f"{script}: the envs do not pickle; resumed envs restart from seed {args.seed + start_step}")
    stop = []  # the first Ctrl-C/SIGTERM: checkpoint and exit; a second Ctrl-C interrupts at once

    def on_signal(signum, frame):
        stop.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    iterations = range(counters["iteration"] + 1, args.num_iterations + 1)  # a resumed run goes on after its last iteration
    progress = tqdm(iterations, initial=iterations.start - 1, total=args.num_iterations, disable=not sys.stderr.isatty())
    for iteration in progress:
        # Annealing the rate if instructed to do so.
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            optimizer.learning_rate = frac * args.learning_rate

        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done

            # ALGO LOGIC: action logic (one host sync: all three results are evaluated together)
            t0 = time.perf_counter()
            action, logprob, value = act(mx.array(next_obs))
            mx.eval(action, logprob, value)
            actions[step], logprobs[step], values[step] = action, logprob, value
            t1 = time.perf_counter()

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, rewards[step], terminations, truncations, infos = envs.step(actions[step])
            next_done = np.logical_or(terminations, truncations).astype(np.float32)
            for last_return, length in finished_episodes(infos):
                tqdm.write(f"global_step={global_step}, episodic_return={last_return}")
                avg_returns.append(last_return)
                writer.add_scalar("charts/avg_episodic_return", np.average(avg_returns), global_step)
                writer.add_scalar("charts/episodic_return", last_return, global_step)
                writer.add_scalar("charts/episodic_length", length, global_step)
            timing["inference"] += t1 - t0
            timing["env"] += time.perf_counter() - t1

        # bootstrap value if not done
        t0 = time.perf_counter()
        next_value = np.array(agent.get_value(mx.array(next_obs)))
        advantages, returns = compute_gae(rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda)

        # flatten the batch
        batch = [mx.array(x.reshape((-1,) + x.shape[2:])) for x in (obs, actions, logprobs, advantages, returns, values)]

        # Optimizing the policy and value network
        b_inds = np.arange(args.batch_size)
        clipfracs = []
        for epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                stats = train(mx.array(b_inds[start : start + args.minibatch_size]), batch)
                mx.eval(stats, agent.state, optimizer.state)  # one sync per gradient step
                clipfracs.append(stats[5])
            if args.target_kl is not None and stats[4].item() > args.target_kl:
                break
        timing["update"] += time.perf_counter() - t0

        # TRY NOT TO MODIFY: record rewards for plotting purposes (read back once per iteration)
        pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, _ = (s.item() for s in stats)
        y_pred, y_true = values.reshape(-1), returns.reshape(-1)
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        steps_since_log = args.batch_size
        sps = int((global_step - start_step) / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", optimizer.learning_rate.item(), global_step)
        writer.add_scalar("losses/value_loss", v_loss, global_step)
        writer.add_scalar("losses/policy_loss", pg_loss, global_step)
        writer.add_scalar("losses/entropy", entropy_loss, global_step)
        writer.add_scalar("losses/old_approx_kl", old_approx_kl, global_step)
        writer.add_scalar("losses/approx_kl", approx_kl, global_step)
        writer.add_scalar("losses/clipfrac", mx.stack(clipfracs).mean().item(), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        for phase, seconds in timing.items():
            writer.add_scalar(f"timing/{phase}_us", 1e6 * seconds / steps_since_log, global_step)
        timing = dict.fromkeys(timing, 0.0)
        progress.set_postfix(SPS=sps, ret=last_return)
        if progress.disable:  # no bar (not a TTY): print SPS as CleanRL does
            print("SPS:", sps)

        # checkpoint every checkpoint_every steps, once this iteration's update is done, and on Ctrl-C/SIGTERM (then stop)
        if stop or args.checkpoint_every and global_step % args.checkpoint_every < args.batch_size:  # a multiple was crossed
            counters = dict(iteration=iteration)
            meta = {"script": "ppo_atari_envpool", "framework": "mlx", "run_name": run_name, "env_id": args.env_id}
            meta |= {"num_envs": args.num_envs, "global_step": global_step, "counters": counters}
            meta |= {"wandb_id": wandb.run.id if args.track else None, "args": vars(args)}
            writer.flush()  # the logs up to the checkpoint survive a kill
            save_checkpoint(f"runs/{run_name}", checkpoint_arrays(models, named_optimizers), meta, args.keep_checkpoints)
            if stop:
                print(f"{script}: stopped at step {global_step}; resume with --resume runs/{run_name}")
                break

    if args.save_model and not stop:
        model_path = f"runs/{run_name}/{args.exp_name}.safetensors"
        agent.save_weights(model_path)
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
