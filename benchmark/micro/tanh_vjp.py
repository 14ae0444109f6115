"""Micro-benchmark: the compiled update step of the 64-64 tanh scripts (ppo, ppo_continuous_action, a2c) with
MLX's built-in tanh and with the scripts' custom-vjp tanh (the backward pass reuses the saved output), same
weights and same batches, the two variants interleaved call by call. Also reports how far apart the weights of the two
variants are after one step from the same start (the same gradient; only float rounding differs).

Usage: OMP_NUM_THREADS=1 python -m benchmark.micro.tanh_vjp [--repeats 1000] [--out benchmark/results/micro-tanh]
"""

import argparse
from functools import partial
from pathlib import Path

import numpy as np

from benchmark.machine import describe, machine_info
from benchmark.micro.update_step import measure, spread, write_results_md
from benchmark.pairs import RESULTS_DIR, load_script

# script: (Agent arguments, minibatch rows, whether train_step takes minibatch indices, loss coefficients)
CASES = {
    "ppo": ((4, 2), 128, True, ("max_grad_norm", "clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss")),
    "ppo_continuous_action": ((17, 6), 64, True, ("max_grad_norm", "clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss")),
    "a2c": ((4, 2, False), 5 * 8, False, ("max_grad_norm", "ent_coef", "vf_coef", "norm_adv")),
}


def variants(name: str, rng):
    """{variant: (train callable, agent)} for one script: the same initial weights, tanh swapped in one."""
    m = load_script(name, "mlx")
    m.MATH = "mlx"  # MLX's tanh kernel inside the custom vjp, as measured here (the rational one: micro/fast_math.py)
    mx, nn = m.mx, m.nn
    mx.set_default_device(mx.cpu)
    args = m.Args()
    agent_args, rows, indexed, coef_names = CASES[name]
    obs_dim, act_dim = agent_args[0], agent_args[1]
    batch_rows = 4 * rows if indexed else rows
    continuous = name == "ppo_continuous_action"
    actions = rng.standard_normal((batch_rows, act_dim)) if continuous else rng.integers(0, act_dim, batch_rows)
    cols = [rng.standard_normal((batch_rows, obs_dim)), actions] + [
        rng.standard_normal(batch_rows) for _ in range(4 if indexed else 2)
    ]
    batch = [mx.array(c.astype(np.int32 if c.dtype.kind == "i" else np.float32)) for c in cols]
    inds = mx.array(np.arange(rows))
    out = {}
    for variant in ("built-in tanh", "custom-vjp tanh"):
        mx.random.seed(0)
        agent = m.Agent(*agent_args)
        if variant == "built-in tanh":
            for layers in (v for v in agent.values() if isinstance(v, list)):
                layers[:] = [nn.Tanh() if layer is m.tanh else layer for layer in layers]
        optimizer = m.make_optimizer(agent, args)
        state = [agent.state, optimizer.state]
        coefs = {k: getattr(args, k) for k in coef_names}
        train = mx.compile(partial(m.train_step, agent, optimizer, **coefs), inputs=state, outputs=state)
        step = (
            (lambda t=train, s=state: mx.eval(t(inds, *batch), s))
            if indexed
            else (lambda t=train, s=state: mx.eval(t(*batch), s))
        )
        out[variant] = (step, agent)
    return out, m


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmark.micro.tanh_vjp", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "micro-tanh")
    opts = p.parse_args(argv)
    rng = np.random.default_rng(0)
    lines = [
        "# Micro-benchmark: custom-vjp tanh vs MLX's built-in tanh",
        "",
        f"Machine: {describe(machine_info())}. Command: `OMP_NUM_THREADS=1 python -m benchmark.micro.tanh_vjp "
        f"--repeats {opts.repeats}`. Median µs per compiled update step (25th–75th percentile), each ending in `mx.eval`.",
        "",
        "| script | built-in tanh | custom-vjp tanh | time saved | max weight difference after one step |",
        "|---|---|---|---|---|",
    ]
    for name in CASES:
        fns, m = variants(name, rng)
        from mlx.utils import tree_flatten  # only after load_script: the script's OpenBLAS preload must run first

        for step, _ in fns.values():
            step()
        wa, wb = (dict(tree_flatten(agent.parameters())) for _, agent in fns.values())
        drift = max(float(m.mx.abs(wa[k] - wb[k]).max()) for k in wa)
        res = measure({name: {v: f for v, (f, _) in fns.items()}}, opts.repeats, opts.warmup)[name]
        a, b = res["built-in tanh"][0], res["custom-vjp tanh"][0]
        cell = {v: spread(r, ".0f") for v, r in res.items()}
        lines.append(f"| {name} | {cell['built-in tanh']} | {cell['custom-vjp tanh']} | {1 - b / a:.0%} | {drift:.1e} |")
        print(lines[-1])
    write_results_md(opts.out, lines, "tanh_vjp")
    return lines


if __name__ == "__main__":
    main()
