"""PPO for discrete actions (classic control) in MLX; its PyTorch twin is cleanrl_torch_reference/ppo_torch.py.

Mirrors CleanRL's ppo.py (https://docs.cleanrl.dev/rl-algorithms/ppo/#ppopy): same defaults, same loss,
same logged tags.

Usage: python cleanrl_mlx/ppo_mlx.py --env-id CartPole-v1
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

# The Linux `mlx[cpu]` wheel bundles the netlib reference BLAS, ~30x slower than OpenBLAS on these
# matmuls. Loading a system OpenBLAS with RTLD_GLOBAL before MLX is imported makes MLX bind to it.
# Opt out with CLEANRL_MLX_BLAS=bundled. (macOS uses Accelerate.)
BLAS = "accelerate" if sys.platform == "darwin" else "bundled"
if sys.platform.startswith("linux") and os.environ.get("CLEANRL_MLX_BLAS") != "bundled":
    try:
        ctypes.CDLL("libopenblas.so.0", mode=ctypes.RTLD_GLOBAL)
        BLAS = "openblas"
    except OSError:
        BLAS = "bundled (libopenblas.so.0 not found: apt install libopenblas0-pthread)"

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402

# tensorboardX imports torch whenever it is installed (~1.5 s and ~180 MB that an MLX run never uses): a None
# entry in sys.modules makes that import fail, so tensorboardX goes on without it
sys.modules.setdefault("torch", None)
from tensorboardX import SummaryWriter  # noqa: E402

if sys.modules["torch"] is None:
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
    }
    for name, (valid, must) in limits.items():
        if not valid:
            raise SystemExit(f"{script}: --{name.replace('_', '-')} must be {must}, got {getattr(args, name)}")
    if args.device not in ("gpu", "cpu"):
        raise SystemExit(f'{script}: --device must be "gpu" or "cpu", got {args.device!r}')
    if (args.num_envs * args.num_steps) % args.num_minibatches != 0:
        raise SystemExit(
            f"{script}: num_envs*num_steps = {args.num_envs * args.num_steps} is not divisible by "
            f"num_minibatches = {args.num_minibatches}"
        )
    if args.total_timesteps < args.num_envs * args.num_steps:
        raise SystemExit(
            f"{script}: --total-timesteps {args.total_timesteps} is less than one rollout "
            f"(num_envs*num_steps = {args.num_envs * args.num_steps})"
        )
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


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    layer.weight = nn.init.orthogonal(gain=std)(layer.weight)
    layer.bias = mx.full(layer.bias.shape, bias_const)
    return layer


@mx.custom_function
def tanh(x):
    return mx.tanh(x)


@tanh.vjp
def tanh_vjp(primals, cotangent, output):
    # d tanh(x)/dx = 1 - tanh(x)^2, taken from the saved output: the same function, a cheaper backward
    # (about a fifth less CPU time per update step on the Linux CPU backend)
    return cotangent * (1 - output * output)


class Tanh(nn.Module):
    def __call__(self, x):
        return tanh(x)


def forward(layers, x):
    for layer in layers:
        x = layer(x)
    return x


class Agent(nn.Module):
    # Plain lists (not nn.Sequential) so parameter names are `critic.0.weight`, ..., exactly the torch
    # twin's: a saved file loads in either framework.
    def __init__(self, obs_dim, n_actions):
        super().__init__()
        self.critic = [
            layer_init(nn.Linear(obs_dim, 64)),
            Tanh(),
            layer_init(nn.Linear(64, 64)),
            Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        ]
        self.actor = [
            layer_init(nn.Linear(obs_dim, 64)),
            Tanh(),
            layer_init(nn.Linear(64, 64)),
            Tanh(),
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
    entropy = -(mx.exp(logp) * logp).sum(-1)
    return logprob, entropy


def compute_gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    """CleanRL's GAE over a [num_steps, num_envs] rollout (numpy). dones[t] marks that obs[t] starts a
    new episode, so step t-1 does not bootstrap through it."""
    advantages = np.zeros_like(rewards)
    lastgaelam = 0.0
    num_steps = rewards.shape[0]
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            nextnonterminal = 1.0 - next_done
            nextvalues = next_value
        else:
            nextnonterminal = 1.0 - dones[t + 1]
            nextvalues = values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
    return advantages, advantages + values


def ppo_loss(agent, obs, actions, logprobs, advantages, returns, values, clip_coef, ent_coef, vf_coef, norm_adv, clip_vloss):
    """CleanRL's PPO loss on one minibatch. Returns (loss, (pg_loss, v_loss, entropy, old_approx_kl,
    approx_kl, clipfrac)); only `loss` is differentiated."""
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


def train_step(
    agent, optimizer, mb_inds, b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values, max_grad_norm, **loss_coefs
):
    """One gradient step on the minibatch mb_inds of the batch: PPO loss, global-norm gradient clipping, Adam.
    Returns the loss terms of ppo_loss."""
    minibatch = [b[mb_inds] for b in (b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values)]
    (loss, stats), grads = nn.value_and_grad(agent, partial(ppo_loss, agent, **loss_coefs))(*minibatch)
    grads, _ = optim.clip_grad_norm(grads, max_grad_norm)
    optimizer.update(agent, grads)
    return stats


def evaluate(model_path, make_env, env_id, eval_episodes, run_name, Model, device=mx.cpu, capture_video=True, seed=1):
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
        if "final_info" in infos:
            for i in np.flatnonzero(infos["final_info"]["_episode"]):
                episodic_return = infos["final_info"]["episode"]["r"][i]
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

    # env setup
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )

    # TRY NOT TO MODIFY: device, seeding, logging
    if args.device == "gpu" and not mx.is_available(mx.gpu):
        print("ppo_mlx: MLX has no GPU backend here, running on cpu")
        args.device = "cpu"
    mx.set_default_device(mx.gpu if args.device == "gpu" else mx.cpu)
    print(f"ppo_mlx: mlx {mx.__version__}, device {args.device}, BLAS {BLAS}")
    random.seed(args.seed)
    np.random.seed(args.seed)
    mx.random.seed(args.seed)

    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args) | {"framework": "mlx", "algo": "ppo", "blas": BLAS},
            name=run_name,
            group=f"ppo__{args.env_id}",
            monitor_gym=True,
            save_code=True,
        )
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s"
        % ("\n".join([f"|{key}|{value}|" for key, value in (vars(args) | {"framework": "mlx", "blas": BLAS}).items()])),
    )

    obs_dim = int(np.prod(envs.single_observation_space.shape))
    agent = Agent(obs_dim, int(envs.single_action_space.n))
    optimizer = make_optimizer(agent, args)
    train = partial(
        train_step,
        agent,
        optimizer,
        max_grad_norm=args.max_grad_norm,
        clip_coef=args.clip_coef,
        ent_coef=args.ent_coef,
        vf_coef=args.vf_coef,
        norm_adv=args.norm_adv,
        clip_vloss=args.clip_vloss,
    )

    # ALGO LOGIC: compiled hot paths. Both capture the live module state (no copies, no state dicts); the
    # learning rate lives in optimizer.state, so annealing it never recompiles; train gathers each minibatch
    # inside the graph, from batch arrays sent to MLX once per iteration.
    train = mx.compile(train, inputs=[agent.state, optimizer.state], outputs=[agent.state, optimizer.state])

    @partial(mx.compile, inputs=[agent.state, mx.random.state], outputs=[mx.random.state])
    def act(x):
        logits = agent.get_logits(x)
        action = mx.random.categorical(logits)
        logprob, _ = categorical_logprob_entropy(logits, action)
        return action, logprob, agent.get_value(x)

    # ALGO Logic: Storage setup (numpy: rollouts are written one step at a time on the host)
    obs = np.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=np.float32)
    actions = np.zeros((args.num_steps, args.num_envs), dtype=np.int32)
    logprobs = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    rewards = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    dones = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    values = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    start_time = time.time()
    next_obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    next_done = np.zeros(args.num_envs, dtype=np.float32)
    env_time = inference_time = update_time = 0.0  # seconds since the last log
    last_return = float("nan")
    progress = tqdm(total=args.total_timesteps, disable=not sys.stderr.isatty(), unit="step")

    for iteration in range(1, args.num_iterations + 1):
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
            action, logprob, value = act(mx.array(next_obs, dtype=mx.float32))
            mx.eval(action, logprob, value)
            actions[step] = action
            logprobs[step] = logprob
            values[step] = value
            t1 = time.perf_counter()

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, reward, terminations, truncations, infos = envs.step(actions[step])
            next_done = np.logical_or(terminations, truncations).astype(np.float32)
            rewards[step] = reward
            if "final_info" in infos:
                for i in np.flatnonzero(infos["final_info"]["_episode"]):
                    last_return = float(infos["final_info"]["episode"]["r"][i])
                    tqdm.write(f"global_step={global_step}, episodic_return={last_return}")
                    writer.add_scalar("charts/episodic_return", last_return, global_step)
                    writer.add_scalar("charts/episodic_length", infos["final_info"]["episode"]["l"][i], global_step)
            t2 = time.perf_counter()
            inference_time += t1 - t0
            env_time += t2 - t1

        # bootstrap value if not done
        t0 = time.perf_counter()
        next_value = np.array(agent.get_value(mx.array(next_obs, dtype=mx.float32)))
        advantages, returns = compute_gae(rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda)

        # flatten the batch (sent to the device once per iteration)
        b_obs = mx.array(obs.reshape((-1,) + envs.single_observation_space.shape))
        b_actions = mx.array(actions.reshape(-1))
        b_logprobs = mx.array(logprobs.reshape(-1))
        b_advantages = mx.array(advantages.reshape(-1))
        b_returns = mx.array(returns.reshape(-1))
        b_values = mx.array(values.reshape(-1))

        # Optimizing the policy and value network
        b_inds = np.arange(args.batch_size)
        clipfracs = []
        for epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                mb_inds = mx.array(b_inds[start : start + args.minibatch_size])
                stats = train(mb_inds, b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values)
                mx.eval(stats, agent.state, optimizer.state)  # one sync per gradient step
                clipfracs.append(stats[5])
            if args.target_kl is not None and stats[4].item() > args.target_kl:
                break
        update_time += time.perf_counter() - t0

        # TRY NOT TO MODIFY: record rewards for plotting purposes (read back once per iteration)
        pg_loss, v_loss, entropy_loss, old_approx_kl, approx_kl, _ = (s.item() for s in stats)
        y_pred, y_true = values.reshape(-1), returns.reshape(-1)
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        steps_since_log = args.batch_size
        sps = int(global_step / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", optimizer.learning_rate.item(), global_step)
        writer.add_scalar("losses/value_loss", v_loss, global_step)
        writer.add_scalar("losses/policy_loss", pg_loss, global_step)
        writer.add_scalar("losses/entropy", entropy_loss, global_step)
        writer.add_scalar("losses/old_approx_kl", old_approx_kl, global_step)
        writer.add_scalar("losses/approx_kl", approx_kl, global_step)
        writer.add_scalar("losses/clipfrac", mx.stack(clipfracs).mean().item(), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        writer.add_scalar("timing/env_us", 1e6 * env_time / steps_since_log, global_step)
        writer.add_scalar("timing/inference_us", 1e6 * inference_time / steps_since_log, global_step)
        writer.add_scalar("timing/update_us", 1e6 * update_time / steps_since_log, global_step)
        env_time = inference_time = update_time = 0.0
        progress.update(args.batch_size)
        progress.set_postfix(SPS=sps, ret=last_return)
        if progress.disable:  # no bar (not a TTY): print SPS as CleanRL does
            print("SPS:", sps)

    progress.close()
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
            device=mx.default_device(),
            capture_video=args.capture_video,
            seed=args.seed,
        )
        for idx, episodic_return in enumerate(episodic_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)

    envs.close()
    writer.close()
