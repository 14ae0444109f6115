"""Per-calculation timings of a script's own networks and batch: MLX eager, MLX compiled and torch.

    python -m benchmark.micro.update_step --script ppo [--repeats 300] [--blas bundled] [--out benchmark/results/microbench]

Each case is timed with the synchronisation that makes its figure real: MLX is lazy, so an MLX case
ends in `mx.eval` of everything it produced (outputs, and the new weights and optimizer state for
steps); torch on the CPU is eager (on CUDA a case ends with `torch.cuda.synchronize()`). The three
variants are interleaved call by call, so load drift hits all of them; the figure is the median of
`--repeats` calls after warm-up (compilation happens during warm-up). Writes <script>.md, <script>.csv
and <script>.png. Like the runner, it sets OMP_NUM_THREADS=1 and one torch thread, and each framework
multiplies matrices with the BLAS it uses in its own process (`load_pair`).

A script is supported through an adapter: a function that builds, from the two imported modules, the
cases {case name: {variant: zero-argument callable}}. Add one to ADAPTERS for a new script.
"""

import argparse
import csv
import os
import time
from functools import partial
from pathlib import Path

import numpy as np

from benchmark.machine import describe, machine_info, torch_blas
from benchmark.pairs import REPO, load_pair

OUT_DIR = REPO / "benchmark" / "results" / "microbench"
VARIANTS = ("mlx eager", "mlx compiled", "torch")


class Precomputed:
    """Stands in for an agent in a loss function, returning a finished forward pass: times the loss terms alone."""

    def __init__(self, logits, value):
        self.logits, self.value = logits, value

    def get_logits(self, x):
        return self.logits

    def get_value(self, x):
        return self.value


def ppo_cases(m, t) -> tuple[dict, str]:
    """ppo: the Agent, ppo_loss and Adam of ppo_mlx.py / ppo_torch.py on one minibatch of the
    default Args (num_envs*num_steps/num_minibatches rows) of the default env."""
    import gymnasium as gym
    import mlx.core as mx
    import mlx.nn as mnn
    import mlx.optimizers as moptim
    import torch

    args = m.Args()
    env = gym.make(args.env_id)
    obs_dim, n_actions = int(np.prod(env.observation_space.shape)), int(env.action_space.n)
    batch_size = args.num_envs * args.num_steps
    mb = batch_size // args.num_minibatches
    rng = np.random.default_rng(0)
    data = {
        "obs": rng.normal(size=(batch_size, obs_dim)).astype(np.float32),
        "actions": rng.integers(0, n_actions, size=batch_size),
        "logprobs": np.full(batch_size, np.log(1 / n_actions), dtype=np.float32)
        + 0.1 * rng.normal(size=batch_size).astype(np.float32),
        "advantages": rng.normal(size=batch_size).astype(np.float32),
        "returns": rng.normal(size=batch_size).astype(np.float32),
        "values": rng.normal(size=batch_size).astype(np.float32),
    }
    keys = ("obs", "actions", "logprobs", "advantages", "returns", "values")
    mb_inds = rng.permutation(batch_size)[:mb]
    loss_kw = dict(
        clip_coef=args.clip_coef, ent_coef=args.ent_coef, vf_coef=args.vf_coef, norm_adv=args.norm_adv, clip_vloss=args.clip_vloss
    )
    what = (
        f"ppo: Agent({obs_dim}, {n_actions}) (two 64-64 tanh MLPs) for {args.env_id}, minibatch {mb} rows "
        f"(num_envs*num_steps/num_minibatches), Adam, clip_grad_norm {args.max_grad_norm}"
    )

    # ---- MLX: the same weights for eager and compiled (each variant gets its own agent and optimizer)
    def mlx_variant(compiled: bool) -> dict:
        agent = m.Agent(obs_dim, n_actions)
        optimizer = moptim.Adam(learning_rate=args.learning_rate, eps=1e-5, bias_correction=True)
        optimizer.init(agent.trainable_parameters())
        b = [mx.array(data[k]) for k in keys]
        mbatch = [x[mx.array(mb_inds)] for x in b]
        mx.eval(b, mbatch)
        comp = (lambda f, **kw: mx.compile(f, **kw)) if compiled else (lambda f, **kw: f)

        def forward(x):
            return agent.get_logits(x), agent.get_value(x)

        pre = forward(mbatch[0])
        mx.eval(pre)

        def terms(logits, value, *mb):  # ppo_loss given a finished forward pass: the loss terms alone
            return m.ppo_loss(Precomputed(logits, value), *mb, **loss_kw)

        loss_and_grad = mnn.value_and_grad(agent, partial(m.ppo_loss, agent, **loss_kw))
        forward_c = comp(forward, inputs=[agent.state])
        terms_c = comp(terms)
        loss_c = comp(partial(m.ppo_loss, agent, **loss_kw), inputs=[agent.state])
        # value_and_grad swaps the parameters in the module while tracing: the state is an output too
        grad_c = comp(loss_and_grad, inputs=[agent.state], outputs=[agent.state])
        grads = loss_and_grad(*mbatch)[1]
        mx.eval(grads)

        def step(grads):
            grads, _ = moptim.clip_grad_norm(grads, args.max_grad_norm)
            optimizer.update(agent, grads)

        step_c = comp(step, inputs=[agent.state, optimizer.state], outputs=[agent.state, optimizer.state])

        def train_step(idx, *batch):  # ppo_mlx.py's compiled train_step: gather, loss, grad, clip, Adam
            (_, stats), grads = loss_and_grad(*[x[idx] for x in batch])
            step(grads)
            return stats

        train_c = comp(train_step, inputs=[agent.state, optimizer.state], outputs=[agent.state, optimizer.state])
        idx = mx.array(mb_inds)
        return {
            "forward (actor + critic)": lambda: mx.eval(forward_c(mbatch[0])),
            "loss terms (forward excluded)": lambda: mx.eval(terms_c(*pre, *mbatch)),
            "forward + loss": lambda: mx.eval(loss_c(*mbatch)),
            "forward + loss + backward": lambda: mx.eval(grad_c(*mbatch)),
            "optimizer step (clip + Adam)": lambda: (step_c(grads), mx.eval(agent.state, optimizer.state)),
            "full update (one minibatch)": lambda: mx.eval(train_c(idx, *b), agent.state, optimizer.state),
        }

    # ---- torch, as ppo_torch.py runs it
    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    agent = t.Agent(obs_dim, n_actions).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    b = [torch.as_tensor(data[k]).to(device) for k in keys]
    idx = torch.as_tensor(mb_inds).to(device)
    mbatch = [x[idx] for x in b]

    with torch.no_grad():
        pre = agent.get_logits(mbatch[0]), agent.get_value(mbatch[0])

    def forward():
        with torch.no_grad():
            out = agent.get_logits(mbatch[0]), agent.get_value(mbatch[0])
        sync()
        return out

    def loss():
        out = t.ppo_loss(agent, *mbatch, **loss_kw)
        sync()
        return out

    def terms():
        out = t.ppo_loss(Precomputed(*pre), *mbatch, **loss_kw)
        sync()
        return out

    def loss_backward():
        optimizer.zero_grad()
        t.ppo_loss(agent, *mbatch, **loss_kw)[0].backward()
        sync()

    def step():
        torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
        optimizer.step()
        sync()

    def full_update():  # ppo_torch.py's inner loop body
        loss, _ = t.ppo_loss(agent, *[x[idx] for x in b], **loss_kw)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
        optimizer.step()
        sync()

    loss_backward()  # gradients exist for the optimizer-step case
    torch_cases = {
        "forward (actor + critic)": forward,
        "loss terms (forward excluded)": terms,
        "forward + loss": loss,
        "forward + loss + backward": loss_backward,
        "optimizer step (clip + Adam)": step,
        "full update (one minibatch)": full_update,
    }
    variants = {"mlx eager": mlx_variant(False), "mlx compiled": mlx_variant(True), "torch": torch_cases}
    return {case: {v: variants[v][case] for v in VARIANTS} for case in torch_cases}, what


def allo_cases(m, t) -> tuple[dict, str]:
    """allo: the Encoder, allo_loss and train_step of allo_mlx.py / allo_torch.py on one batch of the default Args
    (the concatenated [s, s', u1, u2] observations: 4 x batch_size rows), and one hidden layer's matmul alone."""
    import mlx.core as mx
    import mlx.nn as mnn
    import torch

    args = m.Args()
    rows, width = 4 * args.batch_size, args.hidden_dims[0]
    rng = np.random.default_rng(0)
    obs = rng.uniform(-0.5, 0.5, size=(rows, 2)).astype(np.float32)
    hidden = rng.normal(size=(rows, width)).astype(np.float32)
    weight = rng.normal(size=(width, width)).astype(np.float32)
    hp = {k: getattr(args, k) for k in ("lr_duals", "max_duals", "q_error_update_rate", "lr_barrier_coefs", "max_barrier_coefs")}
    zeros = np.zeros((args.d, args.d), dtype=np.float32)  # the duals and the running E1 * E2, as the scripts start them
    start = {"duals": zeros, "barrier": np.float32(args.barrier_initial_val), "quadratic_errors": zeros}
    what = (
        f"allo: Encoder(2, {args.d}, {args.hidden_dims}) (ReLU), {rows} rows (4 x batch_size), Adam, the dual and "
        f"barrier updates; the matmul case: ({rows} x {width}) @ ({width} x {width})"
    )

    def mlx_variant(compiled: bool) -> dict:
        encoder = m.Encoder(2, args.d, args.hidden_dims)
        optimizer = m.make_optimizer(encoder, args)
        multipliers = {k: mx.array(v) for k, v in start.items()}
        x, h, w = mx.array(obs), mx.array(hidden), mx.array(weight)
        comp = (lambda f, **kw: mx.compile(f, **kw)) if compiled else (lambda f, **kw: f)
        state = [encoder.state, optimizer.state, multipliers]
        forward = comp(encoder, inputs=[encoder.state])
        loss_and_grad = mnn.value_and_grad(encoder, partial(m.allo_loss, encoder))
        grad = comp(loss_and_grad, inputs=[encoder.state], outputs=[encoder.state])
        train = comp(partial(m.train_step, encoder, optimizer, multipliers, **hp), inputs=state, outputs=state)
        matmul = comp(lambda a, b: a @ b)
        return {
            "hidden-layer matmul": lambda: mx.eval(matmul(h, w)),
            "encoder forward": lambda: mx.eval(forward(x)),
            "forward + loss + backward": lambda: mx.eval(grad(x, multipliers["duals"], multipliers["barrier"])),
            "full update (Adam, duals, barrier)": lambda: mx.eval(train(x), state),
        }

    torch.set_num_threads(1)
    encoder = t.Encoder(2, args.d, args.hidden_dims)
    optimizer = t.make_optimizer(encoder, args)
    multipliers = {k: torch.tensor(v) for k, v in start.items()}
    x, h, w = torch.tensor(obs), torch.tensor(hidden), torch.tensor(weight)

    def forward():
        with torch.no_grad():
            return encoder(x)

    def loss_backward():
        encoder.zero_grad()
        m_loss, _ = t.allo_loss(encoder, x, multipliers["duals"], multipliers["barrier"])
        m_loss.backward()

    torch_cases = {
        "hidden-layer matmul": lambda: h @ w,
        "encoder forward": forward,
        "forward + loss + backward": loss_backward,
        "full update (Adam, duals, barrier)": lambda: t.train_step(encoder, optimizer, multipliers, x, **hp),
    }
    variants = {"mlx eager": mlx_variant(False), "mlx compiled": mlx_variant(True), "torch": torch_cases}
    return {case: {v: variants[v][case] for v in VARIANTS} for case in torch_cases}, what


def dqn_atari_cases(m, t) -> tuple[dict, str]:
    """dqn_atari: the Nature-CNN QNetwork and train_step of dqn_atari_mlx.py / dqn_atari_torch.py (Breakout's 4
    actions) on one replay batch of the default Args, and the greedy action on one observation."""
    import mlx.core as mx
    import torch

    args, n_actions = m.Args(), 4
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, args.batch_size, 4, 84, 84), dtype=np.uint8)  # obs and next_obs
    actions = rng.integers(0, n_actions, size=args.batch_size).astype(np.int32)
    rewards, dones = rng.normal(size=args.batch_size).astype(np.float32), np.zeros(args.batch_size, dtype=np.float32)
    batch = (frames[0], actions, rewards, frames[1], dones)
    what = f"dqn_atari: QNetwork({n_actions}) (Nature CNN, uint8 frames), batch {args.batch_size}, Adam"

    def mlx_variant(compiled: bool) -> dict:
        q_network, target_network = m.QNetwork(n_actions), m.QNetwork(n_actions)
        target_network.update(q_network.parameters())
        optimizer = m.make_optimizer(q_network, args)
        state = [q_network.state, target_network.state, optimizer.state]
        mx.eval(state)
        comp = (lambda f, **kw: mx.compile(f, **kw)) if compiled else (lambda f, **kw: f)
        greedy = comp(lambda x: mx.argmax(q_network(x), axis=1), inputs=[q_network.state])
        forward = comp(q_network, inputs=[q_network.state])
        train = comp(partial(m.train_step, q_network, target_network, optimizer, gamma=args.gamma), inputs=state, outputs=state)
        one, obs, data = mx.array(frames[0, :1]), mx.array(frames[0]), [mx.array(x) for x in batch]
        return {
            "greedy action (1 observation)": lambda: mx.eval(greedy(one)),
            "Q-network forward (batch)": lambda: mx.eval(forward(obs)),
            "gradient step (TD target, loss, backward, Adam)": lambda: mx.eval(train(*data), state),
        }

    torch.set_num_threads(1)
    q_network, target_network = t.QNetwork(n_actions), t.QNetwork(n_actions)
    target_network.load_state_dict(q_network.state_dict())
    optimizer = t.make_optimizer(q_network, args)
    one, obs, data = torch.as_tensor(frames[0, :1]), torch.as_tensor(frames[0]), [torch.as_tensor(x) for x in batch]

    torch_cases = {
        "greedy action (1 observation)": torch.no_grad()(lambda: torch.argmax(q_network(one), dim=1)),
        "Q-network forward (batch)": torch.no_grad()(lambda: q_network(obs)),
        "gradient step (TD target, loss, backward, Adam)": lambda: t.train_step(
            q_network, target_network, optimizer, *data, gamma=args.gamma
        ),
    }
    variants = {"mlx eager": mlx_variant(False), "mlx compiled": mlx_variant(True), "torch": torch_cases}
    return {case: {v: variants[v][case] for v in VARIANTS} for case in torch_cases}, what


ADAPTERS = {"ppo": ppo_cases, "allo": allo_cases, "dqn_atari": dqn_atari_cases}


def measure(cases: dict, repeats: int, warmup: int) -> dict:
    """Median, 25th and 75th percentile in µs of each case and variant, variants interleaved."""
    out = {}
    for case, fns in cases.items():
        times = {v: [] for v in fns}
        for i in range(warmup + repeats):
            for v, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                if i >= warmup:
                    times[v].append(time.perf_counter() - t0)
        out[case] = {v: tuple(1e6 * np.percentile(ts, q) for q in (50, 25, 75)) for v, ts in times.items()}
    return out


def spread(r: tuple, spec: str = ".1f") -> str:
    """A measure() result as 'median (25th–75th percentile)'."""
    return f"{r[0]:{spec}} ({r[1]:{spec}}–{r[2]:{spec}})"


def write_results_md(out_dir: Path, lines: list, module: str) -> None:
    """A micro-benchmark's table as out_dir/results.md, and say where it went."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    print(f"benchmark.micro.{module}: wrote {out_dir / 'results.md'}")


def write(results: dict, script: str, what: str, header: str, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{script}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "variant", "median_us", "p25_us", "p75_us"])
        for case, by_v in results.items():
            for v, (med, p25, p75) in by_v.items():
                w.writerow([case, v, f"{med:.2f}", f"{p25:.2f}", f"{p75:.2f}"])
    lines = [
        f"# Micro-benchmark: {script}",
        "",
        what + ".",
        "",
        header,
        "",
        "Median µs per call (25th–75th percentile); each call ends with the sync that makes it real "
        "(`mx.eval` of its outputs and updated state; torch is eager on the CPU). torch/compiled: how many "
        "times faster compiled MLX is than torch.",
        "",
        "| case | " + " | ".join(VARIANTS) + " | torch / mlx compiled |",
        "|---|" + "---|" * (len(VARIANTS) + 1),
    ]
    for case, by_v in results.items():
        cells = [spread(by_v[v]) for v in VARIANTS]
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {by_v['torch'][0] / by_v['mlx compiled'][0]:.2f} |")
    lines += ["", f"![{script}]({script}.png)", ""]
    (out_dir / f"{script}.md").write_text("\n".join(lines))

    cases = list(results)
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(cases) * len(VARIANTS) / 2 + 1.5))
    height = 0.8 / len(VARIANTS)
    for i, v in enumerate(VARIANTS):
        med = np.array([results[c][v][0] for c in cases])
        err = np.array([[med[j] - results[c][v][1], results[c][v][2] - med[j]] for j, c in enumerate(cases)]).T
        ax.barh(np.arange(len(cases)) + i * height, med, height, xerr=err, label=v, capsize=2)
    ax.set_yticks(np.arange(len(cases)) + height * (len(VARIANTS) - 1) / 2, cases)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set(xlabel="µs per call, log scale (median, IQR bars; lower is better)", title=f"{script}: per-calculation time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"{script}.png", dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmark.micro.update_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--script", required=True, help=f"one of: {', '.join(ADAPTERS)}")
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--blas", choices=("openblas", "bundled"), default="openblas", help="the MLX BLAS (Linux)")
    p.add_argument("--out", type=Path, default=OUT_DIR)
    opts = p.parse_args(argv)
    if opts.script not in ADAPTERS:
        raise SystemExit(f"benchmark.micro.update_step: no adapter for {opts.script!r} (have: {', '.join(ADAPTERS)})")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the benchmark setting; read when the BLAS libraries load
    if opts.blas == "bundled":
        os.environ["CLEANRL_MLX_BLAS"] = "bundled"
    else:
        os.environ.pop("CLEANRL_MLX_BLAS", None)
    m, t = load_pair(opts.script)
    import mlx.core as mx

    mx.set_default_device(mx.cpu if not mx.is_available(mx.gpu) else mx.gpu)
    blas = getattr(m, "BLAS", "?")
    cases, what = ADAPTERS[opts.script](m, t)
    results = measure(cases, opts.repeats, opts.warmup)
    import torch

    header = (
        f"Machine: {describe(machine_info())}. MLX device {mx.default_device()}, BLAS {blas}; torch threads "
        f"{torch.get_num_threads()}, BLAS {torch_blas() or '–'}; "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}; {opts.repeats} calls per figure."
    )
    write(results, opts.script, what, header, opts.out)
    print((opts.out / f"{opts.script}.md").read_text())
    return results


if __name__ == "__main__":
    main()
