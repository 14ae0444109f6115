"""Issue 21: the rational tanh that ppo and ppo_continuous_action use on Linux's CPU backend (CLEANRL_MLX_FAST_MATH)
and c51's fused softmax stay within 1e-6 of MLX's kernels, torch's and float64; the opt-out gives MLX's kernel back
bit for bit; the tanh block is written one way in both scripts; the startup line and the logged config name the
kernel in use. Also the other issue-21 change, in ppo, ppo_continuous_action, a2c and c51: every thread on one core
(CLEANRL_MLX_ONE_CORE)."""

import contextlib
import os
import re
import sys
import threading

import numpy as np
import pytest

from benchmark import run as bench_run
from benchmark.micro import fast_math
from benchmark.pairs import script_path
from tests.helpers import check_ok, load_script, run_script

FAST_SCRIPTS = fast_math.FAST_SCRIPTS
ONE_CORE_SCRIPTS = ("ppo", "ppo_continuous_action", "a2c", "c51")  # every thread on one core (CLEANRL_MLX_ONE_CORE)
ONE_CORE_OPT_OUT = "CLEANRL_MLX_ONE_CORE"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the replacements are for Linux's CPU backend")


@pytest.fixture(scope="module")
def scripts():
    """{name: {"fast": module, "mlx": module loaded with CLEANRL_MLX_FAST_MATH=0}} for the scripts with a replacement."""
    out = {name: fast_math.load_both(name) for name in (*FAST_SCRIPTS, "c51", "a2c")}
    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    return out


@linux_only
@pytest.mark.parametrize("name", FAST_SCRIPTS)
def test_rational_tanh_is_within_1e6_of_mlx_torch_and_float64(scripts, name):
    m = scripts[name]["fast"]
    assert m.MATH == "rational tanh"
    errors = fast_math.tanh_errors(m.tanh)
    grad = errors.pop("tanh's gradient vs 1 - tanh^2 in float64")
    assert all(e <= 1e-6 for e in errors.values()), errors  # measured 4.8e-7
    assert grad <= 2e-6  # 1 - y^2 from the saved output: at most twice the output's error (measured 9.3e-7)


@linux_only
def test_c51s_fused_softmax_is_within_1e6_of_mlx_torch_and_float64(scripts):
    """benchmark/results/micro-fast-math reports these figures."""
    m = scripts["c51"]["fast"]
    assert m.MATH == "fused softmax"
    errors = fast_math.softmax_errors(m.softmax)
    relative = errors.pop("softmax([x, 0]) vs float64, relative, where >= 1e-6")
    assert all(e <= 1e-6 for e in errors.values()), errors  # measured <= 6.6e-7; its exp on x <= 0: 7e-8
    assert relative <= 1.5e-6  # measured 9.8e-7 (mx.softmax's own: 9.8e-7): float32 rounding of x * log2(e)


def test_the_opt_out_gives_mlx_kernels_back_exactly(scripts):
    import mlx.core as mx

    x = mx.array(np.random.default_rng(0).normal(0, 4, (64, 101)).astype(np.float32))
    for name in FAST_SCRIPTS:
        m = scripts[name]["mlx"]
        assert m.MATH == "mlx"
        assert mx.array_equal(m.tanh(x), mx.tanh(x))
        grad = mx.grad(lambda v, m=m: m.tanh(v).sum())(x)
        assert mx.allclose(grad, 1 - mx.tanh(x) ** 2, atol=1e-7)
        small = x[:4, :64]  # a rollout step's few rows: MLX's kernel with the replacement on, too
        assert mx.array_equal(scripts[name]["fast"].tanh(small), mx.tanh(small))
    m = scripts["c51"]["mlx"]
    assert m.MATH == "mlx" and mx.array_equal(m.softmax(x), mx.softmax(x, axis=-1))
    cot = mx.array(np.random.default_rng(1).normal(size=x.shape).astype(np.float32))
    grads = [mx.vjp(f, [x], [cot])[1][0] for f in (m.softmax, lambda v: mx.softmax(v, axis=-1))]
    assert mx.allclose(*grads, atol=1e-7)
    small = x[:2]  # one step's greedy action (2 x 101 logits): MLX's kernel with the replacement on, too
    assert mx.array_equal(scripts["c51"]["fast"].softmax(small), mx.softmax(small, axis=-1))


def test_other_platforms_keep_mlx_kernels(monkeypatch):
    """macOS (Accelerate): MLX's own kernels and threads left where they are; the GPU backends are switched off in
    __main__, once the device is known."""
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.delenv(fast_math.OPT_OUT, raising=False)
    for name in (*FAST_SCRIPTS, "c51"):
        m = load_script(name, "mlx")
        assert m.MATH == "mlx"
        source = script_path(name, "mlx").read_text()
        # and no thread is moved: share_core does nothing (it would read /proc)
        assert m.THREADS == "free" and m.share_core() is None
        assert 'MATH, THREADS = (MATH, THREADS) if args.device == "cpu" else ("mlx", "free")' in source
    m = load_script("a2c", "mlx")
    assert m.THREADS == "free" and m.share_core() is None
    assert 'THREADS = THREADS if args.device == "cpu" else "free"' in script_path("a2c", "mlx").read_text()


def block(name, end):
    text = script_path(name, "mlx").read_text()
    begin = text.index("# Linux CPU backend: ")
    return text[begin : text.index(end, begin)]


def test_the_replacement_is_written_one_way_in_every_script():
    blocks = {name: block(name, "def forward(") for name in FAST_SCRIPTS}
    assert len(set(blocks.values())) == 1, "the rational tanh differs between " + ", ".join(blocks)
    selection = 'MATH = "{}" if sys.platform.startswith("linux") and os.environ.get("CLEANRL_MLX_FAST_MATH") != "0"'
    assert selection.format("rational tanh") in blocks["ppo"]
    assert selection.format("fused softmax") in block("c51", "@mx.custom_function")  # c51 selects its softmax the same way


@linux_only
@pytest.mark.parametrize(
    "name,opt_out,math",
    [("ppo", "1", "rational tanh"), ("ppo", "0", "mlx"), ("c51", "1", "fused softmax"), ("c51", "0", "mlx"), ("a2c", "1", None)],
)
def test_startup_line_and_config_name_the_kernels(tmp_path, name, opt_out, math):
    env = {fast_math.OPT_OUT: opt_out, ONE_CORE_OPT_OUT: opt_out}  # anything but "0" keeps the replacement
    short = {"ppo": ("--num-envs", "2", "--num-steps", "64"), "c51": ("--learning-starts", "100")}.get(name, ())
    proc = run_script(name, "mlx", "--total-timesteps", "512", *short, cwd=tmp_path, env=env)
    check_ok(proc)
    threads = ("one core" if opt_out == "1" else "free") if name in ONE_CORE_SCRIPTS else None
    line = ", ".join([r"device cpu, BLAS \S+"] + [f"math {math}"] * bool(math) + [f"threads {threads}"] * bool(threads))
    assert re.search(line + "\n", proc.stdout), proc.stdout
    (events,) = (tmp_path / "runs").glob("*/events.out.tfevents.*")
    assert math is None or f"|math|{math}|".encode() in events.read_bytes()
    assert threads is None or f"|threads|{threads}|".encode() in events.read_bytes()


def thread_ids():
    return [int(t) for t in os.listdir("/proc/self/task")]


def each_thread(f) -> dict:
    """{tid: f(tid)} for this process's threads; one that ends meanwhile (a pytest worker runs other tests' threads
    too) is left out instead of failing the test with ProcessLookupError."""
    done = {}
    for t in thread_ids():
        with contextlib.suppress(ProcessLookupError):
            done[t] = f(t)
    return done


@linux_only
@pytest.mark.parametrize("name", ONE_CORE_SCRIPTS)
def test_share_core_puts_every_thread_on_the_main_threads_core(scripts, name, monkeypatch):
    """share_core() moves MLX's stream thread and any other thread onto the core the main thread runs on, the others
    yielding to the main one (SCHED_BATCH); a thread started later is caught by the next call; the opt-out does
    nothing."""
    import mlx.core as mx

    m = scripts[name]["fast"]
    assert m.THREADS == "one core" and threading.get_native_id() == os.getpid(), "the test runs in the main thread"
    mx.eval(mx.arange(3) + 1)  # MLX's CPU stream thread exists
    cores = os.sched_getaffinity(0)
    idle = threading.Event()
    others = [threading.Thread(target=idle.wait)]
    others[0].start()
    try:
        m.share_core()
        others.append(threading.Thread(target=idle.wait))  # started after the call: on the core, not yet SCHED_BATCH
        others[1].start()
        m.share_core()
        affinity = each_thread(lambda t: frozenset(os.sched_getaffinity(t)))
        assert len(affinity) >= 4, "the main thread, MLX's stream thread and the two others at least"
        (core,) = set(affinity.values())
        assert len(core) == 1 and core <= cores
        assert all(p == os.SCHED_BATCH for t, p in each_thread(os.sched_getscheduler).items() if t != os.getpid())
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
        each_thread(lambda t: os.sched_setaffinity(t, cores))
        monkeypatch.setattr(m, "THREADS", "free")
        m.share_core()
        assert all(a == cores for a in each_thread(os.sched_getaffinity).values())
    finally:
        idle.set()
        for thread in others:
            thread.join()
        # as they were, for the tests that follow in this process
        each_thread(lambda t: (os.sched_setaffinity(t, cores), os.sched_setscheduler(t, os.SCHED_OTHER, os.sched_param(0))))


def test_the_one_core_block_is_written_one_way():
    begin = "# Linux CPU backend: every mx.eval wakes MLX's stream thread"
    blocks = {}
    for name in ONE_CORE_SCRIPTS:
        comment_and_selection, function = script_path(name, "mlx").read_text().split(begin)[1].split("\n\n\n")[:2]
        assert function.startswith("def share_core():"), name
        blocks[name] = begin + comment_and_selection + function
    assert len(set(blocks.values())) == 1, "share_core differs between " + ", ".join(blocks)
    selection = 'THREADS = "one core" if sys.platform.startswith("linux") and os.environ.get("CLEANRL_MLX_ONE_CORE") != "0"'
    assert selection in blocks["ppo"]


def test_sweep_adds_an_opt_out_run_next_to_each_mlx_run():
    assert bench_run.variants(["mlx", "torch"], ["openblas"], ["on", "off"]) == [
        ("mlx", "mlx", {"CLEANRL_MLX_BLAS": None, "CLEANRL_MLX_FAST_MATH": None, "CLEANRL_MLX_ONE_CORE": None}),
        ("mlx", "mlx-nofastmath", {"CLEANRL_MLX_BLAS": None, "CLEANRL_MLX_FAST_MATH": "0", "CLEANRL_MLX_ONE_CORE": None}),
        ("torch", "torch", {}),
    ]
    assert [label for _, label, _ in bench_run.variants(["mlx"], ["openblas"], ["on"], ["on", "off"])] == ["mlx", "mlx-anycore"]
