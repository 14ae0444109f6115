"""Issue 21: the rational tanh that ppo and ppo_continuous_action use on Linux's CPU backend (CLEANRL_MLX_FAST_MATH)
and c51's fused softmax stay within 1e-6 of MLX's kernels, torch's and float64; the opt-out gives MLX's kernel back
bit for bit; the tanh block is written one way in both scripts; the startup line and the logged config name the
kernel in use."""

import re
import sys

import numpy as np
import pytest

from benchmark import run as bench_run
from benchmark.micro import fast_math
from benchmark.pairs import script_path
from tests.helpers import check_ok, load_script, run_script

FAST_SCRIPTS = fast_math.FAST_SCRIPTS
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the replacements are for Linux's CPU backend")


@pytest.fixture(scope="module")
def scripts():
    """{name: {"fast": module, "mlx": module loaded with CLEANRL_MLX_FAST_MATH=0}} for the scripts with a replacement."""
    out = {name: fast_math.load_both(name) for name in (*FAST_SCRIPTS, "c51")}
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
    """macOS (Accelerate): MLX's own kernels; the GPU backends are switched off in __main__, once the device is known."""
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.delenv(fast_math.OPT_OUT, raising=False)
    for name in (*FAST_SCRIPTS, "c51"):
        assert load_script(name, "mlx").MATH == "mlx"
        source = script_path(name, "mlx").read_text()
        assert 'MATH = MATH if args.device == "cpu" else "mlx"' in source


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
    "name,opt_out,math", [("ppo", "1", "rational tanh"), ("ppo", "0", "mlx"), ("c51", "1", "fused softmax"), ("c51", "0", "mlx")]
)
def test_startup_line_and_config_name_the_kernels(tmp_path, name, opt_out, math):
    env = {fast_math.OPT_OUT: opt_out}  # anything but "0" keeps the replacement
    short = ("--num-envs", "2", "--num-steps", "64") if name == "ppo" else ("--learning-starts", "100")
    proc = run_script(name, "mlx", "--total-timesteps", "512", *short, cwd=tmp_path, env=env)
    check_ok(proc)
    assert re.search(rf"device cpu, BLAS \S+, math {math}\n", proc.stdout), proc.stdout[:500]
    (events,) = (tmp_path / "runs").glob("*/events.out.tfevents.*")
    assert f"|math|{math}|".encode() in events.read_bytes()


def test_sweep_adds_an_opt_out_run_next_to_each_mlx_run():
    assert bench_run.variants(["mlx", "torch"], ["openblas"], ["on", "off"]) == [
        ("mlx", "mlx", {"CLEANRL_MLX_BLAS": None, "CLEANRL_MLX_FAST_MATH": None}),
        ("mlx", "mlx-nofastmath", {"CLEANRL_MLX_BLAS": None, "CLEANRL_MLX_FAST_MATH": "0"}),
        ("torch", "torch", {}),
    ]
