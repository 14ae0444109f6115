"""Rewrite the generated results blocks of README.md (one headline row per pair) and of every docs page
(docs/<name>.md: every committed row of that pair, and its learning curves) from benchmark/results.

    python -m benchmark.docs            rewrite the blocks
    python -m benchmark.docs --check    exit 1 if a block differs from what the results say (a test runs this)

A block sits between `<!-- results:start -->` and `<!-- results:end -->`; nothing in it is typed by hand.
The headline row of a pair comes from the committed sweep with the largest budget that has both twins (where the
twins stopped at different steps, the fewer counts; ties:
the env the benchmark registry lists first, then the newest report, then the folder that sorts last). Its MLX/torch
SPS ratio comes from a sweep whose runs had the machine to themselves, one at a time: where the row's own sweep
did not (--returns-only, or --workers above 1), from the largest such sweep of the pair on the same machine, and
where the pair has none there, from the largest on another machine, which the cell then names.
"""

import argparse
import csv
import json
from pathlib import Path

from benchmark.machine import cpu_label, join_cpus
from benchmark.pairs import REPO, RESULTS_DIR, discover
from benchmark.registry import SCORE_TAGS, bench_for
from benchmark.report import published_cell, score_label

START, END = "<!-- results:start -->", "<!-- results:end -->"
DOCS_DIR = REPO / "docs"


def load_results(results_dir: Path = RESULTS_DIR) -> list[dict]:
    """Every row of every committed results.csv, with its folder and that folder's machine.json."""
    rows = []
    for csv_path in sorted(Path(results_dir).glob("*/results.csv")):
        machine = json.loads((csv_path.parent / "machine.json").read_text())
        with open(csv_path) as f:
            new = [r | {"folder": csv_path.parent, "machine": machine} for r in csv.DictReader(f)]
        if machine.get("returns_only"):  # runs that shared the machine: their SPS is no measurement
            new = [r | {"sps_median": "", "sps_ratio_vs_torch": ""} for r in new]
        rows += new
    return rows


def number(value, spec: str) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if x != x else format(x, spec)


def published(row) -> str:
    """The report's published-return cell for a results.csv row (whose values are strings)."""
    if not row["published_return"]:
        return "–"
    numbers = {k: float(row[k]) for k in ("published_return", "published_std")}
    steps = {k: int(float(row[k])) for k in ("published_steps", "total_timesteps")}
    named = {k: row.get(k, "") for k in ("published_env", "published_by")}  # older csvs lack them
    return published_cell(numbers | steps | named)


def score(row, with_std=False) -> str:
    """A return cell: one decimal; a pair without episodes (allo) its score to three decimals, named in the README."""
    spec = ".3f" if row["script"] in SCORE_TAGS else ".1f"
    cell = number(row["return_mean"], spec) + (f" ± {number(row['return_std'], spec)}" if with_std else "")
    return cell if with_std or row["script"] not in SCORE_TAGS else f"{cell} ({score_label(row['script'])})"


def with_eval(row, cell: str) -> str:
    """A return cell, followed by the saved model's evaluated return where the runs saved one (older csvs lack it)."""
    if not float(row.get("eval_seeds") or 0):
        return cell
    some = "" if row["eval_seeds"] == row["seeds"] else f", {row['eval_seeds']} of {row['seeds']} seeds"
    return f"{cell} (saved model: {number(row['eval_mean'], '.1f')} ± {number(row['eval_std'], '.1f')}{some})"


def machine_cell(*rows) -> str:
    """The CPUs the rows' runs ran on (older csvs lack them: the folder's machine), cores, MLX's device and BLAS, and
    torch's BLAS where the sweep recorded it."""
    m = rows[0]["machine"]
    cpus = join_cpus(cpu for r in rows for cpu in (r.get("machines") or cpu_label(m)).split("; "))
    torch = f", torch + {m['torch_blas']}" if m.get("torch_blas") else ""
    return f"{cpus}, {m['cores']} cores, MLX {m.get('mlx_device') or '–'} + {m.get('mlx_blas') or '–'}{torch}"


def link(path: Path, page_dir: Path) -> str:
    """path relative to a page in page_dir (both inside the repository; outside it, path as it is)."""
    if not (path.is_relative_to(REPO) and page_dir.is_relative_to(REPO)):
        return path.as_posix()
    return Path(*[".."] * len(page_dir.relative_to(REPO).parts), path.relative_to(REPO)).as_posix()


def headline(rows, script) -> tuple[dict, dict] | None:
    """(mlx row, torch row) of the pair's headline run, or None when no folder has both twins."""
    envs = (bench_for(script).env_ids if bench_for(script) else ()) or ()
    candidates = []
    for r in rows:
        if r["script"] == script and r["variant"] == "mlx":
            # the same sweep: the twin may have stopped at another step (a run continued in sittings); ranked by the fewer
            twin = [t for t in rows if t["variant"] == "torch" and all(t[k] == r[k] for k in ("script", "env_id", "folder"))]
            if twin:
                env_rank = envs.index(r["env_id"]) if r["env_id"] in envs else len(envs)
                steps = min(int(r["total_timesteps"]), int(twin[0]["total_timesteps"]))
                key = (steps, -env_rank, r["machine"].get("date", ""), r["folder"].name)
                candidates.append((key, r, twin[0]))
    if not candidates:
        return None
    _, mlx, torch = max(candidates, key=lambda c: c[0])
    return mlx, torch


def steps_cell(mlx, torch) -> str:
    """The steps the twins reached: one number, or each twin's where they stopped at different steps."""
    steps = [number(r["total_timesteps"], ",.0f") for r in (mlx, torch)]
    return steps[0] if steps[0] == steps[1] else f"{steps[0]} (MLX), {steps[1]} (torch)"


def shared(machine) -> bool:
    """Whether a sweep's runs shared the machine: with long background runs (--returns-only) or with each other."""
    return machine.get("returns_only", False) or machine.get("runs_at_once", 1) > 1


def readme_block(rows, pairs, page_dir: Path = REPO) -> str:
    lines = [
        "| pair | env | steps | return MLX | return torch | CleanRL published | MLX/torch SPS | machine | results |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for script in pairs:
        doc = link(DOCS_DIR / f"{script}.md", page_dir)
        pick = headline(rows, script)
        if pick is None:
            lines.append(f"| [{script}]({doc}) | – | – | – | – | – | – | – | no benchmark run committed |")
            continue
        mlx, torch = pick
        folder = link(mlx["folder"], page_dir)
        sps = number(mlx["sps_ratio_vs_torch"], ".2f")
        if shared(mlx["machine"]):  # runs that shared the machine: the speed from the largest quiet run
            same = ("cpu", "simd", "cores", "os")  # on the same machine (CPU, vector unit, cores, kernel build)
            quiet = [r for r in rows if not shared(r["machine"])]
            here = [r for r in quiet if all(r["machine"].get(k) == mlx["machine"].get(k) for k in same)]
            if fast := headline(here, script) or headline(quiet, script):  # another machine only where this has none
                where = f"{fast[0]['env_id']}, {number(fast[0]['total_timesteps'], ',.0f')} steps"
                other = "" if fast[0] in here else f", on another machine: {cpu_label(fast[0]['machine'])}"
                ratio = number(fast[0]["sps_ratio_vs_torch"], ".2f")
                sps = f"{ratio} ([{where}]({link(fast[0]['folder'], page_dir)}/results.md){other})"
        lines.append(
            f"| [{script}]({doc}) | {mlx['env_id']} | {steps_cell(mlx, torch)} | "
            f"{with_eval(mlx, score(mlx))} | {with_eval(torch, score(torch))} | "
            f"{published(mlx)} | "
            f"{sps} | {machine_cell(mlx, torch)} | [{mlx['folder'].name}]({folder}/results.md) |"
        )
    return "\n".join(lines) + "\n"


def docs_block(rows, script, page_dir: Path = DOCS_DIR) -> str:
    mine = [r for r in rows if r["script"] == script]
    if not mine:
        return "No benchmark run of this pair is committed yet (`python -m benchmark.run --scripts " + script + "`).\n"
    lines = [
        "Generated by `python -m benchmark.docs` from every committed run of this pair in `benchmark/results/`. "
        + (
            f"Return: this pair has no episodes; mean ± std over seeds of each run's last `{SCORE_TAGS[script]}`; steps and "
            "SPS count gradient steps; "
            if script in SCORE_TAGS
            else "Return: mean ± std over seeds of each run's last-100-episode average (and, where the runs saved their "
            "model, its evaluated return); "
        )
        + "SPS: median over seeds; MLX/torch: the SPS ratio in the same sweep (above 1: MLX is faster).",
        "",
        "| results | env | steps | variant | seeds | return | CleanRL published | median SPS | MLX/torch SPS | machine |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(mine, key=lambda r: (r["env_id"], int(r["total_timesteps"]), r["folder"].name, r["variant"])):
        folder = link(r["folder"], page_dir)
        lines.append(
            f"| [{r['folder'].name}]({folder}/results.md) | {r['env_id']} | {number(r['total_timesteps'], ',.0f')} | "
            f"{r['variant']} | {r['seeds']} | {with_eval(r, score(r, with_std=True))} | "
            f"{published(r)} | {number(r['sps_median'], '.0f')} | {number(r['sps_ratio_vs_torch'], '.2f')} | {machine_cell(r)} |"
        )
    pick = headline(rows, script)
    if pick:
        folder = pick[0]["folder"]
        for png in sorted(folder.glob(f"curves_{script}__*.png")):
            env_id = png.stem.split("__", 1)[1]
            lines += ["", f"![{script} on {env_id}, {folder.name}]({link(png, page_dir)})"]
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str, path: Path) -> str:
    if text.count(START) != 1 or text.count(END) != 1:
        raise SystemExit(f"benchmark.docs: {path} needs exactly one {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}{END}{tail}"


def render(results_dir: Path = RESULTS_DIR) -> dict[Path, str]:
    """{page: its text with the block regenerated} for README.md and every docs/<pair>.md."""
    rows, pairs = load_results(results_dir), discover()
    pages = {REPO / "README.md": readme_block(rows, pairs)}
    pages |= {DOCS_DIR / f"{s}.md": docs_block(rows, s) for s in pairs}
    out = {}
    for page, block in pages.items():
        if not page.is_file():
            raise SystemExit(f"benchmark.docs: {page} does not exist (every pair needs a docs page)")
        out[page] = replace_block(page.read_text(), block, page)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.docs", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only check that every block is up to date")
    opts = p.parse_args(argv)
    stale = [page for page, text in render().items() if page.read_text() != text]
    if opts.check:
        for page in stale:
            print(f"benchmark.docs: {page.relative_to(REPO)} is out of date: run python -m benchmark.docs")
        return 1 if stale else 0
    for page, text in render().items():
        page.write_text(text)
    print(f"benchmark.docs: rewrote {len(stale)} page(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
