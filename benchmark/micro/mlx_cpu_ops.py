"""Micro-benchmark: the MLX CPU costs that bound the single-env value-based scripts, next to numpy/torch.

- the fixed cost of one `mx.eval` and the added cost per op (a chain of k dependent matmuls, batch 1);
- that fixed cost after 60 us of host work between calls (an env step's worth), with MLX's CPU stream thread free to
  run on another core and (Linux) with every thread of the process pinned to one core: each `mx.eval` hands its work
  to the stream thread and waits for it, and waking a thread on an idle core is slow in a VM;
- `exp` (and the softmax C51 takes over 128 x 2 x 101 logits) per element;
- gather per element, and C51's projection (128 rows, each adding 2 x 101 values into its 101 atoms) as a flattened
  `.at[].add`, as take_along_axis's gradient (a scatter-add along an axis) and in torch;
- one greedy action of dqn's Q-network (4-120-84-2) in MLX (compiled) and in torch (eager).

Usage: OMP_NUM_THREADS=1 python -m benchmark.micro.mlx_cpu_ops [--calls 2000]
"""

import argparse
import os
import time
from functools import partial

import numpy as np

from benchmark.pairs import load_pair

D_MLX, D_TORCH = load_pair("dqn")  # each on its own BLAS: MLX on OpenBLAS, torch on its MKL
mx, torch = D_MLX.mx, D_TORCH.torch


def us_per_call(fn, calls):
    for _ in range(max(calls // 10, 10)):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return 1e6 * (time.perf_counter() - t0) / calls


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmark.micro.mlx_cpu_ops", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000)
    opts = p.parse_args(argv)
    mx.set_default_device(mx.cpu)
    torch.set_num_threads(1)
    rows = []

    x, w = mx.random.normal((1, 120)), mx.random.normal((120, 120))
    mx.eval(x, w)

    def matmul_chain(x, k):
        for _ in range(k):
            x = x @ w
        return x

    for k in (1, 4, 8):
        chain = mx.compile(partial(matmul_chain, k=k))
        us = us_per_call(lambda c=chain: mx.eval(c(x)), opts.calls)
        rows.append((f"mx.eval of {k} chained 1x120 @ 120x120 matmuls (compiled)", us, "us per call"))

    add_one = mx.compile(lambda x: x + 1)

    def after_host_work(seconds=60e-6):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:  # stands in for an env step between two actions
            pass
        mx.eval(add_one(x))

    threads = [int(t) for t in os.listdir("/proc/self/task")] if hasattr(os, "sched_setaffinity") else []  # Linux
    free = {t: os.sched_getaffinity(t) for t in threads}  # every thread of the process, MLX's stream thread included
    placements = [("threads free to move", None)] + (
        [("all threads on one core", {min(os.sched_getaffinity(0))})] if threads else []
    )
    for where, cores in placements:
        for t in threads:
            os.sched_setaffinity(t, cores or free[t])
        rows.append(
            (f"mx.eval of x + 1, back to back ({where})", us_per_call(lambda: mx.eval(add_one(x)), opts.calls), "us per call")
        )
        after = us_per_call(after_host_work, opts.calls) - 60  # the host work itself is not the eval's cost
        rows.append((f"mx.eval of x + 1 after 60 us of host work ({where})", after, "us per call"))
    for t in threads:  # the rows below run as the scripts do
        os.sched_setaffinity(t, free[t])

    big = mx.random.normal((1 << 20,))
    big_np = np.array(big)
    mx.eval(big)
    n = big.size
    rows.append(("mx.exp", 1e3 * us_per_call(lambda: mx.eval(mx.exp(big)), 20) / n, "ns per element"))
    rows.append(("np.exp", 1e3 * us_per_call(lambda: np.exp(big_np), 20) / n, "ns per element"))
    rows.append(("mx add (x + 1)", 1e3 * us_per_call(lambda: mx.eval(big + 1), 20) / n, "ns per element"))
    logits = mx.random.normal((128, 2, 101))
    mx.eval(logits)
    rows.append(
        (
            "mx.softmax over 128 x 2 x 101",
            us_per_call(lambda: mx.eval(mx.softmax(logits, axis=-1)), opts.calls // 4),
            "us per call",
        )
    )

    m = 2 * 128 * 101
    idx, vals = mx.array(np.random.default_rng(0).integers(0, m // 2, m).astype(np.int32)), mx.random.uniform(shape=(m,))
    mx.eval(idx, vals)
    rows.append(("gather v[idx]", 1e3 * us_per_call(lambda: mx.eval(vals[idx]), opts.calls // 4) / m, "ns per element"))

    # C51's projection: each of 128 rows adds 2 x 101 values into its 101 atoms
    rows_idx = mx.array(np.random.default_rng(1).integers(0, 101, (128, 202)).astype(np.int32))
    rows_val = mx.random.uniform(shape=(128, 202))
    flat_idx = (rows_idx + 101 * mx.arange(128)[:, None]).reshape(-1)
    scatters = {
        ".at[].add, flattened": mx.compile(lambda: mx.zeros(128 * 101).at[flat_idx].add(rows_val.reshape(-1))),
        "take_along_axis vjp, per row": mx.compile(
            lambda: mx.vjp(lambda p: mx.take_along_axis(p, rows_idx, axis=1), [mx.zeros((128, 101))], [rows_val])[1][0]
        ),
    }
    t_idx, t_val = torch.from_numpy(np.array(rows_idx)).long(), torch.from_numpy(np.array(rows_val))
    expected = torch.zeros(128, 101).scatter_add_(1, t_idx, t_val).numpy()
    for how, scatter in scatters.items():
        np.testing.assert_allclose(np.array(scatter()).reshape(128, 101), expected, atol=1e-5)
        rows.append(
            (
                f"C51 scatter-add 128x202, MLX {how}",
                us_per_call(lambda s=scatter: mx.eval(s()), opts.calls // 4),
                "us per call",
            )
        )
    rows.append(
        (
            "C51 scatter-add 128x202, torch scatter_add_",
            us_per_call(lambda: torch.zeros(128, 101).scatter_add_(1, t_idx, t_val), opts.calls // 4),
            "us per call",
        )
    )

    obs = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)
    q_m, q_t = D_MLX.QNetwork(4, 2), D_TORCH.QNetwork(4, 2)
    mx.eval(q_m.parameters())
    act = partial(mx.compile, inputs=[q_m.state])(lambda o: mx.argmax(q_m(o), axis=1))

    def act_torch():
        with torch.no_grad():
            return torch.argmax(q_t(torch.Tensor(obs)), dim=1).cpu().numpy()

    rows.append(
        (
            "dqn greedy action, MLX compiled (mx.array -> act -> np.array)",
            us_per_call(lambda: np.array(act(mx.array(obs))), opts.calls),
            "us per call",
        )
    )
    rows.append(("dqn greedy action, torch eager", us_per_call(act_torch, opts.calls), "us per call"))

    print(f"mlx {mx.__version__}, BLAS {D_MLX.BLAS}, torch {torch.__version__}, {opts.calls} calls")
    for name, value, unit in rows:
        print(f"{name:>66}: {value:8.2f} {unit}")
    return rows


if __name__ == "__main__":
    main()
