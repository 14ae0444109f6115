"""Tables and plots from a sweep's TensorBoard logs.

    python -m benchmark.report benchmark/runs/<tag> [--out benchmark/results/<tag>] [--track]

Writes results.md, results.csv, machine.json and PNGs (learning curves, SPS bars, the MLX/torch SPS ratio,
time breakdown). Per script, env and variant: final return as CleanRL reports it (mean ± std over seeds of each
run's last-100-episode average) and, for 3 or more seeds, its interquartile mean with a 95% stratified-bootstrap
interval (rliable, as RL papers report it), median SPS, wall time, the MLX/torch SPS ratio with a bootstrap
interval, the timing/* breakdown (µs per env step) and CleanRL's published return where the registry has one.
Without rliable installed the report leaves the IQM and the intervals out and says so. Then
`python -m benchmark.docs` rewrites the README's and the docs pages' results blocks from every folder.

Each run is also recorded in runs.csv and its smoothed learning curve in curves.csv, next to results.md. With
`--keep-recorded` the report adds the recorded runs that the sweep folder does not hold (a run in the folder
replaces its record), so a table whose runs span sittings or machines survives the loss of their logs.
"""

import argparse
import csv
import json
import math
import re
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmark.machine import cpu_label, describe, join_cpus
from benchmark.pairs import RESULTS_DIR
from benchmark.registry import SCORE_TAG, SCORE_TAGS, TIMING_TAGS, published_for, score_tag
from benchmark.run import log_tail

LAST_EPISODES = 100
SMOOTH_EPISODES = 10  # a learning curve is the mean over this many episodes ...
CURVE_POINTS = 300  # ... kept at this many points per run (plotted and recorded)
RECORD_FIELDS = [
    "name", "script", "env_id", "variant", "framework", "seed", "returncode", "blas", "device", "steps", "final_return",
    "eval_return", "sps", *TIMING_TAGS, "wall_s", "peak_rss_mb", "started", "machine", "args", "log_tail", "machines",
]  # fmt: skip
MIN_SEEDS_FOR_INTERVALS = 3
BOOTSTRAP_REPS = 10_000
COLUMNS = [
    "script", "env_id", "variant", "framework", "blas", "device", "seeds", "total_timesteps",
    "return_mean", "return_std", "return_iqm", "return_iqm_low", "return_iqm_high", "eval_mean", "eval_std", "eval_seeds",
    "sps_median", "sps_ratio_vs_torch", "sps_ratio_low", "sps_ratio_high", "wall_s_mean", "peak_rss_mb",
    "env_us", "inference_us", "update_us",
    "published_return", "published_std", "published_steps", "published_env", "published_by", "failed_runs",
    "machines",
]  # fmt: skip


def read_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """All scalar tags of one run directory as {tag: [(global_step, value), ...]} in logging order."""
    run_dir = Path(run_dir)
    if not any(run_dir.glob("events.out.tfevents.*")):
        raise FileNotFoundError(f"no TensorBoard event file in {run_dir}")
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def parse_log(text: str) -> dict:
    """BLAS and MLX device from a script's startup line (`ppo_mlx.py: mlx 0.32.4, device cpu, BLAS openblas`)."""
    out = {}
    if m := re.search(r"\bdevice (\S+?),? BLAS ([^\s,]+)", text):
        out["device"], out["blas"] = m.group(1), m.group(2)
    elif m := re.search(r"\bdevice (\S+?),", text):
        out["device"] = m.group(1)
    return out


def smoothed_curve(points, window=SMOOTH_EPISODES, max_points=CURVE_POINTS) -> list[tuple[int, float]]:
    """Episodic returns [(step, return), ...] as their running mean over `window` episodes, at most `max_points`
    of them (evenly spaced, the last one kept)."""
    if not points:
        return []
    steps = np.array([s for s, _ in points])
    values = np.array([v for _, v in points], dtype=float)
    if len(values) >= window:
        values = np.convolve(values, np.ones(window) / window, mode="valid")
        steps = steps[window - 1 :]
    keep = np.unique(np.linspace(0, len(values) - 1, min(len(values), max_points)).round().astype(int))
    return [(int(steps[i]), float(values[i])) for i in keep]


def load_run(run_dir: Path) -> dict:
    """One run: its run.json, its scalars, and the numbers the report needs from them."""
    record = json.loads((run_dir / "run.json").read_text())
    record["dir"] = run_dir
    log = (run_dir / "stdout.log").read_text(errors="replace") if (run_dir / "stdout.log").exists() else ""
    record |= parse_log(log)
    if record["returncode"] != 0:
        record["log_tail"] = log_tail(run_dir)
        return record
    (tb_dir,) = [p for p in (run_dir / "runs").iterdir() if p.is_dir() and any(p.glob("events.out.tfevents.*"))]
    scalars = read_scalars(tb_dir)
    score = scalars.get(score_tag(record["script"]), [])
    returns = [v for _, v in score]
    if score_tag(record["script"]) == SCORE_TAG:
        record["curve"] = smoothed_curve(score)
        record["final_return"] = float(np.mean(returns[-LAST_EPISODES:])) if returns else math.nan
    else:  # a pair without episodes (allo): its score tag, each evaluation as it was, the run's last one as its result
        record["curve"] = smoothed_curve(score, window=1)
        record["final_return"] = returns[-1] if returns else math.nan
    evals = [v for _, v in scalars.get("eval/episodic_return", [])]  # the saved model's episodes (--save-model)
    record["eval_return"] = float(np.mean(evals)) if evals else math.nan
    record["sps"] = float(np.median([v for _, v in scalars["charts/SPS"]]))
    record["steps"] = scalars["charts/SPS"][-1][0]
    for tag in TIMING_TAGS:
        record[tag] = float(np.median([v for _, v in scalars[tag]])) if tag in scalars else math.nan
    return record


def write_records(runs: list[dict], out_dir: Path) -> None:
    """runs.csv (one row per run: what the table is computed from) and curves.csv (each run's smoothed curve)."""
    with open(out_dir / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RECORD_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in sorted(runs, key=lambda r: r["name"]):
            as_json = {
                "machine": r["machine"],
                "machines": r.get("machines", []),
                "args": r.get("args", []),
            }  # machines: each sitting's
            writer.writerow(r | {k: json.dumps(v, sort_keys=True) for k, v in as_json.items()})
    with open(out_dir / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "step", "return"])
        for r in sorted(runs, key=lambda r: r["name"]):
            writer.writerows((r["name"], step, f"{value:.6g}") for step, value in r.get("curve") or [])


def read_records(out_dir: Path) -> list[dict]:
    """The runs recorded by write_records, in the shape load_run gives (no folder, so no logs to upload)."""
    if not (out_dir / "runs.csv").exists():
        return []
    curves: dict[str, list] = {}
    if (out_dir / "curves.csv").exists():
        with open(out_dir / "curves.csv", newline="") as f:
            for row in csv.DictReader(f):
                curves.setdefault(row["name"], []).append((int(row["step"]), float(row["return"])))
    text = {"name", "script", "env_id", "variant", "framework", "blas", "device", "log_tail"}
    records = []
    with open(out_dir / "runs.csv", newline="") as f:
        for row in csv.DictReader(f):
            r = {
                k: v if k in text else (float(v) if v else math.nan)
                for k, v in row.items()
                if k not in ("machine", "args", "machines")
            }
            r |= {"seed": int(r["seed"]), "returncode": int(r["returncode"]), "machine": json.loads(row["machine"])}
            r |= {"args": json.loads(row["args"]), "dir": None, "curve": curves.get(r["name"], [])}
            r["machines"] = json.loads(row.get("machines") or "[]")  # every sitting's machine (older runs.csv lack it)
            r.setdefault("eval_return", math.nan)  # recorded before runs.csv had the column
            if r["returncode"] == 0:
                r["steps"] = int(r["steps"])
            records.append(r)
    return records


def load_sweep(sweep_dir: Path, keep_from: Path | None = None) -> list[dict]:
    """The runs in sweep_dir and, with keep_from, the runs recorded there that sweep_dir does not hold."""
    sweep_dir = Path(sweep_dir)
    runs = [load_run(p) for p in sorted(sweep_dir.iterdir()) if (p / "run.json").exists()] if sweep_dir.is_dir() else []
    if keep_from is not None:
        names = {r["name"] for r in runs}
        runs += [r for r in read_records(keep_from) if r["name"] not in names]
    if not runs:
        raise SystemExit(f"benchmark.report: no runs (no */run.json) in {sweep_dir}")
    return runs


def variant_order(variant: str) -> tuple:
    return (variant != "mlx", variant != "torch", variant)  # mlx, torch, then other variants


def summarize(runs: list[dict]) -> list[dict]:
    """One row per script, env and variant."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["script"], r["env_id"], r["variant"]), []).append(r)
    rows = []
    for (script, env_id, variant), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], variant_order(kv[0][2]))):
        ok = [r for r in rs if r["returncode"] == 0]
        finals = [r["final_return"] for r in ok]
        evals = [r["eval_return"] for r in ok if math.isfinite(r.get("eval_return", math.nan))]
        pub = published_for(script, env_id)
        row = {
            "script": script,
            "env_id": env_id,
            "variant": variant,
            "framework": rs[0]["framework"],
            "blas": "/".join(sorted({r["blas"] for r in rs if r.get("blas")})) or ("" if rs[0]["framework"] == "torch" else "?"),
            "device": "/".join(sorted({r["device"] for r in rs if r.get("device")})),
            "seeds": len(ok),
            "total_timesteps": max((r["steps"] for r in ok), default=""),
            "return_mean": float(np.mean(finals)) if ok else math.nan,
            "return_std": float(np.std(finals)) if ok else math.nan,
            **dict.fromkeys(("return_iqm", "return_iqm_low", "return_iqm_high"), math.nan),
            "eval_mean": float(np.mean(evals)) if evals else math.nan,
            "eval_std": float(np.std(evals)) if evals else math.nan,
            "eval_seeds": len(evals),
            "sps_median": float(np.median([r["sps"] for r in ok])) if ok else math.nan,
            "sps_ratio_vs_torch": math.nan,
            **dict.fromkeys(("sps_ratio_low", "sps_ratio_high"), math.nan),
            "wall_s_mean": float(np.mean([r["wall_s"] for r in ok])) if ok else math.nan,
            "peak_rss_mb": max(
                (r["peak_rss_mb"] for r in ok if r.get("peak_rss_mb") and math.isfinite(r["peak_rss_mb"])), default=math.nan
            ),
            "env_us": float(np.mean([r["timing/env_us"] for r in ok])) if ok else math.nan,
            "inference_us": float(np.mean([r["timing/inference_us"] for r in ok])) if ok else math.nan,
            "update_us": float(np.mean([r["timing/update_us"] for r in ok])) if ok else math.nan,
            "published_return": pub.mean if pub else "",
            "published_std": pub.std if pub else "",
            "published_steps": pub.total_timesteps if pub else "",
            "published_env": pub.env_id if pub else "",
            "published_by": pub.by if pub else "",
            "failed_runs": len(rs) - len(ok),
            "machines": join_cpus(cpu_label(m) for r in rs for m in (r.get("machines") or [r["machine"]])),
        }
        rows.append(row)
    torch_sps = {(r["script"], r["env_id"]): r["sps_median"] for r in rows if r["variant"] == "torch"}
    for r in rows:
        if r["framework"] == "mlx" and (r["script"], r["env_id"]) in torch_sps:
            r["sps_ratio_vs_torch"] = r["sps_median"] / torch_sps[(r["script"], r["env_id"])]
    return rows


# ---------------------------------------------------------------- rliable: IQM and bootstrap intervals


def load_rliable():
    """rliable's (library, metrics) modules, or None where it is not installed."""
    try:
        from rliable import library, metrics
    except ImportError:
        return None
    return library, metrics


def bootstrap(rly, scores, func, reps, seed=0):
    """rliable's point estimate and 95% percentile-bootstrap interval of func over scores: one (seeds x 1) array
    (stratified bootstrap over seeds), or a list of them resampled independently (func gets one array each).
    rliable 1.2 draws its resampling indices from numpy's global RNG, not from the random_state it is given: seed
    that for the call (and put it back after), so the same runs give the same interval every time."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch deprecates its random_state argument, which rliable passes on
            warnings.simplefilter("ignore", FutureWarning)
            point, interval = rly.get_interval_estimates({"x": scores}, func, reps=reps, random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(saved)
    return float(point["x"][0]), float(interval["x"][0][0]), float(interval["x"][1][0])


def add_intervals(rows, runs, reps=BOOTSTRAP_REPS) -> bool:
    """Fill the rows' IQM and interval columns where there are enough seeds; False when rliable is not installed.
    IQM: rliable's aggregate_iqm of the runs' final returns (the mean of their middle 50%), stratified bootstrap
    over seeds. SPS ratio: the MLX variant's median over seeds of each run's median SPS over torch's, with MLX and
    torch seeds resampled independently."""
    modules = load_rliable()
    if modules is None:
        return False
    rly, metrics = modules
    ok = {}
    for r in runs:
        if r["returncode"] == 0:
            ok.setdefault((r["script"], r["env_id"], r["variant"]), []).append(r)
    for rs in ok.values():  # the bootstrap resamples by position: seed order, not the order runs were loaded in
        rs.sort(key=lambda r: int(r["seed"]))

    def column(key, field):
        return np.array([[r[field]] for r in ok.get(key, [])], dtype=float)

    for row in rows:
        key = (row["script"], row["env_id"], row["variant"])
        finals = column(key, "final_return")
        if len(finals) >= MIN_SEEDS_FOR_INTERVALS and np.isfinite(finals).all():
            iqm = bootstrap(rly, finals, lambda x: np.array([metrics.aggregate_iqm(x)]), reps)
            row["return_iqm"], row["return_iqm_low"], row["return_iqm_high"] = iqm
        mlx_sps, torch_sps = column(key, "sps"), column((row["script"], row["env_id"], "torch"), "sps")
        if row["framework"] == "mlx" and min(len(mlx_sps), len(torch_sps)) >= MIN_SEEDS_FOR_INTERVALS:
            ratio = bootstrap(rly, [mlx_sps, torch_sps], lambda m, t: np.array([np.median(m) / np.median(t)]), reps)
            row["sps_ratio_low"], row["sps_ratio_high"] = ratio[1:]
    return True


def fmt(x, spec=".1f") -> str:
    if x == "" or x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def published_cell(row) -> str:
    if row["published_return"] == "":
        return "–"
    cell = f"{row['published_return']:.2f} ± {row['published_std']:.2f}"
    if row["total_timesteps"] != row["published_steps"]:
        cell += f" (at {row['published_steps']:,} steps)"
    if row.get("published_env"):  # CleanRL's figure is for another version of the env
        cell += f" on {row['published_env']}"
    if row.get("published_by"):  # not CleanRL's: the reference the pair's defaults come from
        cell += f" ({row['published_by']})"
    return cell


def with_interval(value, low, high, spec) -> str:
    """`value [low, high]`, or the value alone where no interval was computed."""
    if isinstance(low, float) and math.isnan(low):
        return fmt(value, spec)
    return f"{fmt(value, spec)} [{fmt(low, spec)}, {fmt(high, spec)}]"


def eval_cell(row) -> str:
    """The saved model's return (mean ± std over the seeds that saved one), naming how many did where not all."""
    if not row.get("eval_seeds"):
        return "–"
    cell = f"{fmt(row['eval_mean'], '.2f')} ± {fmt(row['eval_std'], '.2f')}"
    return cell if row["eval_seeds"] == row["seeds"] else f"{cell} ({row['eval_seeds']} of {row['seeds']} seeds)"


def table_md(rows) -> str:
    evals = any(r.get("eval_seeds") for r in rows)  # the column only where a run saved and evaluated its model
    lines = [
        "| script | env | framework | BLAS | seeds | steps | return (last 100 ep.) | IQM [95% CI] | "
        + ("saved model (eval) | " if evals else "")
        + "CleanRL published | median SPS | MLX/torch SPS | wall (s) | peak RSS (MB) | env µs | inference µs | update µs |",
        "|" + "---|" * (16 + evals),
    ]
    for r in rows:
        iqm = with_interval(r["return_iqm"], r["return_iqm_low"], r["return_iqm_high"], ".2f")
        ratio = with_interval(r["sps_ratio_vs_torch"], r["sps_ratio_low"], r["sps_ratio_high"], ".2f")
        lines.append(
            f"| {r['script']} | {r['env_id']} | {r['variant']} | {r['blas'] or '–'} | {r['seeds']} | {fmt(r['total_timesteps'], ',')} | "
            f"{fmt(r['return_mean'], '.2f')} ± {fmt(r['return_std'], '.2f')} | {iqm} | "
            + (f"{eval_cell(r)} | " if evals else "")
            + f"{published_cell(r)} | {fmt(r['sps_median'], '.0f')} | "
            f"{ratio} | {fmt(r['wall_s_mean'])} | {fmt(r['peak_rss_mb'], '.0f')} | {fmt(r['env_us'])} | {fmt(r['inference_us'])} | "
            f"{fmt(r['update_us'])} |"
        )
    return "\n".join(lines)


def machine_of(runs) -> dict:
    """The machine most of the runs ran on; with `others`, how many ran elsewhere and on what."""
    machines = [json.dumps(r["machine"], sort_keys=True) for r in runs]
    most = max(set(machines), key=lambda m: (machines.count(m), m))
    info = dict(next(r["machine"] for r, m in zip(runs, machines) if m == most))
    if len(set(machines)) > 1:
        info["others"] = {
            "runs": sum(m != most for m in machines),
            "machines": sorted({describe(json.loads(m)) for m in machines} - {describe(info)}),
        }
    info["mlx_device"] = "/".join(sorted({r["device"] for r in runs if r["framework"] == "mlx" and r.get("device")}))
    info["mlx_blas"] = "/".join(sorted({r["blas"] for r in runs if r["framework"] == "mlx" and r.get("blas")}))
    info["torch_blas"] = "/".join(sorted({r["blas"] for r in runs if r["framework"] == "torch" and r.get("blas")}))
    return info


# ---------------------------------------------------------------- plots


def score_label(script: str) -> str:
    """What a pair's return column and curve show: `episodic return`, or its score tag's name (allo: `cosine similarity`)."""
    return score_tag(script).split("/")[-1].replace("_", " ")


def plot_curves(runs, script, env_id, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    by_variant: dict[str, list] = {}
    for r in runs:
        if r["script"] == script and r["env_id"] == env_id and r["returncode"] == 0:
            by_variant.setdefault(r["variant"], []).append(r["curve"])
    for variant in sorted(by_variant, key=variant_order):
        curves, seeds = [c for c in by_variant[variant] if c], len(by_variant[variant])
        n = f"{seeds} seed{'' if seeds == 1 else 's'}"
        if not curves:  # recorded before curves.csv existed: the row stays in the table, the curve is lost
            ax.plot([], [], label=f"{variant}: no curve recorded ({n})")
            continue
        grid = np.linspace(0, min(c[-1][0] for c in curves), 200)  # each curve is smoothed already (smoothed_curve)
        ys = np.stack([np.interp(grid, [s for s, _ in c], [v for _, v in c]) for c in curves])
        mean, std = ys.mean(0), ys.std(0)
        ax.plot(grid, mean, label=f"{variant} ({n})" if len(curves) == seeds else f"{variant} ({len(curves)} of {seeds} seeds)")
        ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
    pub = published_for(script, env_id)
    if pub:  # CleanRL's final return (mean ± std over its seeds) at its budget
        ax.axhline(pub.mean, color="black", linestyle="--", label=f"{pub.by or 'CleanRL'} at {pub.total_timesteps:,} steps")
        ax.axhspan(pub.mean - pub.std, pub.mean + pub.std, color="black", alpha=0.08)
    ax.set(xlabel="global step", ylabel=score_label(script), title=f"{script} on {env_id}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sps(rows, path):
    import matplotlib.pyplot as plt

    groups = sorted({(r["script"], r["env_id"]) for r in rows})
    variants = sorted({r["variant"] for r in rows}, key=variant_order)
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(groups) * len(variants)), 4))
    for i, v in enumerate(variants):
        sps = [next((r["sps_median"] for r in rows if (r["script"], r["env_id"], r["variant"]) == (*g, v)), 0) for g in groups]
        bars = ax.bar(np.arange(len(groups)) + i * width, sps, width, label=v)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(np.arange(len(groups)) + width * (len(variants) - 1) / 2, [f"{s}\n{e}" for s, e in groups])
    ax.set(ylabel="median SPS (higher is better)", title="steps per second")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sps_ratio(rows, path) -> bool:
    """Each MLX variant's SPS over torch's, per pair and env, with its bootstrap interval where there is one
    (False, and no file, when the sweep has no MLX/torch pair)."""
    import matplotlib.pyplot as plt

    ratios = [r for r in rows if r["framework"] == "mlx" and not math.isnan(r["sps_ratio_vs_torch"])]
    if not ratios:
        return False
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.5 * len(ratios) + 1)))
    y = np.arange(len(ratios))
    values = np.array([r["sps_ratio_vs_torch"] for r in ratios])
    low = np.array([r["sps_ratio_low"] for r in ratios])
    high = np.array([r["sps_ratio_high"] for r in ratios])
    errors = np.nan_to_num(np.stack([values - low, high - values]))  # no interval: no bar
    ax.errorbar(values, y, xerr=errors, fmt="o", capsize=4)
    ax.axvline(1.0, color="gray", linestyle="--", linewidth=1)
    ax.set_yticks(y, [f"{r['script']} {r['env_id']} ({r['variant']})" for r in ratios])
    title = "MLX/torch SPS ratio" + (", 95% bootstrap interval" if np.isfinite(low).any() else "")
    ax.set(xlabel="MLX/torch SPS ratio (above 1: MLX is faster)", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_timing(rows, path):
    import matplotlib.pyplot as plt

    labels = [f"{r['script']} {r['env_id']}\n{r['variant']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows)), 4))
    bottom = np.zeros(len(rows))
    for key, name in (("env_us", "env step"), ("inference_us", "inference"), ("update_us", "update")):
        vals = np.nan_to_num([r[key] for r in rows])
        ax.bar(labels, vals, bottom=bottom, label=name)
        bottom += vals
    ax.set(ylabel="µs per env step (lower is better)", title="where the time goes (timing/*)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- W&B


def upload_wandb(runs, project: str, entity=None, wandb_dir=None) -> None:
    """Upload finished runs after the fact, as the scripts' own --track would have: one W&B run per
    script run, grouped by `{algo}__{env_id}`, `framework` (and variant, BLAS) in the config, scalars
    against `global_step`. Works offline (WANDB_MODE=offline; `wandb sync` later)."""
    import wandb

    for r in runs:
        if r["returncode"] != 0:
            continue
        if r["dir"] is None:
            print(f"benchmark.report: {r['name']} is only recorded (its logs are not here): not uploaded")
            continue
        (tb_dir,) = [p for p in (r["dir"] / "runs").iterdir() if p.is_dir()]
        config = {
            "framework": r["framework"],
            "algo": r["script"],
            "variant": r["variant"],
            "env_id": r["env_id"],
            "seed": r["seed"],
        }
        config |= {"blas": r.get("blas", ""), "args": " ".join(r["args"])}
        run = wandb.init(
            project=project, entity=entity, name=tb_dir.name, group=f"{r['script']}__{r['env_id']}", config=config,
            job_type="benchmark", dir=wandb_dir, reinit="finish_previous",
        )  # fmt: skip
        run.define_metric("global_step")
        run.define_metric("*", step_metric="global_step")
        events = sorted((step, tag, value) for tag, points in read_scalars(tb_dir).items() for step, value in points)
        for step, tag, value in events:
            run.log({tag: value, "global_step": step})
        run.summary["final_return"] = r["final_return"]
        run.summary["median_sps"] = r["sps"]
        run.finish()


# ---------------------------------------------------------------- main


def statistics_text(has_rliable: bool, reps: int) -> str:
    """How the IQM and the intervals were computed, or that they were not."""
    if not has_rliable:
        return (
            "IQM and 95% intervals: not computed, rliable is not installed (`pip install -r requirements-dev.txt`); "
            "the ratio plot shows the point ratios only."
        )
    return (
        f"IQM: the interquartile mean of the runs' final returns (the mean of the middle 50% of runs, rliable's "
        f"`metrics.aggregate_iqm`), with a 95% stratified-bootstrap interval over seeds (rliable's "
        f"`get_interval_estimates`, percentile method, {reps:,} replicates); only for {MIN_SEEDS_FOR_INTERVALS} or "
        f"more seeds. MLX/torch SPS interval: each replicate resamples the MLX runs and the torch runs independently "
        f"(with replacement, {reps:,} replicates) and takes the ratio of their medians of each run's median SPS; the "
        f"interval is the 2.5th to 97.5th percentile (needs {MIN_SEEDS_FOR_INTERVALS} or more seeds on each side)."
    )


def runs_at_once(runs) -> int:
    """The most runs of a sweep that were running at the same moment (1: one at a time, as `--workers 1` runs them)."""
    spans = [(r["started"], r["started"] + r["wall_s"]) for r in runs if math.isfinite(r.get("started", math.nan) + r["wall_s"])]
    edges = sorted([(end, -1) for _, end in spans] + [(start, 1) for start, _ in spans])  # an end before a start at a tie
    return int(max([1, *np.cumsum([step for _, step in edges])]))


def write_report(
    sweep_dir: Path, out_dir: Path, reps: int = BOOTSTRAP_REPS, returns_only: bool = False, keep_recorded: bool = False
) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    runs = load_sweep(sweep_dir, out_dir if keep_recorded else None)
    rows = summarize(runs)
    has_rliable = add_intervals(rows, runs, reps)
    if not has_rliable:
        print("benchmark.report: rliable is not installed: no IQM and no intervals (pip install -r requirements-dev.txt)")
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    write_records(runs, out_dir)
    machine = machine_of(runs) | {"date": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # newest wins in docs
    machine["returns_only"] = returns_only  # the runs shared the machine: benchmark.docs shows no SPS from them
    machine["runs_at_once"] = at_once = runs_at_once(runs)  # above 1: the README takes no SPS ratio from this sweep
    (out_dir / "machine.json").write_text(json.dumps(machine, indent=1))

    images = []
    for script, env_id in sorted({(r["script"], r["env_id"]) for r in rows}):
        name = f"curves_{script}__{env_id}.png"
        if any(r["script"] == script and r["env_id"] == env_id and r.get("curve") for r in runs):
            plot_curves(runs, script, env_id, out_dir / name)
        elif not (out_dir / name).exists():
            continue  # recorded before curves were: the image drawn from their logs stays, else there is none
        images.append(name)
    plot_sps(rows, out_dir / "sps.png")
    images += ["sps.png", *(["sps_ratio.png"] if plot_sps_ratio(rows, out_dir / "sps_ratio.png") else [])]
    plot_timing(rows, out_dir / "timing.png")
    images.append("timing.png")

    md = [
        f"# Benchmark: {Path(sweep_dir).name}",
        "",
        f"Machine: {describe(machine)}. MLX device {machine['mlx_device'] or '–'}, BLAS {machine['mlx_blas'] or '–'}"
        + (f"; torch's BLAS {machine['torch_blas']}. " if machine.get("torch_blas") else ". ")
        + "Every run with `OMP_NUM_THREADS=1`.",
        "",
        *(
            [
                f"{machine['others']['runs']} runs ran elsewhere (runs.csv names the machine of each): "
                + ("; ".join(machine["others"]["machines"]) or "the same CPU and versions, another host")
                + ".",
                "",
            ]
            if "others" in machine
            else []
        ),
        "Return: mean ± std over seeds of each run's average over its last 100 episodes. SPS: median over "
        "seeds of each run's median `charts/SPS`. µs columns: the `timing/*` breakdown per env step (median "
        "over the run, mean over seeds). MLX/torch: the SPS ratio (above 1: MLX is faster). Wall: "
        "the process's wall time, start-up included (mean over seeds). Peak RSS: the script process's "
        "maximum resident memory (max over seeds; its children, e.g. actor processes, not included).",
        "",
        *(
            line
            for script in sorted({r["script"] for r in rows} & set(SCORE_TAGS))
            for line in (
                f"{script} has no episodes: its return column is each run's last `{SCORE_TAGS[script]}`, its curve that tag "
                "at every evaluation, its steps gradient steps, and its µs columns only `timing/update_us` (the rest of its "
                "step is `timing/sample_us`, which the table does not show).",
                "",
            )
        ),
        *(
            [
                "Saved model (eval): the runs ran with `--save-model`, which evaluates the saved model after training "
                "as each script's `evaluate` says (mostly as CleanRL's `*_eval` do: sampled actions for the policies, epsilon-"
                "greedy for the Q-networks: 0.05, qrdqn its final --end-e 0.04); the mean of each run's `eval/episodic_return` episodes, mean ± std over seeds.",
                "",
            ]
            if any(r.get("eval_seeds") for r in rows)
            else []
        ),
        statistics_text(has_rliable, reps),
        "",
        *(
            [
                "Returns only: these runs shared the machine with other work (long runs at low priority), so their SPS, "
                "wall-time and µs columns are not speed measurements, and the docs show no SPS from them.",
                "",
            ]
            if returns_only
            else []
        ),
        *(
            [
                f"Up to {at_once} runs at a time (`--workers {at_once}`): each SPS was measured beside the other runs, "
                "as when seeds run in parallel on one machine; the README's headline takes no MLX/torch ratio from here.",
                "",
            ]
            if at_once > 1 and not returns_only
            else []
        ),
        table_md(rows),
        "",
    ]
    md += ["## Runs", "", "One row per run: the budget it reached and its last-100-episode return.", ""]
    evals = any(math.isfinite(r.get("eval_return", math.nan)) for r in runs)
    md += [
        "| script | env | variant | seed | steps | return (last 100 ep.) | " + ("saved model (eval) | " * evals) + "wall (s) |"
    ]
    md += ["|" + "---|" * (7 + evals)]
    for r in sorted(runs, key=lambda r: (r["script"], r["env_id"], variant_order(r["variant"]), r["seed"])):
        steps, ret, ev = (
            fmt(r.get(k, ""), spec) for k, spec in (("steps", ","), ("final_return", ".2f"), ("eval_return", ".2f"))
        )
        wall = fmt(r["wall_s"], ".0f") if r["returncode"] == 0 else f"failed ({r['returncode']})"
        md.append(
            f"| {r['script']} | {r['env_id']} | {r['variant']} | {r['seed']} | {steps} | {ret} | {ev + ' | ' if evals else ''}{wall} |"
        )
    md.append("")
    failed = [r for r in runs if r["returncode"] != 0]
    if failed:
        md += ["## Failed runs", ""]
        for r in failed:
            md += [f"`{r['name']}` exited with {r['returncode']}:", "", "```", r.get("log_tail") or "(no log)", "```", ""]
    md += [f"![{name}]({name})" for name in images]
    (out_dir / "results.md").write_text("\n".join(md) + "\n")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", type=Path, help="benchmark/runs/<tag>")
    p.add_argument("--out", type=Path, help="default: benchmark/results/<tag>")
    p.add_argument("--track", action="store_true", help="also upload the runs to W&B (grouped by algo/env, split by framework)")
    p.add_argument("--wandb-project-name", default="cleanrl-mlx")
    p.add_argument("--wandb-entity")
    p.add_argument("--bootstrap-reps", type=int, default=BOOTSTRAP_REPS, help="bootstrap replicates for the intervals")
    p.add_argument("--returns-only", action="store_true", help="the runs shared the machine: report returns, not speed")
    p.add_argument(
        "--keep-recorded",
        action="store_true",
        help="also report the runs recorded in <out>/runs.csv that sweep_dir does not hold (its logs are gone)",
    )
    opts = p.parse_args(argv)
    out_dir = opts.out or RESULTS_DIR / opts.sweep_dir.resolve().name
    rows = write_report(opts.sweep_dir, out_dir, opts.bootstrap_reps, opts.returns_only, opts.keep_recorded)
    print(table_md(rows))
    print(f"benchmark.report: wrote {out_dir}/results.md, results.csv and plots (then: python -m benchmark.docs)")
    if opts.track:
        upload_wandb(
            load_sweep(opts.sweep_dir, out_dir if opts.keep_recorded else None), opts.wandb_project_name, opts.wandb_entity
        )


if __name__ == "__main__":
    main()
