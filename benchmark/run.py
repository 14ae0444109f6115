"""Run script pairs side by side: scripts x envs x seeds x frameworks, each run its own process.

    python -m benchmark.run --scripts ppo --seeds 1 2 3 --workers 2 --tag ppo-cartpole
    python -m benchmark.run --scripts ppo --mlx-blas openblas bundled --total-timesteps 50000 -- --num-envs 8
    python -m benchmark.run --scripts ppo --backend ray --ray-address auto

Every run gets `OMP_NUM_THREADS=1`; the MLX and torch runs of one seed are queued next to each other
so that load drift hits both. Each run's folder `benchmark/runs/<tag>/<script>__<env>__<variant>__<seed>/`
holds its TensorBoard logs (`runs/`), its stdout+stderr (`stdout.log`) and `run.json` (command, exit
code, wall time, machine); the sweep folder gets a TensorBoard custom-scalars layout (benchmark.tblayout).
Arguments after `--` go to every script, after the registry's extra arguments for it (a short budget's
`--learning-starts 1000`, say), and replace those where they name the same flag. `--track` logs every run to W&B
(then `python -m benchmark.dashboard` builds the comparison report). `--resume` continues the tag's runs that were
stopped (SIGTERM: they checkpoint and exit) or killed, each from its newest checkpoint, and keeps its finished runs.
Then: `python -m benchmark.report benchmark/runs/<tag>`.

Before the sweep (local backend), each MLX script runs once per env and variant, untimed and not recorded
(`--no-warmup` skips it): on Linux's CPU backend MLX compiles its fused kernels with g++ on first use and caches
them under $TMPDIR/mlx (~15 s for ppo on a fresh machine), which would otherwise land in the first seed's timed loop.
"""

import argparse
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from benchmark.machine import machine_info, peak_rss_mb, torch_blas
from benchmark.pairs import DEFAULT_DIRS, FRAMEWORKS, REPO, check_scripts, discover, script_path
from benchmark.registry import bench_for
from benchmark.tblayout import write_layout

RUNS_DIR = REPO / "benchmark" / "runs"
BLAS_CHOICES = ("openblas", "bundled")
LOG_TAIL_LINES = 25


@dataclass
class RunSpec:
    script: str
    env_id: str
    seed: int
    framework: str
    variant: str
    """the label in reports: "torch", "mlx" (default BLAS) or "mlx-bundled" (CLEANRL_MLX_BLAS=bundled)"""
    args: list[str]
    """the script's arguments"""
    env: dict[str, Optional[str]] = field(default_factory=dict)
    """environment overrides for the run (None removes a variable)"""
    resume: Optional[str] = None
    """the run folder (relative to the run's own folder) to continue from its newest checkpoint (`--resume`)"""

    @property
    def name(self) -> str:
        return f"{self.script}__{self.env_id}__{self.variant}__{self.seed}"


def default_env_id(script_file: Path) -> str:
    """The `env_id` default of a script's Args (read from its source: importing it would be slow)."""
    match = re.search(r'^\s+env_id:\s*str\s*=\s*"([^"]+)"', Path(script_file).read_text(), re.MULTILINE)
    if not match:
        raise SystemExit(f"benchmark: cannot find an env_id default in {script_file}; pass --env-ids")
    return match.group(1)


def variants(frameworks, mlx_blas, mlx_fast_math=("on",), mlx_one_core=("on",)) -> list[tuple[str, str, dict]]:
    """(framework, label, env overrides) for each process kind, MLX and torch alternating."""
    out = []
    for fw in frameworks:
        if fw == "mlx":
            for blas, fast, one in itertools.product(mlx_blas, mlx_fast_math, mlx_one_core):
                label = ("mlx" if blas == "openblas" else f"mlx-{blas}") + ("" if fast == "on" else "-nofastmath")
                label += "" if one == "on" else "-anycore"
                # "openblas", fast math and one core are the scripts' defaults: no inherited opt-out changes them
                env = {"CLEANRL_MLX_BLAS": "bundled" if blas == "bundled" else None}
                env |= {"CLEANRL_MLX_FAST_MATH": None if fast == "on" else "0"}
                out.append((fw, label, env | {"CLEANRL_MLX_ONE_CORE": None if one == "on" else "0"}))
        else:
            out.append((fw, fw, {}))
    return out


def env_ids_for(script: str, env_ids=None, dirs=None) -> list[str]:
    """The envs a sweep (and a dashboard) covers for a script: the CLI's, else the registry's, else its own default."""
    bench = bench_for(script)
    return list(env_ids or (bench.env_ids if bench else [default_env_id(script_path(script, "mlx", dirs))]))


def track_args(opts) -> list[str]:
    """--track and the W&B project/entity the CLI names (else the scripts' own defaults)."""
    if not opts.track:
        return []
    args = ["--track"]
    args += ["--wandb-project-name", opts.wandb_project_name] if opts.wandb_project_name else []
    args += ["--wandb-entity", opts.wandb_entity] if opts.wandb_entity else []
    return args


def registry_args(script, script_args) -> list[str]:
    """The registry's extra arguments of a script, less the flags (with their values) that the CLI passes itself."""
    extra, given, out = list(bench_for(script).extra_args) if bench_for(script) else [], set(script_args), []
    for i, a in enumerate(extra):
        flag = a if a.startswith("--") else (extra[i - 1] if i and extra[i - 1].startswith("--") else None)
        if flag not in given:
            out.append(a)
    return out


def expand(opts, dirs) -> list[RunSpec]:
    """All runs of a sweep, in the order they are queued: per script, env and seed, every variant."""
    specs = []
    for script in opts.scripts:
        bench = bench_for(script)
        steps = opts.total_timesteps or (bench.total_timesteps if bench else None)
        for env_id in env_ids_for(script, opts.env_ids, dirs):
            for seed in opts.seeds:
                for fw, label, env in variants(opts.frameworks, opts.mlx_blas, opts.mlx_fast_math, opts.mlx_one_core):
                    args = ["--env-id", env_id, "--seed", str(seed)]
                    args += [bench.budget_flag if bench else "--total-timesteps", str(steps)] if steps else []
                    args += registry_args(script, opts.script_args)
                    args += opts.script_args + track_args(opts)
                    specs.append(RunSpec(script, env_id, seed, fw, label, args, env))
    return specs


def warmups(specs) -> list[RunSpec]:
    """One run per (script, env, MLX variant) of the sweep, at the registry's warm-up budget where it has one, without
    W&B: every compiled step is called once, so MLX's kernels are compiled and cached before anything is timed."""
    out, seen = [], set()
    for s in specs:
        if s.framework != "mlx" or (s.script, s.env_id, s.variant) in seen:
            continue
        seen.add((s.script, s.env_id, s.variant))
        args, bench = list(s.args), bench_for(s.script)
        for flag in ("--wandb-project-name", "--wandb-entity"):
            if flag in args:
                del args[args.index(flag) : args.index(flag) + 2]
        args = [a for a in args if a != "--track"]
        if bench and bench.warmup_timesteps and bench.budget_flag in args:
            i = args.index(bench.budget_flag) + 1
            args[i] = str(min(int(args[i]), bench.warmup_timesteps))
        elif bench and bench.warmup_timesteps:  # the script's own budget: the warm-up's instead
            args += [bench.budget_flag, str(bench.warmup_timesteps)]
        out.append(replace(s, args=args, resume=None))  # a warm-up starts afresh in a scratch folder
    return out


def execute(spec: dict, script_file: str, run_dir: str) -> dict:
    """Run one script to completion in run_dir (its runs/ lands there); log to run_dir/stdout.log.
    A spec that resumes (its `resume` set) appends to the log, and its record adds this sitting to the
    recorded earlier ones: wall_s is their sum, `sittings` each one's wall time, `machines` each one's machine. Used as is by the local pool and a Ray task."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key, value in spec["env"].items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    resuming = spec.get("resume") is not None  # a killed sitting left no run.json: its log is kept, its wall time unknown
    cmd = [sys.executable, str(script_file), *spec["args"], *(["--resume", spec["resume"]] if resuming else [])]
    record = {**spec, "cmd": cmd, "machine": machine_info(), "loadavg_at_start": list(os.getloadavg())}
    if spec["framework"] == "torch":  # an MLX script names its BLAS in its startup line; a torch twin does not
        record["blas"] = torch_blas()
    before = json.loads((run_dir / "run.json").read_text()) if resuming and (run_dir / "run.json").exists() else {}
    start = time.time()
    with open(run_dir / "stdout.log", "a" if resuming else "w") as log:
        if resuming:
            log.write(f"\nbenchmark.run: resumed at {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n")
            log.flush()
        proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        peak = None  # the script process's own peak RSS, polled while it runs (a peak in its last 0.2 s can be missed)
        while proc.poll() is None:
            peak = max(filter(None, (peak, peak_rss_mb(proc.pid))), default=None)
            time.sleep(0.2)
    wall = time.time() - start
    sittings = before.get("sittings", [before["wall_s"]] if "wall_s" in before else []) + [wall]
    peak = max(filter(None, (peak, before.get("peak_rss_mb"))), default=None)
    record |= {"returncode": proc.returncode, "wall_s": sum(sittings), "started": before.get("started", start)}
    record |= {"peak_rss_mb": peak, "stopped_at": stopped_at(run_dir)} | ({"sittings": sittings} if resuming else {})
    if resuming:  # `machine` is this sitting's; `machines` every sitting's, so a run continued elsewhere says so
        record["machines"] = before.get("machines", [before["machine"]] if "machine" in before else []) + [record["machine"]]
    (run_dir / "run.json").write_text(json.dumps(record, indent=1))
    return record


def stopped_at(run_dir: Path) -> Optional[int]:
    """The step at which a run was stopped (Ctrl-C/SIGTERM: it wrote a checkpoint and exited), from the last line of
    its log; None for a run that ended otherwise."""
    match = re.search(r": stopped at step (\d+); resume with --resume ", log_tail(run_dir, 1))
    return int(match.group(1)) if match else None


def resume_plan(specs, out_dir) -> tuple[list, list]:
    """(the specs to run, the names of finished runs to keep) for `--resume`: a run whose folder holds a checkpoint and
    that did not finish (it was stopped, killed, or failed) continues from its newest checkpoint; a finished run (exit
    code 0, not stopped) is kept as it is; any other starts afresh."""
    todo, kept = [], []
    for s in specs:
        run_dir = out_dir / s.name
        record = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else None
        if record and record["returncode"] == 0 and stopped_at(run_dir) is None:
            kept.append(s.name)
            continue
        newest = max(run_dir.glob("runs/*/checkpoints/step_*/state.json"), key=lambda p: p.parent.name, default=None)
        todo.append(replace(s, resume=str(newest.parents[2].relative_to(run_dir))) if newest else s)
    return todo, kept


def log_tail(run_dir: Path, n=LOG_TAIL_LINES) -> str:
    try:
        lines = (Path(run_dir) / "stdout.log").read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def _ray_task(spec: dict, script_name: str, script_text: str) -> tuple[dict, bytes]:
    """On a Ray worker: run the script from its text in a scratch folder and send the folder back."""
    with tempfile.TemporaryDirectory() as tmp:
        script_file = Path(tmp) / script_name  # same file name, so exp_name is the same
        script_file.write_text(script_text)
        record = execute(spec, str(script_file), str(Path(tmp) / "run"))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(Path(tmp) / "run", arcname=".")
        return record, buf.getvalue()


def run_local(specs, dirs, out_dir, workers, on_done):
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            pool.submit(
                execute, asdict(s) | {"name": s.name}, str(script_path(s.script, s.framework, dirs)), str(out_dir / s.name)
            ): s
            for s in specs
        }
        for fut in as_completed(futures):
            on_done(futures[fut], fut.result())


def run_ray(specs, dirs, out_dir, ray_address, on_done):
    import ray
    from ray import cloudpickle

    import benchmark

    if not ray.is_initialized():
        ray.init(address=ray_address)
    # ship this package's code with the task, so workers need only the packages the scripts need
    cloudpickle.register_pickle_by_value(benchmark)
    task = ray.remote(num_cpus=1)(_ray_task)
    refs = {}
    for s in specs:
        path = script_path(s.script, s.framework, dirs)
        refs[task.remote(asdict(s) | {"name": s.name}, path.name, path.read_text())] = s
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        record, archive = ray.get(done[0])
        run_dir = out_dir / refs[done[0]].name
        run_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(run_dir, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        on_done(refs[done[0]], record)


def parse(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m benchmark.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--scripts", nargs="+", help="script pairs by name (default: every pair found)")
    p.add_argument("--env-ids", nargs="+", help="envs (default: the registry's, else the script's default)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--total-timesteps", type=int, help="budget per run (default: the registry's, else the script's)")
    p.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS))
    p.add_argument("--mlx-blas", nargs="+", default=["openblas"], help="BLAS variants of the MLX runs: openblas, bundled")
    p.add_argument(
        "--mlx-fast-math", nargs="+", default=["on"], choices=["on", "off"],
        help="MLX runs with the scripts' fused kernels on Linux's CPU backend (on) and/or without (off: CLEANRL_MLX_FAST_MATH=0)",
    )  # fmt: skip
    p.add_argument(
        "--mlx-one-core", nargs="+", default=["on"], choices=["on", "off"],
        help="MLX runs with every thread on one core on Linux's CPU backend (on) and/or not (off: CLEANRL_MLX_ONE_CORE=0)",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="runs at a time (local backend)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed MLX run per script, env and variant")
    p.add_argument(
        "--resume", action="store_true",
        help="continue the tag's stopped or killed runs from their newest checkpoint and keep its finished ones",
    )  # fmt: skip
    p.add_argument("--track", action="store_true", help="pass --track to every script (W&B, grouped by algo/env)")
    p.add_argument("--wandb-project-name", help="with --track: the W&B project (default: the scripts' own, cleanrl-mlx)")
    p.add_argument("--wandb-entity", help="with --track: the W&B entity (default: your W&B default entity)")
    p.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"), help="the sweep's folder name under --runs-dir")
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    p.add_argument("--backend", default="local", choices=("local", "ray"))
    p.add_argument("--ray-address", help="address of an existing Ray cluster (default: RAY_ADDRESS or a local one)")
    p.add_argument("--script-dirs", nargs=2, type=Path, metavar=("MLX_DIR", "TORCH_DIR"), help="where the pairs live")
    opts = p.parse_args(argv)
    opts.script_args = script_args
    return opts


def main(argv=None) -> int:
    opts = parse(argv)
    dirs = dict(zip(FRAMEWORKS, opts.script_dirs)) if opts.script_dirs else DEFAULT_DIRS
    for fw in opts.frameworks:
        if fw not in FRAMEWORKS:
            raise SystemExit(f"benchmark: unknown framework {fw!r} (choose from {', '.join(FRAMEWORKS)})")
    for blas in opts.mlx_blas:
        if blas not in BLAS_CHOICES:
            raise SystemExit(f"benchmark: unknown --mlx-blas {blas!r} (choose from {', '.join(BLAS_CHOICES)})")
    opts.scripts = opts.scripts or discover(dirs)
    check_scripts(opts.scripts, dirs)
    if opts.workers < 1:
        raise SystemExit(f"benchmark: --workers must be positive, got {opts.workers}")
    if opts.resume and opts.backend == "ray":
        raise SystemExit("benchmark: --resume runs locally only (a Ray worker does not have the run's checkpoints)")
    specs = expand(opts, dirs)

    out_dir = opts.runs_dir / opts.tag
    if opts.resume:
        specs, kept = resume_plan(specs, out_dir)
        for name in kept:
            print(f"benchmark: {name} finished already; kept", flush=True)
    for s in specs:  # a re-run of the same run replaces it (unless it resumes); other runs of the tag stay
        if s.resume is None:
            shutil.rmtree(out_dir / s.name, ignore_errors=True)
        else:
            print(f"benchmark: {s.name} resumes from {s.resume}", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"benchmark: {len(specs)} runs -> {out_dir} ({opts.backend}, OMP_NUM_THREADS=1)", flush=True)
    for script in opts.scripts:
        if extra := registry_args(script, opts.script_args):  # e.g. a short budget's --learning-starts: say so
            print(f"benchmark: {script} runs with the registry's {' '.join(extra)} (a flag after -- overrides it)", flush=True)

    failed, finished = [], []

    def on_done(spec, record):
        finished.append(spec)
        what = f"[{len(finished)}/{len(specs)}] {spec.name} ({record['wall_s']:.1f} s)"
        if record["returncode"] == 0:
            print(f"{what} ok", flush=True)
        else:
            failed.append(spec)
            tail = log_tail(out_dir / spec.name)
            print(
                f"{what} FAILED with exit code {record['returncode']}; last lines of its log:\n{tail}\n",
                file=sys.stderr,
                flush=True,
            )

    if opts.backend == "local" and not opts.no_warmup and (warm := warmups(specs)):
        print(f"benchmark: {len(warm)} warm-up run(s) first, untimed (MLX compiles and caches its kernels)", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            run_local(warm, dirs, Path(tmp), opts.workers, lambda spec, record: None)
    if opts.backend == "ray":
        run_ray(specs, dirs, out_dir, opts.ray_address, on_done)
    else:
        run_local(specs, dirs, out_dir, opts.workers, on_done)

    if layout := write_layout(out_dir):
        print(f"benchmark: TensorBoard page (Custom Scalars): tensorboard --logdir {out_dir}  ({layout.name})")
    if failed:
        print(f"benchmark: {len(failed)} of {len(specs)} runs failed: {', '.join(s.name for s in failed)}", file=sys.stderr)
    print(f"benchmark: report with  python -m benchmark.report {out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
