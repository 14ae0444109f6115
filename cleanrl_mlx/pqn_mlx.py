"""PQN (parallel Q-learning, classic control) in MLX, as CleanRL's pqn.py: same defaults, Q(lambda) targets, loss and tags.

Twin: cleanrl_torch_reference/pqn_torch.py. Docs: docs/pqn.md. Run: python cleanrl_mlx/pqn_mlx.py --env-id CartPole-v1
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
    """the number of steps to run for each environment per update"""
    num_minibatches: int = 4
    """the number of mini-batches"""
    update_epochs: int = 4
    """the K epochs to update the policy"""
    anneal_lr: bool = True
    """Toggle learning rate annealing"""
    gamma: float = 0.99
    """the discount factor gamma"""
    start_e: float = 1
    """the starting epsilon for exploration"""
    end_e: float = 0.05
    """the ending epsilon for exploration"""
    exploration_fraction: float = 0.5
    """the fraction of `total_timesteps` it takes from start_e to end_e"""
    max_grad_norm: float = 10.0
    """the maximum norm for the gradient clipping"""
    q_lambda: float = 0.65
    """the lambda for Q(lambda)"""


def check_args(args: Args, script: str) -> None:
    """Reject bad input with one clear line before anything is created."""
    limits = {  # field: (valid?, what it must be)
        **{k: (getattr(args, k) > 0, "positive") for k in ("total_timesteps", "learning_rate", "num_envs", "num_steps")},
        **{k: (getattr(args, k) > 0, "positive") for k in ("num_minibatches", "update_epochs", "max_grad_norm", "eval_episodes")},
        **{k: (0 <= getattr(args, k) <= 1, "in [0, 1]") for k in ("gamma", "q_lambda", "start_e", "end_e")},
        "exploration_fraction": (0 < args.exploration_fraction <= 1, "in (0, 1]"),
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
        raise SystemExit(f"{script}: only discrete action spaces are supported; {args.env_id} has {env.action_space}")
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


def forward(layers, x):
    for layer in layers:
        x = layer(x)
    return x


# ALGO LOGIC: initialize agent here:
class QNetwork(nn.Module):
    # a list, not nn.Sequential: parameter names (`network.0.weight`, `network.1.weight`, ...) are torch's
    def __init__(self, obs_dim, n_actions):
        super().__init__()
        self.network = [
            layer_init(nn.Linear(obs_dim, 120)),
            nn.LayerNorm(120),
            nn.ReLU(),
            layer_init(nn.Linear(120, 84)),
            nn.LayerNorm(84),
            nn.ReLU(),
            layer_init(nn.Linear(84, n_actions)),
        ]

    def __call__(self, x):
        return forward(self.network, x)


class RAdam(optim.Optimizer):
    """torch.optim.RAdam (Liu et al. 2020), which MLX does not ship: Adam whose adaptive step is switched on, and scaled
    by a rectification term, once the variance of the adaptive learning rate is tractable (rho_t > 5, from step 6)."""

    def __init__(self, learning_rate, betas=(0.9, 0.999), eps=1e-8):
        super().__init__()
        self._maybe_schedule("learning_rate", learning_rate)
        self.betas, self.eps = betas, eps

    def init_single(self, parameter, state):
        state["m"], state["v"] = mx.zeros_like(parameter), mx.zeros_like(parameter)

    def apply_single(self, gradient, parameter, state):
        (b1, b2), t = self.betas, self.step.astype(mx.float32)
        state["m"] = m = b1 * state["m"] + (1 - b1) * gradient
        state["v"] = v = b2 * state["v"] + (1 - b2) * mx.square(gradient)
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
        rect = mx.sqrt(mx.maximum((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t), 0.0))
        adaptive = mx.where(rho_t > 5, rect * mx.sqrt(1 - b2**t) / (mx.sqrt(v) + self.eps), 1.0)
        return parameter - self.learning_rate * (m / (1 - b1**t)) * adaptive


def linear_schedule(start_e: float, end_e: float, duration: int, t: int):
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


def q_lambda_returns(rewards, values, dones, next_value, next_done, gamma, q_lambda):
    """CleanRL's Q(lambda) targets over a [num_steps, num_envs] rollout, computed backwards; values[t] = max_a Q(obs[t], a),
    dones[t] marks that obs[t] starts a new episode (no bootstrapping across it)."""
    returns = np.zeros_like(rewards)
    returns[-1] = rewards[-1] + gamma * next_value * (1.0 - next_done)
    for t in reversed(range(len(rewards) - 1)):
        returns[t] = rewards[t] + gamma * (q_lambda * returns[t + 1] + (1 - q_lambda) * values[t + 1]) * (1.0 - dones[t + 1])
    return returns


def pqn_loss(q_network, obs, actions, returns):
    """Mean squared error between Q(s, a) and the Q(lambda) return. Returns (loss, Q(s, a))."""
    old_val = mx.take_along_axis(q_network(obs), actions[:, None], axis=1).squeeze(1)
    return ((returns - old_val) ** 2).mean(), old_val


def make_optimizer(q_network, args):
    """CleanRL's RAdam: the learning rate from args, torch's defaults otherwise (betas 0.9/0.999, eps 1e-8)."""
    optimizer = RAdam(learning_rate=args.learning_rate)
    optimizer.init(q_network.trainable_parameters())  # the compiled step captures this state, so it must exist
    return optimizer


def train_step(q_network, optimizer, mb_inds, *batch, max_grad_norm):
    """One gradient step on rows mb_inds of batch (obs, actions, returns): loss, global-norm gradient clipping, RAdam.
    Returns (TD loss, mean Q(s, a)) for logging."""
    (loss, old_val), grads = nn.value_and_grad(q_network, partial(pqn_loss, q_network))(*[b[mb_inds] for b in batch])
    grads, _ = optim.clip_grad_norm(grads, max_grad_norm)
    optimizer.update(q_network, grads)
    return loss, old_val.mean()


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
    print(f"{os.path.basename(__file__)}: mlx {mx.__version__}, device {args.device}, BLAS {BLAS}")

    config = vars(args) | {"framework": "mlx", "algo": "pqn", "blas": BLAS}
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
            group=f"pqn__{args.env_id}",
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

    # agent setup
    n_actions = int(envs.single_action_space.n)
    q_network = QNetwork(int(np.prod(envs.single_observation_space.shape)), n_actions)
    optimizer = make_optimizer(q_network, args)
    # ALGO LOGIC: compiled hot paths on the live state (the learning rate is in optimizer.state: annealing never recompiles)
    state = [q_network.state, optimizer.state]
    train = mx.compile(partial(train_step, q_network, optimizer, max_grad_norm=args.max_grad_norm), inputs=state, outputs=state)

    @partial(mx.compile, inputs=[q_network.state])
    def act(x):
        q_values = q_network(x)
        return mx.argmax(q_values, axis=1), q_values.max(axis=1)

    # storage setup (numpy: rollouts are written one step at a time on the host)
    obs = np.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=np.float32)
    actions = np.zeros((args.num_steps, args.num_envs), dtype=np.int32)
    rewards, dones, values = (np.zeros((args.num_steps, args.num_envs), dtype=np.float32) for _ in range(3))

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    start_time = time.time()
    next_obs, _ = envs.reset(seed=args.seed)
    next_done = np.zeros(args.num_envs, dtype=np.float32)
    timing = dict.fromkeys(("env", "inference", "update"), 0.0)  # seconds per phase since the last log
    last_return = float("nan")

    for iteration in (progress := tqdm(range(1, args.num_iterations + 1), disable=not sys.stderr.isatty())):
        if args.anneal_lr:  # Annealing the rate if instructed to do so.
            optimizer.learning_rate = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done

            # ALGO LOGIC: epsilon-greedy per env; the random draws come from numpy, so same-seed twins explore alike
            t0 = time.perf_counter()
            epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, global_step)
            random_actions = np.random.randint(0, n_actions, args.num_envs)
            max_actions, value = act(mx.array(next_obs, dtype=mx.float32))
            mx.eval(max_actions, value)  # the one host sync of the step
            max_actions, values[step] = np.array(max_actions), value
            explore = np.random.rand(args.num_envs) < epsilon
            actions[step] = np.where(explore, random_actions, max_actions)
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

        # Compute Q(lambda) targets
        t0 = time.perf_counter()
        next_value = np.array(act(mx.array(next_obs, dtype=mx.float32))[1])
        returns = q_lambda_returns(rewards, values, dones, next_value, next_done, args.gamma, args.q_lambda)
        # flatten the batch (sent to the device once per iteration)
        batch = [mx.array(x).flatten(0, 1) for x in (obs, actions, returns)]

        # Optimizing the Q-network
        b_inds = np.arange(args.batch_size)
        for epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                loss, q_values = train(mx.array(b_inds[start : start + args.minibatch_size]), *batch)
                mx.eval(loss, q_values, state)  # one sync per gradient step
        timing["update"] += time.perf_counter() - t0

        # TRY NOT TO MODIFY: record losses for plotting purposes (read back once per iteration)
        sps = int(global_step / (time.time() - start_time))
        writer.add_scalar("losses/td_loss", loss.item(), global_step)
        writer.add_scalar("losses/q_values", q_values.item(), global_step)
        writer.add_scalar("charts/learning_rate", optimizer.learning_rate.item(), global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        for phase, seconds in timing.items():
            writer.add_scalar(f"timing/{phase}_us", 1e6 * seconds / args.batch_size, global_step)
        timing = dict.fromkeys(timing, 0.0)
        progress.set_postfix(SPS=sps, ret=last_return)
        if progress.disable:
            print("SPS:", sps)

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
