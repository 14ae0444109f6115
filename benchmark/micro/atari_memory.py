"""Peak memory (RSS) of dqn_atari with its default replay buffer, full.

A benchmark run of dqn_atari writes a few thousand frames, so its peak RSS says little about the 1M
buffer (np.zeros pages only become resident when written). This fills each twin's FrameReplayBuffer at
its default size (the script's `Args().buffer_size`) with 1M+ transitions of synthetic 84x84 frames in
episodes of random length, samples training batches from it and runs the twin's Q-network on them, then
reports the process's peak RSS. Each twin runs in a fresh process (`--child`), one after the other.

Usage: python -m benchmark.micro.atari_memory [--transitions N] [--out benchmark/results/atari-memory]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmark.machine import describe, machine_info, peak_rss_mb
from benchmark.pairs import REPO, RESULTS_DIR, load_script

SCRIPT = "dqn_atari"
FRAME = (84, 84)


def rss_mb() -> float:
    """This process's peak RSS so far. ru_maxrss is the fallback off Linux (macOS reports bytes); on Linux
    it would include the RSS of the process that started this one."""
    peak = peak_rss_mb()
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


def fill_and_sample(framework: str, transitions: int | None) -> dict:
    """In this process: the twin's buffer at its default size, filled, sampled, fed to its network."""
    module = load_script(SCRIPT, framework)  # imports the framework (and MLX's OpenBLAS block) first
    buffer_size = module.Args().buffer_size
    transitions = transitions or buffer_size + buffer_size // 10  # wrap around the ring once
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (64,) + FRAME, dtype=np.uint8)  # a pool of distinct frames to copy from
    rss_start = rss_mb()
    rb = module.FrameReplayBuffer(buffer_size)
    t0 = time.perf_counter()
    obs = np.broadcast_to(frames[0], (1, 4) + FRAME)
    for i in range(transitions):
        next_obs = np.broadcast_to(frames[i % 64], (1, 4) + FRAME)
        done = rng.random() < 1 / 400  # Breakout-like episodes of ~400 agent steps
        rb.add(obs, next_obs, np.array([i % 4]), np.array([0.0]), np.array([done]), np.array([False]))
        obs = next_obs
    fill_s = time.perf_counter() - t0
    q_network = module.QNetwork(4)
    for _ in range(10):  # the training batches' memory: sample, convert, one forward pass
        b_obs = rb.sample(32)[0]
        if framework == "mlx":
            module.mx.eval(q_network(module.mx.array(b_obs)))
        else:
            with module.torch.no_grad():
                q_network(module.torch.as_tensor(b_obs))
    buffer_bytes = sum(a.nbytes for a in (rb.frames, rb.steps, rb.actions, rb.rewards, rb.dones))
    buffer_bytes += len(rb.first_frames) * int(np.prod(FRAME))
    return {
        "framework": framework,
        "buffer_size": buffer_size,
        "transitions_added": transitions,
        "fill_s": fill_s,
        "buffer_mb": buffer_bytes / 2**20,
        "naive_buffer_mb": 2 * buffer_size * 4 * int(np.prod(FRAME)) / 2**20,  # obs + next_obs stacks
        "rss_before_buffer_mb": rss_start,
        "peak_rss_mb": rss_mb(),
    }


def table_md(rows, machine) -> str:
    lines = [
        f"# Benchmark: {SCRIPT} memory with the default replay buffer, full",
        "",
        f"Machine: {describe(machine)}. Command: `python -m benchmark.micro.atari_memory` (each twin in a fresh "
        "process: the buffer at its default size filled with synthetic 84x84 frames in episodes of random "
        "length, then sampled and fed to the Q-network). Peak RSS: the process's maximum resident memory.",
        "",
        "| framework | buffer size | transitions added | buffer arrays (MB) | naive obs+next_obs buffer (MB) | "
        "RSS before the buffer (MB) | peak RSS (MB) | fill time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['framework']} | {r['buffer_size']:,} | {r['transitions_added']:,} | {r['buffer_mb']:,.0f} | "
            f"{r['naive_buffer_mb']:,.0f} | {r['rss_before_buffer_mb']:,.0f} | {r['peak_rss_mb']:,.0f} | {r['fill_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.micro.atari_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--transitions", type=int, default=None, help="transitions to add (default: 1.1 x the buffer size)")
    p.add_argument("--frameworks", nargs="+", default=["mlx", "torch"])
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "atari-memory")
    p.add_argument("--child", choices=["mlx", "torch"], help=argparse.SUPPRESS)  # internal: measure in this process
    opts = p.parse_args(argv)
    if opts.child:
        print(json.dumps(fill_and_sample(opts.child, opts.transitions)))
        return 0
    rows = []
    for fw in opts.frameworks:
        cmd = [sys.executable, "-m", "benchmark.micro.atari_memory", "--child", fw]
        cmd += ["--transitions", str(opts.transitions)] if opts.transitions else []
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark.micro.atari_memory: the {fw} run failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{fw}: peak RSS {rows[-1]['peak_rss_mb']:,.0f} MB", flush=True)
    opts.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    (opts.out / "results.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    (opts.out / "results.md").write_text(table_md(rows, machine))
    print(f"benchmark.micro.atari_memory: wrote {opts.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
