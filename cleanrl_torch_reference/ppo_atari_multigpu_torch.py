"""Data-parallel PPO on Atari in eager PyTorch as CleanRL's ppo_atari_multigpu.py: ranks step their own envs, average gradients.

Reference twin of cleanrl_mlx/ppo_atari_multigpu_mlx.py. Docs: docs/ppo_atari_multigpu.md. Run: torchrun --standalone --nproc_per_node 2 cleanrl_torch_reference/ppo_atari_multigpu_torch.py
"""

import hashlib
import json
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import List, Optional

import ale_py
import gymnasium as gym
import numpy as np
import safetensors.numpy
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.optim as optim
import tyro
from safetensors.torch import load_file, save_file
from tensorboardX import SummaryWriter
from torch.distributions.categorical import Categorical
from tqdm import tqdm

gym.register_envs(ale_py)


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
    local_num_envs: int = 8
    """the number of parallel game environments (in the local rank)"""
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
    device_ids: List[int] = field(default_factory=lambda: [])
    """the device ids that subprocess workers will use"""
    backend: Optional[str] = None
    """the backend for distributed training: gloo, nccl or mpi (default: nccl on CUDA, gloo on CPU)"""

    # to be filled in runtime
    local_batch_size: int = 0
    """the local batch size in the local rank (computed in runtime)"""
    local_minibatch_size: int = 0
    """the local mini-batch size in the local rank (computed in runtime)"""
    num_envs: Optional[int] = None
    """the number of parallel game environments of all ranks (computed in runtime: local_num_envs * world_size)"""
    batch_size: int = 0
    """the batch size (computed in runtime)"""
    minibatch_size: int = 0
    """the mini-batch size (computed in runtime)"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""
    world_size: int = 0
    """the number of processes (computed in runtime)"""


def check_args(args: Args, script: str) -> None:
    """Reject bad input with one clear line before anything is created."""
    positive = (
        "total_timesteps learning_rate local_num_envs num_steps num_minibatches update_epochs clip_coef max_grad_norm".split()
    )
    limits = {name: (getattr(args, name) > 0, "positive") for name in positive}  # field: (valid?, what it must be)
    limits |= {name: (getattr(args, name) >= 0, "non-negative") for name in ("ent_coef", "vf_coef", "eval_episodes")}
    limits |= {name: (0 <= getattr(args, name) <= 1, "in [0, 1]") for name in ("gamma", "gae_lambda")}
    limits["checkpoint_every"] = (args.checkpoint_every >= 0, "non-negative")
    limits["keep_checkpoints"] = (args.keep_checkpoints > 0, "positive")
    limits["target_kl"] = (args.target_kl is None or args.target_kl > 0, "None or positive")
    limits["backend"] = (args.backend in (None, "gloo", "nccl", "mpi"), "gloo, nccl or mpi")
    limits["device_ids"] = (len(args.device_ids) in (0, max(args.world_size, 1)), "one id per rank")
    limits["num_envs"] = (args.num_envs is None, "left out (it is --local-num-envs times the number of ranks)")
    for name, (valid, must) in limits.items():
        if not valid:
            raise SystemExit(f"{script}: --{name.replace('_', '-')} must be {must}, got {getattr(args, name)}")
    rollout, ranks = args.local_num_envs * args.num_steps, max(args.world_size, 1)  # world_size is 0 before the group exists
    if rollout % args.num_minibatches != 0:
        raise SystemExit(
            f"{script}: local_num_envs*num_steps = {rollout} is not divisible by num_minibatches = {args.num_minibatches}"
        )
    if args.total_timesteps < rollout * ranks:
        raise SystemExit(
            f"{script}: --total-timesteps {args.total_timesteps} is less than one rollout of all ranks ({ranks} x {rollout} steps)"
        )
    if args.env_id not in gym.registry:
        raise SystemExit(f"{script}: unknown env id {args.env_id!r} (not in gymnasium's registry)")
    if "ale_py" not in str(gym.spec(args.env_id).entry_point):
        raise SystemExit(f"{script}: {args.env_id!r} is not an Atari (ALE) env; try {script.replace('_atari_multigpu', '')}")
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


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, n_actions):
        super().__init__()
        self.network = nn.Sequential(
            layer_init(nn.Conv2d(4, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, 512)),
            nn.ReLU(),
        )
        self.actor = layer_init(nn.Linear(512, n_actions), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1)

    def hidden(self, x):  # x: uint8 frames (N, 4, 84, 84) as stored; scaled here, as CleanRL's x / 255.0
        return self.network(x.float() / 255.0)

    def get_value(self, x):
        return self.critic(self.hidden(x)).squeeze(-1)

    def get_logits(self, x):
        return self.actor(self.hidden(x))

    def get_logits_and_value(self, x):
        hidden = self.hidden(x)
        return self.actor(hidden), self.critic(hidden).squeeze(-1)


def categorical_logprob_entropy(logits, action):
    """log pi(action) and entropy of a categorical distribution given by unnormalised logits."""
    probs = Categorical(logits=logits)
    return probs.log_prob(action), probs.entropy()


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
    v_loss_unclipped = (newvalue - returns) ** 2
    if clip_vloss:
        v_clipped = values + torch.clamp(newvalue - values, -clip_coef, clip_coef)
        v_loss = 0.5 * torch.max(v_loss_unclipped, (v_clipped - returns) ** 2).mean()
    else:
        v_loss = 0.5 * v_loss_unclipped.mean()

    entropy_loss = entropy.mean()
    loss = pg_loss - ent_coef * entropy_loss + v_loss * vf_coef
    return loss, (pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac)


def make_optimizer(agent, args):
    """CleanRL's Adam (eps 1e-5) at the initial learning rate."""
    return optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)


def average_gradients(grads, world_size):
    """The mean of every rank's gradients, summed in one packed all-reduce (CleanRL's batched all_reduce): every rank then
    takes the same step and the parameters never drift apart. With one rank, the gradients as they are."""
    if world_size > 1:  # the flattened gradients summed in one all-reduce, / world_size
        flat = torch.cat([g.view(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for g, mean in zip(grads, torch.split(flat / world_size, [g.numel() for g in grads])):
            g.copy_(mean.view_as(g))
    return grads


def mean_over_ranks(x, world_size):
    """The mean of the scalar `x` over all ranks, as a float that is the same on every rank (so all take the same branch)."""
    if world_size > 1:
        x = x.clone()  # torch.distributed.all_reduce sums in place
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x.item() / world_size


def train_step(agent, optimizer, mb_inds, batch, clip_coef, ent_coef, vf_coef, norm_adv, clip_vloss, max_grad_norm, world_size=1):
    """One gradient step on this rank's minibatch `mb_inds` of its `batch` (obs, actions, logprobs, advantages, returns,
    values): PPO loss, gradients averaged over the ranks, clipped to a global norm of max_grad_norm, Adam. Returns the loss
    terms of this rank's minibatch (ppo_loss's stats)."""
    loss, stats = ppo_loss(agent, *(b[mb_inds] for b in batch), clip_coef, ent_coef, vf_coef, norm_adv, clip_vloss)
    optimizer.zero_grad()
    loss.backward()
    average_gradients([p.grad for p in agent.parameters()], world_size)
    nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
    optimizer.step()
    return stats


def evaluate(model_path, make_env, env_id, eval_episodes, run_name, Model, device, capture_video=True, seed=1):
    """Roll out a saved policy (sampling actions, as CleanRL's ppo_eval does) for `eval_episodes` episodes."""
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, 0, capture_video, run_name)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    agent = Model(int(envs.single_action_space.n)).to(device)
    agent.load_state_dict(load_file(model_path, device=str(device)))  # torch's layout: either twin's file loads
    agent.eval()
    obs, _ = envs.reset(seed=seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        with torch.no_grad():
            actions = Categorical(logits=agent.get_logits(torch.as_tensor(obs, device=device))).sample()
        obs, _, _, _, infos = envs.step(actions.cpu().numpy())
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
    """The parameters of `models`, the Adam state of `optimizers` (keyed "<optimizer>.<model>") and torch's RNG as numpy
    arrays, under the names both twins use."""
    arrays = {f"{k}.{n}": v for k, model in models.items() for n, v in model.state_dict().items()}
    for k, optimizer in optimizers.items():
        name, model = k.split(".")
        for n, p in models[model].named_parameters():
            state = optimizer.state[p]  # empty before torch's first Adam step
            arrays |= {f"{name}.{model}.{n}.{m}": state.get(m, torch.zeros_like(p)) for m in ("exp_avg", "exp_avg_sq")}
        arrays[f"{name}.step"] = torch.tensor(int(state.get("step", 0)))
        arrays[f"{name}.lr"] = torch.tensor(optimizer.param_groups[0]["lr"], dtype=torch.float32)
    return {k: v.detach().cpu().numpy() for k, v in arrays.items()} | {"rng.torch": torch.get_rng_state().numpy()}


def restore_arrays(arrays, models, optimizers, where, seed):
    """Put the checkpoint's `arrays` back into `models`, `optimizers` and torch's RNG in place, the RNG restarting from
    `seed` for an MLX checkpoint; one line and exit for the first array whose shape differs."""
    for k, v in checkpoint_arrays(models, optimizers).items():
        if not k.startswith("rng.") and (k not in arrays or arrays[k].shape != v.shape):
            raise SystemExit(f"{where}: {k} has shape {getattr(arrays.get(k), 'shape', None)} in the checkpoint, {v.shape} here")
    with torch.no_grad():
        for k, model in models.items():
            for n, v in model.state_dict().items():
                v.copy_(torch.tensor(arrays[f"{k}.{n}"]))
    for k, optimizer in optimizers.items():
        name, model = k.split(".")
        for n, p in models[model].named_parameters():
            adam = {m: torch.tensor(arrays[f"{name}.{model}.{n}.{m}"], device=p.device) for m in ("exp_avg", "exp_avg_sq")}
            optimizer.state[p] = {"step": torch.tensor(float(arrays[f"{name}.step"]))} | adam
        # torch keeps lr as a Python float, the checkpoint as float32: keep torch's exact one when they are equal
        group, lr = optimizer.param_groups[0], arrays[f"{name}.lr"]
        group["lr"] = group["lr"] if np.float32(group["lr"]) == lr else float(lr)
    if "rng.torch" in arrays:
        torch.set_rng_state(torch.tensor(arrays["rng.torch"]))
    else:
        torch.manual_seed(seed)
        print(f"{where}: an mlx checkpoint; the torch RNG restarts from seed {seed}")


if __name__ == "__main__":
    args = tyro.cli(Args)
    # one process per rank, started by a launcher (torchrun --standalone --nproc_per_node 2 <script>); started alone: one rank
    args.world_size, rank = int(os.getenv("WORLD_SIZE", "1")), int(os.getenv("RANK", "0"))
    local_rank = int(os.getenv("LOCAL_RANK", "0"))  # the rank on this machine: which GPU
    script = os.path.basename(__file__)
    check_args(args, script)
    args.local_batch_size = int(args.local_num_envs * args.num_steps)
    args.local_minibatch_size = int(args.local_batch_size // args.num_minibatches)
    args.num_envs = args.local_num_envs * args.world_size
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size
    arrays, resumed = load_checkpoint(args.resume, script, args) if args.resume else ({}, {})  # every rank reads it
    start_step = resumed.get("global_step", 0)
    run_name = resumed.get("run_name", f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}")

    # TRY NOT TO MODIFY: seeding
    # CRUCIAL: note that we needed to pass a different seed for each data parallelism worker
    args.seed += rank
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed - rank)  # the same initial weights on every rank: drawn from one seed
    torch.backends.cudnn.deterministic = args.torch_deterministic
    gpu = args.device_ids[local_rank] if args.device_ids else local_rank % max(torch.cuda.device_count(), 1)
    device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and args.cuda else "cpu")
    if args.world_size > 1:
        args.backend = args.backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(args.backend, device_id=device if args.backend == "nccl" else None)
    print(
        f"{script}: torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, rank {rank}/{args.world_size}"
    )

    config = vars(args) | {"framework": "torch", "algo": "ppo_atari_multigpu"}
    writer = None
    if rank == 0:  # rank 0 alone logs, checkpoints, saves and evaluates
        if args.track:
            import wandb

            wandb.tensorboard.patch(root_logdir=f"runs/{run_name}")  # named here, W&B does not spend 10 s at exit inferring it
            wandb.init(
                project=args.wandb_project_name,
                entity=args.wandb_entity,
                sync_tensorboard=True,
                config=config,
                name=run_name,
                group=f"ppo_atari_multigpu__{args.env_id}",
                monitor_gym=True,
                save_code=True,
                id=resumed.get("wandb_id"),
                resume="allow",
            )
        # the checkpoint's own iteration logged at start_step: a resumed run drops only what was logged after it
        writer = SummaryWriter(f"runs/{run_name}", purge_step=start_step + 1 if args.resume else None)
        writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in config.items())
        )

    # env setup
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video and rank == 0, run_name) for i in range(args.local_num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )

    agent = Agent(int(envs.single_action_space.n)).to(device)
    if rank > 0:  # from here on every rank samples its own actions (rank 0 goes on as the single-process script does)
        torch.manual_seed(args.seed)
    optimizer = make_optimizer(agent, args)
    hyper = {k: getattr(args, k) for k in ("clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss", "max_grad_norm")}
    train = partial(train_step, agent, optimizer, **hyper, world_size=args.world_size)

    # ALGO Logic: Storage setup (numpy: rollouts are written one step at a time on the host; frames stay uint8)
    obs = np.zeros((args.num_steps, args.local_num_envs) + envs.single_observation_space.shape, dtype=np.uint8)
    actions = np.zeros((args.num_steps, args.local_num_envs), dtype=np.int64)
    logprobs, rewards, dones, values = (np.zeros((args.num_steps, args.local_num_envs), dtype=np.float32) for _ in range(4))

    # TRY NOT TO MODIFY: start the game
    global_step = start_step
    start_time = time.time()
    next_obs, _ = envs.reset(seed=args.seed + start_step)
    envs.action_space.seed(args.seed + start_step)
    next_done = np.zeros(args.local_num_envs, dtype=np.float32)
    timing = dict.fromkeys(("env", "inference", "update"), 0.0)  # seconds per phase since the last log
    last_return = float("nan")
    counters = resumed.get("counters", dict(iteration=0))
    models, named_optimizers = {"agent": agent}, {"optimizer.agent": optimizer}
    if args.resume:  # continue the saved run as it was at its checkpoint; the envs (EzPickle: never pickled) restart
        restore_arrays(arrays, models, named_optimizers, f"{script}: --resume {args.resume}", args.seed + start_step)
        restore_rng(arrays, resumed)
        if rank > 0:  # the checkpoint holds rank 0's random streams: every other rank draws its own again
            random.seed(args.seed + start_step)
            np.random.seed(args.seed + start_step)
            torch.manual_seed(args.seed + start_step)
        print(f"{script}: the envs do not pickle; resumed envs restart from seed {args.seed + start_step}")
    stop, stopping = [], False  # the first Ctrl-C/SIGTERM: checkpoint and exit; a second Ctrl-C interrupts at once

    def on_signal(signum, frame):
        stop.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    iterations = range(counters["iteration"] + 1, args.num_iterations + 1)  # a resumed run goes on after its last iteration
    progress = tqdm(
        iterations, initial=iterations.start - 1, total=args.num_iterations, disable=not sys.stderr.isatty() or rank > 0
    )
    for iteration in progress:
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
                logits, value = agent.get_logits_and_value(torch.as_tensor(next_obs, device=device))
                action = Categorical(logits=logits).sample()
                logprob = categorical_logprob_entropy(logits, action)[0]
            actions[step], logprobs[step], values[step] = action.cpu().numpy(), logprob.cpu().numpy(), value.cpu().numpy()
            t1 = time.perf_counter()

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, rewards[step], terminations, truncations, infos = envs.step(actions[step])
            next_done = np.logical_or(terminations, truncations).astype(np.float32)
            for last_return, length in finished_episodes(infos):
                if rank == 0:  # rank 0 logs its own games, as CleanRL's does
                    tqdm.write(f"global_step={global_step}, episodic_return={last_return}")
                    writer.add_scalar("charts/episodic_return", last_return, global_step)
                    writer.add_scalar("charts/episodic_length", length, global_step)
            timing["inference"] += t1 - t0
            timing["env"] += time.perf_counter() - t1

        # bootstrap value if not done
        t0 = time.perf_counter()
        with torch.no_grad():
            next_value = agent.get_value(torch.as_tensor(next_obs, device=device)).cpu().numpy()
        advantages, returns = compute_gae(rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda)

        # flatten the batch
        batch = [
            torch.tensor(x.reshape((-1,) + x.shape[2:]), device=device)
            for x in (obs, actions, logprobs, advantages, returns, values)
        ]

        # Optimizing the policy and value network (each rank on its own minibatches, with the averaged gradients)
        b_inds = np.arange(args.local_batch_size)
        clipfracs = []
        for epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.local_batch_size, args.local_minibatch_size):
                stats = train(torch.as_tensor(b_inds[start : start + args.local_minibatch_size], device=device), batch)
                clipfracs.append(stats[5])
            if args.target_kl is not None and mean_over_ranks(stats[4], args.world_size) > args.target_kl:  # on every rank
                break
        if device.type == "cuda":
            torch.cuda.synchronize()  # the update is only done when the device is
        timing["update"] += time.perf_counter() - t0

        # TRY NOT TO MODIFY: record rewards for plotting purposes (read back once per iteration; rank 0's minibatches)
        if rank == 0:
            pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, _ = (s.item() for s in stats)
            y_pred, y_true = values.reshape(-1), returns.reshape(-1)
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

            steps_since_log = args.batch_size  # the steps of all ranks, as global_step and SPS count them
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("losses/value_loss", v_loss, global_step)
            writer.add_scalar("losses/policy_loss", pg_loss, global_step)
            writer.add_scalar("losses/entropy", entropy_loss, global_step)
            writer.add_scalar("losses/old_approx_kl", old_approx_kl, global_step)
            writer.add_scalar("losses/approx_kl", approx_kl, global_step)
            writer.add_scalar("losses/clipfrac", torch.stack(clipfracs).mean().item(), global_step)
            writer.add_scalar("losses/explained_variance", explained_var, global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            for phase, seconds in timing.items():
                writer.add_scalar(f"timing/{phase}_us", 1e6 * seconds / steps_since_log, global_step)
            progress.set_postfix(SPS=sps, ret=last_return)
            if progress.disable:  # no bar (not a TTY): print SPS as CleanRL does
                print("SPS:", sps)
        timing = dict.fromkeys(timing, 0.0)

        # a Ctrl-C/SIGTERM on any rank stops all of them after this iteration (a rank that stopped alone would leave the
        # others without a peer in their next all-reduce); checkpoint every checkpoint_every steps, and when stopping
        stopping = mean_over_ranks(torch.tensor(float(len(stop)), device=device), args.world_size) > 0
        if stopping or args.checkpoint_every and global_step % args.checkpoint_every < args.batch_size:  # a multiple was crossed
            if rank == 0:  # the parameters and the optimizer state are the same on every rank: rank 0 writes them
                counters = dict(iteration=iteration)
                meta = {"script": "ppo_atari_multigpu", "framework": "torch", "run_name": run_name, "env_id": args.env_id}
                meta |= {"num_envs": args.num_envs, "global_step": global_step, "counters": counters}
                meta |= {"wandb_id": wandb.run.id if args.track else None, "args": vars(args)}
                writer.flush()  # the logs up to the checkpoint survive a kill
                save_checkpoint(f"runs/{run_name}", checkpoint_arrays(models, named_optimizers), meta, args.keep_checkpoints)
                if stopping:
                    print(f"{script}: stopped at step {global_step}; resume with --resume runs/{run_name}")
            if stopping:
                break

    # every rank: a digest of the data it saw last and of the parameters it holds (the same on every rank)
    params = b"".join(v.cpu().numpy().tobytes() for v in agent.state_dict().values())
    digests = [hashlib.sha256(x).hexdigest()[:16] for x in (obs, params)]
    print(f"{script}: rank {rank} of {args.world_size}: last rollout sha256 {digests[0]}, parameters sha256 {digests[1]}")
    if args.save_model and not stopping and rank == 0:
        model_path = f"runs/{run_name}/{args.exp_name}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in agent.state_dict().items()}, model_path)
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
    if writer:
        writer.close()
    if args.world_size > 1:
        dist.destroy_process_group()  # without it gloo may abort the process at exit (torch 2.x)
