"""PPO for discrete actions (classic control) in MLX, as CleanRL's ppo.py: same defaults, loss and logged tags.

Twin: cleanrl_torch_reference/ppo_torch.py. Docs: docs/ppo.md. Run: python cleanrl_mlx/ppo_mlx.py --env-id CartPole-v1
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
    num_envs: int = 4
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
    clip_coef: float = 0.2
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
    limits = {  # field: (valid?, what it must be)
        **{k: (getattr(args, k) > 0, "positive") for k in ("total_timesteps", "learning_rate", "num_envs", "num_steps")},
        **{k: (getattr(args, k) > 0, "positive") for k in ("num_minibatches", "update_epochs", "clip_coef", "max_grad_norm")},
        **{k: (0 <= getattr(args, k) <= 1, "in [0, 1]") for k in ("gamma", "gae_lambda")},
        **{k: (getattr(args, k) >= 0, "non-negative") for k in ("ent_coef", "vf_coef")},
        "target_kl": (args.target_kl is None or args.target_kl > 0, "None or positive"),
        "eval_episodes": (args.eval_episodes > 0, "positive"),
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
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise SystemExit(
            f"{script}: only discrete action spaces are supported; {args.env_id} has {env.action_space} "
            f"(use {script.replace('ppo', 'ppo_continuous_action', 1)})"
        )
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
    def __init__(self, obs_dim, n_actions):
        super().__init__()
        self.critic = [
            layer_init(nn.Linear(obs_dim, 64)),
            tanh,
            layer_init(nn.Linear(64, 64)),
            tanh,
            layer_init(nn.Linear(64, 1), std=1.0),
        ]
        self.actor = [
            layer_init(nn.Linear(obs_dim, 64)),
            tanh,
            layer_init(nn.Linear(64, 64)),
            tanh,
            layer_init(nn.Linear(64, n_actions), std=0.01),
        ]

    def get_value(self, x):
        return forward(self.critic, x).squeeze(-1)

    def get_logits(self, x):
        return forward(self.actor, x)


def categorical_logprob_entropy(logits, action):
    """log pi(action) and entropy of a categorical distribution given by unnormalised logits."""
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    logprob = mx.take_along_axis(logp, action[:, None], axis=-1).squeeze(-1)
    return logprob, -(mx.exp(logp) * logp).sum(-1)


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
    newlogprob, entropy = categorical_logprob_entropy(agent.get_logits(obs), actions)
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


def evaluate(model_path, make_env, env_id, eval_episodes, run_name, Model, device, capture_video=True, seed=1):
    """Roll out a saved policy (sampling actions, as CleanRL's ppo_eval does) for `eval_episodes` episodes."""
    mx.set_default_device(device)
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, 0, capture_video, run_name)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    agent = Model(int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n))
    agent.load_weights(model_path)
    obs, _ = envs.reset(seed=seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        actions = np.array(mx.random.categorical(agent.get_logits(mx.array(obs, dtype=mx.float32))))
        obs, _, _, _, infos = envs.step(actions)
        for episodic_return, _ in finished_episodes(infos):
            print(f"eval_episode={len(episodic_returns)}, episodic_return={episodic_return}")
            episodic_returns.append(episodic_return)
    envs.close()
    return episodic_returns


if __name__ == "__main__":
    args = tyro.cli(Args)
    check_args(args, os.path.basename(__file__))
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size
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

    config = vars(args) | {"framework": "mlx", "algo": "ppo", "blas": BLAS, "math": MATH, "threads": THREADS}
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
            group=f"ppo__{args.env_id}",
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

    agent = Agent(int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n))
    optimizer = make_optimizer(agent, args)
    # ALGO LOGIC: compiled hot paths on the live state (the learning rate is in optimizer.state: annealing never recompiles)
    state = [agent.state, optimizer.state]
    coefs = {k: getattr(args, k) for k in ("max_grad_norm", "clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss")}
    train = mx.compile(partial(train_step, agent, optimizer, **coefs), inputs=state, outputs=state)

    @partial(mx.compile, inputs=[agent.state, mx.random.state], outputs=[mx.random.state])
    def act(x):
        logits = agent.get_logits(x)
        action = mx.random.categorical(logits)
        logprob, _ = categorical_logprob_entropy(logits, action)
        return action, logprob, agent.get_value(x)

    # ALGO Logic: Storage setup (numpy: rollouts are written one step at a time on the host)
    obs = np.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=np.float32)
    actions = np.zeros((args.num_steps, args.num_envs), dtype=np.int32)
    logprobs, rewards, dones, values = (np.zeros((args.num_steps, args.num_envs), dtype=np.float32) for _ in range(4))

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    start_time = time.time()
    next_obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    next_done = np.zeros(args.num_envs, dtype=np.float32)
    timing = dict.fromkeys(("env", "inference", "update"), 0.0)  # seconds per phase since the last log
    last_return = float("nan")

    for iteration in (progress := tqdm(range(1, args.num_iterations + 1), disable=not sys.stderr.isatty())):
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
        sps = int(global_step / (time.time() - start_time))
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

    if args.save_model:
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
