"""Soft Actor-Critic for continuous actions in eager PyTorch: the reference twin of cleanrl_mlx/sac_mlx.py.

Docs: docs/sac.md. Run: python cleanrl_torch_reference/sac_torch.py --env-id Hopper-v5
"""

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
    checkpoint_every: int = 0
    """write a checkpoint to runs/{run_name}/checkpoints every N environment steps (0: off); Ctrl-C/SIGTERM write one too"""
    keep_checkpoints: int = 2
    """how many of the newest checkpoints to keep"""
    resume: Optional[str] = None
    """continue the run saved in this run folder (its newest checkpoint) or checkpoint folder"""

    # Algorithm specific arguments
    env_id: str = "Hopper-v5"
    """the environment id of the task"""
    total_timesteps: int = 1000000
    """total timesteps of the experiments"""
    num_envs: int = 1
    """the number of parallel game environments"""
    buffer_size: int = int(1e6)
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient (default: 0.005)"""
    batch_size: int = 256
    """the batch size of sample from the reply memory"""
    learning_starts: int = 5000
    """timestep to start learning"""
    policy_lr: float = 3e-4
    """the learning rate of the policy network optimizer"""
    q_lr: float = 1e-3
    """the learning rate of the Q network network optimizer"""
    policy_frequency: int = 2
    """the frequency of training policy (delayed)"""
    target_network_frequency: int = 1  # Denis Yarats' implementation delays this by 2.
    """the frequency of updates for the target nerworks"""
    alpha: float = 0.2
    """Entropy regularization coefficient."""
    autotune: bool = True
    """automatic tuning of the entropy coefficient"""


def check_args(args: Args, script: str) -> None:
    """Reject bad input with one clear line before anything is created."""
    positive = ("eval_episodes", "total_timesteps", "num_envs", "buffer_size", "batch_size", "policy_lr", "q_lr", "alpha")
    positive += ("policy_frequency", "target_network_frequency", "keep_checkpoints")
    limits = {f: (getattr(args, f) > 0, "positive") for f in positive}
    limits |= {f: (getattr(args, f) >= 0, "non-negative") for f in ("seed", "learning_starts", "checkpoint_every")}
    limits |= {"gamma": (0 <= args.gamma <= 1, "in [0, 1]"), "tau": (0 < args.tau <= 1, "in (0, 1]")}
    for flag, (valid, must) in limits.items():
        if not valid:
            raise SystemExit(f"{script}: --{flag.replace('_', '-')} must be {must}, got {getattr(args, flag)}")
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
    if not isinstance(env.action_space, gym.spaces.Box):
        raise SystemExit(f"{script}: only continuous (Box) action spaces are supported; {args.env_id} has {env.action_space}")
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        raise SystemExit(f"{script}: only flat Box observation spaces are supported; {args.env_id} has {env.observation_space}")
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


# ALGO LOGIC: initialize agent here:
class StackedLinear(nn.Module):
    """`n` independent Linears in one (n, out, in) weight, so the twin critics are one matmul; each initialised as nn.Linear."""

    def __init__(self, n, input_dims, output_dims):
        super().__init__()
        scale = math.sqrt(1.0 / input_dims)
        self.weight = nn.Parameter(torch.empty(n, output_dims, input_dims).uniform_(-scale, scale))
        self.bias = nn.Parameter(torch.empty(n, output_dims).uniform_(-scale, scale))

    def forward(self, x):  # x: (B, in) shared by all n, or (n, B, in)
        return x @ self.weight.transpose(-1, -2) + self.bias[:, None, :]


class SoftQNetwork(nn.Module):
    """CleanRL's qf1 and qf2 (obs+act -> 256 -> 256 -> 1, ReLU) stacked: `fc1.weight` is (2, 256, in)."""

    def __init__(self, obs_dim, act_dim, n_critics=2):
        super().__init__()
        self.fc1 = StackedLinear(n_critics, obs_dim + act_dim, 256)
        self.fc2 = StackedLinear(n_critics, 256, 256)
        self.fc3 = StackedLinear(n_critics, 256, 1)

    def forward(self, x, a):
        x = torch.cat([x, a], 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x).squeeze(-1)  # (n_critics, B)


LOG_STD_MAX = 2
LOG_STD_MIN = -5


class Actor(nn.Module):
    def __init__(self, obs_dim, act_dim, action_low, action_high):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc_mean = nn.Linear(256, act_dim)
        self.fc_logstd = nn.Linear(256, act_dim)
        # action rescaling: torch buffers, saved with the weights, never trained
        self.register_buffer("action_scale", torch.tensor((action_high - action_low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor((action_high + action_low) / 2.0, dtype=torch.float32))

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        mean = self.fc_mean(x)
        log_std = torch.tanh(self.fc_logstd(x))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)  # From SpinUp / Denis Yarats
        return mean, log_std

    def get_action(self, x, eps=None):
        """Reparameterised tanh-squashed Gaussian sample, its log-prob (with the tanh/scale correction) and the mean
        action; `eps` is standard-normal noise, drawn here unless given (tests share it)."""
        mean, log_std = self(x)
        eps = torch.randn_like(mean) if eps is None else eps
        y_t = torch.tanh(mean + log_std.exp() * eps)  # reparameterization trick (mean + std * N(0,1))
        action = y_t * self.action_scale + self.action_bias
        log_prob = -0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi)  # Normal(mean, std).log_prob(mean + std * eps)
        # Enforcing Action Bound
        log_prob = (log_prob - torch.log(self.action_scale * (1 - y_t**2) + 1e-6)).sum(1, keepdim=True)
        return action, log_prob, torch.tanh(mean) * self.action_scale + self.action_bias


@torch.no_grad()
def soft_q_target(actor, qf_target, next_obs, rewards, dones, alpha, gamma, eps):
    """r + gamma * (1 - done) * (min_i Q_i'(s', a') - alpha * log pi(a'|s')), a' ~ pi(s'); no gradient."""
    next_state_actions, next_state_log_pi, _ = actor.get_action(next_obs, eps)
    min_qf_next_target = qf_target(next_obs, next_state_actions).min(0).values - alpha * next_state_log_pi.squeeze(-1)
    return rewards + (1 - dones) * gamma * min_qf_next_target


def critic_loss(qf, obs, actions, next_q_value):
    """Sum of both critics' MSE to the shared target. Returns (qf_loss, (qf1_loss, qf2_loss, qf1_values, qf2_values))."""
    q = qf(obs, actions)
    losses = ((q - next_q_value) ** 2).mean(1)
    return losses.sum(), (losses[0], losses[1], q[0].mean(), q[1].mean())


def actor_loss_fn(actor, qf, obs, alpha, eps):
    pi, log_pi, _ = actor.get_action(obs, eps)
    return (alpha * log_pi.squeeze(-1) - qf(obs, pi).min(0).values).mean()


def alpha_loss_fn(log_alpha, log_pi, target_entropy):
    return (-log_alpha.exp() * (log_pi + target_entropy)).mean()


@torch.no_grad()
def polyak_update(online, target, tau):
    """target <- tau * online + (1 - tau) * target, for every parameter (tau = 1 is a hard copy)."""
    for param, target_param in zip(online.parameters(), target.parameters()):
        target_param.data.copy_(tau * param.data + (1 - tau) * target_param.data)


def make_optimizers(actor, qf, log_alpha, args):
    """Adam (eps 1e-8, bias-corrected) for the critics (q_lr), the actor (policy_lr) and log-alpha (q_lr)."""
    params = (qf.parameters(), actor.parameters(), [log_alpha])
    return [optim.Adam(p, lr=lr) for p, lr in zip(params, (args.q_lr, args.policy_lr, args.q_lr))]


def train_step(actor, qf, qf_target, log_alpha, optimizers, batch, eps, *, update_actor, update_target, target_entropy, args):
    """One step of CleanRL's loop body: the critics; if `update_actor`, policy_frequency actor (and alpha) steps; if
    `update_target`, the polyak update. Noise: eps[0] for the target, eps[2i + 1] and eps[2i + 2] for the i-th actor and
    alpha steps. Returns (qf_loss, qf1_loss, qf2_loss, qf1_values, qf2_values, actor_loss, alpha_loss)."""
    obs, actions, next_obs, rewards, dones = batch
    q_optimizer, actor_optimizer, a_optimizer = optimizers
    alpha = log_alpha.exp().detach()
    next_q_value = soft_q_target(actor, qf_target, next_obs, rewards, dones, alpha, args.gamma, eps[0])
    qf_loss, q_stats = critic_loss(qf, obs, actions, next_q_value)
    q_optimizer.zero_grad()
    qf_loss.backward()
    q_optimizer.step()
    actor_loss = alpha_loss = torch.zeros(())
    if update_actor:
        for i in range(args.policy_frequency):  # compensate for the delay by doing 'actor_update_interval' instead of 1
            actor_loss = actor_loss_fn(actor, qf, obs, alpha, eps[2 * i + 1])
            actor_optimizer.zero_grad()
            actor_loss.backward()
            actor_optimizer.step()
            if args.autotune:
                with torch.no_grad():
                    _, log_pi, _ = actor.get_action(obs, eps[2 * i + 2])
                alpha_loss = alpha_loss_fn(log_alpha, log_pi, target_entropy)
                a_optimizer.zero_grad()
                alpha_loss.backward()
                a_optimizer.step()
                alpha = log_alpha.exp().detach()
    # update the target networks
    if update_target:
        polyak_update(qf, qf_target, args.tau)
    return (qf_loss,) + q_stats + (actor_loss, alpha_loss)


def evaluate(model_path, make_env, env_id, eval_episodes, run_name, Model, device, capture_video=True, seed=1):
    """Roll out the saved actor's deterministic (mean) action for `eval_episodes` episodes."""
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, 0, capture_video, run_name)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    space = envs.single_action_space
    actor = Model(int(np.prod(envs.single_observation_space.shape)), int(np.prod(space.shape)), space.low, space.high).to(device)
    actor.load_state_dict(
        {k.removeprefix("actor."): v for k, v in load_file(model_path, str(device)).items() if k.startswith("actor.")}
    )
    obs, _ = envs.reset(seed=seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        with torch.no_grad():
            _, _, actions = actor.get_action(torch.Tensor(obs).to(device))
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
    """The parameters of `models` (modules, or dicts of named tensors such as sac's log_alpha), the Adam state of
    `optimizers` (keyed "<optimizer>.<model>") and torch's RNG as numpy arrays, under the names both twins use."""
    prefix = {k: f"{k}." if isinstance(model, nn.Module) else "" for k, model in models.items()}  # a dict names its arrays
    arrays = {prefix[k] + n: v for k, m in models.items() for n, v in (m.state_dict() if prefix[k] else m).items()}
    for k, optimizer in optimizers.items():
        name, model = k.split(".")
        for n, p in models[model].named_parameters() if prefix[model] else models[model].items():
            state = optimizer.state[p]  # empty before torch's first Adam step
            arrays |= {f"{name}.{prefix[model]}{n}.{m}": state.get(m, torch.zeros_like(p)) for m in ("exp_avg", "exp_avg_sq")}
        arrays[f"{name}.step"] = torch.tensor(int(state.get("step", 0)))
        arrays[f"{name}.lr"] = torch.tensor(optimizer.param_groups[0]["lr"], dtype=torch.float32)
    return {k: v.detach().cpu().numpy() for k, v in arrays.items()} | {"rng.torch": torch.get_rng_state().numpy()}


def restore_arrays(arrays, models, optimizers, where, seed):
    """Put the checkpoint's `arrays` back into `models`, `optimizers` and torch's RNG in place, the RNG restarting from
    `seed` for an MLX checkpoint; one line and exit for the first array whose shape differs."""
    for k, v in checkpoint_arrays(models, optimizers).items():
        if not k.startswith("rng.") and (k not in arrays or arrays[k].shape != v.shape):
            raise SystemExit(f"{where}: {k} has shape {getattr(arrays.get(k), 'shape', None)} in the checkpoint, {v.shape} here")
    prefix = {k: f"{k}." if isinstance(model, nn.Module) else "" for k, model in models.items()}
    with torch.no_grad():
        for k, model in models.items():
            for n, v in (model.state_dict() if prefix[k] else model).items():
                v.copy_(torch.tensor(arrays[prefix[k] + n]))
    for k, optimizer in optimizers.items():
        name, model = k.split(".")
        for n, p in models[model].named_parameters() if prefix[model] else models[model].items():
            adam = {m: torch.tensor(arrays[f"{name}.{prefix[model]}{n}.{m}"], device=p.device) for m in ("exp_avg", "exp_avg_sq")}
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
    script = os.path.basename(__file__)
    check_args(args, script)
    arrays, resumed = load_checkpoint(args.resume, script, args) if args.resume else ({}, {})
    start_step = resumed.get("global_step", 0)
    run_name = resumed.get("run_name", f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}")
    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    print(f"{script}: torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")

    config = vars(args) | {"framework": "torch", "algo": "sac"}
    if args.track:
        import wandb

        wandb.tensorboard.patch(root_logdir=f"runs/{run_name}")  # named here, W&B does not spend 10 s at exit inferring it
        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=config,
            name=run_name,
            group=f"sac__{args.env_id}",
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
    # EzPickle envs (MuJoCo, Box2D) pickle their arguments, not their state: those restart from a seed on resume
    envs_pickle = not args.capture_video and not any(isinstance(env.unwrapped, gym.utils.EzPickle) for env in envs.envs)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = int(np.prod(envs.single_action_space.shape))
    actor = Actor(obs_dim, act_dim, envs.single_action_space.low, envs.single_action_space.high).to(device)
    qf = SoftQNetwork(obs_dim, act_dim).to(device)  # qf1 and qf2, stacked
    qf_target = SoftQNetwork(obs_dim, act_dim).to(device)
    qf_target.load_state_dict(qf.state_dict())

    # Automatic entropy tuning (log-alpha stays log(args.alpha) without it)
    target_entropy = -float(act_dim)
    log_alpha = torch.tensor([0.0 if args.autotune else math.log(args.alpha)], requires_grad=True, device=device)
    optimizers = make_optimizers(actor, qf, log_alpha, args)

    step = partial(train_step, actor, qf, qf_target, log_alpha, optimizers, target_entropy=target_entropy, args=args)
    train = {(a, t): partial(step, update_actor=a, update_target=t) for a in (False, True) for t in (False, True)}

    # ALGO Logic: replay buffer (numpy; one row per env transition, the true final obs on episode ends)
    rb_obs, rb_next_obs = np.zeros((2, args.buffer_size, obs_dim), dtype=np.float32)
    rb_actions = np.zeros((args.buffer_size, act_dim), dtype=np.float32)
    rb_rewards, rb_dones = np.zeros((2, args.buffer_size), dtype=np.float32)  # dones: terminations only, truncation bootstraps
    counters = resumed.get(
        "counters", dict(rb_count=0, last_log_step=0, last_return=float("nan"), actor_loss=float("nan"), alpha_loss=float("nan"))
    )
    rb_count = counters["rb_count"]  # transitions added so far
    rb = {"obs": rb_obs, "actions": rb_actions, "next_obs": rb_next_obs, "rewards": rb_rewards, "dones": rb_dones}

    # TRY NOT TO MODIFY: start the game
    start_time = time.time()
    obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    timing = dict.fromkeys(("env", "inference", "update"), 0.0)  # seconds per phase since the last log
    last_log_step, last_return = counters["last_log_step"], counters["last_return"]
    # nan: logged before the first actor update (policy_frequency > 100)
    actor_loss, alpha_loss = torch.tensor(counters["actor_loss"]), torch.tensor(counters["alpha_loss"])
    models = {"actor": actor, "qf": qf, "qf_target": qf_target, "log_alpha": {"log_alpha": log_alpha}}
    named_optimizers = dict(zip(("q_optimizer.qf", "actor_optimizer.actor", "a_optimizer.log_alpha"), optimizers))
    if args.resume:  # continue the saved run as it was at its checkpoint
        restore_arrays(arrays, models, named_optimizers, f"{script}: --resume {args.resume}", args.seed + start_step)
        restore_rng(arrays, resumed)
        for k, v in rb.items():
            v[: len(arrays[f"rb.{k}"])] = arrays[f"rb.{k}"]
        if "envs.pkl" in arrays:
            envs.close()
            envs, obs = pickle.loads(arrays["envs.pkl"].tobytes()), arrays["obs"]
        else:
            obs, _ = envs.reset(seed=args.seed + start_step)
            envs.action_space.seed(args.seed + start_step)
            print(f"{script}: the envs do not pickle; resumed envs restart from seed {args.seed + start_step}")
    stop = []  # the first Ctrl-C/SIGTERM: checkpoint and exit; a second Ctrl-C interrupts at once

    def on_signal(signum, frame):
        stop.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    progress = tqdm(
        range(start_step, args.total_timesteps), initial=start_step, total=args.total_timesteps, disable=not sys.stderr.isatty()
    )
    for global_step in progress:
        # ALGO LOGIC: put action logic here
        t0 = time.perf_counter()
        if global_step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            with torch.no_grad():
                actions = actor.get_action(torch.Tensor(obs).to(device))[0]
            actions = actions.cpu().numpy()  # the host sync
        t1 = time.perf_counter()

        # TRY NOT TO MODIFY: execute the game and log data.
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)

        # TRY NOT TO MODIFY: record rewards for plotting purposes
        for last_return, length in finished_episodes(infos):
            tqdm.write(f"global_step={global_step}, episodic_return={last_return}")
            writer.add_scalar("charts/episodic_return", last_return, global_step)
            writer.add_scalar("charts/episodic_length", length, global_step)

        # TRY NOT TO MODIFY: save data to reply buffer; handle `final_obs`
        idx = (rb_count + np.arange(args.num_envs)) % args.buffer_size
        rb_obs[idx], rb_next_obs[idx], rb_actions[idx] = obs, next_obs, actions
        rb_rewards[idx], rb_dones[idx] = rewards, terminations
        if "final_obs" in infos:  # next_obs of a finished episode is already the reset's: store the true final obs
            for i in np.flatnonzero(infos["_final_obs"]):
                rb_next_obs[idx[i]] = infos["final_obs"][i]
        rb_count += args.num_envs

        # TRY NOT TO MODIFY: CRUCIAL step easy to overlook
        obs = next_obs
        timing["inference"] += t1 - t0
        timing["env"] += time.perf_counter() - t1

        # ALGO LOGIC: training.
        if global_step > args.learning_starts:
            t2 = time.perf_counter()
            b = np.random.randint(0, min(rb_count, args.buffer_size), size=args.batch_size)
            batch = [torch.as_tensor(a[b], device=device) for a in (rb_obs, rb_actions, rb_next_obs, rb_rewards, rb_dones)]
            update_actor = global_step % args.policy_frequency == 0  # TD 3 Delayed update support
            update_target = global_step % args.target_network_frequency == 0
            eps = torch.randn(1 + 2 * args.policy_frequency * update_actor, args.batch_size, act_dim, device=device)
            stats = train[update_actor, update_target](batch, eps)
            if device.type == "cuda":
                torch.cuda.synchronize()  # the update is only done when the device is
            if update_actor:
                actor_loss, alpha_loss = stats[5:]  # as in CleanRL, the logged actor loss is the latest one computed
            timing["update"] += time.perf_counter() - t2

            if global_step % 100 == 0:
                qf_loss, qf1_loss, qf2_loss, qf1_values, qf2_values = (s.item() for s in stats[:5])
                writer.add_scalar("losses/qf1_values", qf1_values, global_step)
                writer.add_scalar("losses/qf2_values", qf2_values, global_step)
                writer.add_scalar("losses/qf1_loss", qf1_loss, global_step)
                writer.add_scalar("losses/qf2_loss", qf2_loss, global_step)
                writer.add_scalar("losses/qf_loss", qf_loss / 2.0, global_step)
                writer.add_scalar("losses/actor_loss", actor_loss.item(), global_step)
                writer.add_scalar("losses/alpha", log_alpha.exp().item(), global_step)
                if args.autotune:
                    writer.add_scalar("losses/alpha_loss", alpha_loss.item(), global_step)
                sps = int((global_step - start_step) / (time.time() - start_time))
                writer.add_scalar("charts/SPS", sps, global_step)
                steps_since_log = (global_step - last_log_step) * args.num_envs
                for phase, seconds in timing.items():
                    writer.add_scalar(f"timing/{phase}_us", 1e6 * seconds / steps_since_log, global_step)
                timing = dict.fromkeys(timing, 0.0)
                last_log_step = global_step
                progress.set_postfix(SPS=sps, ret=last_return)
                if progress.disable:  # no bar (not a TTY): print SPS as CleanRL does
                    print("SPS:", sps)

        # checkpoint every checkpoint_every steps, once this step's update is done, and on Ctrl-C/SIGTERM (then stop)
        if stop or args.checkpoint_every and (global_step + 1) % args.checkpoint_every == 0:
            n = min(rb_count, args.buffer_size)
            checkpoint = checkpoint_arrays(models, named_optimizers) | {f"rb.{k}": v[:n] for k, v in rb.items()} | {"obs": obs}
            if envs_pickle:  # cloudpickle: the envs hold make_env's closures
                checkpoint["envs.pkl"] = np.frombuffer(cloudpickle.dumps(envs), np.uint8)
            counters = dict(rb_count=rb_count, last_log_step=last_log_step, last_return=last_return)
            counters |= dict(actor_loss=actor_loss.item(), alpha_loss=alpha_loss.item())
            meta = {"script": "sac", "framework": "torch", "run_name": run_name, "env_id": args.env_id}
            meta |= {"num_envs": args.num_envs, "global_step": global_step + 1, "counters": counters}
            meta |= {"wandb_id": wandb.run.id if args.track else None, "args": vars(args)}
            writer.flush()  # the logs up to the checkpoint survive a kill
            save_checkpoint(f"runs/{run_name}", checkpoint, meta, args.keep_checkpoints)
            if stop:
                print(f"{script}: stopped at step {global_step + 1}; resume with --resume runs/{run_name}")
                break

    if args.save_model and not stop:
        model_path = f"runs/{run_name}/{args.exp_name}.safetensors"
        save_file(nn.ModuleDict({"actor": actor, "qf": qf}).state_dict(), model_path)
        print(f"model saved to {model_path}")
        episodic_returns = evaluate(
            model_path,
            make_env,
            args.env_id,
            args.eval_episodes,
            f"{run_name}-eval",
            Actor,
            device,
            args.capture_video,
            args.seed,
        )
        for idx, episodic_return in enumerate(episodic_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)

    envs.close()
    writer.close()
