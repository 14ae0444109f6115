"""benchmark/: the runner (sweeps, errors, failed runs, Ray), the report's numbers and files, the generated
README/docs blocks, and the micro-benchmarks. Fake script pairs (tiny programs that log known scalars) make the
report's arithmetic checkable exactly; one real PPO sweep checks it end to end."""

import csv
import json
import math
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from benchmark import docs, registry, report
from benchmark import run as bench_run
from benchmark.machine import cpu_label, describe
from benchmark.machine import torch_blas as machine_torch_blas
from benchmark.pairs import REPO
from benchmark.report import read_scalars

# A fake twin: logs 150 episodes with returns seed*1000 + 0..149 and fixed SPS/timing values that
# depend on the framework; the MLX side fails on seed 2 after printing a recognisable line; the torch
# side holds 300 MB of written memory (its peak RSS must show it). With --stop-at it stops there as the real scripts
# do on SIGTERM (a checkpoint, the same last line, exit 0), and --resume continues from that checkpoint.
FAKE_SCRIPT = textwrap.dedent(
    '''
    import json, pathlib, sys, time
    from dataclasses import dataclass
    sys.modules["torch"] = None  # tensorboardX imports torch when it can: seconds this fake does not need
    from tensorboardX import SummaryWriter
    del sys.modules["torch"]
    import tyro

    @dataclass
    class Args:
        env_id: str = "FakeEnv-v0"
        """the id of the environment"""
        seed: int = 1
        """seed"""
        total_timesteps: int = 1000
        """budget"""
        extra: int = 0
        """a pass-through argument"""
        stop_at: int = 0
        """stop at this step as on SIGTERM"""
        resume: str = ""
        """the run folder to continue"""
        save_model: bool = False
        """log three eval episodes, seed*10 + 0..2, as a saved model's evaluation"""

    args = tyro.cli(Args)
    FRAMEWORK = "{framework}"
    if calls := __import__("os").environ.get("FAKE_CALLS"):  # a test counting the runs, warm-ups included
        open(calls, "a").write(f"{{FRAMEWORK}} {{args.seed}}\\n")
    print(f"fake_{{FRAMEWORK}}: device cpu, " + ("BLAS openblas" if FRAMEWORK == "mlx" else "threads 1"), flush=True)
    if FRAMEWORK == "mlx" and args.seed == 2:
        print("boom: the fake mlx script failed on purpose", flush=True)
        sys.exit(3)
    if FRAMEWORK == "torch":
        ballast = b"x" * (300 << 20)  # written, so resident; held long enough for the runner to see it
        time.sleep(1.0)
    run_name = args.resume or f"runs/{{args.env_id}}__fake__{{args.seed}}__{{int(time.time())}}"
    start = max((json.loads(p.read_text())["global_step"] for p in pathlib.Path(run_name).glob("checkpoints/*/state.json")), default=0)
    stop = args.stop_at if args.stop_at > start else 0
    writer = SummaryWriter(run_name, purge_step=start or None)
    for i in range(start // 10, stop // 10 if stop else 150):
        writer.add_scalar("charts/episodic_return", args.seed * 1000 + i + args.extra, 10 * i)
    sps = [100, 300, 200] if FRAMEWORK == "mlx" else [50, 70, 60]
    for k, v in enumerate(sps):
        step = args.total_timesteps * (k + 1) // 3
        if start < step <= (stop or step):
            writer.add_scalar("charts/SPS", v * args.seed, step)
            writer.add_scalar("timing/env_us", 10.0, step)
            writer.add_scalar("timing/inference_us", 20.0 if FRAMEWORK == "mlx" else 40.0, step)
            writer.add_scalar("timing/update_us", 30.0, step)
    if stop:
        writer.close()
        (pathlib.Path(run_name) / f"checkpoints/step_{{stop:012d}}").mkdir(parents=True)
        (pathlib.Path(run_name) / f"checkpoints/step_{{stop:012d}}/state.json").write_text(json.dumps({{"global_step": stop}}))
        sys.exit(print(f"fake_{{FRAMEWORK}}.py: stopped at step {{stop}}; resume with --resume {{run_name}}"))
    for i in range(3 if args.save_model else 0):
        writer.add_scalar("eval/episodic_return", args.seed * 10 + i, i)
    writer.close()
    '''
)


@pytest.fixture
def fake_dirs(tmp_path):
    dirs = {"mlx": tmp_path / "mlx", "torch": tmp_path / "torch"}
    for fw, d in dirs.items():
        d.mkdir()
        (d / f"fake_{fw}.py").write_text(FAKE_SCRIPT.format(framework=fw))
    (dirs["mlx"] / "lonely_mlx.py").write_text("print('no twin')\n")
    return dirs


def run_main(*argv, dirs=None, runs_dir):
    extra = ["--script-dirs", str(dirs["mlx"]), str(dirs["torch"])] if dirs else []
    return bench_run.main(["--runs-dir", str(runs_dir), *extra, *argv])


# ---------------------------------------------------------------- runner


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--scripts", "nosuch"], r"unknown script 'nosuch'; pairs found: fake"),
        (["--scripts", "lonely"], r"'lonely' has no twin: .*lonely_mlx.py exists but .*lonely_torch.py does not"),
        (["--scripts", "fake", "--frameworks", "mlx", "jax"], r"unknown framework 'jax' \(choose from mlx, torch\)"),
        (["--scripts", "fake", "--mlx-blas", "mkl"], r"unknown --mlx-blas 'mkl'"),
        (["--scripts", "fake", "--workers", "0"], r"--workers must be positive"),
        (["--scripts", "fake", "--resume", "--backend", "ray"], r"--resume runs locally only"),
    ],
)
def test_bad_input_exits_with_one_line_before_running(argv, message, fake_dirs, tmp_path):
    with pytest.raises(SystemExit, match=message):
        run_main(*argv, dirs=fake_dirs, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_expand_uses_registry_script_defaults_and_pass_through(fake_dirs):
    opts = bench_run.parse(["--scripts", "fake", "--seeds", "1", "2", "--mlx-blas", "openblas", "bundled", "--", "--extra", "5"])
    specs = bench_run.expand(opts, fake_dirs)
    # no registry entry: the script's own env default and budget; MLX and torch runs of a seed adjacent
    assert [(s.env_id, s.seed, s.variant) for s in specs] == [
        ("FakeEnv-v0", seed, v) for seed in (1, 2) for v in ("mlx", "mlx-bundled", "torch")
    ]
    assert all(s.args == ["--env-id", "FakeEnv-v0", "--seed", str(s.seed), "--extra", "5"] for s in specs)
    fast = {"CLEANRL_MLX_FAST_MATH": None, "CLEANRL_MLX_ONE_CORE": None}  # the scripts' defaults, whatever the environment says
    assert [s.env for s in specs[:3]] == [{"CLEANRL_MLX_BLAS": None} | fast, {"CLEANRL_MLX_BLAS": "bundled"} | fast, {}]
    # the registry's entry for ppo gives its envs and budget; the CLI overrides them
    (ppo,) = bench_run.expand(
        bench_run.parse(["--scripts", "ppo", "--seeds", "1", "--frameworks", "torch"]), bench_run.DEFAULT_DIRS
    )
    assert ppo.args == ["--env-id", "CartPole-v1", "--seed", "1", "--total-timesteps", "500000"]
    cli = bench_run.parse(
        ["--scripts", "ppo", "--seeds", "1", "--frameworks", "torch", "--env-ids", "Acrobot-v1", "--total-timesteps", "4096"]
    )
    (ppo,) = bench_run.expand(cli, bench_run.DEFAULT_DIRS)
    assert ppo.args == ["--env-id", "Acrobot-v1", "--seed", "1", "--total-timesteps", "4096"]
    # the registry's extra arguments (td3's short budget learns from step 1000), unless the CLI passes the flag itself
    base = "--scripts td3 --seeds 1 --frameworks torch --env-ids Hopper-v5 --total-timesteps 300000".split()
    (td3,) = bench_run.expand(bench_run.parse(base), bench_run.DEFAULT_DIRS)
    assert td3.args[-2:] == ["--learning-starts", "1000"]
    (td3,) = bench_run.expand(bench_run.parse([*base, "--", "--learning-starts", "25000"]), bench_run.DEFAULT_DIRS)
    assert td3.args[-4:] == ["--total-timesteps", "300000", "--learning-starts", "25000"]
    # --track passes the W&B project and entity on (the scripts' own defaults where not given)
    tracked = bench_run.parse(["--scripts", "fake", "--seeds", "1", "--frameworks", "torch", "--track", "--wandb-entity", "me"])
    assert bench_run.expand(tracked, fake_dirs)[0].args[-3:] == ["--track", "--wandb-entity", "me"]
    tracked = bench_run.parse([*"--scripts fake --seeds 1 --frameworks torch --track --wandb-project-name p".split(), "--", "-x"])
    assert bench_run.expand(tracked, fake_dirs)[0].args[-4:] == ["-x", "--track", "--wandb-project-name", "p"]


def test_warmup_runs_each_mlx_script_env_and_variant_once_short_and_untracked(fake_dirs, tmp_path, capsys, monkeypatch):
    opts = bench_run.parse("--scripts fake --seeds 1 2 --mlx-blas openblas bundled --track --wandb-entity me".split())
    warm = bench_run.warmups(bench_run.expand(opts, fake_dirs))
    assert [(w.variant, w.seed) for w in warm] == [("mlx", 1), ("mlx-bundled", 1)]  # no torch run, one per variant
    assert all("--track" not in w.args and "--wandb-entity" not in w.args for w in warm)
    ppo = bench_run.parse("--scripts ppo --seeds 1 --frameworks mlx".split())
    (w,) = bench_run.warmups(bench_run.expand(ppo, bench_run.DEFAULT_DIRS))
    assert w.args[w.args.index("--total-timesteps") + 1] == "2048"  # the registry's warm-up budget, not 500k
    # allo counts gradient steps under its own flag: the warm-up passes it (the sweep leaves the script's 20k), the CLI maps to it
    allo = bench_run.parse("--scripts allo --seeds 1 --frameworks mlx".split())
    (run,) = bench_run.expand(allo, bench_run.DEFAULT_DIRS)
    (w,) = bench_run.warmups([run])
    assert run.args == ["--env-id", "GridRoom-16", "--seed", "1"] and w.args == [*run.args, "--total-train-steps", "200"]
    opts = bench_run.parse([*"--scripts allo --seeds 1 --frameworks mlx".split(), "--total-timesteps", "900"])
    (run,) = bench_run.expand(opts, bench_run.DEFAULT_DIRS)
    assert run.args[-2:] == ["--total-train-steps", "900"] and bench_run.warmups([run])[0].args[-1] == "200"
    # the sweep runs them first and keeps nothing of them; --no-warmup skips them
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    assert run_main("--scripts", "fake", "--seeds", "1", "--tag", "w", dirs=fake_dirs, runs_dir=tmp_path / "runs") == 0
    assert "1 warm-up run(s) first" in capsys.readouterr().out
    assert calls.read_text().splitlines()[0] == "mlx 1" and sorted(calls.read_text().splitlines()) == [
        "mlx 1",
        "mlx 1",
        "torch 1",
    ]
    assert sorted(p.name for p in (tmp_path / "runs" / "w").iterdir() if p.is_dir()) == [
        "fake__FakeEnv-v0__mlx__1",
        "fake__FakeEnv-v0__torch__1",
    ]
    calls.unlink()
    run_main("--scripts", "fake", "--seeds", "1", "--tag", "w", "--no-warmup", dirs=fake_dirs, runs_dir=tmp_path / "runs")
    assert "warm-up" not in capsys.readouterr().out and sorted(calls.read_text().splitlines()) == ["mlx 1", "torch 1"]


def test_resume_continues_stopped_runs_keeps_finished_ones_and_sums_their_sittings(fake_dirs, tmp_path, capsys, monkeypatch):
    calls, runs = tmp_path / "calls.txt", tmp_path / "runs"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    sweep = ["--scripts", "fake", "--frameworks", "torch", "--no-warmup", "--tag", "r"]
    # seed 1 stops at step 500 (as on SIGTERM), seed 3 runs to the end; then both are asked to go on
    assert run_main(*sweep, "--seeds", "1", "--", "--stop-at", "500", dirs=fake_dirs, runs_dir=runs) == 0
    assert run_main(*sweep, "--seeds", "3", dirs=fake_dirs, runs_dir=runs) == 0
    first = json.loads((runs / "r/fake__FakeEnv-v0__torch__1/run.json").read_text())
    assert first["stopped_at"] == 500 and "sittings" not in first
    assert report.load_run(runs / "r/fake__FakeEnv-v0__torch__1")["steps"] == 333
    capsys.readouterr()
    assert run_main(*sweep, "--seeds", "1", "3", "--resume", "--", "--stop-at", "500", dirs=fake_dirs, runs_dir=runs) == 0
    out = capsys.readouterr().out
    assert "fake__FakeEnv-v0__torch__3 finished already; kept" in out
    assert "fake__FakeEnv-v0__torch__1 resumes from runs/FakeEnv-v0__fake__1__" in out
    assert calls.read_text().splitlines() == ["torch 1", "torch 3", "torch 1"]  # seed 3 did not run again
    resumed = json.loads((runs / "r/fake__FakeEnv-v0__torch__1/run.json").read_text())
    assert resumed["stopped_at"] is None and resumed["returncode"] == 0 and resumed["started"] == first["started"]
    assert resumed["sittings"][0] == first["wall_s"] and resumed["wall_s"] == pytest.approx(sum(resumed["sittings"]))
    assert "machines" not in first and resumed["machines"] == [first["machine"], resumed["machine"]]  # each sitting's
    log = (runs / "r/fake__FakeEnv-v0__torch__1/stdout.log").read_text()
    assert log.count("threads 1") == 2 and "stopped at step 500" in log and "benchmark.run: resumed at" in log
    # one run folder, its curve whole: the same as a run never stopped (seed 3's, less 2000)
    one, three = (report.load_run(runs / f"r/fake__FakeEnv-v0__torch__{k}") for k in (1, 3))
    assert len(list((runs / "r/fake__FakeEnv-v0__torch__1/runs").iterdir())) == 1
    assert one["steps"] == three["steps"] == 1000 and one["final_return"] == three["final_return"] - 2000
    # a killed sitting (no run.json) keeps its log too; a run with nothing to resume from starts afresh
    (runs / "r/fake__FakeEnv-v0__torch__1/run.json").unlink()
    (runs / "r/fake__FakeEnv-v0__torch__1/stdout.log").write_text("killed\n")
    next(runs.glob("r/fake__FakeEnv-v0__torch__1/runs/*/checkpoints/step_*")).rename(runs / "r/step_000000000500")
    next(runs.glob("r/fake__FakeEnv-v0__torch__1/runs/*/checkpoints")).joinpath("step_000000000900").mkdir()
    (next(runs.glob("r/fake__FakeEnv-v0__torch__1/runs/*/checkpoints/step_*")) / "state.json").write_text('{"global_step": 900}')
    assert run_main(*sweep, "--seeds", "1", "--resume", dirs=fake_dirs, runs_dir=runs) == 0
    assert (runs / "r/fake__FakeEnv-v0__torch__1/stdout.log").read_text().startswith("killed\n\nbenchmark.run: resumed at")
    assert report.load_run(runs / "r/fake__FakeEnv-v0__torch__1")["final_return"] == one["final_return"]
    assert run_main(*sweep, "--seeds", "4", "--resume", dirs=fake_dirs, runs_dir=runs) == 0
    assert "sittings" not in json.loads((runs / "r/fake__FakeEnv-v0__torch__4/run.json").read_text())


def test_every_resumable_scripts_stop_line_is_what_resume_looks_for(tmp_path):
    lines = {}
    for path in [*REPO.glob("cleanrl_mlx/*.py"), *REPO.glob("cleanrl_torch_reference/*.py")]:
        for line in re.findall(r'print\(f"\{script\}: (stopped at step .*)"\)', path.read_text()):
            lines[path.name] = f"{path.name}: " + re.sub(r"\{global_step[^}]*\}", "1234", line).replace("{run_name}", "x")
    assert {"td3_mlx.py", "td3_torch.py", "ppo_atari_mlx.py", "dqn_atari_torch.py"} <= set(lines)
    for name, line in lines.items():
        (tmp_path / "stdout.log").write_text(f"SPS: 60\n{line}\n")
        assert bench_run.stopped_at(tmp_path) == 1234, name
    (tmp_path / "stdout.log").write_text(f"{line}\nmodel saved to runs/x/td3.safetensors\n")
    assert bench_run.stopped_at(tmp_path) is None


def test_failed_run_shows_log_tail_others_finish_and_are_reported(fake_dirs, tmp_path, capsys):
    rc = run_main(
        "--scripts",
        "fake",
        "--seeds",
        "1",
        "2",
        "--workers",
        "2",
        "--tag",
        "t",
        "--",
        "--extra",
        "7",
        dirs=fake_dirs,
        runs_dir=tmp_path / "runs",
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "fake__FakeEnv-v0__mlx__2" in err and "FAILED with exit code 3" in err
    assert "boom: the fake mlx script failed on purpose" in err  # the log tail
    assert "1 of 4 runs failed" in err
    records = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "runs" / "t").glob("*/run.json")}
    assert {k: r["returncode"] for k, r in records.items()} == {
        "fake__FakeEnv-v0__mlx__1": 0,
        "fake__FakeEnv-v0__mlx__2": 3,
        "fake__FakeEnv-v0__torch__1": 0,
        "fake__FakeEnv-v0__torch__2": 0,
    }

    rows = report.write_report(tmp_path / "runs" / "t", tmp_path / "out")
    by_variant = {r["variant"]: r for r in rows}
    mlx, torch = by_variant["mlx"], by_variant["torch"]
    assert (mlx["seeds"], mlx["failed_runs"], torch["seeds"], torch["failed_runs"]) == (1, 1, 2, 0)
    # last 100 of seed*1000 + extra + 0..149 -> seed*1000 + 7 + 99.5; torch: mean/std over seeds 1, 2
    assert mlx["return_mean"] == pytest.approx(1106.5) and mlx["return_std"] == 0
    assert torch["return_mean"] == pytest.approx(1606.5) and torch["return_std"] == pytest.approx(500)
    # median SPS per run (mlx seed 1: 200; torch: 60, 120), median over runs; ratio mlx/torch
    assert mlx["sps_median"] == 200 and torch["sps_median"] == 90
    assert mlx["sps_ratio_vs_torch"] == pytest.approx(200 / 90)
    assert (mlx["inference_us"], torch["inference_us"], torch["env_us"], torch["update_us"]) == (20, 40, 10, 30)
    assert mlx["blas"] == "openblas" and torch["published_return"] == ""
    import torch as th  # torch's own word on its BLAS, not the runner's reading of its build config

    assert torch["blas"] and torch["blas"] == ("mkl" if th.backends.mkl.is_available() else torch["blas"])
    assert torch["peak_rss_mb"] >= 300 > mlx["peak_rss_mb"] > 10  # the runner's os.wait4, per child
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## Failed runs" in md and "boom: the fake mlx script failed on purpose" in md
    assert f"BLAS openblas; torch's BLAS {torch['blas']}. " in md and f"| fake | FakeEnv-v0 | torch | {torch['blas']} | 2 |" in md
    assert "| fake | FakeEnv-v0 | mlx | openblas | 1 | 1,000 | 1106.50 ± 0.00 | – | – | 200 | 2.22 |" in md  # no IQM: 1 seed
    assert f"| {torch['peak_rss_mb']:.0f} | 10.0 | 40.0 | 30.0 |" in md
    # one row per run, the failed one included: seed, budget reached, its own last-100 return
    runs = md.split("## Runs")[1].split("## Failed runs")[0]
    assert (
        "| fake | FakeEnv-v0 | mlx | 1 | 1,000 | 1106.50 |" in runs
        and "| fake | FakeEnv-v0 | mlx | 2 | – | – | failed (3) |" in runs
    )
    assert (
        "| fake | FakeEnv-v0 | torch | 1 | 1,000 | 1106.50 |" in runs
        and "| fake | FakeEnv-v0 | torch | 2 | 1,000 | 2106.50 |" in runs
    )


def test_iqm_and_sps_ratio_intervals_for_three_or_more_seeds(fake_dirs, tmp_path, monkeypatch, capsys):
    """Four seeds per twin: the IQM of the final returns is the mean of the middle two (not the mean of all four),
    inside its bootstrap interval; the SPS ratio's interval holds the ratio of medians. Without rliable the report
    still runs, leaves both out and says so once."""
    pytest.importorskip("rliable")
    assert (
        run_main(
            "--scripts", "fake", "--seeds", "1", "3", "4", "5", "--workers", "2", "--tag", "q", dirs=fake_dirs, runs_dir=tmp_path
        )
        == 0
    )
    rows = {r["variant"]: r for r in report.write_report(tmp_path / "q", tmp_path / "out", reps=500)}
    mlx, torch = rows["mlx"], rows["torch"]
    # final returns seed*1000 + 99.5: IQM of 1099.5, 3099.5, 4099.5, 5099.5 is (3099.5 + 4099.5) / 2
    assert mlx["return_iqm"] == pytest.approx(3599.5) and mlx["return_mean"] == pytest.approx(3349.5)
    assert 1099.5 <= mlx["return_iqm_low"] < 3599.5 < mlx["return_iqm_high"] <= 5099.5
    # per-run median SPS: mlx 200*seed, torch 60*seed; medians over seeds 700 and 210
    assert mlx["sps_ratio_vs_torch"] == pytest.approx(700 / 210)
    assert 200 / 300 <= mlx["sps_ratio_low"] < 700 / 210 < mlx["sps_ratio_high"] <= 1000 / 60
    assert math.isnan(torch["sps_ratio_low"]) and torch["return_iqm"] == pytest.approx(torch["return_mean"] + 250)
    md = (tmp_path / "out" / "results.md").read_text()
    iqm = f"3599.50 [{mlx['return_iqm_low']:.2f}, {mlx['return_iqm_high']:.2f}]"
    ratio = f"3.33 [{mlx['sps_ratio_low']:.2f}, {mlx['sps_ratio_high']:.2f}]"
    assert f"| 3349.50 ± 1479.02 | {iqm} | – | 700 | {ratio} |" in md
    assert "stratified-bootstrap interval" in md and "ratio of their medians" in md and "![sps_ratio.png](sps_ratio.png)" in md
    with open(tmp_path / "out" / "results.csv") as f:
        assert float(next(csv.DictReader(f))["return_iqm"]) == pytest.approx(3599.5)

    monkeypatch.setitem(sys.modules, "rliable", None)  # as if not installed: the import fails
    capsys.readouterr()
    rows = report.write_report(tmp_path / "q", tmp_path / "plain")
    assert all(math.isnan(r["return_iqm"]) and math.isnan(r["sps_ratio_low"]) for r in rows)
    assert rows[0]["sps_ratio_vs_torch"] == pytest.approx(700 / 210)
    assert capsys.readouterr().out.count("rliable is not installed") == 1
    md = (tmp_path / "plain" / "results.md").read_text()
    assert md.count("rliable is not installed") == 1 and "| 3349.50 ± 1479.02 | – | – | 700 | 3.33 |" in md
    assert (tmp_path / "plain" / "sps_ratio.png").read_bytes()[:4] == b"\x89PNG"


def test_bootstrap_intervals_are_the_same_every_time():
    """rliable resamples with numpy's global RNG whatever random_state it is given: the report's intervals must not
    depend on what drew from that RNG before (they moved between regenerations of the same runs), nor move it."""
    rly = (report.load_rliable() or pytest.skip("rliable is not installed"))[0]
    sps = [np.array([[4971.5], [3305.0], [4444.5], [3580.5]]), np.array([[2000.0], [2100.0], [1900.0], [2300.0]])]
    ratio = lambda m, t: np.array([np.median(m) / np.median(t)])  # noqa: E731
    first = report.bootstrap(rly, sps, ratio, reps=300)
    np.random.seed(1)
    np.random.random(7)  # a caller's draws in between
    after = np.random.get_state()
    assert report.bootstrap(rly, sps, ratio, reps=300) == first
    now = np.random.get_state()
    assert (now[1] == after[1]).all() and now[2:] == after[2:]  # same key and position: the caller's RNG untouched
    assert first[1] < first[0] < first[2]  # a real interval around the ratio of medians, not a constant


# ---------------------------------------------------------------- a real sweep, end to end


def test_report_on_a_real_ppo_sweep(tmp_path):
    """PPO, one seed, MLX and torch, 2048 steps each: the real scripts through the runner and the
    report (one test, so that pytest-xdist does not run the sweep twice)."""
    tmp = tmp_path
    sweep = "--scripts ppo --seeds 1 --total-timesteps 2048 --workers 2 --tag tiny".split()
    rc = bench_run.main([*sweep, "--runs-dir", str(tmp)])
    assert rc == 0
    (layout,) = (tmp / "tiny").glob("events.out.tfevents.*.cleanrl_layout")  # the sweep's TensorBoard page
    rows = report.write_report(tmp / "tiny", tmp / "results")

    # the table's numbers are the logged scalars'
    assert [r["variant"] for r in rows] == ["mlx", "torch"]
    with open(tmp / "results" / "results.csv") as f:
        csv_rows = {r["variant"]: r for r in csv.DictReader(f)}
    for row in rows:
        (tb_dir,) = (tmp / "tiny" / f"ppo__CartPole-v1__{row['variant']}__1" / "runs").iterdir()
        scalars = read_scalars(tb_dir)
        returns = [v for _, v in scalars["charts/episodic_return"]]
        assert row["sps_median"] == pytest.approx(np.median([v for _, v in scalars["charts/SPS"]]))
        assert row["return_mean"] == pytest.approx(np.mean(returns[-100:]))
        assert row["update_us"] == pytest.approx(np.median([v for _, v in scalars["timing/update_us"]]))
        assert row["total_timesteps"] == 2048 and row["seeds"] == 1 and row["failed_runs"] == 0
        assert float(csv_rows[row["variant"]]["sps_median"]) == pytest.approx(row["sps_median"])
        assert row["published_return"] == 490.04  # CleanRL's ppo.py CartPole-v1 (at 500k steps)
    assert rows[0]["sps_ratio_vs_torch"] == pytest.approx(rows[0]["sps_median"] / rows[1]["sps_median"])
    assert rows[0]["blas"] in ("openblas", "bundled") and rows[0]["device"] in ("cpu", "gpu")
    assert rows[1]["blas"] == machine_torch_blas()  # the torch twin's, recorded by the runner

    # the files: plots, results.md with the machine, the README block
    out = tmp / "results"
    for png in ("curves_ppo__CartPole-v1.png", "sps.png", "timing.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    md = (out / "results.md").read_text()
    machine = json.loads((out / "machine.json").read_text())
    assert machine["cpu"] in md and f"mlx {machine['mlx']}" in md and f"BLAS {rows[0]['blas']}" in md
    assert machine["torch_blas"] == rows[1]["blas"] and f"torch's BLAS {rows[1]['blas']}." in md
    assert f"| {rows[0]['sps_median']:.0f} |" in md and "490.04 ± 6.12 (at 500,000 steps)" in md

    # the generated README row and docs table come from these files, numbers included
    results = docs.load_results(tmp)
    readme_row = docs.readme_block(results, ["ppo"]).splitlines()[2]
    assert f"| CartPole-v1 | 2,048 | {rows[0]['return_mean']:.1f} | {rows[1]['return_mean']:.1f} |" in readme_row
    cpu = f"{machine['cpu']} ({machine['simd']})" if machine["simd"] else machine["cpu"]  # the vector unit, where known
    assert f"| {rows[0]['sps_ratio_vs_torch']:.2f} | {cpu}, {machine['cores']} cores" in readme_row
    assert f"MLX {rows[0]['device']} + {rows[0]['blas']}, torch + {rows[1]['blas']} |" in readme_row
    assert "490.04 ± 6.12 (at 500,000 steps)" in readme_row
    page = docs.docs_block(results, "ppo")
    assert f"| mlx | 1 | {rows[0]['return_mean']:.1f} ± 0.0 |" in page and "curves_ppo__CartPole-v1.png" in page
    text = docs.replace_block("# x\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\nafter\n", page, tmp_path)
    assert "old" not in text and text.endswith("<!-- results:end -->\n\nafter\n")


# ---------------------------------------------------------------- Ray


def test_ray_backend_runs_the_same_sweep(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        sweep = "--scripts ppo --seeds 1 --total-timesteps 2048 --backend ray --tag r".split()
        rc = bench_run.main([*sweep, "--runs-dir", str(tmp_path)])
    finally:
        ray.shutdown()
    assert rc == 0
    runs = report.load_sweep(tmp_path / "r")
    assert sorted(r["variant"] for r in runs) == ["mlx", "torch"]
    assert all(r["returncode"] == 0 and r["steps"] == 2048 and r["sps"] > 0 for r in runs)


# ---------------------------------------------------------------- micro-benchmark


def run_microbench(script, repeats, out, monkeypatch):
    """benchmark.micro.update_step's main on one script, leaving OMP_NUM_THREADS, the BLAS choice and torch's threads
    as they were."""
    import torch

    from benchmark.micro import update_step as microbench

    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # restored afterwards
    monkeypatch.delenv("CLEANRL_MLX_BLAS", raising=False)
    threads = torch.get_num_threads()
    try:
        return microbench.main(["--script", script, "--repeats", str(repeats), "--warmup", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)


def test_microbench_ppo_writes_table_and_plot(tmp_path, monkeypatch):
    from benchmark.micro import update_step as microbench

    results = run_microbench("ppo", 3, tmp_path, monkeypatch)
    cases = ["forward (actor + critic)", "loss terms (forward excluded)", "forward + loss", "forward + loss + backward"]
    cases += ["optimizer step (clip + Adam)", "full update (one minibatch)"]
    assert list(results) == cases
    assert all(set(results[c]) == set(microbench.VARIANTS) and all(v[0] > 0 for v in results[c].values()) for c in cases)
    md = (tmp_path / "ppo.md").read_text()
    for c in cases:
        row = next(line for line in md.splitlines() if line.startswith(f"| {c} |"))
        assert f"{results[c]['torch'][0]:.1f}" in row and f"{results[c]['mlx compiled'][0]:.1f}" in row
    assert "minibatch 128 rows" in md and "BLAS " in md
    with open(tmp_path / "ppo.csv") as f:
        assert len(list(csv.DictReader(f))) == len(cases) * len(microbench.VARIANTS)
    assert (tmp_path / "ppo.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="no adapter for 'nosuch'"):
        microbench.main(["--script", "nosuch"])


def test_microbench_allo_times_its_update_and_the_matmul_under_it(tmp_path, monkeypatch):
    results = run_microbench("allo", 2, tmp_path, monkeypatch)
    cases = ["hidden-layer matmul", "encoder forward", "forward + loss + backward", "full update (Adam, duals, barrier)"]
    assert list(results) == cases and all(v[0] > 0 for c in cases for v in results[c].values())
    assert "4096 rows (4 x batch_size)" in (tmp_path / "allo.md").read_text()


def test_microbench_dqn_atari_times_the_greedy_action_forward_and_gradient_step(tmp_path, monkeypatch):
    results = run_microbench("dqn_atari", 2, tmp_path, monkeypatch)
    cases = ["greedy action (1 observation)", "Q-network forward (batch)", "gradient step (TD target, loss, backward, Adam)"]
    assert list(results) == cases and all(v[0] > 0 for c in cases for v in results[c].values())
    assert "QNetwork(4) (Nature CNN, uint8 frames), batch 32, Adam" in (tmp_path / "dqn_atari.md").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the OpenBLAS preload is Linux's")
def test_microbench_leaves_each_framework_its_own_blas():
    """In the micro-benchmark's process torch's sgemm_ must stay torch's (MKL) and mlx's cblas_sgemm the system
    OpenBLAS, as when each runs alone: loading OpenBLAS globally before torch hands torch's matmuls to OpenBLAS."""
    import ctypes

    try:
        ctypes.CDLL("libopenblas.so.0")
    except OSError:
        pytest.skip("no system OpenBLAS")
    code = "from benchmark.pairs import load_pair; m, t = load_pair('allo'); print('BLAS', m.BLAS)"
    env = {k: v for k, v in os.environ.items() if k != "CLEANRL_MLX_BLAS"} | {"LD_DEBUG": "bindings"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "BLAS openblas" in proc.stdout, proc.stderr[-2000:]
    bound = {}  # (binding library, symbol) -> the library that defines it
    for line in proc.stderr.splitlines():
        found = re.search(r"binding file (\S+) \[\d+\] to (\S+) \[\d+\]: normal symbol `(sgemm_|cblas_sgemm)'", line)
        if found:
            bound[(os.path.basename(found[1]), found[3])] = os.path.basename(found[2])
    assert bound[("libtorch_cpu.so", "sgemm_")] == "libtorch_cpu.so"
    assert bound[("libmlx.so", "cblas_sgemm")] == "libopenblas.so.0"


def test_report_track_uploads_offline_grouped_by_algo_env(fake_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert (
        run_main(
            "--scripts", "fake", "--seeds", "3", "--frameworks", "torch", "--tag", "w", dirs=fake_dirs, runs_dir=tmp_path / "runs"
        )
        == 0
    )
    report.upload_wandb(report.load_sweep(tmp_path / "runs" / "w"), "cleanrl-mlx", wandb_dir=str(tmp_path))
    (offline_run,) = (tmp_path / "wandb").glob("offline-run-*")
    (record,) = offline_run.glob("*.wandb")
    data = record.read_bytes()
    assert b"fake__FakeEnv-v0" in data and b"framework" in data and b"charts/SPS" in data and b"global_step" in data


def test_atari_memory_measures_the_filled_buffer(tmp_path):
    """dqn_atari's default buffer (1M) with 30k transitions written: the written frames (~200 MB) are
    resident, the naive obs+next_obs layout is 8x the frame store, and the table shows both twins."""
    from benchmark.micro import atari_memory

    assert atari_memory.main(["--transitions", "30000", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["framework"] for r in rows] == ["mlx", "torch"]
    for r in rows:
        assert r["buffer_size"] == 1_000_000 and r["transitions_added"] == 30_000
        assert r["naive_buffer_mb"] > 7.9 * r["buffer_mb"] > 7.9 * 6_700
        assert r["peak_rss_mb"] - r["rss_before_buffer_mb"] > 30_000 * 84 * 84 / 2**20  # the frames really are stored
    md = (tmp_path / "results.md").read_text()
    assert f"| mlx | 1,000,000 | 30,000 | {rows[0]['buffer_mb']:,.0f} |" in md and "| torch |" in md


def test_micro_mlx_cpu_reports_every_cost():
    import torch

    from benchmark.micro import mlx_cpu_ops as micro_mlx_cpu

    threads = torch.get_num_threads()
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        rows = micro_mlx_cpu.main(["--calls", "40"])
    finally:
        torch.set_num_threads(threads)
    names = [name for name, _, _ in rows]
    assert any("mx.exp" == n for n in names) and any("scatter-add" in n for n in names)
    assert any("torch eager" in n for n in names) and len(names) == 13 + (4 if hasattr(os, "sched_setaffinity") else 2)
    assert sum("all threads on one core" in n for n in names) == (2 if hasattr(os, "sched_setaffinity") else 0)
    assert cores is None or os.sched_getaffinity(0) == cores, "the pinned rows must leave the process as it was"
    assert all(value > 0 for _, value, _ in rows)


def test_micro_tanh_vjp_times_both_variants_and_finds_the_same_gradient(tmp_path):
    from benchmark.micro import tanh_vjp

    lines = tanh_vjp.main(["--repeats", "5", "--warmup", "1", "--out", str(tmp_path)])
    rows = [line.split(" | ") for line in lines if line.startswith("| ppo") or line.startswith("| a2c")]
    assert [r[0].strip("| ") for r in rows] == ["ppo", "ppo_continuous_action", "a2c"]
    assert all(float(r[-1].strip(" |")) < 1e-5 for r in rows), rows  # one step: only float rounding differs
    assert (tmp_path / "results.md").read_text().startswith("# Micro-benchmark: custom-vjp tanh")


def test_micro_conv_s2d_runs_on_the_scripts_own_network():
    """It builds both CNNs from ppo_atari's Agent and checks they agree before timing them."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.micro.conv_s2d", "--batch", "2", "--repeats", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "space-to-depth: forward" in proc.stdout and "plain strided conv: forward" in proc.stdout


def test_startup_line_parsing_stops_at_the_blas_name():
    """The data-parallel script's startup line goes on after the BLAS name (`, rank 0/2`): the name alone is read."""
    line = "ppo_atari_multigpu_mlx.py: mlx 0.32.4, device cpu, BLAS openblas, rank 0/2"
    assert report.parse_log(line) == {"device": "cpu", "blas": "openblas"}
    assert report.parse_log("ppo_mlx.py: mlx 0.32.4, device gpu, BLAS accelerate\n")["blas"] == "accelerate"


def test_curves_draw_cleanrl_published_return(tmp_path, monkeypatch):
    """A curve plot of a (script, env) with a published return draws it as a line; one without draws none."""
    import matplotlib.axes

    lines = []
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", lambda self, y, **kw: lines.append(y))
    for script, env_id in (("ppo", "CartPole-v1"), ("ppo", "Pendulum-v1")):
        runs = [
            dict(script=script, env_id=env_id, returncode=0, variant=v, curve=[(0, 10.0), (100, 50.0)]) for v in ("mlx", "torch")
        ]
        report.plot_curves(runs, script, env_id, tmp_path / f"{env_id}.png")
        assert (tmp_path / f"{env_id}.png").stat().st_size > 0
    assert lines == [registry.published_for("ppo", "CartPole-v1").mean]


def test_curve_legend_counts_the_seeds_whose_curve_is_lost(tmp_path, monkeypatch):
    """A run kept from runs.csv without its curve (its logs gone before curves.csv existed) is still counted: the
    legend says how many of a variant's seeds the line shows, and names a variant whose every curve is lost."""
    import matplotlib.axes

    labels = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(
        matplotlib.axes.Axes, "plot", lambda self, *a, **kw: labels.append(kw["label"]) or original(self, *a, **kw)
    )
    curve = [(0, 10.0), (100, 50.0)]
    runs = [dict(script="td3", env_id="Hopper-v5", returncode=0, variant="mlx", curve=c) for c in (curve, [], curve)]
    runs += [dict(script="td3", env_id="Hopper-v5", returncode=0, variant="torch", curve=[])]
    runs += [dict(script="td3", env_id="Hopper-v5", returncode=1, variant="torch", curve=curve)]  # a failed run: not drawn
    report.plot_curves(runs, "td3", "Hopper-v5", tmp_path / "c.png")
    assert labels == ["mlx (2 of 3 seeds)", "torch: no curve recorded (1 seed)"]


def test_published_cell_names_cleanrl_env_version_where_it_differs():
    row = dict(published_return=1442.64, published_std=46.03, published_steps=1_000_000, total_timesteps=1_000_000)
    assert report.published_cell(row | {"published_env": ""}) == "1442.64 ± 46.03"
    assert report.published_cell(row | {"published_env": "HalfCheetah-v4"}) == "1442.64 ± 46.03 on HalfCheetah-v4"
    pub = registry.published_for("ppo_continuous_action", "HalfCheetah-v5")
    assert pub.env_id == "HalfCheetah-v4" and pub.total_timesteps == 1_000_000


def test_published_cell_names_a_reference_that_is_not_cleanrls():
    """a2c and qrdqn have no CleanRL script: their reference is rl-zoo's one trained agent, and the cell says so."""
    row = dict(published_return=500.0, published_std=0.0, published_steps=50_000, total_timesteps=50_000)
    assert report.published_cell(row | {"published_by": "rl-zoo, 1 agent"}) == "500.00 ± 0.00 (rl-zoo, 1 agent)"
    assert {registry.published_for(s, "CartPole-v1").by for s in ("a2c", "qrdqn")} == {"rl-zoo, 1 agent"}
    assert all(not registry.published_for(s, "CartPole-v1").by for s in ("ppo", "dqn", "c51", "pqn"))


def test_halfcheetah_gait_follows_the_scripts_policy_and_a_still_policy_stays_upright():
    """mean_action is ppo_continuous_action's actor on what the script's own wrappers feed it, for raw observations
    and saved statistics; a policy that does nothing stays upright and still."""
    import gymnasium as gym
    from mlx.utils import tree_flatten, tree_unflatten

    from benchmark import halfcheetah_gait as hg
    from benchmark.pairs import load_script

    m = load_script("ppo_continuous_action", "mlx")
    agent, rng = m.Agent(17, 6), np.random.default_rng(0)
    agent.update(
        tree_unflatten(
            [(k, m.mx.array(rng.normal(0, 0.3, v.shape), dtype=m.mx.float32)) for k, v in tree_flatten(agent.parameters())]
        )
    )
    arrays = {f"agent.{k}": np.array(v) for k, v in tree_flatten(agent.parameters())}
    arrays |= {"envs.0.obs_rms.mean": rng.normal(size=17), "envs.0.obs_rms.var": rng.uniform(1e-4, 4, 17)}  # some beyond +-10
    env = m.make_env("HalfCheetah-v5", 0, False, "gait", 0.99)()
    norm = env
    while not isinstance(norm, gym.wrappers.NormalizeObservation):
        norm = norm.env
    norm.update_running_mean = False
    norm.obs_rms.mean, norm.obs_rms.var = arrays["envs.0.obs_rms.mean"], arrays["envs.0.obs_rms.var"]
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        expected = np.array(agent.get_action_mean(m.mx.array(obs[None], dtype=m.mx.float32)))[0]
        np.testing.assert_allclose(hg.mean_action(arrays, env.unwrapped._get_obs()), expected, atol=1e-5)
        obs, *_ = env.step(rng.uniform(-1, 1, 6))
    env.close()

    still = {k: np.zeros_like(v) if k.startswith("agent.actor_mean") else v for k, v in arrays.items()}
    g = hg.gait(still, episodes=1)
    assert g["upside_down"] == 0 and abs(g["speed"]) < 0.1 and abs(g["return"]) < 100, g


def test_runs_at_once_counts_overlapping_runs_only():
    """A run that starts as another ends did not share the machine with it; runs without a start time are left out."""
    run = lambda started, wall: {"started": started, "wall_s": wall}  # noqa: E731
    assert report.runs_at_once([run(0, 10), run(10, 5), run(15, 1)]) == 1
    assert report.runs_at_once([run(0, 10), run(10, 5), run(2, 3), run(math.nan, math.nan)]) == 2
    assert report.runs_at_once([run(0, 10), run(1, 10), run(2, 10), run(12.5, 1)]) == 3
    assert report.runs_at_once([]) == 1


def test_recorded_runs_outlive_their_logs_and_a_rerun_replaces_its_record(fake_dirs, tmp_path):
    """A table built over sittings: the runs of a first sweep are recorded next to its results; with their logs
    deleted, a second sweep's report with keep_recorded holds both sweeps' runs, with the same numbers and curves
    as a report over all the logs; a run in the second sweep replaces its record; without keep_recorded the old
    runs are not added."""
    first = ("--scripts", "fake", "--seeds", "1", "3", "--frameworks", "torch", "--workers", "2")
    assert run_main(*first, "--tag", "one", dirs=fake_dirs, runs_dir=tmp_path / "runs") == 0
    both = report.write_report(tmp_path / "runs" / "one", tmp_path / "out")
    assert both[0]["return_mean"] == pytest.approx(2099.5) and both[0]["seeds"] == 2
    with open(tmp_path / "out" / "runs.csv") as f:
        assert [r["name"] for r in csv.DictReader(f)] == ["fake__FakeEnv-v0__torch__1", "fake__FakeEnv-v0__torch__3"]
    recorded = {r["name"]: r for r in report.read_records(tmp_path / "out")}
    logged = {r["name"]: r for r in report.load_sweep(tmp_path / "runs" / "one")}
    for name, r in logged.items():
        for key in ("final_return", "sps", "steps", "timing/update_us", "wall_s", "peak_rss_mb", "seed", "machine"):
            assert recorded[name][key] == pytest.approx(r[key]), key
        assert np.allclose(recorded[name]["curve"], r["curve"], rtol=1e-6)
        # the curve: 10-episode running mean of seed*1000 + i, at most CURVE_POINTS points, ending on the last episode
        assert r["curve"][0] == (90, pytest.approx(r["seed"] * 1000 + 4.5)) and r["curve"][-1][0] == 1490
    assert len(report.smoothed_curve([(i, float(i)) for i in range(5000)])) == report.CURVE_POINTS

    import shutil

    shutil.rmtree(tmp_path / "runs" / "one")
    # seed 1 continued on another machine: the row names both CPUs (a bare name where the same CPU has its vector unit)
    records = report.read_records(tmp_path / "out")
    here = records[0]["machine"]
    elsewhere = here | {"cpu": "Other CPU", "simd": "AVX2"}
    records[0]["machines"] = [here, elsewhere, elsewhere | {"simd": ""}]
    report.write_records(records, tmp_path / "out")
    assert report.read_records(tmp_path / "out")[0]["machines"] == records[0]["machines"]
    second = ("--scripts", "fake", "--seeds", "3", "4", "--frameworks", "torch", "--workers", "2", "--tag", "two")
    assert run_main(*second, "--", "--extra", "7", dirs=fake_dirs, runs_dir=tmp_path / "runs") == 0
    (row,) = report.write_report(tmp_path / "runs" / "two", tmp_path / "out", keep_recorded=True)
    # seed 1 from its record (1099.5); seeds 3 and 4 from the new logs, with --extra 7 (3106.5, 4106.5)
    assert row["seeds"] == 3 and row["return_mean"] == pytest.approx((1099.5 + 3106.5 + 4106.5) / 3)
    assert row["machines"] == "; ".join(sorted([cpu_label(here), "Other CPU (AVX2)"]))
    cores = f"{here['cores']} cores, MLX – + –"
    assert docs.machine_cell(row | {"machine": {"cpu": "X", "cores": here["cores"]}}) == f"{row['machines']}, {cores}"
    assert docs.machine_cell({"machine": here}) == f"{cpu_label(here)}, {cores}"  # older csvs
    assert docs.machine_cell({"machine": here, "machines": "B; C"}, {"machines": "A; C (X)"}) == f"A; B; C (X), {cores}"  # a pair
    blas = {"mlx_device": "cpu", "mlx_blas": "openblas", "torch_blas": "mkl"}  # a sweep that recorded both BLAS
    assert (
        docs.machine_cell({"machine": here | blas})
        == f"{cpu_label(here)}, {here['cores']} cores, MLX cpu + openblas, torch + mkl"
    )
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| fake | FakeEnv-v0 | torch | 1 | 1,000 | 1099.50 |" in md and "| 3 | 1,000 | 3106.50 |" in md
    with open(tmp_path / "out" / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 3  # recorded again, so a third sitting keeps all three
    (row,) = report.write_report(tmp_path / "runs" / "two", tmp_path / "plain")
    assert row["seeds"] == 2


def test_a_saved_models_evaluation_is_reported_recorded_and_shown_in_the_docs(fake_dirs, tmp_path):
    """Runs with --save-model log eval/episodic_return: the table gains a column with its mean ± std over seeds,
    each run's row its own mean, runs.csv keeps it for a later sitting, and the docs' return cell names it; a
    sweep without it has no such column."""
    from benchmark import docs

    argv = ("--scripts", "fake", "--seeds", "1", "3", "--frameworks", "torch", "--workers", "2", "--tag", "ev")
    assert run_main(*argv, "--", "--save-model", dirs=fake_dirs, runs_dir=tmp_path / "runs") == 0
    (row,) = report.write_report(tmp_path / "runs" / "ev", tmp_path / "results" / "ev")
    # eval episodes seed*10 + 0..2: 11 (seed 1) and 31 (seed 3); training's last 100 episodes: 1099.5 and 3099.5
    assert (row["eval_mean"], row["eval_std"], row["eval_seeds"]) == (pytest.approx(21.0), pytest.approx(10.0), 2)
    md = (tmp_path / "results" / "ev" / "results.md").read_text()
    assert "| saved model (eval) | CleanRL published |" in md and "| 21.00 ± 10.00 |" in md
    assert "| 1 | 1,000 | 1099.50 | 11.00 |" in md and "| 3 | 1,000 | 3099.50 | 31.00 |" in md
    recorded = {r["seed"]: r["eval_return"] for r in report.read_records(tmp_path / "results" / "ev")}
    assert recorded == {1: pytest.approx(11.0), 3: pytest.approx(31.0)}
    block = docs.docs_block(docs.load_results(tmp_path / "results"), "fake", tmp_path)
    assert "| 2099.5 ± 1000.0 (saved model: 21.0 ± 10.0) |" in block
    assert report.eval_cell(row | {"eval_seeds": 1}) == "21.00 ± 10.00 (1 of 2 seeds)"

    assert run_main(*argv[:-1], "plain", dirs=fake_dirs, runs_dir=tmp_path / "runs") == 0
    (row,) = report.write_report(tmp_path / "runs" / "plain", tmp_path / "results" / "plain")
    assert row["eval_seeds"] == 0 and "saved model" not in (tmp_path / "results" / "plain" / "results.md").read_text()
    assert "saved model" not in docs.with_eval(row, "2099.5")


def test_a_pair_without_episodes_is_scored_by_its_score_tag(fake_dirs, tmp_path):
    """allo logs no episodes: a run's result is its last eval/cosine_similarity and its curve every evaluation, the
    report says so, and the docs show the score to three decimals, named in the README's cell."""
    from tensorboardX import SummaryWriter

    assert (
        run_main("--scripts", "fake", "--seeds", "1", "--frameworks", "torch", "--tag", "a", dirs=fake_dirs, runs_dir=tmp_path)
        == 0
    )
    run_dir = tmp_path / "a" / "fake__FakeEnv-v0__torch__1"
    record = json.loads((run_dir / "run.json").read_text()) | {"script": "allo", "env_id": "GridRoom-16"}
    (run_dir / "run.json").write_text(json.dumps(record))
    (events,) = [p for p in (run_dir / "runs").iterdir() if p.is_dir()]
    for f in events.iterdir():
        f.unlink()
    writer = SummaryWriter(str(events))
    for step, cosine in ((200, 0.3), (400, 0.9), (600, 0.971)):
        writer.add_scalar("eval/cosine_similarity", cosine, step)
        writer.add_scalar("charts/SPS", 15, step)
        writer.add_scalar("timing/update_us", 60000.0, step)
    writer.close()
    (row,) = report.write_report(tmp_path / "a", tmp_path / "out")
    assert row["return_mean"] == pytest.approx(0.971) and row["total_timesteps"] == 600 and row["seeds"] == 1
    assert report.read_records(tmp_path / "out")[0]["curve"] == [(200, 0.3), (400, 0.9), (600, 0.971)]
    assert (
        "allo has no episodes: its return column is each run's last `eval/cosine_similarity`"
        in (tmp_path / "out" / "results.md").read_text()
    )
    row = {k: str(v) for k, v in row.items()} | {"script": "allo"}
    assert docs.score(row) == "0.971 (cosine similarity)" and docs.score(row, with_std=True) == "0.971 ± 0.000"
    assert docs.score(row | {"script": "ppo"}) == "1.0" and report.score_label("ppo") == "episodic return"


def test_machine_of_a_table_whose_runs_ran_on_two_machines():
    """The table names the machine most runs ran on and says how many ran elsewhere, and on what; the vector
    unit is part of the CPU's name."""
    a = {
        "host": "a",
        "cpu": "EPYC",
        "simd": "AVX2",
        "cores": 2,
        "os": "L",
        "python": "3.11",
        "mlx": "1",
        "torch": "2",
        "gymnasium": "1",
    }
    b = a | {"host": "b", "simd": "AVX-512"}
    runs = [dict(machine=m, framework="torch") for m in (a, b, b)]
    info = report.machine_of(runs)
    assert info["host"] == "b" and info["others"] == {"runs": 1, "machines": [describe(a)]}
    assert describe(a).startswith("EPYC (AVX2), 2 cores") and describe({**a, "simd": ""}).startswith("EPYC, 2 cores")
    assert "others" not in report.machine_of(runs[:1])
