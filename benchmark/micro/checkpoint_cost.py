"""Micro-benchmark: what one checkpoint costs (write time, load time, size on disk, extra peak memory while
writing) for the resumable scripts' largest states, through the scripts' own save_checkpoint/load_checkpoint.

- ppo_continuous_action: networks, Adam state and normalisation statistics (the real script's arrays);
- sac with its default 1M-transition replay buffer filled (HalfCheetah-v5 sizes: 17-dim observations, 6-dim
  actions), plus its networks and Adam states;
- dqn_atari with its default 1M-transition frame buffer filled (~7 GB; only with --dqn-atari).
Each case runs in a fresh process (`--child`), so its peak memory is its own. The SPS cost of a run with
--checkpoint-every N is this write time divided by the N steps' training time (see the closing figures).

Usage: python -m benchmark.micro.checkpoint_cost [--dqn-atari] [--out benchmark/results/micro-checkpoint]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmark.machine import describe, machine_info, peak_rss_mb
from benchmark.micro.update_step import write_results_md
from benchmark.pairs import REPO, RESULTS_DIR, load_script


def case_arrays(case: str) -> tuple[dict, object]:
    """(the arrays a checkpoint of this case holds, the script module whose functions write it)."""
    rng = np.random.default_rng(0)
    if case == "ppo_continuous_action":
        m = load_script(case, "mlx")
        agent = m.Agent(17, 6)
        optimizer = m.make_optimizer(agent, m.Args())
        arrays = m.checkpoint_arrays({"agent": agent}, {"optimizer.agent": optimizer})
        return arrays | {f"envs.0.obs_rms.{k}": rng.random(17) for k in ("mean", "var")}, m
    if case == "sac":
        m = load_script(case, "mlx")
        n = m.Args().buffer_size
        rb = {"obs": (n, 17), "next_obs": (n, 17), "actions": (n, 6), "rewards": (n,), "dones": (n,)}
        arrays = {f"rb.{k}": rng.standard_normal(shape, dtype=np.float32) for k, shape in rb.items()}
        return arrays | {f"net.{i}": rng.standard_normal((256, 256), dtype=np.float32) for i in range(12)}, m
    if case == "dqn_atari":
        m = load_script(case, "mlx")
        n = m.Args().buffer_size
        frames = np.empty((n + n // 100, 84, 84), np.uint8)  # every frame once, plus the episodes' first frames
        for i in range(0, len(frames), 4096):
            frames[i : i + 4096] = rng.integers(0, 256, (1, 84, 84), dtype=np.uint8)
        return {"rb.frames": frames, "rb.actions": np.zeros(n, np.int64), "rb.rewards": np.zeros(n, np.float32)}, m
    raise SystemExit(f"benchmark.micro.checkpoint_cost: unknown case {case!r}")


def child(case: str) -> dict:
    arrays, m = case_arrays(case)
    state = {"script": case, "framework": "mlx", "run_name": "bench", "env_id": "E", "num_envs": 1, "global_step": 10}
    args = m.Args(env_id="E", total_timesteps=10**9)
    before = peak_rss_mb() or 0.0
    folder = Path(tempfile.mkdtemp(dir=REPO / "benchmark"))  # on the disk the runs use, not a RAM-backed /tmp
    try:
        t0 = time.perf_counter()
        path = m.save_checkpoint(folder, arrays, state, keep=2)
        write_s = time.perf_counter() - t0
        write_peak = peak_rss_mb() or 0.0
        size = sum(p.stat().st_size for p in path.iterdir())
        t0 = time.perf_counter()
        m.load_checkpoint(folder, f"{case}_mlx.py", args)
        load_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    held = sum(a.nbytes for a in arrays.values()) / 2**20
    extra_peak = max(0.0, write_peak - before)
    return {"case": case, "state_mb": held, "write_s": write_s, "load_s": load_s, "size_mb": size / 2**20, "extra_mb": extra_peak}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmark.micro.checkpoint_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--dqn-atari", action="store_true", help="also the 7 GB dqn_atari buffer (needs ~15 GB free disk)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "micro-checkpoint")
    opts = p.parse_args(argv)
    if opts.child:
        print(json.dumps(child(opts.child)))
        return 0
    rows = []
    for case in ("ppo_continuous_action", "sac") + (("dqn_atari",) if opts.dqn_atari else ()):
        cmd = [sys.executable, "-m", "benchmark.micro.checkpoint_cost", "--child", case]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark.micro.checkpoint_cost: {case} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    lines = [
        "# Micro-benchmark: the cost of one checkpoint",
        "",
        f"Machine: {describe(machine_info())}. Command: `python -m benchmark.micro.checkpoint_cost"
        f"{' --dqn-atari' if opts.dqn_atari else ''}` (each case in a fresh process; the scripts' own save_checkpoint"
        " and load_checkpoint; the write includes the sha256 of every file).",
        "",
        "| case | state held (MB) | write (s) | load (s) | on disk (MB) | extra peak memory while writing (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['state_mb']:.1f} | {r['write_s']:.3f} | {r['load_s']:.3f} | {r['size_mb']:.1f} | "
            f"{r['extra_mb']:.0f} |"
        )
    write_results_md(opts.out, lines, "checkpoint_cost")
    return rows


if __name__ == "__main__":
    main()
