"""Ape-X-style actor-learner QR-DQN in MLX: sb3-contrib's QR-DQN (rl-zoo's CartPole-v1 settings) fed by actor processes.

Twin: cleanrl_torch_reference/qrdqn_actor_learner_torch.py. Docs: docs/qrdqn_actor_learner.md.
Run: python cleanrl_mlx/qrdqn_actor_learner_mlx.py --env-id CartPole-v1 --num-actors 2
"""

import ctypes
import multiprocessing as mp
import os
import queue
import random
import signal
import sys
import time
import traceback
import zlib
from dataclasses import dataclass
from functools import partial
from types import SimpleNamespace
from typing import Optional

import gymnasium as gym
import numpy as np

# Spawned actors re-import this file but need neither the framework (seconds and ~200 MB per process) nor the logger nor
# the command line: only the learner imports those.
LEARNER_PROCESS = __name__ == "__main__" or mp.parent_process() is None
if LEARNER_PROCESS:
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
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_map

    sys.modules.setdefault("torch", None)  # tensorboardX imports torch if installed (~1.5 s, ~180 MB): hide it
    from tensorboardX import SummaryWriter

    if sys.modules["torch"] is None:  # let later code import torch again
        del sys.modules["torch"]
else:
    nn = SimpleNamespace(Module=object)  # QNetwork's base class; an actor never builds one


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    device: str = "gpu"
    """MLX device of the learner, "gpu" (Metal or CUDA) or "cpu"; falls back to cpu where MLX has no GPU backend"""
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

    # Algorithm specific arguments (rl-zoo's tuned QR-DQN set for CartPole-v1)
    env_id: str = "CartPole-v1"
    """the id of the environment"""
    total_timesteps: int = 50000
    """total environment steps of all actors together"""
    learning_rate: float = 2.3e-3
    """the learning rate of the optimizer"""
    adam_eps: float = 0.01 / 32
    """Adam's epsilon (sb3-contrib's QR-DQN default, from the paper: 0.01 / 32)"""
    buffer_size: int = 100000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 1.0
    """the target network update rate"""
    target_network_frequency: int = 128
    """learner updates between target network updates (rl-zoo refreshes the target once per 128-update training phase)"""
    batch_size: int = 64
    """the batch size of sample from the replay memory"""
    start_e: float = 1.0
    """the starting epsilon for exploration"""
    end_e: float = 0.04
    """the final epsilon of a lone actor (--num-actors 0 or 1) and of evaluation"""
    exploration_fraction: float = 0.16
    """the fraction of `total-timesteps` it takes from start-e to each actor's final epsilon"""
    learning_starts: int = 1000
    """environment steps in the replay memory before learning starts"""
    n_quantiles: int = 10
    """the number of quantiles of the return distribution"""
    max_grad_norm: float = 10.0
    """the maximum norm for the gradient clipping"""

    # Actor-learner arguments
    num_actors: int = 2
    """actor processes; 0 runs one actor inside the learner process, deterministic (debugging, tests)"""
    apex_epsilon: float = 0.4
    """Ape-X: actor i of N ends its exploration at apex_epsilon ** (1 + apex_alpha * i / (N - 1))"""
    apex_alpha: float = 7.0
    """Ape-X: the exponent spread of the actors' final epsilons"""
    replay_ratio: float = 0.5
    """learner updates per environment step received (rl-zoo: 128 gradient steps every 256 steps)"""
    chunk_length: int = 50
    """transitions per chunk, the unit an actor hands to the learner"""
    ring_chunks: int = 4
    """chunks in each actor's shared-memory ring; a full ring makes the actor wait"""
    publish_interval: int = 25
    """learner updates between publications of the weights to the actors"""
    sync_interval: int = 50
    """actor steps between checks of the published weights' version"""


def check_args(args: Args, script: str):
    """Reject bad input with one clear line before anything is created; returns (observation size, number of actions)."""
    positive = ("total_timesteps", "learning_rate", "adam_eps", "buffer_size", "target_network_frequency", "batch_size")
    positive += ("n_quantiles", "max_grad_norm", "eval_episodes", "replay_ratio", "chunk_length", "ring_chunks")
    limits = {k: (getattr(args, k) > 0, "positive") for k in positive + ("publish_interval", "sync_interval")}
    limits |= {k: (0 <= getattr(args, k) <= 1, "in [0, 1]") for k in ("gamma", "start_e", "end_e", "apex_epsilon")}
    limits |= {k: (0 < getattr(args, k) <= 1, "in (0, 1]") for k in ("tau", "exploration_fraction")}
    limits |= {k: (getattr(args, k) >= 0, "non-negative") for k in ("learning_starts", "apex_alpha")}
    limits["num_actors"] = (args.num_actors >= 0, "0 (one in-process actor) or more")
    limits["device"] = (args.device in ("gpu", "cpu"), '"gpu" or "cpu"')
    for name, (valid, must) in limits.items():
        if not valid:
            raise SystemExit(f"{script}: --{name.replace('_', '-')} must be {must}, got {getattr(args, name)}")
    if args.learning_starts < args.batch_size:
        raise SystemExit(f"{script}: --learning-starts {args.learning_starts} is less than one batch ({args.batch_size})")
    if args.learning_starts >= args.total_timesteps:
        raise SystemExit(
            f"{script}: --learning-starts {args.learning_starts} must be less than --total-timesteps {args.total_timesteps}"
        )
    if args.buffer_size < args.learning_starts:
        raise SystemExit(f"{script}: --buffer-size {args.buffer_size} cannot hold --learning-starts {args.learning_starts} steps")
    if args.env_id not in gym.registry:
        raise SystemExit(f"{script}: unknown env id {args.env_id!r} (not in gymnasium's registry)")
    try:
        env = gym.make(args.env_id)
    except gym.error.DependencyNotInstalled as e:
        raise SystemExit(f"{script}: {args.env_id} needs a package that is not installed: {e}") from None
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise SystemExit(f"{script}: only discrete action spaces are supported; {args.env_id} has {env.action_space}")
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        raise SystemExit(f"{script}: only flat Box observation spaces are supported; {args.env_id} has {env.observation_space}")
    env.close()
    return env.observation_space.shape[0], int(env.action_space.n)


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


def linear_schedule(start_e: float, end_e: float, duration: int, t: int):
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


def actor_epsilons(num_actors, apex_epsilon, apex_alpha, lone_epsilon):
    """Ape-X's final epsilon of each actor; a lone actor (N = 1, or the in-process one) uses `lone_epsilon`."""
    if num_actors <= 1:
        return [lone_epsilon]
    return [apex_epsilon ** (1 + apex_alpha * i / (num_actors - 1)) for i in range(num_actors)]


# Actors: numpy and multiprocessing only (this part is the same in both twins) ----------------------------------------
def q_network_shapes(obs_dim, n_actions, n_quantiles):
    """Parameter shapes of QNetwork in the order of the flat published array: (weight, bias) per layer."""
    sizes = [obs_dim, 256, 256, n_actions * n_quantiles]
    return [shape for fan_in, fan_out in zip(sizes[:-1], sizes[1:]) for shape in ((fan_out, fan_in), (fan_out,))]


class NumpyPolicy:
    """An actor's copy of the Q-network: views into one flat float32 array and a numpy forward, as fast as a framework call
    for one observation, so an actor process needs neither MLX nor torch."""

    def __init__(self, shapes, n_actions, n_quantiles):
        sizes = [int(np.prod(s)) for s in shapes]
        self.flat = np.zeros(sum(sizes), dtype=np.float32)
        self.params = [view.reshape(s) for view, s in zip(np.split(self.flat, np.cumsum(sizes)[:-1]), shapes)]
        self.n_actions, self.n_quantiles = n_actions, n_quantiles

    def greedy_action(self, obs):
        x = obs
        for i in range(0, len(self.params), 2):
            x = np.maximum(x, 0.0) if i else x  # ReLU between the layers
            x = x @ self.params[i].T + self.params[i + 1]
        return int(x.reshape(self.n_actions, self.n_quantiles).mean(-1).argmax())


class Channels:
    """What actors and the learner share (picklable into spawned actors): the published weights and their version under one
    lock, one shared-memory ring of chunks per actor with a semaphore counting free slots, the queue, stop event, step count."""

    def __init__(self, ctx, n_rings, ring_chunks, chunk_length, obs_dim, n_params):
        self.ring_chunks, self.obs_dim, self.shape = ring_chunks, obs_dim, (n_rings, ring_chunks, chunk_length)
        n = n_rings * ring_chunks * chunk_length
        # seqs: per-actor sequence numbers, so a lost chunk shows as a gap
        types = {"obs": ctypes.c_float, "next_obs": ctypes.c_float, "actions": ctypes.c_int64, "rewards": ctypes.c_float}
        types |= {"terminations": ctypes.c_float, "seqs": ctypes.c_int64}
        self.raw = {k: ctx.RawArray(t, n * obs_dim if "obs" in k else n) for k, t in types.items()}
        self.raw_weights = ctx.RawArray(ctypes.c_float, n_params)
        self.version = ctx.RawValue(ctypes.c_int64, 0)
        self.lock = ctx.Lock()
        self.free_slots = [ctx.Semaphore(ring_chunks) for _ in range(n_rings)]
        self.chunks_sent = ctx.RawArray(ctypes.c_int64, n_rings)  # one writer each: the ring's actor
        self.global_step = ctx.RawValue(ctypes.c_int64, 0)  # written by the learner, read for epsilon
        self.messages, self.stop = ctx.Queue(), ctx.Event()

    def ring(self):
        """Numpy views of the rings, field -> (ring, slot, step, ...); views are not pickled, so each process makes its own."""
        return {
            k: np.ctypeslib.as_array(v).reshape(self.shape + ((self.obs_dim,) if "obs" in k else ())) for k, v in self.raw.items()
        }

    def publish(self, flat):
        with self.lock:
            np.ctypeslib.as_array(self.raw_weights)[:] = flat
            self.version.value += 1
            return self.version.value


class Actor:
    """Steps one env with epsilon-greedy on its numpy policy and writes transitions into its ring."""

    def __init__(self, actor_id, args, run_name, final_epsilon, channels, shapes, n_actions):
        self.id, self.args, self.final_epsilon, self.ch, self.n_actions = actor_id, args, final_epsilon, channels, n_actions
        self.envs = gym.vector.SyncVectorEnv(
            [make_env(args.env_id, actor_id, args.capture_video, run_name)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
        )
        self.obs, _ = self.envs.reset(seed=args.seed + actor_id)
        self.envs.action_space.seed(args.seed + actor_id)
        self.rng = np.random.default_rng(args.seed + actor_id)
        self.policy, self.ring = NumpyPolicy(shapes, n_actions, args.n_quantiles), channels.ring()
        self.version = 0  # the learner publishes version 1 before any actor starts
        self.seq = self.chunk_index = 0  # sequence number of the next transition, chunks filled
        self.parent = mp.parent_process()  # None for the in-process actor

    def fill_chunk(self):
        """Fill the next slot of the ring; returns the message for the learner, or None when stopped."""
        ch, a, args = self.ch, self.id, self.args
        slot = self.chunk_index % ch.ring_chunks
        t_wait = time.perf_counter()
        while not ch.free_slots[a].acquire(timeout=0.1):  # backpressure: wait until the learner frees it
            if ch.stop.is_set() or (self.parent is not None and not self.parent.is_alive()):
                return None
        timing, episodes = {"env": 0.0, "inference": 0.0, "wait": time.perf_counter() - t_wait}, []
        for k in range(args.chunk_length):
            t0 = time.perf_counter()
            if self.seq % args.sync_interval == 0 and ch.version.value != self.version:
                with ch.lock:  # reload only when the version changed
                    self.policy.flat[:], self.version = np.ctypeslib.as_array(ch.raw_weights), ch.version.value
            duration = args.exploration_fraction * args.total_timesteps
            if self.rng.random() < linear_schedule(args.start_e, self.final_epsilon, duration, ch.global_step.value):
                action = int(self.rng.integers(self.n_actions))
            else:
                action = self.policy.greedy_action(self.obs[0])
            t1 = time.perf_counter()
            next_obs, rewards, terminations, truncations, infos = self.envs.step(np.array([action]))
            # store the true last observation of a finished episode; bootstrap on terminations only
            real_next_obs = infos["final_obs"][0] if "final_obs" in infos and infos["_final_obs"][0] else next_obs[0]
            transition = (self.obs[0], real_next_obs, action, rewards[0], terminations[0], self.seq)
            for key, value in zip(("obs", "next_obs", "actions", "rewards", "terminations", "seqs"), transition):
                self.ring[key][a, slot, k] = value
            episodes += finished_episodes(infos)
            self.obs, self.seq = next_obs, self.seq + 1
            timing["inference"] += t1 - t0
            timing["env"] += time.perf_counter() - t1
        self.chunk_index += 1
        ch.chunks_sent[a] += 1
        return ("chunk", a, slot, args.chunk_length, self.version, episodes, timing)


def run_actor(actor_id, args, run_name, final_epsilon, channels, shapes, n_actions):
    """An actor process: fill chunks until the stop event; a failure is reported through the queue."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the learner's to handle: it sets the stop event
    try:
        actor = Actor(actor_id, args, run_name, final_epsilon, channels, shapes, n_actions)
        while (message := actor.fill_chunk()) is not None:
            channels.messages.put(message)  # a few numbers: the transitions stay in shared memory
        channels.messages.put(("exit", actor_id, actor.version, zlib.crc32(actor.policy.flat.tobytes())))
        actor.envs.close()
    except Exception:
        channels.messages.put(("error", actor_id, traceback.format_exc()))
        sys.exit(1)


class ActorFailed(RuntimeError):
    pass


class ReplayBuffer:
    """The learner's own circular replay memory (numpy, no lock: only the learner touches it); each transition keeps its
    actor id and sequence number."""

    def __init__(self, capacity, obs_dim):
        self.capacity, self.pos, self.size = capacity, 0, 0
        self.obs, self.next_obs = (np.zeros((capacity, obs_dim), dtype=np.float32) for _ in range(2))
        self.rewards, self.terminations = (np.zeros(capacity, dtype=np.float32) for _ in range(2))
        self.actions, self.actor_ids, self.seqs = (np.zeros(capacity, dtype=np.int64) for _ in range(3))

    def add_chunk(self, actor_id, chunk):
        idx = (self.pos + np.arange(len(chunk["seqs"]))) % self.capacity
        for key, values in (chunk | {"actor_ids": actor_id}).items():
            getattr(self, key)[idx] = values
        self.pos = (self.pos + len(idx)) % self.capacity
        self.size = min(self.size + len(idx), self.capacity)

    def sample(self, batch_size):
        idx = np.random.randint(0, self.size, size=batch_size)
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminations[idx]


class ActorPool:
    """The learner's side of the actors: starts them, receives their chunks into the replay buffer, publishes weights,
    notices a dead actor, and stops them all."""

    def __init__(self, args, run_name, obs_dim, n_actions, rb):
        self.args, self.run_name, self.n_actions, self.rb = args, run_name, n_actions, rb
        self.shapes = q_network_shapes(obs_dim, n_actions, args.n_quantiles)
        n_rings, n_params = max(args.num_actors, 1), sum(int(np.prod(s)) for s in self.shapes)
        self.ctx = mp.get_context("spawn")  # fork after MLX or torch has started threads is unsafe (macOS)
        self.ch = Channels(self.ctx, n_rings, args.ring_chunks, args.chunk_length, obs_dim, n_params)
        self.epsilons = actor_epsilons(args.num_actors, args.apex_epsilon, args.apex_alpha, args.end_e)
        self.next_seq, self.chunks_received = np.zeros(n_rings, dtype=np.int64), np.zeros(n_rings, dtype=np.int64)
        self.dropped = 0  # transitions missing from (or repeated in) an actor's sequence: must stay 0
        self.exits, self.errors = {}, {}  # actor id -> (weights version, crc32 of its weights) on a clean exit, or traceback
        self.procs, self.local, self.ring = [], None, self.ch.ring()

    def start(self, flat_weights):
        self.ch.publish(flat_weights)
        if self.args.num_actors == 0:
            self.local = Actor(0, self.args, self.run_name, self.epsilons[0], self.ch, self.shapes, self.n_actions)
        for i in range(self.args.num_actors):  # daemons: they never outlive the learner
            actor_args = (i, self.args, self.run_name, self.epsilons[i], self.ch, self.shapes, self.n_actions)
            self.procs.append(self.ctx.Process(target=run_actor, args=actor_args, name=f"actor-{i}", daemon=True))
            self.procs[-1].start()

    def drain(self, wait):
        """Take queued messages until none comes within `wait` seconds, keeping the actors' exit and error reports."""
        while True:
            try:
                kind, a, *report = self.ch.messages.get(timeout=wait)
            except (queue.Empty, OSError, ValueError):
                return
            if kind == "exit":
                self.exits[a] = tuple(report)
            elif kind == "error":
                self.errors[a] = report[0]

    def check_actors(self):
        for i, p in enumerate(self.procs):
            if p.exitcode is not None:
                how = f"killed by signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}"
                self.drain(0.2)  # an actor that raised sent its traceback before exiting
                report = f":\n{self.errors[i]}" if i in self.errors else ""
                raise ActorFailed(f"actor {i} (pid {p.pid}) died ({how}); stopping the run{report}")

    def receive(self, timeout):
        """Take one chunk into the replay buffer and free its slot. Blocks on the queue up to `timeout` seconds (the
        in-process actor fills the chunk here); returns the message, or None."""
        try:
            message = self.local.fill_chunk() if self.local else self.ch.messages.get(timeout=timeout)
        except queue.Empty:
            self.check_actors()
            return None
        kind, a, *report = message
        if kind == "error":
            raise ActorFailed(f"actor {a} failed; stopping the run:\n{report[0]}")
        if kind == "exit":
            self.exits[a] = tuple(report)
            return None
        slot, count = message[2:4]
        chunk = {k: v[a, slot, :count] for k, v in self.ring.items()}
        seqs = chunk["seqs"]
        if seqs[0] != self.next_seq[a] or np.any(np.diff(seqs) != 1):  # never happens: rings are not overwritten
            self.dropped += abs(int(seqs[-1] + 1 - self.next_seq[a]) - count)
        self.next_seq[a] = seqs[-1] + 1
        self.rb.add_chunk(a, chunk)  # copies: the slot can be reused right away
        self.ch.free_slots[a].release()
        self.chunks_received[a] += 1
        self.ch.global_step.value += count
        self.check_actors()
        return message

    def close(self, timeout=5.0):
        """Stop every actor: set the stop event, keep draining the queue (an actor exits only once its queued messages are
        flushed) while joining with a deadline, then terminate any straggler."""
        self.ch.stop.set()
        deadline = time.time() + timeout
        while any(p.is_alive() for p in self.procs) and time.time() < deadline:
            self.drain(0.05)
        for p in self.procs:
            p.terminate()  # a straggler; an actor that has exited is not touched
            p.join(timeout=1.0)
        self.drain(0.0)  # messages flushed just before an actor exited
        self.ch.messages.close()
        if self.local is not None:
            self.local.envs.close()
        return self.exits


# Learner (MLX) --------------------------------------------------------------------------------------------------------
class QNetwork(nn.Module):
    # a plain list (not nn.Sequential) names the parameters `network.0.weight`, ... as torch does: a saved file loads in both
    def __init__(self, obs_dim, n_actions, n_quantiles):
        super().__init__()
        self.n_actions, self.n_quantiles = n_actions, n_quantiles
        self.network = [
            nn.Linear(obs_dim, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, n_actions * n_quantiles),
        ]

    def __call__(self, x):
        for layer in self.network:
            x = layer(x)
        return x.reshape(-1, self.n_actions, self.n_quantiles)  # (batch, actions, quantiles)


def quantile_huber_loss(current_quantiles, target_quantiles):
    """Quantile Huber loss with kappa = 1, as sb3-contrib defines it. current (B, N) estimates the quantiles at the midpoints
    tau_i = (2i + 1) / (2N); target (B, N') are the target samples. The pairwise loss |tau_i - 1{u < 0}| * Huber(u),
    u = target_j - current_i, is summed over the current quantiles and averaged over the target quantiles and the batch."""
    n = current_quantiles.shape[-1]
    tau = (mx.arange(n, dtype=mx.float32) + 0.5) / n
    delta = target_quantiles[:, None, :] - current_quantiles[:, :, None]  # (B, N, N')
    abs_delta = mx.abs(delta)
    huber = mx.where(abs_delta > 1.0, abs_delta - 0.5, 0.5 * delta**2)
    weight = mx.abs(tau[None, :, None] - mx.stop_gradient((delta < 0).astype(mx.float32)))
    return (weight * huber).sum(axis=1).mean()


def qrdqn_target(next_quantiles, rewards, terminations, gamma):
    """Target quantiles (B, N): the target network's quantiles (B, A, N) of the greedy next action by their mean,
    discounted, bootstrapped unless the episode terminated."""
    next_actions = next_quantiles.mean(axis=2).argmax(axis=1)
    next_q = mx.take_along_axis(next_quantiles, next_actions[:, None, None], axis=1).squeeze(1)
    return rewards[:, None] + gamma * (1.0 - terminations[:, None]) * next_q


def qrdqn_loss(q_network, obs, actions, target_quantiles):
    """Returns (loss, mean Q of the taken actions); only the loss is differentiated."""
    current = mx.take_along_axis(q_network(obs), actions[:, None, None], axis=1).squeeze(1)
    return quantile_huber_loss(current, target_quantiles), mx.stop_gradient(current.mean())


def make_optimizer(q_network, args):
    """Adam with sb3-contrib's epsilon (adam_eps), bias-corrected."""
    optimizer = optim.Adam(learning_rate=args.learning_rate, eps=args.adam_eps, bias_correction=True)  # torch's Adam
    optimizer.init(q_network.trainable_parameters())  # the compiled step captures this state, so it must exist
    return optimizer


def train_step(q_network, target_network, optimizer, obs, actions, rewards, next_obs, terminations, gamma, max_grad_norm):
    """One learner update: target quantiles, quantile Huber loss, gradient clipping, an Adam step. Returns (loss, mean Q
    of the taken actions)."""
    target = mx.stop_gradient(qrdqn_target(target_network(next_obs), rewards, terminations, gamma))
    (loss, q_values), grads = nn.value_and_grad(q_network, partial(qrdqn_loss, q_network))(obs, actions, target)
    grads, _ = optim.clip_grad_norm(grads, max_grad_norm)
    optimizer.update(q_network, grads)
    return loss, q_values


def polyak_update(online, target, tau):
    """target <- tau * online + (1 - tau) * target, for every parameter (tau = 1 is a hard copy)."""
    target.update(tree_map(lambda o, t: tau * o + (1 - tau) * t, online.parameters(), target.parameters()))


def evaluate(
    model_path, make_env, env_id, eval_episodes, run_name, Model, device, capture_video=True, seed=1, epsilon=0.04, n_quantiles=10
):
    """Roll out a saved Q-network epsilon-greedily for `eval_episodes` episodes (seeded: a rerun repeats)."""
    mx.set_default_device(device)
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, 0, capture_video, run_name)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    model = Model(int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n), n_quantiles)
    model.load_weights(model_path)
    obs, _ = envs.reset(seed=seed)
    envs.single_action_space.seed(seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        if random.random() < epsilon:
            actions = np.array([envs.single_action_space.sample() for _ in range(envs.num_envs)])
        else:
            actions = np.array(model(mx.array(obs, dtype=mx.float32)).mean(axis=2).argmax(axis=1))
        obs, _, _, _, infos = envs.step(actions)
        for episodic_return, _ in finished_episodes(infos):
            print(f"eval_episode={len(episodic_returns)}, episodic_return={episodic_return}")
            episodic_returns.append(episodic_return)
    envs.close()
    return episodic_returns


if __name__ == "__main__":
    script = os.path.basename(__file__)
    args = tyro.cli(Args)
    obs_dim, n_actions = check_args(args, script)
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    mx.random.seed(args.seed)
    args.device = "gpu" if args.device == "gpu" and mx.is_available(mx.gpu) else "cpu"  # cpu where MLX has no GPU
    device = mx.gpu if args.device == "gpu" else mx.cpu
    mx.set_default_device(device)
    print(f"{script}: mlx {mx.__version__}, device {args.device}, BLAS {BLAS}")

    config = vars(args) | {"framework": "mlx", "algo": "qrdqn_actor_learner", "blas": BLAS}
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
            group=f"qrdqn_actor_learner__{args.env_id}",
            monitor_gym=True,
            save_code=True,
        )
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in config.items()))

    q_network = QNetwork(obs_dim, n_actions, args.n_quantiles)
    optimizer = make_optimizer(q_network, args)
    target_network = QNetwork(obs_dim, n_actions, args.n_quantiles)
    target_network.update(q_network.parameters())
    state = [q_network.state, target_network.state, optimizer.state]  # what the compiled steps read and write
    mx.eval(state)

    # ALGO LOGIC: the learner's update and its target-network update
    train = partial(train_step, q_network, target_network, optimizer, gamma=args.gamma, max_grad_norm=args.max_grad_norm)
    update_target = partial(polyak_update, q_network, target_network, args.tau)
    train, update_target = (mx.compile(f, inputs=state, outputs=state) for f in (train, update_target))

    def flat_parameters():  # the layout of q_network_shapes: (weight, bias) per Linear
        return np.asarray(mx.concatenate([p.reshape(-1) for layer in q_network.network[::2] for p in (layer.weight, layer.bias)]))

    rb = ReplayBuffer(args.buffer_size, obs_dim)
    pool = ActorPool(args, run_name, obs_dim, n_actions, rb)

    # TRY NOT TO MODIFY: start the actors and the game
    global_step = updates = 0
    start_time = time.time()
    pool.start(flat_parameters())
    if pool.procs:
        print(f"{script}: {len(pool.procs)} actors started (pids {', '.join(str(p.pid) for p in pool.procs)})")
    timing = dict.fromkeys(("env", "inference", "update"), 0.0)  # seconds per phase since the last log (actors' sums)
    window_start, window_step, window_updates, lags = time.time(), 0, 0, []
    last_return = float("nan")
    progress = tqdm(total=args.total_timesteps, disable=not sys.stderr.isatty(), unit="step")

    # Ctrl-C only sets a flag, checked once per pass (waits time out within 1 s): raised anywhere, KeyboardInterrupt can
    # leave tensorboardX's logger thread unwoken and writer.close() hanging. A second Ctrl-C interrupts at once.
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        while global_step < args.total_timesteps:
            if interrupted:
                raise KeyboardInterrupt
            # keep the replay ratio: train while updates are owed, otherwise wait (blocking) for data
            owed = rb.size >= args.learning_starts and updates < args.replay_ratio * (global_step - args.learning_starts)
            if not owed:
                if (message := pool.receive(timeout=1.0)) is None:
                    continue
                _, _, _, count, version, episodes, actor_timing = message
                global_step += count
                timing["env"] += actor_timing["env"]
                timing["inference"] += actor_timing["inference"]
                lags.append(pool.ch.version.value - version)
                progress.update(count)
                for last_return, length in episodes:
                    tqdm.write(f"global_step={global_step}, episodic_return={last_return}")
                    writer.add_scalar("charts/episodic_return", last_return, global_step)
                    writer.add_scalar("charts/episodic_length", length, global_step)
                continue

            # ALGO LOGIC: training
            t0 = time.perf_counter()
            loss, q_values = train(*(mx.array(x) for x in rb.sample(args.batch_size)))
            updates += 1
            if updates % args.target_network_frequency == 0:
                update_target()
            mx.eval(loss, q_values, state)  # one host sync per gradient step
            if updates % args.publish_interval == 0:
                pool.ch.publish(flat_parameters())
            timing["update"] += time.perf_counter() - t0

            if updates % 100 == 0:
                # TRY NOT TO MODIFY: record losses and throughput for plotting purposes
                now = time.time()
                steps_since_log = max(global_step - window_step, 1)
                sps = int(global_step / (now - start_time))
                writer.add_scalar("losses/td_loss", loss.item(), global_step)
                writer.add_scalar("losses/q_values", q_values.item(), global_step)
                writer.add_scalar("charts/SPS", sps, global_step)
                writer.add_scalar("charts/learner_updates_per_s", (updates - window_updates) / (now - window_start), global_step)
                queue_depth = (
                    sum(pool.ch.chunks_sent) - pool.chunks_received.sum()
                )  # chunks sent, not received (no qsize() on macOS)
                writer.add_scalar("charts/queue_depth", queue_depth, global_step)
                writer.add_scalar("charts/policy_lag", float(np.mean(lags)) if lags else 0.0, global_step)
                writer.add_scalar("charts/dropped_transitions", pool.dropped, global_step)
                for phase, seconds in timing.items():
                    writer.add_scalar(f"timing/{phase}_us", 1e6 * seconds / steps_since_log, global_step)
                timing = dict.fromkeys(timing, 0.0)
                window_start, window_step, window_updates, lags = now, global_step, updates, []
                progress.set_postfix(SPS=sps, ret=last_return)
                if progress.disable:  # no bar (not a TTY): print SPS as CleanRL does
                    print("SPS:", sps)
    except (ActorFailed, KeyboardInterrupt) as error:
        writer.close()
        if isinstance(error, KeyboardInterrupt):
            raise SystemExit(f"{script}: interrupted; actors stopped") from None
        print(error, file=sys.stderr)
        raise SystemExit(f"{script}: {str(error).splitlines()[0]}") from None
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        pool.close()  # stop event, joins with timeouts; the shared memory goes with the processes

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
            n_quantiles=args.n_quantiles,
        )
        for idx, episodic_return in enumerate(episodic_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)

    writer.close()
