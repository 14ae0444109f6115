"""Per-script benchmark defaults and CleanRL's published returns. One entry per pair; a pair without
an entry still runs, with its own defaults and whatever --env-ids/--total-timesteps the CLI gives."""

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


@dataclass(frozen=True)
class Published:
    mean: float
    std: float
    total_timesteps: int
    source: str


BENCH: dict[str, Bench] = {
    # CleanRL's own budget for ppo.py on classic control, so the published return below applies.
    "ppo": Bench(env_ids=("CartPole-v1",), total_timesteps=500_000),
}

# CleanRL's published final returns (mean ± std over seeds), keyed by (script, env_id).
PUBLISHED: dict[tuple[str, str], Published] = {
    # https://docs.cleanrl.dev/rl-algorithms/ppo/#experiment-results (docs/rl-algorithms/ppo.md,
    # vwxyzjn/cleanrl@7a96de2): ppo.py, 500k steps (benchmark/ppo.sh), 3 seeds.
    ("ppo", "CartPole-v1"): Published(490.04, 6.12, 500_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#experiment-results"),
    ("ppo", "Acrobot-v1"): Published(-86.36, 1.32, 500_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#experiment-results"),
    ("ppo", "MountainCar-v0"): Published(
        -200.00, 0.00, 500_000, "https://docs.cleanrl.dev/rl-algorithms/ppo/#experiment-results"
    ),
}


def bench_for(script: str) -> Optional[Bench]:
    return BENCH.get(script)


def published_for(script: str, env_id: str) -> Optional[Published]:
    return PUBLISHED.get((script, env_id))
