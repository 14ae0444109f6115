"""A TensorBoard page that puts each pair's twins side by side: a custom-scalars layout for a logdir.

    python -m benchmark.tblayout --logdir runs
    tensorboard --logdir runs          # then the "Custom Scalars" tab

It finds the runs under the logdir (named `{env_id}__{algo}_{mlx|torch}__{seed}__{time}`, as the scripts name
them), and writes one event file at the top of the logdir holding a layout with one category per algorithm: its
score (`charts/episodic_return`), `charts/SPS`, each `timing/*` tag and each of its `losses/*` tags, one chart
each, every chart's regex matching the tag both twins log, so the MLX and torch runs are lines on the same chart.
A chart shows every selected run that logs its tag: with several algorithms in one logdir, narrow the runs with
TensorBoard's run filter (e.g. `__ppo_`). `benchmark.run` writes this layout into each sweep's folder. Nothing
in the scripts changes; the layout replaces the one this tool wrote before.
"""

import argparse
import re
import time
from pathlib import Path
from typing import Optional

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2, metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from benchmark.pairs import FRAMEWORKS
from benchmark.registry import TIMING_TAGS, loss_tags, score_tag

LAYOUT_SUFFIX = ".cleanrl_layout"  # the layout file's name ends with this; a new layout replaces the old one
RUN_NAME = re.compile(rf"^(?P<env_id>.+?)__(?P<algo>.+)_(?P<framework>{'|'.join(FRAMEWORKS)})__(?P<seed>\d+)__\d+$")


def find_runs(logdir) -> list[dict]:
    """Every run directory under logdir whose name is a script's run name: {dir, env_id, algo, framework, seed}."""
    runs = []
    for run_dir in sorted({p.parent for p in Path(logdir).rglob("events.out.tfevents.*")}):
        if m := RUN_NAME.match(run_dir.name):
            runs.append({"dir": run_dir, **m.groupdict()})
    return runs


def charts_for(algo: str) -> list[tuple[str, list[str]]]:
    """(title, tag regexes) of the algorithm's charts; a pair the registry does not know gets one chart of all losses."""
    tags = [score_tag(algo), "charts/SPS", *TIMING_TAGS, *loss_tags(algo)]
    charts = [(tag, [f"^{re.escape(tag)}$"]) for tag in tags]
    return charts if loss_tags(algo) else [*charts, ("losses", ["^losses/"])]


def build_layout(algos) -> layout_pb2.Layout:
    categories = []
    for algo in sorted(set(algos)):
        charts = [
            layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=regexes))
            for title, regexes in charts_for(algo)
        ]
        categories.append(layout_pb2.Category(title=f"{algo}: MLX vs torch", chart=charts))
    return layout_pb2.Layout(category=categories)


def layout_summary(layout: layout_pb2.Layout) -> summary_pb2.Summary:
    """The summary the custom scalars plugin reads: its config tag, its plugin name, the layout as a string tensor."""
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=[layout.SerializeToString()], tensor_shape=tensor_shape_pb2.TensorShapeProto()
    )
    value = summary_pb2.Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG, tensor=tensor, metadata=metadata.create_summary_metadata())
    return summary_pb2.Summary(value=[value])


def write_layout(logdir) -> Optional[Path]:
    """Write the layout for the runs under logdir at its top; return the file, or None when no run was found."""
    logdir = Path(logdir)
    algos = [r["algo"] for r in find_runs(logdir)] if logdir.is_dir() else []
    if not algos:
        return None
    for old in logdir.glob(f"events.out.tfevents.*{LAYOUT_SUFFIX}"):
        old.unlink()
    writer = EventFileWriter(str(logdir), filename_suffix=LAYOUT_SUFFIX)
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=layout_summary(build_layout(algos))))
    writer.close()
    (path,) = logdir.glob(f"events.out.tfevents.*{LAYOUT_SUFFIX}")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.tblayout", description=__doc__.split("\n\n")[0])
    p.add_argument("--logdir", type=Path, default=Path("runs"), help="the folder tensorboard --logdir reads (default: runs)")
    opts = p.parse_args(argv)
    if not opts.logdir.is_dir():
        raise SystemExit(f"benchmark.tblayout: no folder {opts.logdir}")
    path = write_layout(opts.logdir)
    if path is None:
        raise SystemExit(
            f"benchmark.tblayout: no run named {{env_id}}__{{algo}}_{{mlx|torch}}__{{seed}}__{{time}} under {opts.logdir}"
        )
    algos = sorted({r["algo"] for r in find_runs(opts.logdir)})
    print(
        f"benchmark.tblayout: wrote {path} ({', '.join(algos)}); open the Custom Scalars tab of tensorboard --logdir {opts.logdir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
