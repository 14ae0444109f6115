"""Recurrent PPO on Atari (Nature CNN -> LSTM, one 84x84 frame per step) in MLX as CleanRL's ppo_atari_lstm.py: same defaults.

Twin: cleanrl_torch_reference/ppo_atari_lstm_torch.py. Docs: docs/ppo_atari_lstm.md. Run: python cleanrl_mlx/ppo_atari_lstm_mlx.py
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
    if args.num_envs % args.num_minibatches != 0:  # a minibatch holds whole env sequences
        raise SystemExit(f"{script}: num_envs = {args.num_envs} is not divisible by num_minibatches = {args.num_minibatches}")
    rollout = args.num_envs * args.num_steps
    if args.total_timesteps < rollout:
        raise SystemExit(f"{script}: --total-timesteps {args.total_timesteps} is less than one rollout ({rollout} steps)")
    if args.env_id not in gym.registry:
        raise SystemExit(f"{script}: unknown env id {args.env_id!r} (not in gymnasium's registry)")
    if "ale_py" not in str(gym.spec(args.env_id).entry_point):
        raise SystemExit(f"{script}: {args.env_id!r} is not an Atari (ALE) env; try {script.replace('_atari_lstm', '')}")
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
        return gym.wrappers.FrameStackObservation(env, 1)  # uint8 (1, 84, 84): one frame, the LSTM is the memory

    return thunk


def finished_episodes(infos):
    """(return, length) of every env whose *game* ended this step (SAME_STEP autoreset: in final_info). A lost life also
    ends an episode for the vector env, but only a real game end carries RecordEpisodeStatistics' "episode" entry."""
    if "final_info" not in infos or "episode" not in infos["final_info"]:
        return []
    final = infos["final_info"]
    return [(float(final["episode"]["r"][i]), int(final["episode"]["l"][i])) for i in np.flatnonzero(final["_episode"])]


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


class LSTM(nn.Module):
    """torch's one-layer nn.LSTM(input_size, hidden_size), its parameter names and shapes (weight_ih_l0 (4h, in),
    weight_hh_l0 (4h, h), bias_ih_l0, bias_hh_l0; gate rows i, f, g, o) so a saved file loads in either twin, with
    CleanRL's reset built in: x (T, B, in), state (h, c) each (1, B, h), done (T, B); before step t the state of an env
    with done[t] is zeroed. The input projection of all T steps is one matmul and only the recurrence loops over t: the
    LSTM's forward and backward take ~3x less time on the CPU backend than with one input matmul per step."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        scale = np.sqrt(1.0 / hidden_size)  # torch's default init range
        self.weight_ih_l0 = mx.random.uniform(-scale, scale, (4 * hidden_size, input_size))
        self.weight_hh_l0 = mx.random.uniform(-scale, scale, (4 * hidden_size, hidden_size))
        self.bias_ih_l0 = mx.random.uniform(-scale, scale, (4 * hidden_size,))
        self.bias_hh_l0 = mx.random.uniform(-scale, scale, (4 * hidden_size,))
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, 1

    def __call__(self, x, state, done):
        gates_x = x @ self.weight_ih_l0.T + self.bias_ih_l0 + self.bias_hh_l0
        (h, c), keep, outputs = (state[0][0], state[1][0]), (1.0 - done)[..., None], []
        for t in range(x.shape[0]):
            h, c = keep[t] * h, keep[t] * c
            i, f, g, o = mx.split(gates_x[t] + h @ self.weight_hh_l0.T, 4, axis=-1)
            c = mx.sigmoid(f) * c + mx.sigmoid(i) * mx.tanh(g)
            h = mx.sigmoid(o) * mx.tanh(c)
            outputs.append(h)
        return mx.stack(outputs), (h[None], c[None])


class Agent(nn.Module):
    def __init__(self, n_actions):
        super().__init__()
        self.network = [  # a list, not nn.Sequential: parameter names are `network.0.weight`, ..., the torch twin's
            layer_init(Conv2d(1, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, 512)),
            nn.ReLU(),
        ]
        self.lstm = LSTM(512, 128)
        for name, param in self.lstm.parameters().items():  # CleanRL's LSTM init: orthogonal weights, zero biases
            if "bias" in name:
                self.lstm[name] = mx.zeros_like(param)
            elif "weight" in name:
                self.lstm[name] = orthogonal(param.shape, 1.0)
        self.actor = layer_init(nn.Linear(128, n_actions), std=0.01)
        self.critic = layer_init(nn.Linear(128, 1), std=1)

    def hidden(self, x):  # x: uint8 frames (N, 1, 84, 84) as stored; scaled here, as CleanRL's x / 255.0
        x = (x.astype(mx.float32) / 255.0).transpose(0, 2, 3, 1)
        for layer in self.network:
            x = layer(x)
        return x

    def get_states(self, x, lstm_state, done):
        """CleanRL's LSTM logic: x and done hold T steps of B envs, time-major (T*B, ...); before each step the state
        of an env whose episode starts there (done) is zeroed. Returns the hidden output of every step and the last state."""
        hidden = self.hidden(x)
        batch_size = lstm_state[0].shape[1]
        hidden = hidden.reshape((-1, batch_size, self.lstm.input_size))
        done = done.reshape((-1, batch_size))
        new_hidden, lstm_state = self.lstm(hidden, lstm_state, done)  # mlx: CleanRL's loop over the steps is in LSTM
        return new_hidden.reshape(-1, self.lstm.hidden_size), lstm_state

    def get_value(self, x, lstm_state, done):
        return self.critic(self.get_states(x, lstm_state, done)[0]).squeeze(-1)

    def get_logits_and_value(self, x, lstm_state, done):
        hidden, lstm_state = self.get_states(x, lstm_state, done)
        return self.actor(hidden), self.critic(hidden).squeeze(-1), lstm_state


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


def ppo_loss(
    agent, obs, dones, actions, logprobs, advantages, returns, values, state, clip_coef, ent_coef, vf_coef, norm_adv, clip_vloss
):
    """CleanRL's PPO loss on one minibatch of whole env sequences (time-major), replayed through the LSTM from `state`,
    the (h, c) they started the rollout with. Returns (loss, (pg_loss, v_loss, entropy, old_approx_kl, approx_kl,
    clipfrac)); only `loss` is differentiated."""
    logits, newvalue, _ = agent.get_logits_and_value(obs, state, dones)  # one CNN + LSTM pass for both heads
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


def train_step(
    agent, optimizer, mb_inds, mbenvinds, batch, initial_state, clip_coef, ent_coef, vf_coef, norm_adv, clip_vloss, max_grad_norm
):
    """One gradient step on the envs `mbenvinds` (their rows `mb_inds` of the flat, time-major `batch`: obs, dones,
    actions, logprobs, advantages, returns, values), replayed from their part of the rollout's `initial_state` (h, c):
    PPO loss, gradients clipped to a global norm of max_grad_norm, Adam. Returns the loss terms (ppo_loss's stats)."""
    lstm_state = (initial_state[0][:, mbenvinds], initial_state[1][:, mbenvinds])
    loss_and_grad = nn.value_and_grad(agent, partial(ppo_loss, agent))
    (loss, stats), grads = loss_and_grad(
        *(b[mb_inds] for b in batch), lstm_state, clip_coef, ent_coef, vf_coef, norm_adv, clip_vloss
    )
    grads, _ = optim.clip_grad_norm(grads, max_grad_norm)
    optimizer.update(agent, grads)
    return stats


def evaluate(model_path, make_env, env_id, eval_episodes, run_name, Model, device, capture_video=True, seed=1):
    """Roll out a saved policy (sampling actions, as CleanRL's ppo_eval does) for `eval_episodes` episodes, the LSTM
    state starting at zero and reset where an episode (a life) starts, as in training."""
    mx.set_default_device(device)
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, 0, capture_video, run_name)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    agent = Model(int(envs.single_action_space.n))
    agent.load_weights(model_path)  # torch's layout: a file saved by either twin loads here
    obs, _ = envs.reset(seed=seed)
    lstm_state = (mx.zeros((agent.lstm.num_layers, 1, agent.lstm.hidden_size)),) * 2
    done = np.zeros(1, dtype=np.float32)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        logits, _, lstm_state = agent.get_logits_and_value(mx.array(obs), lstm_state, mx.array(done))
        actions = mx.random.categorical(logits)
        mx.eval(actions, lstm_state)
        obs, _, terminations, truncations, infos = envs.step(np.array(actions))
        done = np.logical_or(terminations, truncations).astype(np.float32)
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

    config = vars(args) | {"framework": "mlx", "algo": "ppo_atari_lstm", "blas": BLAS}
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
            group=f"ppo_atari_lstm__{args.env_id}",
            monitor_gym=True,
            save_code=True,
            id=resumed.get("wandb_id"),
            resume="allow",
        )
    # the checkpoint's own iteration logged at start_step: a resumed run drops only what was logged after it
    writer = SummaryWriter(f"runs/{run_name}", purge_step=start_step + 1 if args.resume else None)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in config.items()))

    # env setup
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )

    agent = Agent(int(envs.single_action_space.n))
    optimizer = make_optimizer(agent, args)
    hyper = {k: getattr(args, k) for k in ("clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss", "max_grad_norm")}
    # the learning rate lives in optimizer.state, so annealing it never recompiles
    state = [agent.state, optimizer.state]
    train = mx.compile(partial(train_step, agent, optimizer, **hyper), inputs=state, outputs=state)

    @partial(mx.compile, inputs=[agent.state, mx.random.state], outputs=[mx.random.state])
    def act(x, lstm_state, done):
        logits, value, lstm_state = agent.get_logits_and_value(x, lstm_state, done)
        action = mx.random.categorical(logits)
        return action, categorical_logprob_entropy(logits, action)[0], value, lstm_state

    # ALGO Logic: Storage setup (numpy: rollouts are written one step at a time on the host; frames stay uint8)
    obs = np.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=np.uint8)
    actions = np.zeros((args.num_steps, args.num_envs), dtype=np.int32)
    logprobs, rewards, dones, values = (np.zeros((args.num_steps, args.num_envs), dtype=np.float32) for _ in range(4))

    # TRY NOT TO MODIFY: start the game
    global_step = start_step
    start_time = time.time()
    next_obs, _ = envs.reset(seed=args.seed + start_step)
    envs.action_space.seed(args.seed + start_step)
    next_done = np.zeros(args.num_envs, dtype=np.float32)
    next_lstm_state = (
        mx.zeros((agent.lstm.num_layers, args.num_envs, agent.lstm.hidden_size)),
        mx.zeros((agent.lstm.num_layers, args.num_envs, agent.lstm.hidden_size)),
    )  # hidden and cell states (see https://youtu.be/8HyCNIVRbSU)
    timing = dict.fromkeys(("env", "inference", "update"), 0.0)  # seconds per phase since the last log
    last_return = float("nan")
    counters = resumed.get("counters", dict(iteration=0))
    models, named_optimizers = {"agent": agent}, {"optimizer.agent": optimizer}
    if args.resume:  # continue the saved run as it was at its checkpoint; the envs (EzPickle: never pickled) restart
        # new games, so the LSTM state starts at zero, as in a fresh run (a checkpoint does not hold it)
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
        # mx arrays are immutable: the rollout's initial state needs no clone
        initial_lstm_state = next_lstm_state
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
            action, logprob, value, next_lstm_state = act(mx.array(next_obs), next_lstm_state, mx.array(next_done))
            mx.eval(action, logprob, value, next_lstm_state)
            actions[step], logprobs[step], values[step] = action, logprob, value
            t1 = time.perf_counter()

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, rewards[step], terminations, truncations, infos = envs.step(actions[step])
            next_done = np.logical_or(terminations, truncations).astype(np.float32)
            for last_return, length in finished_episodes(infos):
                tqdm.write(f"global_step={global_step}, episodic_return={last_return}")
                writer.add_scalar("charts/episodic_return", last_return, global_step)
                writer.add_scalar("charts/episodic_length", length, global_step)
            timing["inference"] += t1 - t0
            timing["env"] += time.perf_counter() - t1

        # bootstrap value if not done
        t0 = time.perf_counter()
        next_value = np.array(agent.get_value(mx.array(next_obs), next_lstm_state, mx.array(next_done)))
        advantages, returns = compute_gae(rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda)

        # flatten the batch
        batch = [mx.array(x.reshape((-1,) + x.shape[2:])) for x in (obs, dones, actions, logprobs, advantages, returns, values)]

        # Optimizing the policy and value network
        envsperbatch = args.num_envs // args.num_minibatches
        envinds = np.arange(args.num_envs)
        flatinds = np.arange(args.batch_size).reshape(args.num_steps, args.num_envs)
        clipfracs = []
        for epoch in range(args.update_epochs):
            np.random.shuffle(envinds)
            for start in range(0, args.num_envs, envsperbatch):
                mbenvinds = envinds[start : start + envsperbatch]
                mb_inds = flatinds[:, mbenvinds].ravel()  # be really careful about the index
                stats = train(mx.array(mb_inds), mx.array(mbenvinds), batch, initial_lstm_state)
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
            meta = {"script": "ppo_atari_lstm", "framework": "mlx", "run_name": run_name, "env_id": args.env_id}
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
