"""Per-script benchmark defaults, CleanRL's published returns, and the tags each pair logs. One entry per pair; a
pair without a BENCH entry still runs, with its own defaults and whatever --env-ids/--total-timesteps the CLI gives."""

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Bench:
    env_ids: tuple[str, ...]
    """the envs a sweep uses when --env-ids is not given"""
    total_timesteps: Optional[int] = None
    """the budget when --total-timesteps is not given (None: the script's own default)"""
    extra_args: tuple[str, ...] = ()
    """arguments always passed to this script (before the CLI's pass-through ones)"""
    warmup_timesteps: Optional[int] = None
    """the budget of the untimed warm-up run before a sweep (None: the run's own): enough to call every compiled step"""
    budget_flag: str = "--total-timesteps"
    """the script's flag for the budget (allo counts gradient steps: --total-train-steps)"""


@dataclass(frozen=True)
class Published:
    mean: float
    std: float
    total_timesteps: int
    source: str
    env_id: str = ""
    """the env CleanRL measured on, where it is another version of ours (its MuJoCo figures are for v4, ours run v5)"""
    by: str = ""
    """who published it, where it is not CleanRL (the pairs CleanRL lacks: a2c, qrdqn)"""


BENCH: dict[str, Bench] = {
    # CleanRL's own budget for ppo.py on classic control, so the published return below applies.
    "ppo": Bench(env_ids=("CartPole-v1",), total_timesteps=500_000, warmup_timesteps=2_048),
    # Short budgets for the other pairs: enough for steady-state SPS and the timing split, not for
    # CleanRL's final returns (their published numbers need the full budgets).
    "a2c": Bench(env_ids=("CartPole-v1",), total_timesteps=100_000),
    # CleanRL's own budgets for dqn.py and c51.py: the first 10k steps only collect, epsilon anneals over
    # 250k, so a short run times mostly the exploring phase rather than the greedy steady state
    "dqn": Bench(env_ids=("CartPole-v1",), total_timesteps=500_000, warmup_timesteps=11_000),
    "c51": Bench(env_ids=("CartPole-v1",), total_timesteps=500_000, warmup_timesteps=11_000),
    "qrdqn": Bench(env_ids=("CartPole-v1",), total_timesteps=50_000),  # rl-zoo's whole budget
    # CleanRL's own budget for pqn.py (epsilon and the learning rate anneal over it), so the published return applies
    "pqn": Bench(env_ids=("CartPole-v1",), total_timesteps=500_000, warmup_timesteps=4_096),
    "qrdqn_actor_learner": Bench(env_ids=("CartPole-v1",), total_timesteps=20_000, extra_args=("--num-actors", "2")),
    "ppo_continuous_action": Bench(env_ids=("Pendulum-v1", "HalfCheetah-v5"), total_timesteps=20_480),
    "sac": Bench(env_ids=("Pendulum-v1", "HalfCheetah-v5"), total_timesteps=3_000, extra_args=("--learning-starts", "1000")),
    "td3": Bench(env_ids=("Pendulum-v1", "HalfCheetah-v5"), total_timesteps=3_000, extra_args=("--learning-starts", "1000")),
    "ddpg": Bench(env_ids=("Pendulum-v1", "HalfCheetah-v5"), total_timesteps=3_000, extra_args=("--learning-starts", "1000")),
    "ppo_atari": Bench(env_ids=("BreakoutNoFrameskip-v4",), total_timesteps=4_096),
    "ppo_atari_envpool": Bench(env_ids=("Breakout-v5",), total_timesteps=4_096),  # ppo_atari's budget: SPS side by side
    "ppo_atari_lstm": Bench(env_ids=("BreakoutNoFrameskip-v4",), total_timesteps=4_096),  # ppo_atari's budget, too
    # the runner starts one process: the one-rank path, ppo_atari's budget (2 ranks: docs/ppo_atari_multigpu.md)
    "ppo_atari_multigpu": Bench(env_ids=("BreakoutNoFrameskip-v4",), total_timesteps=4_096),
    "dqn_atari": Bench(env_ids=("BreakoutNoFrameskip-v4",), total_timesteps=3_000, extra_args=("--learning-starts", "1000")),
    # no env steps: the budget is gradient steps, the paper's 20k (its score: eval/cosine_similarity, see SCORE_TAGS)
    "allo": Bench(env_ids=("GridRoom-16",), budget_flag="--total-train-steps", warmup_timesteps=200),
}

# CleanRL's published final returns (mean ± std over seeds), keyed by (script, env_id); for the pairs CleanRL lacks,
# the reference their defaults come from.
PUBLISHED: dict[tuple[str, str], Published] = {
    # https://docs.cleanrl.dev/rl-algorithms/pqn/#experiment-results (docs/rl-algorithms/pqn.md, vwxyzjn/cleanrl@fe8d8a0,
    # measured after the Q(lambda) masking fix of PR #494): pqn.py, 500k steps (benchmark/pqn.sh), 3 seeds.
    ("pqn", "CartPole-v1"): Published(495.13, 6.89, 500_000, "https://docs.cleanrl.dev/rl-algorithms/pqn/#experiment-results"),
    ("pqn", "Acrobot-v1"): Published(-95.63, 5.73, 500_000, "https://docs.cleanrl.dev/rl-algorithms/pqn/#experiment-results"),
    ("pqn", "MountainCar-v0"): Published(
        -200.00, 0.00, 500_000, "https://docs.cleanrl.dev/rl-algorithms/pqn/#experiment-results"
    ),
    # https://docs.cleanrl.dev/rl-algorithms/ppo/#experiment-results (docs/rl-algorithms/ppo.md,
    # vwxyzjn/cleanrl@7a96de2): ppo.py, 500k steps (benchmark/ppo.sh), 3 seeds.
    ("ppo", "CartPole-v1"): Published(490.04, 6.12, 500_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#experiment-results"),
    ("ppo", "Acrobot-v1"): Published(-86.36, 1.32, 500_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#experiment-results"),
    ("ppo", "MountainCar-v0"): Published(
        -200.00, 0.00, 500_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#experiment-results"
    ),
    # https://docs.cleanrl.dev/rl-algorithms/dqn/#dqnpy and .../c51/#c51py, "Experiment results"
    # (docs/rl-algorithms/{dqn,c51}.md, vwxyzjn/cleanrl@fe8d8a0): dqn.py / c51.py, 500k steps, 3 seeds.
    ("dqn", "CartPole-v1"): Published(488.69, 16.11, 500_000, "https://docs.cleanrl.dev/rl-algorithms/dqn/#dqnpy"),
    ("c51", "CartPole-v1"): Published(481.20, 20.53, 500_000, "https://docs.cleanrl.dev/rl-algorithms/c51/#c51py"),
    # https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_continuous_actionpy (docs/benchmark/ppo_continuous_action.md,
    # vwxyzjn/cleanrl@fe8d8a0, tag pr-424): ppo_continuous_action.py, 1M steps, 3 seeds, on the v4 MuJoCo envs; ours run
    # v5 (the same robots; v5 fixed contact and reward details), so these are close references, not the same task.
    ("ppo_continuous_action", "HalfCheetah-v5"): Published(
        1442.64, 46.03, 1_000_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_continuous_actionpy", "HalfCheetah-v4"
    ),
    ("ppo_continuous_action", "Hopper-v5"): Published(
        2382.86, 271.74, 1_000_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_continuous_actionpy", "Hopper-v4"
    ),
    # https://docs.cleanrl.dev/rl-algorithms/sac/#sac_continuous_actionpy (docs/benchmark/sac.md, tag pr-424; the docs page's
    # table says v2 for these rows, the benchmark table and benchmark/sac.sh say v4), td3 and ddpg likewise
    # (docs/rl-algorithms/{td3,ddpg}.md, vwxyzjn/cleanrl@fe8d8a0): their defaults, 1M steps, 3 seeds, v4 MuJoCo envs.
    **{
        (script, f"{env}-v5"): Published(mean, std, 1_000_000, f"https://docs.cleanrl.dev/rl-algorithms/{page}", f"{env}-v4")
        for script, page, env, mean, std in (
            ("sac", "sac/#sac_continuous_actionpy", "HalfCheetah", 9634.89, 1423.73),
            ("sac", "sac/#sac_continuous_actionpy", "Hopper", 2310.46, 342.82),
            ("td3", "td3/#td3_continuous_actionpy", "HalfCheetah", 9583.22, 126.09),
            ("td3", "td3/#td3_continuous_actionpy", "Hopper", 3134.61, 360.18),
            ("ddpg", "ddpg/#ddpg_continuous_actionpy", "HalfCheetah", 10374.07, 157.37),
            ("ddpg", "ddpg/#ddpg_continuous_actionpy", "Hopper", 1576.78, 818.98),
        )
    },
    # https://docs.cleanrl.dev/rl-algorithms/dqn/#dqn_ataripy, "Experiment results" (docs/rl-algorithms/dqn.md, cleanrl@fe8d8a0):
    # dqn_atari.py, 10M steps (benchmark/dqn.sh), 3 seeds.
    ("dqn_atari", "BreakoutNoFrameskip-v4"): Published(
        366.93, 39.89, 10_000_000, "https://docs.cleanrl.dev/rl-algorithms/dqn/#dqn_ataripy"
    ),
    # rl-baselines3-zoo's benchmark.md (DLR-RM/rl-baselines3-zoo, "Performance of trained agents"), the budgets our a2c
    # and qrdqn defaults take: ONE trained agent, evaluated deterministically over 300 episodes (the std is over
    # episodes, not seeds), where ours average the last 100 training episodes, actions sampled / epsilon-greedy.
    ("a2c", "CartPole-v1"): Published(
        500.00, 0.00, 500_000, "https://github.com/DLR-RM/rl-baselines3-zoo/blob/master/benchmark.md", by="rl-zoo, 1 agent"
    ),
    ("qrdqn", "CartPole-v1"): Published(
        500.00, 0.00, 50_000, "https://github.com/DLR-RM/rl-baselines3-zoo/blob/master/benchmark.md", by="rl-zoo, 1 agent"
    ),
    # https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_ataripy, "Experiment results" (same page): ppo_atari.py, 10M steps, 3 seeds.
    ("ppo_atari", "BreakoutNoFrameskip-v4"): Published(
        414.66, 28.09, 10_000_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_ataripy"
    ),
    ("ppo_atari", "PongNoFrameskip-v4"): Published(
        20.36, 0.20, 10_000_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_ataripy"
    ),
    # https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_atari_multigpupy (docs/benchmark/ppo_atari_multigpu.md,
    # vwxyzjn/cleanrl@fe8d8a0): ppo_atari_multigpu.py on 2 processes x 4 local envs, 10M steps (benchmark/ppo.sh), 3 seeds.
    ("ppo_atari_multigpu", "BreakoutNoFrameskip-v4"): Published(
        414.94, 20.60, 10_000_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_atari_multigpupy"
    ),
    ("ppo_atari_multigpu", "PongNoFrameskip-v4"): Published(
        20.34, 0.43, 10_000_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_atari_multigpupy"
    ),
    ("ppo_atari_multigpu", "BeamRiderNoFrameskip-v4"): Published(
        2414.65, 643.74, 10_000_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_atari_multigpupy"
    ),
    # https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_atari_lstmpy, "Experiment results" (docs/rl-algorithms/ppo.md,
    # vwxyzjn/cleanrl@7a96de2): ppo_atari_lstm.py, its default 10M steps (benchmark/ppo.sh), 3 seeds.
    ("ppo_atari_lstm", "BreakoutNoFrameskip-v4"): Published(
        128.92, 31.10, 10_000_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_atari_lstmpy"
    ),
    ("ppo_atari_lstm", "PongNoFrameskip-v4"): Published(
        19.78, 1.58, 10_000_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_atari_lstmpy"
    ),
    ("ppo_atari_lstm", "BeamRiderNoFrameskip-v4"): Published(
        1536.20, 612.21, 10_000_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_atari_lstmpy"
    ),
    # https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_atari_envpoolpy, "Experiment results" (docs/benchmark/ppo_atari_envpool.md,
    # vwxyzjn/cleanrl@fe8d8a0): ppo_atari_envpool.py, 10M steps (benchmark/ppo.sh), 3 seeds.
    ("ppo_atari_envpool", "Breakout-v5"): Published(
        211.24, 151.84, 10_000_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_atari_envpoolpy"
    ),
    ("ppo_atari_envpool", "Pong-v5"): Published(
        20.45, 0.09, 10_000_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_atari_envpoolpy"
    ),
    ("ppo_atari_envpool", "BeamRider-v5"): Published(
        2501.85, 210.52, 10_000_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_atari_envpoolpy"
    ),
}


# ---------------------------------------------------------------- logged tags
# What the side-by-side views (benchmark.dashboard's W&B report and workspace, benchmark.tblayout's TensorBoard page)
# plot for a pair. Both twins log the same tags; tests/test_dashboard.py checks this table against the scripts' text.
TIMING_TAGS = ("timing/env_us", "timing/inference_us", "timing/update_us")
SCORE_TAG = "charts/episodic_return"
SCORE_TAGS: dict[str, str] = {"allo": "eval/cosine_similarity"}  # a pair without episodes: its score instead
PPO_LOSSES = ("value_loss", "policy_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac", "explained_variance")
Q_LOSSES = ("td_loss", "q_values")
CRITIC_LOSSES = ("qf1_values", "qf2_values", "qf1_loss", "qf2_loss", "qf_loss", "actor_loss")
LOSSES: dict[str, tuple[str, ...]] = {
    "ppo": PPO_LOSSES,
    "ppo_continuous_action": PPO_LOSSES,
    "ppo_atari": PPO_LOSSES,
    "ppo_atari_envpool": PPO_LOSSES,
    "ppo_atari_lstm": PPO_LOSSES,
    "ppo_atari_multigpu": PPO_LOSSES,
    "a2c": ("value_loss", "policy_loss", "entropy", "explained_variance"),
    "dqn": Q_LOSSES,
    "dqn_atari": Q_LOSSES,
    "pqn": Q_LOSSES,
    "qrdqn_actor_learner": Q_LOSSES,
    "c51": ("loss", "q_values"),
    "qrdqn": ("loss", "q_values"),
    "sac": (*CRITIC_LOSSES, "alpha", "alpha_loss"),
    "td3": CRITIC_LOSSES,
    "ddpg": ("qf1_values", "qf1_loss", "actor_loss"),
    "allo": ("loss", "graph_loss", "dual_loss", "barrier_loss"),
}


def score_tag(script: str) -> str:
    return SCORE_TAGS.get(script, SCORE_TAG)


def loss_tags(script: str) -> tuple[str, ...]:
    """The pair's `losses/*` tags (empty for a pair the table does not know)."""
    return tuple(f"losses/{name}" for name in LOSSES.get(script, ()))


def bench_for(script: str) -> Optional[Bench]:
    return BENCH.get(script)


def published_for(script: str, env_id: str) -> Optional[Published]:
    return PUBLISHED.get((script, env_id))
