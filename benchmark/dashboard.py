"""W&B comparison dashboards, MLX vs PyTorch: a report with one section per algorithm and env.

    python -m benchmark.run --scripts ppo sac --track --wandb-entity E      # log the runs
    python -m benchmark.dashboard --entity E [--project P] [--algos ppo sac] [--env-ids ...] [--workspace]
    python -m benchmark.dashboard --entity E --dry-run                       # print the structure, send nothing

Each section selects its runs by the config keys the scripts log with --track (`algo`, `env_id`, `framework`)
and groups them by `framework`, so MLX and torch are two lines (the mean over seeds, a band of one standard
deviation). Panels: the score (`charts/episodic_return`) against `global_step` and against wall-clock time,
`charts/SPS`, the `timing/*` split (µs per env step), each of the algorithm's `losses/*` tags (the table in
benchmark/registry.py), and a text block naming the machines, versions and BLAS from the runs' config and W&B's
system metadata. `--workspace` also saves one workspace view per algorithm and env with the same panels (a
workspace has one run filter, so one view per comparison). Default: every pair with the envs benchmark.run uses.
Built with wandb-workspaces (`pip install -r requirements-dev.txt`); `--dry-run` needs neither it nor W&B login.
"""

import argparse
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

from benchmark.pairs import FRAMEWORKS, check_scripts, discover
from benchmark.registry import TIMING_TAGS, loss_tags, score_tag
from benchmark.run import env_ids_for

DEFAULT_PROJECT = "cleanrl-mlx"  # the scripts' own wandb_project_name
SELECT_BY = ("algo", "env_id", "framework")  # config keys every script logs with --track (a test checks)
GROUP_BY = "framework"
AGGREGATE, BAND = "mean", "stddev"  # one line per framework: the mean over seeds, a band of one std
X_STEP, X_WALL = "global_step", "RelativeTime(Wall)"
PANEL_W, PANEL_H, COLUMNS = 8, 6, 3
DRY_RUN_TEXT = "(written when the report is created, from the runs' config and W&B's system metadata)"


@dataclass(frozen=True)
class Panel:
    kind: str
    """"line" (grouped lines against x) or "bar" (grouped bars of each run's last value)"""
    title: str
    metrics: tuple[str, ...]
    x: Optional[str] = X_STEP


@dataclass
class Section:
    algo: str
    env_id: str
    panels: list[Panel]
    text: str = field(default=DRY_RUN_TEXT)
    """markdown: the machines, versions and BLAS of the section's runs"""

    @property
    def title(self) -> str:
        return f"{self.algo} on {self.env_id}"

    @property
    def filters(self) -> str:
        """The W&B run filter (wandb-workspaces' expression syntax) that selects this section's runs."""
        frameworks = ", ".join(repr(fw) for fw in FRAMEWORKS)
        return (
            f"Config('algo') == {self.algo!r} and Config('env_id') == {self.env_id!r} and Config('framework') in [{frameworks}]"
        )


def panels_for(algo: str) -> list[Panel]:
    score = score_tag(algo)
    panels = [
        Panel("line", "score vs steps", (score,)),
        Panel("line", "score vs wall-clock time", (score,), X_WALL),
        Panel("line", "charts/SPS", ("charts/SPS",)),
        Panel("bar", "µs per env step (last logged)", TIMING_TAGS, None),
    ]
    return panels + [Panel("line", tag, (tag,)) for tag in loss_tags(algo)]


def build_sections(algos, env_ids=None) -> list[Section]:
    return [Section(algo, env_id, panels_for(algo)) for algo in algos for env_id in env_ids_for(algo, env_ids)]


def describe(sections, entity: str, project: str, title: str, workspace: bool) -> str:
    """The report's structure as text: what --dry-run prints."""
    lines = [
        f'W&B report "{title}" in {entity}/{project}: {len(sections)} section(s)',
        f"runs grouped by config.{GROUP_BY}: one line per framework, {AGGREGATE} over seeds with a {BAND} band",
    ]
    for s in sections:
        lines += ["", f"section: {s.title}", f"  filter: {s.filters}", f"  group by: config.{GROUP_BY}", f"  text: {s.text}"]
        for p in s.panels:
            named = "" if p.metrics == (p.title,) else f'"{p.title}": '
            lines.append(f"  {p.kind:<4} {named}{', '.join(p.metrics)}" + (f" against {p.x}" if p.x else ""))
        if workspace:
            lines.append(f'  workspace view: "{workspace_name(s)}" (same filter, grouping and panels)')
    return "\n".join(lines)


# ---------------------------------------------------------------- the runs' machines, versions and BLAS


def package_version(run, package: str) -> str:
    """The package's version in the requirements.txt W&B saves with each run ("?" where it cannot be read)."""
    try:
        with tempfile.TemporaryDirectory() as tmp, run.file("requirements.txt").download(root=tmp, replace=True) as f:
            text = f.read()
    except Exception:  # a missing file or a network error: the text says "?" rather than fail the report
        return "?"
    m = re.search(rf"^{re.escape(package)}(?:\[[^\]]*\])?==(\S+)", text, re.MULTILINE)
    return m.group(1) if m else "?"


def join(values) -> str:
    """The distinct values, numbers in numeric order ("?" when there are none)."""
    distinct = {str(v) for v in values if v not in (None, "")}
    return ", ".join(sorted(distinct, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))) or "?"


def machine_text(runs, version=package_version) -> str:
    """Markdown naming, per framework, the runs' hosts, CPU, OS, Python, framework version and (MLX) BLAS and
    device, from their config and W&B's system metadata. `runs`: objects with .config and .metadata, as
    wandb.Api().runs returns them."""
    by_framework: dict[str, list] = {}
    for run in runs:
        by_framework.setdefault(run.config.get("framework", "?"), []).append(run)
    if not by_framework:
        return "No runs match this section's filter yet (`python -m benchmark.run --track`)."
    lines = []
    for fw, rs in sorted(by_framework.items()):
        configs, metas = [r.config for r in rs], [r.metadata or {} for r in rs]
        cpus = join((m.get("cpu") or {}).get("model") or (m.get("apple") or {}).get("name") for m in metas)
        line = (
            f"- **{fw}** ({len(rs)} runs, seeds {join(c.get('seed') for c in configs)}): {fw} {version(rs[0], fw)}; "
            f"host {join(m.get('host') for m in metas)}, CPU {cpus}, {join(m.get('cpu_count') for m in metas)} cores, "
            f"{join(m.get('os') for m in metas)}, Python {join(m.get('python') for m in metas)}"
        )
        if fw == "mlx":
            line += f"; device {join(c.get('device') for c in configs)}, BLAS {join(c.get('blas') for c in configs)}"
        else:
            line += f"; CUDA {join(c.get('cuda') for c in configs)}"
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------- wandb-workspaces objects


def wr_panels(panels: list[Panel]) -> list:
    import wandb_workspaces.reports.v2 as wr

    out = []
    for i, p in enumerate(panels):
        layout = wr.Layout(x=(i % COLUMNS) * PANEL_W, y=(i // COLUMNS) * PANEL_H, w=PANEL_W, h=PANEL_H)
        common = {"title": p.title, "groupby": wr.Config(GROUP_BY), "groupby_aggfunc": AGGREGATE, "groupby_rangefunc": BAND}
        if p.kind == "bar":
            out.append(wr.BarPlot(metrics=list(p.metrics), orientation="v", layout=layout, **common))
        else:
            out.append(wr.LinePlot(x=p.x, y=list(p.metrics), layout=layout, **common))
    return out


def build_report(sections, entity: str, project: str, title: str):
    import wandb_workspaces.reports.v2 as wr

    blocks = [
        wr.P(f"MLX vs PyTorch, twin by twin: runs logged with --track, selected by config {', '.join(SELECT_BY)}."),
        wr.TableOfContents(),
    ]
    for s in sections:
        runset = wr.Runset(entity=entity, project=project, name=s.title, filters=s.filters, groupby=[f"config.{GROUP_BY}"])
        blocks += [wr.H1(s.title), wr.MarkdownBlock(s.text), wr.PanelGrid(runsets=[runset], panels=wr_panels(s.panels))]
    description = "Generated by python -m benchmark.dashboard (cleanrl-mlx)"
    return wr.Report(entity=entity, project=project, title=title, description=description, blocks=blocks)


def workspace_name(section: Section) -> str:
    return f"MLX vs torch: {section.title}"


def build_workspace(section: Section, entity: str, project: str):
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    panels = [*wr_panels(section.panels), wr.MarkdownPanel(markdown=section.text)]
    return ws.Workspace(
        entity=entity,
        project=project,
        name=workspace_name(section),
        sections=[ws.Section(name=section.title, panels=panels, is_open=True)],
        runset_settings=ws.RunsetSettings(filters=section.filters, groupby=[expr.Config(GROUP_BY)]),
    )


# ---------------------------------------------------------------- main


@contextmanager
def one_line_errors():
    """A W&B failure (no login, no network, an unknown entity or project) ends the command with one line."""
    try:
        yield
    except Exception as e:
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise SystemExit(f"benchmark.dashboard: W&B: {type(e).__name__}: {first_line}") from None


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmark.dashboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--entity", default=os.environ.get("WANDB_ENTITY"), help="W&B user or team (default: WANDB_ENTITY)")
    p.add_argument("--project", default=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), help="W&B project")
    p.add_argument("--algos", nargs="+", help="pairs by name (default: every pair found)")
    p.add_argument("--env-ids", nargs="+", help="envs (default: the registry's per pair, else the script's default)")
    p.add_argument("--title", default="cleanrl-mlx: MLX vs PyTorch", help="the report's title")
    p.add_argument("--workspace", action="store_true", help="also save a workspace view per algorithm and env")
    p.add_argument("--dry-run", action="store_true", help="print the structure; no network, no W&B login needed")
    return p.parse_args(argv)


def main(argv=None) -> int:
    opts = parse(argv)
    algos = opts.algos or discover()
    check_scripts(algos)
    if not opts.entity:
        raise SystemExit("benchmark.dashboard: no W&B entity: pass --entity (your W&B user or team) or set WANDB_ENTITY")
    sections = build_sections(algos, opts.env_ids)
    if opts.dry_run:
        print(describe(sections, opts.entity, opts.project, opts.title, opts.workspace))
        return 0
    try:
        import wandb
        import wandb_workspaces  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"benchmark.dashboard: {e.name} is not installed: pip install -r requirements-dev.txt") from None
    with one_line_errors():
        api = wandb.Api()
        for s in sections:
            s.text = machine_text(
                api.runs(f"{opts.entity}/{opts.project}", filters={"config.algo": s.algo, "config.env_id": s.env_id})
            )
    report = build_report(sections, opts.entity, opts.project, opts.title)
    with one_line_errors():
        report.save()
        print(f"benchmark.dashboard: report {report.url}")
        for s in sections if opts.workspace else []:
            view = build_workspace(s, opts.entity, opts.project).save()
            print(f"benchmark.dashboard: workspace view {view.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
