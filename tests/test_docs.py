"""The README, CONTRIBUTING.md and docs/: every relative link and image resolves inside the repository,
every pair has a docs page and a README row, and the generated results blocks match benchmark/results."""

import json
import re
from pathlib import Path

import pytest

from benchmark import docs
from benchmark.pairs import REPO, discover

PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) and ![alt](target); an optional "title" after the target is ignored
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^(https?|mailto):")


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links inside code blocks are not links
    return [t for t in LINK.findall(text) if not EXTERNAL.match(t) and not t.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_image_resolves_inside_the_repository(page):
    assert page.is_file(), f"{page} is missing"
    for target in relative_links(page):
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(REPO), f"{page.name}: {target} points outside the repository"
        assert path.exists(), f"{page.name}: {target} does not exist"


def test_the_link_checker_catches_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[ok](https://x.org) [a](missing.md#part) ![img](pics/a.png)\n```\n[not a link](nowhere)\n```\n")
    assert relative_links(page) == ["missing.md#part", "pics/a.png"]


@pytest.mark.parametrize("name", discover())
def test_every_pair_has_a_docs_page_and_a_readme_row(name):
    page = REPO / "docs" / f"{name}.md"
    assert page.is_file(), f"docs/{name}.md is missing"
    text = page.read_text()
    for heading in ("## Run it", "## Logged tags", "## Implementation details", "## MLX-specific choices", "## Results"):
        assert heading in text, f"docs/{name}.md has no '{heading}' section"
    rows = [line for line in (REPO / "README.md").read_text().splitlines() if f"(docs/{name}.md)" in line]
    assert any(f"(cleanrl_mlx/{name}_mlx.py)" in r and f"(cleanrl_torch_reference/{name}_torch.py)" in r for r in rows), (
        f"README.md has no scripts-table row for {name} linking its docs page and both twins"
    )
    assert f"({name}.md)" in (REPO / "docs" / "README.md").read_text(), f"docs/README.md does not list {name}"


def test_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) < 200


def test_generated_results_blocks_are_up_to_date(capsys):
    """No number is typed by hand: every results block is what `python -m benchmark.docs` writes."""
    assert docs.main(["--check"]) == 0, capsys.readouterr().out


def test_headline_picks_the_largest_budget_with_both_twins():
    rows = [
        {"script": "x", "env_id": "E", "variant": v, "total_timesteps": str(n), "folder": Path(f), "machine": {}}
        for f, n, variants in (("a", 100, ("mlx", "torch")), ("b", 500, ("mlx",)), ("c", 300, ("mlx", "torch")))
        for v in variants
    ]
    rows.insert(0, rows[-1] | {"script": "z", "folder": Path("b"), "total_timesteps": "500"})  # another pair's torch run
    mlx, torch = docs.headline(rows, "x")
    assert (mlx["folder"].name, torch["folder"].name, mlx["variant"], torch["variant"]) == ("c", "c", "mlx", "torch")
    assert docs.headline(rows, "y") is None and docs.steps_cell(mlx, torch) == "300"
    # twins of one sweep that stopped at different steps are a pair, ranked by the fewer steps, and the row says both
    stopped = [
        rows[-1] | {"folder": Path("d"), "total_timesteps": "250"},
        rows[-2] | {"folder": Path("d"), "total_timesteps": "900"},
    ]
    assert docs.headline(rows + stopped, "x")[0]["folder"].name == "c"
    stopped[0]["total_timesteps"] = "400"
    mlx, torch = docs.headline(rows + stopped, "x")
    assert mlx["folder"].name == torch["folder"].name == "d" and docs.steps_cell(mlx, torch) == "900 (MLX), 400 (torch)"


def test_a_returns_only_folder_gives_returns_but_no_sps(tmp_path):
    """Runs that shared the machine (benchmark.report --returns-only) show their returns in the docs, never their SPS."""
    for name, returns_only in (("quiet", False), ("shared", True)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "machine.json").write_text(json.dumps({"returns_only": returns_only}))
        (tmp_path / name / "results.csv").write_text("script,return_mean,sps_median,sps_ratio_vs_torch\nppo,490.0,9000,2.0\n")
    rows = {r["folder"].name: r for r in docs.load_results(tmp_path)}
    assert (rows["quiet"]["sps_median"], rows["quiet"]["sps_ratio_vs_torch"]) == ("9000", "2.0")
    assert (rows["shared"]["return_mean"], rows["shared"]["sps_median"], rows["shared"]["sps_ratio_vs_torch"]) == (
        "490.0",
        "",
        "",
    )


def test_headline_takes_the_speed_of_a_returns_only_row_from_a_quiet_run_on_the_same_machine(tmp_path):
    """The README's return comes from the largest run; when that folder shared the machine (no SPS), the MLX/torch
    ratio comes from the largest quiet run of the pair on the same CPU, cores and kernel, with a link to it; only
    where that machine has none, from another machine's, which the cell names; with no quiet run at all, blank."""
    here, elsewhere = {"cpu": "C", "cores": 2, "os": "k1"}, {"cpu": "D", "simd": "AVX-512", "cores": 2, "os": "k0"}
    rows = []
    for folder, steps, machine, ratio in (
        ("long", 500, here | {"returns_only": True}, ""),
        ("quiet", 100, here, "1.80"),
        ("old", 300, elsewhere, "2.40"),
    ):
        for v in ("mlx", "torch"):
            rows.append(
                {"script": "x", "env_id": "E", "variant": v, "total_timesteps": str(steps), "folder": tmp_path / folder}
                | {"machine": machine, "return_mean": "490", "sps_ratio_vs_torch": ratio if v == "mlx" else ""}
                | dict.fromkeys(("published_return", "published_std", "published_steps"), "")
            )
    (row,) = [line for line in docs.readme_block(rows, ["x"], tmp_path).splitlines() if line.startswith("| [x]")]
    assert "| 500 | 490.0 | 490.0 |" in row and "| 1.80 ([E, 100 steps](" in row and "quiet/results.md)) |" in row
    assert "2.40" not in row and "another machine" not in row
    without_quiet = [r for r in rows if r["folder"].name != "quiet"]
    (row,) = [line for line in docs.readme_block(without_quiet, ["x"], tmp_path).splitlines() if line.startswith("| [x]")]
    assert "| 2.40 ([E, 300 steps](" in row and "old/results.md), on another machine: D (AVX-512)) |" in row
    only_shared = [r for r in rows if r["folder"].name == "long"]
    (row,) = [line for line in docs.readme_block(only_shared, ["x"], tmp_path).splitlines() if line.startswith("| [x]")]
    assert "| 500 | 490.0 | 490.0 | – | – |" in row


def test_headline_takes_no_speed_from_a_sweep_whose_runs_overlapped(tmp_path):
    """A sweep run with --workers 2 measures each run beside another: the README's ratio comes from the one-at-a-time
    sweep instead, even when the overlapping one is newer or larger."""
    machine = {"cpu": "C", "cores": 2, "os": "k"}
    rows = []
    for folder, steps, extra, ratio in (("alone", 100, {}, "2.10"), ("parallel", 200, {"runs_at_once": 2}, "1.71")):
        for v in ("mlx", "torch"):
            rows.append(
                {"script": "x", "env_id": "E", "variant": v, "total_timesteps": str(steps), "folder": tmp_path / folder}
                | {"machine": machine | extra, "return_mean": "250", "sps_ratio_vs_torch": ratio if v == "mlx" else ""}
                | dict.fromkeys(("published_return", "published_std", "published_steps"), "")
            )
    (row,) = [line for line in docs.readme_block(rows, ["x"], tmp_path).splitlines() if line.startswith("| [x]")]
    assert "| 200 |" in row and "| 2.10 ([E, 100 steps](" in row and "1.71" not in row
