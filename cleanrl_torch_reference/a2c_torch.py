"""A2C as Stable-Baselines3 defines it, in eager PyTorch, written as CleanRL's ppo.py: one RMSprop step per rollout, GAE(1) returns.

Reference twin of cleanrl_mlx/a2c_mlx.py. Docs: docs/a2c.md. Run: python cleanrl_torch_reference/a2c_torch.py --env-id CartPole-v1
"""

import os
import random
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import tyro
from safetensors.torch import load_file, save_file
from tensorboardX import SummaryWriter
from torch.distributions.categorical import Categorical
from torch.distributions.normal import Normal
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

    # Algorithm specific arguments (SB3's A2C defaults under CleanRL's names)
    env_id: str = "CartPole-v1"
    """the id of the environment"""
    total_timesteps: int = 500000
    """total timesteps of the experiments"""
    learning_rate: float = 7e-4
    """the learning rate of the optimizer"""
    num_envs: int = 4
    """the number of parallel game environments"""
    num_steps: int = 5
    """the number of steps to run in each environment per policy rollout (SB3's n_steps)"""
    anneal_lr: bool = False
    """Toggle learning rate annealing for policy and value networks"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 1.0
    """the lambda for the general advantage estimation (1.0: plain n-step advantages)"""
    norm_adv: bool = False
    """Toggles advantages normalization (SB3's normalize_advantage)"""
    ent_coef: float = 0.0
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    rms_prop_eps: float = 1e-5
    """the epsilon of RMSprop (alpha is 0.99), added to the square root of the running mean square"""
    log_interval: int = 100
    """log losses, SPS and timings every this many iterations (SB3's A2C default)"""

    # to be filled in runtime
    batch_size: int = 0
    """the batch size (computed in runtime)"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


def check_args(args: Args, script: str) -> None:
    """Reject bad input with one clear line before anything is created."""
    limits = {  # field: (valid?, what it must be)
        **{k: (getattr(args, k) > 0, "positive") for k in ("total_timesteps", "learning_rate", "num_envs", "num_steps")},
        **{k: (getattr(args, k) > 0, "positive") for k in ("max_grad_norm", "rms_prop_eps", "log_interval", "eval_episodes")},
        **{k: (0 <= getattr(args, k) <= 1, "in [0, 1]") for k in ("gamma", "gae_lambda")},
        **{k: (getattr(args, k) >= 0, "non-negative") for k in ("ent_coef", "vf_coef")},
    }
    for name, (valid, must) in limits.items():
        if not valid:
            raise SystemExit(f"{script}: --{name.replace('_', '-')} must be {must}, got {getattr(args, name)}")
    if args.total_timesteps < (rollout := args.num_envs * args.num_steps):
        raise SystemExit(f"{script}: --total-timesteps {args.total_timesteps} is less than one rollout ({rollout} steps)")
    if args.env_id not in gym.registry:
        raise SystemExit(f"{script}: unknown env id {args.env_id!r} (not in gymnasium's registry)")
    try:
        env = gym.make(args.env_id)
    except gym.error.DependencyNotInstalled as e:
        raise SystemExit(f"{script}: {args.env_id} needs a package that is not installed: {e}") from None
    if not isinstance(env.action_space, (gym.spaces.Discrete, gym.spaces.Box)):
        raise SystemExit(f"{script}: only Discrete or Box action spaces are supported; {args.env_id} has {env.action_space}")
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


def policy_head(action_space):
    """(number of actor outputs, continuous?): categorical logits for Discrete, Gaussian means for Box."""
    if isinstance(action_space, gym.spaces.Box):
        return int(np.prod(action_space.shape)), True
    return int(action_space.n), False


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    # SB3's MlpPolicy: separate 64-64 tanh actor and critic, orthogonal init (gain sqrt(2) hidden, 0.01 policy, 1 value)
    def __init__(self, obs_dim, action_dim, continuous):
        super().__init__()
        self.continuous = continuous
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, action_dim), std=0.01),
        )
        if continuous:  # state-independent log std, SB3's log_std_init = 0
            self.actor_logstd = nn.Parameter(torch.zeros(1, action_dim))

    def get_value(self, x):
        return self.critic(x).squeeze(-1)

    def sample_action(self, x):
        out = self.actor(x)  # logits, or the Gaussian's mean
        if self.continuous:
            return Normal(out, self.actor_logstd.exp().expand_as(out)).sample()
        return Categorical(logits=out).sample()

    def get_logprob_entropy(self, x, action):
        out = self.actor(x)
        if self.continuous:
            return normal_logprob_entropy(out, self.actor_logstd, action)
        return categorical_logprob_entropy(out, action)


def categorical_logprob_entropy(logits, action):
    """log pi(action) and entropy of a categorical distribution given by unnormalised logits."""
    probs = Categorical(logits=logits)
    return probs.log_prob(action), probs.entropy()


def normal_logprob_entropy(mean, logstd, action):
    """log pi(action) and entropy of a diagonal Gaussian, summed over action dimensions."""
    probs = Normal(mean, logstd.exp().expand_as(mean))
    return probs.log_prob(action).sum(-1), probs.entropy().sum(-1)


def compute_gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    """GAE over a [num_steps, num_envs] rollout, as CleanRL and SB3 compute it; dones[t]: obs[t] starts an episode."""
    advantages = np.zeros_like(rewards)
    lastgaelam = 0.0
    for t in reversed(range(len(rewards))):
        nextnonterminal = 1.0 - (dones[t + 1] if t + 1 < len(dones) else next_done)
        nextvalues = values[t + 1] if t + 1 < len(values) else next_value
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
    return advantages, advantages + values


def a2c_loss(agent, obs, actions, advantages, returns, ent_coef, vf_coef, norm_adv):
    """SB3's A2C loss on the whole rollout: (loss, (pg_loss, v_loss, entropy)); only `loss` is differentiated."""
    logprob, entropy = agent.get_logprob_entropy(obs, actions)
    newvalue = agent.get_value(obs)
    if norm_adv:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss = -(advantages * logprob).mean()
    v_loss = ((returns - newvalue) ** 2).mean()  # SB3's F.mse_loss: no 0.5 factor, unlike CleanRL's PPO
    entropy_loss = entropy.mean()
    loss = pg_loss - ent_coef * entropy_loss + v_loss * vf_coef
    return loss, (pg_loss, v_loss, entropy_loss)


def make_optimizer(agent, args):
    """SB3's RMSprop: alpha 0.99, eps from args, the learning rate from args."""
    return optim.RMSprop(agent.parameters(), lr=args.learning_rate, alpha=0.99, eps=args.rms_prop_eps, weight_decay=0)


def train_step(agent, optimizer, *batch, max_grad_norm, **loss_coefs):
    """One gradient step on the whole rollout batch (obs, actions, advantages, returns): A2C loss, global-norm
    gradient clipping, RMSprop. Returns the loss terms of a2c_loss."""
    loss, stats = a2c_loss(agent, *batch, **loss_coefs)
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
    optimizer.step()
    return stats


def evaluate(model_path, make_env, env_id, eval_episodes, run_name, Model, device, capture_video=True, seed=1):
    """Roll out a saved policy (sampling actions, as CleanRL's ppo_eval does) for `eval_episodes` episodes."""
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, 0, capture_video, run_name)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    agent = Model(int(np.prod(envs.single_observation_space.shape)), *policy_head(envs.single_action_space)).to(device)
    agent.load_state_dict(load_file(model_path, device=str(device)))
    obs, _ = envs.reset(seed=seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        with torch.no_grad():
            actions = agent.sample_action(torch.Tensor(obs).to(device)).cpu().numpy()
        if agent.continuous:
            actions = np.clip(actions, envs.single_action_space.low, envs.single_action_space.high)
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
    args.num_iterations = args.total_timesteps // args.batch_size
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    print(f"{os.path.basename(__file__)}: torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")

    config = vars(args) | {"framework": "torch", "algo": "a2c"}
    if args.track:
        import wandb

        wandb.tensorboard.patch(root_logdir=f"runs/{run_name}")  # named here, W&B does not spend 10 s at exit inferring it
        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=config,
            name=run_name,
            group=f"a2c__{args.env_id}",
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

    action_dim, continuous = policy_head(envs.single_action_space)
    agent = Agent(int(np.prod(envs.single_observation_space.shape)), action_dim, continuous).to(device)
    optimizer = make_optimizer(agent, args)
    coefs = {k: getattr(args, k) for k in ("max_grad_norm", "ent_coef", "vf_coef", "norm_adv")}
    train = partial(train_step, agent, optimizer, **coefs)

    @torch.no_grad()
    def act(x):
        return agent.sample_action(x), agent.get_value(x)

    get_value = torch.no_grad()(agent.get_value)

    # ALGO Logic: Storage setup (numpy: rollouts are written one step at a time on the host)
    obs = np.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=np.float32)
    action_dtype = np.float32 if continuous else np.int64
    actions = np.zeros((args.num_steps, args.num_envs) + envs.single_action_space.shape, dtype=action_dtype)
    rewards, dones, values = (np.zeros((args.num_steps, args.num_envs), dtype=np.float32) for _ in range(3))

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    start_time = time.time()
    next_obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    next_done = np.zeros(args.num_envs, dtype=np.float32)
    timing = dict.fromkeys(("env", "inference", "update"), 0.0)  # seconds per phase since the last log
    steps_since_log = 0
    last_return = float("nan")

    for iteration in (progress := tqdm(range(1, args.num_iterations + 1), disable=not sys.stderr.isatty())):
        if args.anneal_lr:  # Annealing the rate if instructed to do so.
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done

            # ALGO LOGIC: action logic
            t0 = time.perf_counter()
            action, value = act(torch.Tensor(next_obs).to(device))
            actions[step], values[step] = action.cpu().numpy(), value.cpu().numpy()
            t1 = time.perf_counter()

            # TRY NOT TO MODIFY: execute the game and log data.
            # The buffer keeps the sampled action; the env gets it clipped to its bounds (SB3 does the same).
            env_action = actions[step]
            if continuous:
                env_action = np.clip(env_action, envs.single_action_space.low, envs.single_action_space.high)
            next_obs, reward, terminations, truncations, infos = envs.step(env_action)
            next_done = np.logical_or(terminations, truncations).astype(np.float32)
            rewards[step] = reward
            for last_return, length in finished_episodes(infos):
                tqdm.write(f"global_step={global_step}, episodic_return={last_return}")
                writer.add_scalar("charts/episodic_return", last_return, global_step)
                writer.add_scalar("charts/episodic_length", length, global_step)
            t2 = time.perf_counter()

            # ALGO LOGIC: SB3's timeout handling. An episode cut by the time limit did not really end, so its last
            # reward is bootstrapped with the value of its true final observation (the episode still ends for GAE).
            # CleanRL's PPO treats truncation as termination instead.
            truncated = np.flatnonzero(truncations & ~terminations)
            if len(truncated) > 0:
                final_obs = torch.Tensor(np.stack(infos["final_obs"][truncated])).to(device)
                rewards[step, truncated] += args.gamma * get_value(final_obs).cpu().numpy()
            timing["inference"] += t1 - t0 + time.perf_counter() - t2
            timing["env"] += t2 - t1

        # bootstrap value if not done
        t0 = time.perf_counter()
        next_value = get_value(torch.Tensor(next_obs).to(device)).cpu().numpy()
        advantages, returns = compute_gae(rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda)

        # One gradient step on the whole rollout (no minibatches, no epochs)
        stats = train(*[torch.tensor(x, device=device).flatten(0, 1) for x in (obs, actions, advantages, returns)])
        if device.type == "cuda":
            torch.cuda.synchronize()  # the update is only done when the device is
        timing["update"] += time.perf_counter() - t0
        steps_since_log += args.batch_size

        # TRY NOT TO MODIFY: record losses for plotting purposes (read back only at log time)
        if iteration % args.log_interval == 0 or iteration == args.num_iterations:
            losses = dict(zip(("policy_loss", "value_loss", "entropy"), (s.item() for s in stats)))
            var_y = np.var(returns)
            losses["explained_variance"] = np.nan if var_y == 0 else 1 - np.var(returns - values) / var_y
            sps = int(global_step / (time.time() - start_time))
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            for name, loss in losses.items():
                writer.add_scalar(f"losses/{name}", loss, global_step)
            for phase, seconds in timing.items():
                writer.add_scalar(f"timing/{phase}_us", 1e6 * seconds / steps_since_log, global_step)
            timing, steps_since_log = dict.fromkeys(timing, 0.0), 0
            progress.set_postfix(SPS=sps, ret=last_return)
            if progress.disable:
                print("SPS:", sps)

    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.safetensors"
        save_file(agent.state_dict(), model_path)
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
