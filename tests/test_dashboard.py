"""Side-by-side views of the twins: the W&B dashboard (benchmark.dashboard: its structure, the run selection every
script must make possible, the wandb-workspaces objects, all offline) and the TensorBoard custom-scalars page
(benchmark.tblayout, read back with TensorBoard's own custom scalars plugin over two real tiny PPO runs)."""

import ast
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from benchmark import dashboard, tblayout
from benchmark.pairs import FRAMEWORKS, discover
from benchmark.registry import LOSSES, TIMING_TAGS, loss_tags
from benchmark.run import env_ids_for
from tests.helpers import REPO, check_ok, run_dirs, run_script, script_path

PAIRS = discover()


# ---------------------------------------------------------------- what the scripts log (a static check)


def calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func).endswith(name)]


def with_config(tree, source: str) -> str:
    """source, plus the right-hand side of `config = ...` where source names `config`."""
    assigned = [
        ast.unparse(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign) and ast.unparse(n).startswith("config =")
    ]
    return source + (" " + " ".join(assigned) if re.search(r"\bconfig\b", source) else "")


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_script_logs_what_the_dashboard_selects_and_groups_by(name, framework):
    """--track's W&B config holds `algo`, `env_id` (an Args field), `framework` (and MLX's `blas`), the group is
    `{algo}__{env_id}`, the TensorBoard hyperparameters text names the framework, the run name has the exp_name
    `<name>_<framework>`, and the W&B project/entity flags benchmark.run passes exist."""
    text = script_path(name, framework).read_text()
    tree = ast.parse(text)
    (init,) = calls(tree, "wandb.init")
    kwargs = {k.arg: ast.unparse(k.value) for k in init.keywords}
    config = with_config(tree, kwargs["config"])
    assert f"'framework': '{framework}'" in config and f"'algo': '{name}'" in config and "vars(args)" in config, config
    assert framework == "torch" or "'blas'" in config, config
    assert kwargs["group"] == f"f'{name}__{{args.env_id}}'", kwargs["group"]
    for field in ("env_id", "wandb_project_name", "wandb_entity", "exp_name"):
        assert re.search(rf"^    {field}: ", text, re.MULTILINE), f"Args has no {field}"
    assert re.search(r'exp_name: str = os.path.basename\(__file__\)\[: -len\(".py"\)\]', text)
    (hparams,) = [c for c in calls(tree, "add_text") if ast.unparse(c.args[0]) == "'hyperparameters'"]
    assert f"'framework': '{framework}'" in with_config(tree, ast.unparse(hparams)), "hyperparameters text lacks framework"


@pytest.mark.parametrize("name", PAIRS)
def test_loss_table_is_what_both_twins_log(name):
    """benchmark/registry.py's LOSSES is the dashboard's and the TensorBoard page's source: every `losses/*` tag a
    twin writes is in it, and every name in it is written by both twins (literally, or through an
    f"losses/{name}" loop over a dict keyed by the quoted name)."""
    assert name in LOSSES, f"add {name}'s losses/* tags to LOSSES in benchmark/registry.py"
    for fw in FRAMEWORKS:
        text = script_path(name, fw).read_text()
        written = set(re.findall(r'"losses/(\w+)"', text))
        assert written <= set(LOSSES[name]), f"{name}_{fw} writes {sorted(written - set(LOSSES[name]))}, not in LOSSES"
        for loss in LOSSES[name]:
            assert f'"losses/{loss}"' in text or (f'"{loss}"' in text and 'f"losses/{' in text), f"{name}_{fw}: no {loss}"


# ---------------------------------------------------------------- the dashboard


def test_dry_run_lists_every_pair_and_env_offline(tmp_path):
    """The default covers every pair with benchmark.run's envs; the dry run imports neither wandb nor
    wandb_workspaces (so it cannot reach the network or need a login)."""
    code = (
        "import sys\nfrom benchmark import dashboard\ndashboard.main(['--entity', 'E', '--dry-run', '--workspace'])\n"
        "assert not {'wandb', 'wandb_workspaces'} & set(sys.modules), 'the dry run imported W&B'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    check_ok(proc)
    out = proc.stdout
    assert out.startswith('W&B report "cleanrl-mlx: MLX vs PyTorch" in E/cleanrl-mlx')
    for name in PAIRS:
        for env_id in env_ids_for(name):
            assert f"\nsection: {name} on {env_id}\n" in out
            assert f"Config('algo') == '{name}' and Config('env_id') == '{env_id}'" in out
            assert f'workspace view: "MLX vs torch: {name} on {env_id}"' in out
    assert out.count("group by: config.framework") == sum(len(env_ids_for(n)) for n in PAIRS)


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_each_section_has_the_algorithms_panels_and_filter(algo, capsys):
    assert dashboard.main(["--entity", "E", "--project", "P", "--algos", algo, "--env-ids", "X-v0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    (section,) = dashboard.build_sections([algo], ["X-v0"])
    assert (
        section.filters
        == f"Config('algo') == '{algo}' and Config('env_id') == 'X-v0' and Config('framework') in ['mlx', 'torch']"
    )
    expected = [
        'line "score vs steps": charts/episodic_return against global_step',
        'line "score vs wall-clock time": charts/episodic_return against RelativeTime(Wall)',
        "line charts/SPS against global_step",
        f'bar  "µs per env step (last logged)": {", ".join(TIMING_TAGS)}',
        *[f"line {tag} against global_step" for tag in loss_tags(algo)],
    ]
    panels = [line.strip() for line in out.split(f"section: {algo} on X-v0\n")[1].splitlines()[3:]]
    assert panels == expected
    assert {"ppo": "losses/clipfrac", "sac": "losses/alpha_loss"}[algo] in out and "in E/P" in out


def test_unknown_algorithm_and_missing_entity_stop_with_one_line(monkeypatch):
    with pytest.raises(SystemExit, match=r"^benchmark: unknown script 'nosuch'; pairs found: "):
        dashboard.main(["--entity", "E", "--algos", "ppo", "nosuch", "--dry-run"])
    env = {k: v for k, v in os.environ.items() if k != "WANDB_ENTITY"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.dashboard", "--algos", "ppo"], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "benchmark.dashboard: no W&B entity: pass --entity (your W&B user or team) or set WANDB_ENTITY"


def test_report_and_workspace_objects_carry_the_structure():
    """The wandb-workspaces objects (built offline; saving them is the only network step)."""
    pytest.importorskip("wandb_workspaces")
    from wandb_workspaces import expr

    sections = dashboard.build_sections(["ppo", "sac"], ["Pendulum-v1"])
    report = dashboard.build_report(sections, "E", "P", "T")
    grids = [b for b in report.blocks if type(b).__name__ == "PanelGrid"]
    headings = [b.text for b in report.blocks if type(b).__name__ == "H1"]
    assert (report.entity, report.project, report.title) == ("E", "P", "T")
    assert headings == ["ppo on Pendulum-v1", "sac on Pendulum-v1"] and len(grids) == 2
    for section, grid in zip(sections, grids):
        (runset,) = grid.runsets
        assert (runset.entity, runset.project, runset.filters, runset.groupby) == (
            "E",
            "P",
            section.filters,
            ["config.framework"],
        )
        parsed = expr.expr_to_filters(runset.filters).filters
        assert [(f.key.section, f.key.name, f.op, f.value) for f in parsed] == [
            ("config", "algo", "=", section.algo),
            ("config", "env_id", "=", "Pendulum-v1"),
            ("config", "framework", "IN", list(FRAMEWORKS)),
        ]
        assert [(p.title, tuple(getattr(p, "y", None) or p.metrics)) for p in grid.panels] == [
            (p.title, p.metrics) for p in section.panels
        ]
        assert all(
            p.groupby.name == "framework" and (p.groupby_aggfunc, p.groupby_rangefunc) == ("mean", "stddev") for p in grid.panels
        )
    view = dashboard.build_workspace(sections[1], "E", "P")
    assert view.name == "MLX vs torch: sac on Pendulum-v1" and view.runset_settings.filters == sections[1].filters
    assert [g.name for g in view.runset_settings.groupby] == ["framework"]
    (ws_section,) = view.sections
    assert len(ws_section.panels) == len(sections[1].panels) + 1  # + the machine text


def test_machine_text_names_hosts_versions_and_blas_per_framework():
    def run(fw, seed, **config):
        metadata = {"host": "box", "cpu": {"model": "AMD EPYC 7B13"}, "cpu_count": 2, "os": "Linux-6.1", "python": "3.11.7"}
        return SimpleNamespace(config={"framework": fw, "seed": seed, **config}, metadata=metadata)

    runs = [run("mlx", s, device="cpu", blas="openblas") for s in (10, 2)] + [run("torch", 1, cuda=False)]
    text = dashboard.machine_text(runs, version=lambda r, package: {"mlx": "0.32.4", "torch": "2.13.0"}[package])
    mlx_line, torch_line = text.splitlines()
    assert mlx_line.startswith("- **mlx** (2 runs, seeds 2, 10): mlx 0.32.4; host box, CPU AMD EPYC 7B13, 2 cores")
    assert mlx_line.endswith("Linux-6.1, Python 3.11.7; device cpu, BLAS openblas")
    assert torch_line.startswith("- **torch** (1 runs, seeds 1): torch 2.13.0;") and torch_line.endswith("; CUDA False")
    assert "No runs" in dashboard.machine_text([])


# ---------------------------------------------------------------- TensorBoard


def custom_scalars_plugin(logdir):
    """TensorBoard's custom scalars plugin over logdir, as `tensorboard --logdir` serves it."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.custom_scalar.custom_scalars_plugin import CustomScalarsPlugin
    from tensorboard.plugins.scalar.scalars_plugin import ScalarsPlugin

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    plugins = {}
    tb = base_plugin.TBContext(
        logdir=str(logdir),
        data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)),
        multiplexer=mux,
        plugin_name_to_instance=plugins,
    )
    plugins["scalars"] = ScalarsPlugin(tb)
    return CustomScalarsPlugin(tb), context.RequestContext(), mux


def test_tensorboard_page_shows_both_twins_on_the_same_charts(tmp_path):
    """Two tiny PPO runs (MLX, torch) in one logdir: separately named runs, each hyperparameters text naming its
    framework; the layout file parses as the plugin reads it and every chart's regex matches a tag of both runs."""
    for fw in FRAMEWORKS:
        check_ok(run_script("ppo", fw, "--total-timesteps", "512", "--num-envs", "2", "--num-steps", "64", cwd=tmp_path))
    logdir = tmp_path / "runs"
    twins = {fw: d.name for d in run_dirs(tmp_path) for fw in FRAMEWORKS if f"__ppo_{fw}__" in d.name}
    assert len(twins) == 2 and len(run_dirs(tmp_path)) == 2
    assert tblayout.main(["--logdir", str(logdir)]) == 0
    assert tblayout.main(["--logdir", str(logdir)]) == 0  # again: the new layout replaces the old one
    assert len(list(logdir.glob(f"events.out.tfevents.*{tblayout.LAYOUT_SUFFIX}"))) == 1

    plugin, ctx, mux = custom_scalars_plugin(logdir)
    assert mux.PluginRunToTagToContent("custom_scalars") == {".": {"custom_scalars__config__": b""}}
    (category,) = json.loads(plugin.layout_impl(ctx, ""))["category"]  # the JSON the dashboard receives
    assert category["title"] == "ppo: MLX vs torch"
    titles = [chart["title"] for chart in category["chart"]]
    assert titles == ["charts/episodic_return", "charts/SPS", *TIMING_TAGS, *loss_tags("ppo")]
    for chart in category["chart"]:
        (regex,) = chart["multiline"]["tag"]
        for fw, run in twins.items():
            matched = plugin.scalars_impl(ctx, run, regex, "")["tag_to_events"]
            assert list(matched) == [chart["title"]] and matched[chart["title"]], f"{regex} matches nothing in the {fw} run"
    for fw, run in twins.items():
        (text,) = mux.Tensors(run, "hyperparameters/text_summary")
        assert f"|framework|{fw}|" in text.tensor_proto.string_val[0].decode()
    assert tblayout.charts_for("not_a_pair")[-1] == ("losses", ["^losses/"])  # unknown pair: all its losses on one chart
