"""Micro-benchmark (issue 21): MLX's transcendental kernels on the Linux CPU backend next to numpy, torch and fused
replacements, the replacements' largest errors, and each candidate script's compiled update step and rollout action
with a replacement and with MLX's kernels, interleaved call by call.

    OMP_NUM_THREADS=1 python -m benchmark.micro.fast_math [--repeats 300] [--out benchmark/results/micro-fast-math]
    python -m benchmark.run --scripts ppo --mlx-fast-math on off --total-timesteps 100000 --seeds 1 --tag issue21-ppo

The replacements: the rational tanh that ppo and ppo_continuous_action use and c51's fused fast-exp softmax
(CLEANRL_MLX_FAST_MATH=0 turns them off), and, measured here only, the same tanh in a2c and sac's actor (kept in neither:
their SPS did not gain 5%). The second form is `benchmark.run` (the same options) with one more MLX variant per seed,
`mlx-nofastmath` (CLEANRL_MLX_FAST_MATH=0), queued between the default MLX run and the torch run; `python -m
benchmark.report benchmark/runs/<tag>` then shows the three side by side.
"""

import argparse
import os
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np

from benchmark.machine import describe, machine_info
from benchmark.micro.update_step import measure, spread, write_results_md
from benchmark.pairs import RESULTS_DIR, load_script

OPT_OUT = "CLEANRL_MLX_FAST_MATH"
FAST_SCRIPTS = ("ppo", "ppo_continuous_action")  # the scripts that keep the rational tanh
SHAPE = (128, 256)  # the array: one minibatch of 128 rows through a 256-wide layer
SMALL = 1024  # below this many numbers the scripts keep MLX's kernel (cheaper on a rollout step's few rows)


@contextmanager
def mlx_kernels(on: bool):
    """While on, scripts loaded see the opt-out (MLX's own kernels); the environment is restored afterwards."""
    before = os.environ.pop(OPT_OUT, None)
    if on:
        os.environ[OPT_OUT] = "0"
    try:
        yield
    finally:
        os.environ.pop(OPT_OUT, None)
        if before is not None:
            os.environ[OPT_OUT] = before


@contextmanager
def replaced(owner, name, value):
    """owner.name = value inside the block (a compiled step must be traced inside it to keep the replacement)."""
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


def load_both(name):
    """{"fast": the MLX script with its replacement (the default on Linux), "mlx": the same with the opt-out}."""
    out = {}
    for label in ("fast", "mlx"):
        with mlx_kernels(label == "mlx"):
            out[label] = load_script(name, "mlx")
    return out


def us_per_call(fn, repeats, warmup=20):
    """Median µs of fn() (each call ends in its own sync)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * float(np.median(times))


def kernel_table(tanh, softmax, repeats):
    """[(operation, MLX µs, replacement µs or None, numpy µs, torch µs)] on one SHAPE float32 array."""
    import mlx.core as mx
    import torch

    torch.set_num_threads(1)
    x_np = (3 * np.random.default_rng(0).standard_normal(SHAPE)).astype(np.float32)
    x, x_t = mx.array(x_np), torch.from_numpy(x_np)
    mx.eval(x)

    def chain(a):  # arithmetic that mx.compile fuses into one loop
        for _ in range(8):
            a = a * 1.0001 + 0.5
        return a

    def np_softmax(a):
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    tanh, softmax, fused_chain = mx.compile(tanh), mx.compile(softmax), mx.compile(chain)
    rows = [  # (operation, MLX, the replacement or None, numpy, torch)
        ("tanh", lambda: mx.tanh(x), lambda: tanh(x), lambda: np.tanh(x_np), lambda: torch.tanh(x_t)),
        ("exp", lambda: mx.exp(x), None, lambda: np.exp(x_np), lambda: torch.exp(x_t)),
        ("log1p(abs(x))", lambda: mx.log1p(mx.abs(x)), None, lambda: np.log1p(np.abs(x_np)), lambda: torch.log1p(x_t.abs())),
        ("sigmoid", lambda: mx.sigmoid(x), None, lambda: 1 / (1 + np.exp(-x_np)), lambda: torch.sigmoid(x_t)),
        ("softmax, last axis", lambda: mx.softmax(x, axis=-1), lambda: softmax(x), lambda: np_softmax(x_np), lambda: torch.softmax(x_t, -1)),
        ("8 multiply-adds (compiled)", lambda: fused_chain(x), None, lambda: chain(x_np), lambda: chain(x_t)),
    ]  # fmt: skip
    out = []
    for name, mlx_fn, fast_fn, np_fn, torch_fn in rows:
        mlx_us = us_per_call(lambda f=mlx_fn: mx.eval(f()), repeats)
        fast_us = us_per_call(lambda f=fast_fn: mx.eval(f()), repeats) if fast_fn else None
        out.append((name, mlx_us, fast_us, us_per_call(np_fn, repeats), us_per_call(torch_fn, repeats)))
    return out


def tanh_errors(tanh):
    """Largest errors of a script's tanh over [-20, 20] (4M points) and the extremes (0, +-1e-30, +-1e30, +-3e38, +-inf):
    against mx.tanh, torch.tanh and float64, and its gradient against 1 - tanh^2 in float64."""
    import mlx.core as mx
    import torch

    x = np.concatenate([np.linspace(-20, 20, 4_000_001), [0.0, 1e-30, -1e-30, 1e30, -1e30, 3e38, -3e38, np.inf, -np.inf]])
    x = x.astype(np.float32)
    y = np.array(tanh(mx.array(x))).astype(np.float64)
    grad = np.array(mx.grad(lambda v: tanh(v).sum())(mx.array(x)))
    return {
        "tanh vs mx.tanh": np.abs(y - np.array(mx.tanh(mx.array(x)))).max(),
        "tanh vs torch.tanh": np.abs(y - torch.tanh(torch.from_numpy(x)).numpy()).max(),
        "tanh vs float64": np.abs(y - np.tanh(x.astype(np.float64))).max(),
        "tanh's gradient vs 1 - tanh^2 in float64": np.abs(grad - (1 - np.tanh(x.astype(np.float64)) ** 2)).max(),
    }


def softmax_errors(softmax):
    """Largest errors of a last-axis softmax: over random logits (4000 rows of 101 at scales 1, 10 and 100) against
    mx.softmax, torch.softmax and float64 (and its gradient against mx.softmax's); over rows [x, 0] with x in [-100, 0],
    which feed its exp the whole range a softmax gives it (x - max <= 0): the probability e^x / (1 + e^x) against
    float64, absolute and, where it is at least 1e-6, relative."""
    import mlx.core as mx
    import torch

    rng = np.random.default_rng(0)
    z = np.concatenate([s * rng.standard_normal((4000, 101)) for s in (1, 10, 100)]).astype(np.float32)
    p = np.array(softmax(mx.array(z))).astype(np.float64)
    p64 = np.exp(z - z.max(-1, keepdims=True).astype(np.float64))
    p64 /= p64.sum(-1, keepdims=True)
    cot = mx.array(rng.standard_normal(z.shape).astype(np.float32))
    grads = [mx.vjp(f, [mx.array(z)], [cot])[1][0] for f in (softmax, lambda v: mx.softmax(v, axis=-1))]
    x = np.linspace(-100, 0, 1_000_001).astype(np.float32)
    px = np.array(softmax(mx.array(np.stack([x, np.zeros_like(x)], 1))))[:, 0].astype(np.float64)
    ex = np.exp(x.astype(np.float64)) / (1 + np.exp(x.astype(np.float64)))
    big = ex >= 1e-6
    return {
        "softmax vs mx.softmax": np.abs(p - np.array(mx.softmax(mx.array(z), axis=-1))).max(),
        "softmax vs torch.softmax": np.abs(p - torch.softmax(torch.from_numpy(z), -1).numpy()).max(),
        "softmax vs float64": np.abs(p - p64).max(),
        "softmax's gradient vs mx.softmax's": float(mx.abs(grads[0] - grads[1]).max()),
        "softmax([x, 0]) vs float64, x in [-100, 0]": np.abs(px - ex).max(),
        "softmax([x, 0]) vs float64, relative, where >= 1e-6": (np.abs(px - ex)[big] / ex[big]).max(),
    }


# script: (observation size, action size) of its benchmark env (CartPole-v1, Pendulum-v1), its loss coefficients
TANH_SCRIPTS = {
    "ppo": ((4, 2), ("max_grad_norm", "clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss")),
    "ppo_continuous_action": ((3, 1), ("max_grad_norm", "clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss")),
    "a2c": ((4, 2), ("max_grad_norm", "ent_coef", "vf_coef", "norm_adv")),
}


def tanh_script_cases(name, tanh):
    """{"update step": {"fast", "mlx"}, "action": {...}} for ppo, ppo_continuous_action or a2c: the compiled update
    step on one minibatch of the default Args' size (its Agent, loss and optimizer) and the rollout's action for
    num_envs rows; "fast" is the script's replacement (the scripts that keep one) or `tanh` put into its Agent."""
    import mlx.core as mx

    (obs_dim, act_dim), coef_names = TANH_SCRIPTS[name]
    cases = {"update step": {}, "action": {}}
    mods = load_both(name) if name in FAST_SCRIPTS else dict.fromkeys(("fast", "mlx"), load_script(name, "mlx"))
    for label, m in mods.items():
        args, rng = m.Args(), np.random.default_rng(0)
        rows = args.num_envs * args.num_steps // getattr(args, "num_minibatches", 1)
        continuous = name == "ppo_continuous_action"
        actions = rng.standard_normal((rows, act_dim)) if continuous else rng.integers(0, act_dim, rows)
        batch = [rng.standard_normal((rows, obs_dim)), actions] + [
            rng.standard_normal(rows) for _ in range(2 + 2 * (name != "a2c"))
        ]
        batch = [mx.array(a.astype(np.int32 if a.dtype.kind == "i" else np.float32)) for a in batch]
        batch = batch if name == "a2c" else [mx.arange(rows), *batch]  # PPO's step takes the minibatch's row indices
        mx.random.seed(0)
        with replaced(m, "tanh", tanh if label == "fast" and name not in FAST_SCRIPTS else m.tanh):
            agent = m.Agent(obs_dim, act_dim, False) if name == "a2c" else m.Agent(obs_dim, act_dim)  # takes m.tanh now
        optimizer = m.make_optimizer(agent, args)
        state = [agent.state, optimizer.state]
        coefs = {k: getattr(args, k) for k in coef_names}
        train = mx.compile(partial(m.train_step, agent, optimizer, **coefs), inputs=state, outputs=state)
        cases["update step"][label] = lambda train=train, state=state, batch=batch: mx.eval(train(*batch), state)

        @partial(mx.compile, inputs=[agent.state, mx.random.state], outputs=[mx.random.state])
        def act(x, agent=agent, m=m):  # the script's act: the action, its log-prob (PPO) and the value
            if name == "a2c":
                return agent.sample_action(x), agent.get_value(x)
            if name == "ppo":
                logits = agent.get_logits(x)
                action = mx.random.categorical(logits)
                return action, m.categorical_logprob_entropy(logits, action)[0], agent.get_value(x)
            mean = agent.get_action_mean(x)
            action = mean + mx.exp(agent.actor_logstd) * mx.random.normal(mean.shape)
            return action, m.normal_logprob_entropy(mean, agent.actor_logstd, action)[0], agent.get_value(x)

        obs = rng.standard_normal((args.num_envs, obs_dim)).astype(np.float32)
        cases["action"][label] = lambda act=act, obs=obs: [np.array(a) for a in act(mx.array(obs))]
    return cases


def c51_cases(mods):
    """c51's compiled train_step (default Args, CartPole sizes) and greedy action, with its fused softmax and with the
    opt-out (mx.softmax); mods: load_both("c51")."""
    import mlx.core as mx

    rng = np.random.default_rng(0)
    cases = {"update step": {}, "action": {}}
    for label, m in mods.items():
        args = m.Args()
        b = args.batch_size
        batch = [rng.standard_normal((b, 4)), rng.integers(0, 2, b), rng.standard_normal(b), rng.standard_normal((b, 4))]
        batch = [mx.array(a.astype(np.int32 if a.dtype.kind == "i" else np.float32)) for a in batch + [rng.random(b) < 0.1]]
        mx.random.seed(0)
        q, target = m.QNetwork(4, 2), m.QNetwork(4, 2)
        target.update(q.parameters())
        optimizer = m.make_optimizer(q, args)
        state = [q.state, target.state, optimizer.state]
        hyper = dict(gamma=args.gamma, v_min=args.v_min, v_max=args.v_max)
        train = mx.compile(partial(m.train_step, q, target, optimizer, **hyper), inputs=state, outputs=state)
        act = mx.compile(lambda o, q=q: q.get_action(o)[0], inputs=[q.state])
        obs = mx.array(rng.standard_normal((1, 4)).astype(np.float32))
        cases["update step"][label] = lambda train=train, state=state, batch=batch: mx.eval(train(*batch), state)
        cases["action"][label] = lambda act=act, obs=obs: np.array(act(obs))
    return cases


def sac_cases(tanh):
    """sac's compiled train_step (actor and target update; HalfCheetah sizes, where the actor's 256 x 6 tanh inputs are
    past SMALL) with mx.tanh and with `tanh` patched in for inputs of SMALL numbers or more while it is traced."""
    import mlx.core as mx

    m = load_script("sac", "mlx")
    builtin = mx.tanh
    args = m.Args()
    rng = np.random.default_rng(0)
    b, obs_dim, act_dim = args.batch_size, 17, 6
    batch = [rng.standard_normal((b, obs_dim)), rng.uniform(-1, 1, (b, act_dim)), rng.standard_normal((b, obs_dim))]
    batch = [mx.array(a.astype(np.float32)) for a in batch + [rng.standard_normal(b), (rng.random(b) < 0.1)]]
    eps = mx.array(rng.standard_normal((1 + 2 * args.policy_frequency, b, act_dim)).astype(np.float32))

    def patched(v):  # the scripts' tanh calls mx.tanh itself on small inputs: send it only the large ones
        return builtin(v) if v.size < SMALL else tanh(v)

    cases = {"update step": {}}
    for label in ("fast", "mlx"):
        mx.random.seed(0)
        actor = m.Actor(obs_dim, act_dim, -np.ones(act_dim), np.ones(act_dim))
        qf, qf_target = m.SoftQNetwork(obs_dim, act_dim), m.SoftQNetwork(obs_dim, act_dim)
        qf_target.update(qf.parameters())
        log_alpha = {"log_alpha": mx.array([0.0])}
        optimizers = m.make_optimizers(actor, qf, log_alpha, args)
        state = [actor.state, qf.state, qf_target.state, log_alpha, *(o.state for o in optimizers)]
        step = partial(m.train_step, actor, qf, qf_target, log_alpha, optimizers, update_actor=True, update_target=True)
        train = mx.compile(partial(step, target_entropy=-float(act_dim), args=args), inputs=state, outputs=state)
        fn = cases["update step"][label] = lambda train=train, state=state: mx.eval(train(batch, eps), state)
        with replaced(mx, "tanh", patched if label == "fast" else builtin):
            fn()  # traced now, with the tanh in place
    return cases


def main_micro(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmark.micro.fast_math", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "micro-fast-math")
    opts = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ppo = load_both("ppo")["fast"]  # the scripts' OpenBLAS preload runs before mlx is imported
    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    if ppo.MATH == "mlx":
        raise SystemExit("benchmark.micro.fast_math: the replacements are off here (Linux only; unset CLEANRL_MLX_FAST_MATH)")
    c51 = load_both("c51")
    softmax = c51["fast"].softmax
    lines = [
        "# Micro-benchmark: MLX's transcendental kernels on the CPU backend and fused replacements",
        "",
        f"Machine: {describe(machine_info())}. MLX device cpu, BLAS {ppo.BLAS}. Command: `OMP_NUM_THREADS=1 "
        f"python -m benchmark.micro.fast_math --repeats {opts.repeats}`.",
        "",
        f"One call on a {SHAPE[0]}x{SHAPE[1]} float32 array (N(0, 9)), median µs; MLX calls end in `mx.eval`. "
        "Replacement, compiled: the rational tanh of ppo and ppo_continuous_action; for the softmax, c51's fused "
        "fast-exp softmax.",
        "",
        "| operation | MLX | replacement | numpy | torch |",
        "|---|---|---|---|---|",
    ]
    for name, mlx_us, fast_us, np_us, torch_us in kernel_table(ppo.tanh, softmax, opts.repeats):
        lines.append(f"| {name} | {mlx_us:.0f} | {'–' if fast_us is None else f'{fast_us:.0f}'} | {np_us:.0f} | {torch_us:.0f} |")
        print(lines[-1], flush=True)
    lines += ["", "Largest errors of the replacements:", "", "| check | max error |", "|---|---|"]
    lines += [f"| {k} | {v:.1e} |" for k, v in (tanh_errors(ppo.tanh) | softmax_errors(softmax)).items()]
    lines += [
        "",
        "Each script's compiled update step (its own networks, loss and optimizer on one minibatch of its default "
        "sizes) and its rollout action (one call: the forward pass, the sampling, the copy to numpy), with the "
        f"replacement and with MLX's kernels, interleaved call by call; median µs (25th–75th percentile). Inputs under "
        f"{SMALL} numbers keep MLX's kernel, as in the scripts. ppo, ppo_continuous_action and c51: the scripts as they "
        "are (`CLEANRL_MLX_FAST_MATH=0` for MLX's kernels). a2c and sac (their actor): ppo's rational tanh put in for "
        "this measurement; neither keeps it.",
        "",
        "| script | call | replacement | MLX's kernels | time saved |",
        "|---|---|---|---|---|",
    ]
    per_script = {name: tanh_script_cases(name, ppo.tanh) for name in TANH_SCRIPTS}
    per_script |= {"c51": c51_cases(c51), "sac": sac_cases(ppo.tanh)}
    for name, cases in per_script.items():
        for call, res in measure(cases, opts.repeats, opts.warmup).items():
            cell = {v: spread(r, ".0f") for v, r in res.items()}
            saved = 1 - res["fast"][0] / res["mlx"][0]
            lines.append(f"| {name} | {call} | {cell['fast']} | {cell['mlx']} | {saved:.0%} |")
            print(lines[-1], flush=True)
    write_results_md(opts.out, lines, "fast_math")
    return lines


if __name__ == "__main__":
    main_micro()
