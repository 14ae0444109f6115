"""PPO for continuous actions in MLX, as CleanRL's ppo_continuous_action.py: same defaults, wrappers, loss and logged tags.

Twin: cleanrl_torch_reference/ppo_continuous_action_torch.py. Docs: docs/ppo_continuous_action.md. Run: python cleanrl_mlx/ppo_continuous_action_mlx.py --env-id HalfCheetah-v5
"""

import contextlib
import ctypes
import hashlib
import json
import math
import os
import pickle
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import cloudpickle
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
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402

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
        "checkpoint_every": (args.checkpoint_every >= 0, "non-negative"),
        "keep_checkpoints": (args.keep_checkpoints > 0, "positive"),
        "device": (args.device in ("gpu", "cpu"), '"gpu" or "cpu"'),
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


def finished_episodes(infos):
    """(return, length) of every env whose episode ended this step (SAME_STEP autoreset: in final_info)."""
    if "final_info" not in infos or "episode" not in infos["final_info"]:
        return []
    final = infos["final_info"]
    return [(float(final["episode"]["r"][i]), int(final["episode"]["l"][i])) for i in np.flatnonzero(final["_episode"])]


def obs_normalizer(env):
    """The NormalizeObservation wrapper inside one env built by make_env (its statistics are part of the policy)."""
    while not isinstance(env, gym.wrappers.NormalizeObservation):
        env = env.env
    return env


def pooled_obs_rms(envs):
    """Mean, variance and count of every env's observation statistics pooled into one (exact)."""
    stats = [obs_normalizer(env).obs_rms for env in envs.envs]
    count = sum(rms.count for rms in stats)
    mean = sum(rms.count * rms.mean for rms in stats) / count
    var = sum(rms.count * (rms.var + (rms.mean - mean) ** 2) for rms in stats) / count
    return {"mean": mean, "var": var, "count": np.array(count)}


def normalizer_arrays(envs):
    """Per env, the observation and reward statistics and NormalizeReward's discounted return, for a checkpoint: what a
    resumed run needs of envs that do not pickle (MuJoCo's), since the statistics are part of the policy."""
    arrays = {}
    for i, env in enumerate(envs.envs):
        for rms in ("obs_rms", "return_rms"):
            arrays |= {f"envs.{i}.{rms}.{k}": np.asarray(getattr(env.get_wrapper_attr(rms), k)) for k in ("mean", "var", "count")}
        arrays[f"envs.{i}.discounted_reward"] = np.asarray(env.get_wrapper_attr("discounted_reward"))
    return arrays


def restore_normalizers(arrays, envs):
    """Put normalizer_arrays' statistics back into each env's wrappers."""
    for i, env in enumerate(envs.envs):
        for rms in ("obs_rms", "return_rms"):
            for k in ("mean", "var", "count"):
                setattr(env.get_wrapper_attr(rms), k, arrays[f"envs.{i}.{rms}.{k}"])
        env.get_wrapper_attr("discounted_reward")[...] = arrays[f"envs.{i}.discounted_reward"]


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    layer.weight = nn.init.orthogonal(gain=std)(layer.weight)
    layer.bias = mx.full(layer.bias.shape, bias_const)
    return layer


# Linux CPU backend: mx.tanh runs one element at a time; a fused rational cuts update time ~23% (benchmark/results/issue21-*)
MATH = "rational tanh" if sys.platform.startswith("linux") and os.environ.get("CLEANRL_MLX_FAST_MATH") != "0" else "mlx"


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


def tanh(x):  # a rollout step's few rows: MLX's own kernel, one graph node instead of two (~2 us each per step)
    return mx.tanh(x) if x.size < 1024 else batch_tanh(x)


@mx.custom_function
def batch_tanh(x):
    if MATH == "mlx":  # MLX's kernel on Metal, CUDA, macOS and with the opt-out
        return mx.tanh(x)
    x = mx.clip(x, -7.7, 7.7)  # a minimax rational on [-7.7, 7.7]: within 5e-7 of mx.tanh (tests/test_fast_math.py)
    s = x * x
    p = 0.99999933 + s * (0.127231029 + s * (2.70826048e-3 + s * (7.26358879e-6 - s * 6.34960691e-9)))
    return x * p / (1 + s * (0.460561703 + s * (0.0228984184 + s * 1.98362619e-4)))


@batch_tanh.vjp
def tanh_vjp(primals, cotangent, output):
    # 1 - tanh^2 from the saved output: the same gradient, 10-20% less CPU time per update (benchmark/micro/tanh_vjp.py)
    return cotangent * (1 - output * output)


def forward(layers, x):
    for layer in layers:  # x @ W.T + b, not nn.Linear's addmm: compile fuses the bias add with the tanh after it
        x = x @ layer.weight.T + layer.bias if isinstance(layer, nn.Linear) else layer(x)
    return x


class Agent(nn.Module):
    # lists, not nn.Sequential: parameter names (`critic.0.weight`, ...) are torch's, so saved files load in either
    def __init__(self, obs_dim, action_dim):
        super().__init__()
        self.critic = [
            layer_init(nn.Linear(obs_dim, 64)),
            tanh,
            layer_init(nn.Linear(64, 64)),
            tanh,
            layer_init(nn.Linear(64, 1), std=1.0),
        ]
        self.actor_mean = [
            layer_init(nn.Linear(obs_dim, 64)),
            tanh,
            layer_init(nn.Linear(64, 64)),
            tanh,
            layer_init(nn.Linear(64, action_dim), std=0.01),
        ]
        self.actor_logstd = mx.zeros((1, action_dim))  # state-independent log std: an mx.array attribute is trained

    def get_value(self, x):
        return forward(self.critic, x).squeeze(-1)

    def get_action_mean(self, x):
        return forward(self.actor_mean, x)


def normal_logprob_entropy(mean, logstd, action):
    """log pi(action) and entropy of a diagonal Gaussian, each summed over the action dimensions."""
    logstd = mx.broadcast_to(logstd, mean.shape)
    log_sqrt_2pi = 0.5 * math.log(2 * math.pi)  # a Python float (a numpy scalar would not trace)
    logprob = -((action - mean) ** 2) / (2 * mx.exp(2 * logstd)) - logstd - log_sqrt_2pi
    return logprob.sum(-1), (0.5 + log_sqrt_2pi + logstd).sum(-1)


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
    newlogprob, entropy = normal_logprob_entropy(agent.get_action_mean(obs), agent.actor_logstd, actions)
    newvalue = agent.get_value(obs)
    logratio = newlogprob - logprobs
    ratio = logratio.exp()

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
    if clip_vloss:
        v_loss_unclipped = (newvalue - returns) ** 2
        v_clipped = values + mx.clip(newvalue - values, -clip_coef, clip_coef)
        v_loss_clipped = (v_clipped - returns) ** 2
        v_loss = 0.5 * mx.maximum(v_loss_unclipped, v_loss_clipped).mean()
    else:
        v_loss = 0.5 * ((newvalue - returns) ** 2).mean()

    entropy_loss = entropy.mean()
    loss = pg_loss - ent_coef * entropy_loss + v_loss * vf_coef
    return loss, (pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac)


def make_optimizer(agent, args):
    """CleanRL's Adam: the learning rate from args, eps 1e-5."""
    optimizer = optim.Adam(learning_rate=args.learning_rate, eps=1e-5, bias_correction=True)  # torch's Adam
    optimizer.init(agent.trainable_parameters())  # the compiled step captures this state, so it must exist
    return optimizer


def train_step(agent, optimizer, mb_inds, *batch, max_grad_norm, **loss_coefs):
    """One gradient step on rows mb_inds of batch (obs, actions, logprobs, advantages, returns, values): PPO loss,
    global-norm gradient clipping, Adam. Returns the loss terms of ppo_loss."""
    (loss, stats), grads = nn.value_and_grad(agent, partial(ppo_loss, agent, **loss_coefs))(*[b[mb_inds] for b in batch])
    grads, _ = optim.clip_grad_norm(grads, max_grad_norm)
    optimizer.update(agent, grads)
    return stats


def evaluate(model_path, make_env, env_id, eval_episodes, run_name, Model, device, capture_video=True, seed=1, gamma=0.99):
    """Roll out a saved policy (sampling actions, as CleanRL's ppo_eval does) for `eval_episodes` episodes,
    normalising observations with the statistics saved next to the weights, frozen."""
    mx.set_default_device(device)
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, 0, capture_video, run_name, gamma)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    agent = Model(int(np.prod(envs.single_observation_space.shape)), int(np.prod(envs.single_action_space.shape)))
    agent.load_weights(model_path)
    normalizer = obs_normalizer(envs.envs[0])
    with np.load(model_path.replace(".safetensors", ".obs_rms.npz")) as saved:
        rms = normalizer.obs_rms
        rms.mean, rms.var, rms.count = saved["mean"], saved["var"], float(saved["count"])
    normalizer.update_running_mean = False  # evaluation uses the training statistics as they were
    obs, _ = envs.reset(seed=seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        action_mean = agent.get_action_mean(mx.array(obs))
        actions = np.array(action_mean + mx.exp(agent.actor_logstd) * mx.random.normal(action_mean.shape))
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
    """The parameters of `models` (modules, or dicts of named arrays such as sac's log_alpha), the Adam state of
    `optimizers` (keyed "<optimizer>.<model>") and the MLX RNG as numpy arrays, under the names both twins use (torch's
    Adam names: exp_avg, exp_avg_sq, step, lr)."""
    adam = {"m": "exp_avg", "v": "exp_avg_sq", "step": "step", "learning_rate": "lr"}
    prefix = {k: f"{k}." if isinstance(model, nn.Module) else "" for k, model in models.items()}  # a dict names its arrays
    arrays = {prefix[k] + n: v for k, m in models.items() for n, v in tree_flatten(m.parameters() if prefix[k] else m)}
    for k, optimizer in optimizers.items():
        name, model = k.split(".")
        for n, v in tree_flatten(optimizer.state):
            path, _, leaf = n.rpartition(".")  # MLX's names: "<parameter>.m", "<parameter>.v", "step", "learning_rate"
            arrays[f"{name}.{prefix[model]}{path}.{adam[leaf]}" if path else f"{name}.{adam[leaf]}"] = v
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
        leaves = tree_flatten(tree.parameters() if isinstance(tree, nn.Module) else tree)
        tree.update(tree_unflatten([(n, mx.array(arrays[next(names)]).astype(v.dtype)) for n, v in leaves]))
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
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size
    run_name = resumed.get("run_name", f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}")

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    mx.random.seed(args.seed)
    args.device = "gpu" if args.device == "gpu" and mx.is_available(mx.gpu) else "cpu"  # cpu where MLX has no GPU
    device = mx.gpu if args.device == "gpu" else mx.cpu
    mx.set_default_device(device)
    MATH, THREADS = (MATH, THREADS) if args.device == "cpu" else ("mlx", "free")  # the GPU backends: their own kernels
    print(f"{script}: mlx {mx.__version__}, device {args.device}, BLAS {BLAS}, math {MATH}, threads {THREADS}")

    config = vars(args) | {"framework": "mlx", "algo": "ppo_continuous_action", "blas": BLAS, "math": MATH, "threads": THREADS}
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
            group=f"ppo_continuous_action__{args.env_id}",
            monitor_gym=True,
            save_code=True,
            id=resumed.get("wandb_id"),
            resume="allow",
        )
    # steps after the checkpoint, logged before the run stopped, are dropped: the resumed run logs them again
    writer = SummaryWriter(f"runs/{run_name}", purge_step=start_step + 1 if args.resume else None)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in config.items()))

    # env setup
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name, args.gamma) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    # EzPickle envs (MuJoCo, Box2D) pickle their arguments, not their state: those restart from a seed on resume
    envs_pickle = not args.capture_video and not any(isinstance(env.unwrapped, gym.utils.EzPickle) for env in envs.envs)

    agent = Agent(int(np.prod(envs.single_observation_space.shape)), int(np.prod(envs.single_action_space.shape)))
    optimizer = make_optimizer(agent, args)
    # ALGO LOGIC: compiled hot paths on the live state (the learning rate is in optimizer.state: annealing never recompiles)
    state = [agent.state, optimizer.state]
    coefs = {k: getattr(args, k) for k in ("max_grad_norm", "clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss")}
    train = mx.compile(partial(train_step, agent, optimizer, **coefs), inputs=state, outputs=state)

    @partial(mx.compile, inputs=[agent.state, mx.random.state], outputs=[mx.random.state])
    def act(x):
        action_mean = agent.get_action_mean(x)
        action = action_mean + mx.exp(agent.actor_logstd) * mx.random.normal(action_mean.shape)
        logprob, _ = normal_logprob_entropy(action_mean, agent.actor_logstd, action)
        return action, logprob, agent.get_value(x)

    # ALGO Logic: Storage setup (numpy: rollouts are written one step at a time on the host)
    obs = np.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=np.float32)
    actions = np.zeros((args.num_steps, args.num_envs) + envs.single_action_space.shape, dtype=np.float32)
    logprobs, rewards, dones, values = (np.zeros((args.num_steps, args.num_envs), dtype=np.float32) for _ in range(4))

    # TRY NOT TO MODIFY: start the game
    counters = resumed.get("counters", dict(iteration=0))
    global_step, first_iteration = start_step, counters["iteration"] + 1
    start_time = time.time()
    next_obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    next_done = np.zeros(args.num_envs, dtype=np.float32)
    timing = dict.fromkeys(("env", "inference", "update"), 0.0)  # seconds per phase since the last log
    last_return = float("nan")
    models, named_optimizers = {"agent": agent}, {"optimizer.agent": optimizer}
    if args.resume:  # continue the saved run as it was at its checkpoint
        restore_arrays(arrays, models, named_optimizers, f"{script}: --resume {args.resume}", args.seed + start_step)
        restore_rng(arrays, resumed)
        if "envs.pkl" in arrays:
            envs.close()
            envs, next_obs, next_done = pickle.loads(arrays["envs.pkl"].tobytes()), arrays["next_obs"], arrays["next_done"]
        else:  # the statistics first, so that the reset's observation is normalised with them
            restore_normalizers(arrays, envs)
            next_obs, _ = envs.reset(seed=args.seed + start_step)
            print(f"{script}: the envs do not pickle; resumed envs restart from seed {args.seed + start_step}")
    stop = []  # the first Ctrl-C/SIGTERM: checkpoint and exit; a second Ctrl-C interrupts at once

    def on_signal(signum, frame):
        stop.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    progress = tqdm(
        range(first_iteration, args.num_iterations + 1),
        initial=first_iteration - 1,
        total=args.num_iterations,
        disable=not sys.stderr.isatty(),
    )
    for iteration in progress:
        if args.anneal_lr:  # Annealing the rate if instructed to do so.
            optimizer.learning_rate = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

        share_core()
        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done

            # ALGO LOGIC: action logic
            t0 = time.perf_counter()
            action, logprob, value = act(mx.array(next_obs, dtype=mx.float32))
            mx.eval(action, logprob, value)  # the one host sync of the step
            actions[step], logprobs[step], values[step] = action, logprob, value
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
        next_value = np.array(agent.get_value(mx.array(next_obs, dtype=mx.float32)))
        advantages, returns = compute_gae(rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda)
        # flatten the batch (sent to the device once per iteration)
        batch = [mx.array(x).flatten(0, 1) for x in (obs, actions, logprobs, advantages, returns, values)]

        # Optimizing the policy and value network
        b_inds = np.arange(args.batch_size)
        clipfracs = []
        for epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                stats = train(mx.array(b_inds[start : start + args.minibatch_size]), *batch)
                mx.async_eval(stats, state)  # lazy: it runs while the next step is traced, no sync per gradient step
                clipfracs.append(stats[5])
            if args.target_kl is not None and stats[4].item() > args.target_kl:
                break
        mx.eval(state)  # the update's one sync
        timing["update"] += time.perf_counter() - t0

        # TRY NOT TO MODIFY: record rewards for plotting purposes (read back once per iteration)
        losses = dict(zip(("policy_loss", "value_loss", "entropy", "old_approx_kl", "approx_kl"), (s.item() for s in stats)))
        losses["clipfrac"] = mx.stack(clipfracs).mean().item()
        var_y = np.var(returns)
        losses["explained_variance"] = np.nan if var_y == 0 else 1 - np.var(returns - values) / var_y
        sps = int((global_step - start_step) / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", optimizer.learning_rate.item(), global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        for name, loss in losses.items():
            writer.add_scalar(f"losses/{name}", loss, global_step)
        for phase, seconds in timing.items():
            writer.add_scalar(f"timing/{phase}_us", 1e6 * seconds / args.batch_size, global_step)
        timing = dict.fromkeys(timing, 0.0)
        progress.set_postfix(SPS=sps, ret=last_return)
        if progress.disable:
            print("SPS:", sps)

        # checkpoint every checkpoint_every steps, once this iteration's update is done, and on Ctrl-C/SIGTERM (then stop)
        if stop or args.checkpoint_every and global_step % args.checkpoint_every < args.batch_size:  # a multiple was crossed
            checkpoint = checkpoint_arrays(models, named_optimizers) | normalizer_arrays(envs)
            checkpoint |= {"next_obs": next_obs, "next_done": next_done}
            if envs_pickle:  # cloudpickle: the envs hold make_env's closures and the wrappers' lambdas
                checkpoint["envs.pkl"] = np.frombuffer(cloudpickle.dumps(envs), np.uint8)
            counters = dict(iteration=iteration)
            meta = {"script": "ppo_continuous_action", "framework": "mlx", "run_name": run_name, "env_id": args.env_id}
            meta |= {"num_envs": args.num_envs, "global_step": global_step, "counters": counters}
            meta |= {"wandb_id": wandb.run.id if args.track else None, "args": vars(args)}
            writer.flush()  # the logs up to the checkpoint survive a kill
            save_checkpoint(f"runs/{run_name}", checkpoint, meta, args.keep_checkpoints)
            if stop:
                print(f"{script}: stopped at step {global_step}; resume with --resume runs/{run_name}")
                break

    if args.save_model and not stop:
        model_path = f"runs/{run_name}/{args.exp_name}.safetensors"
        agent.save_weights(model_path)
        np.savez(model_path.replace(".safetensors", ".obs_rms.npz"), **pooled_obs_rms(envs))
        print(f"model saved to {model_path} (observation statistics: .obs_rms.npz)")
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
            gamma=args.gamma,
        )
        for idx, episodic_return in enumerate(episodic_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)

    envs.close()
    writer.close()
