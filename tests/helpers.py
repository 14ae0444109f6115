"""Shared test helpers: run a script as a user would, read what it logged, import it for parity tests."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmark.scripts import REPO, load_script, script_path  # noqa: F401 (shared with benchmark/; re-exported)
from benchmark.tbutil import read_scalars


def run_script(name, framework, *args, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run `<name>_<framework>.py args` in `cwd` (its runs/ lands there) with OMP_NUM_THREADS=1."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(
        [sys.executable, str(script_path(name, framework)), *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def run_dirs(cwd) -> list[Path]:
    """The run directories a script wrote under cwd/runs (evaluation writes none of its own)."""
    return sorted(p for p in (Path(cwd) / "runs").glob("*") if p.is_dir() and any(p.glob("events.out.tfevents.*")))


def scalars_of_single_run(cwd) -> dict[str, list[tuple[int, float]]]:
    dirs = run_dirs(cwd)
    assert len(dirs) == 1, f"expected one run directory, found {dirs}"
    return read_scalars(dirs[0])


def episodic_returns(scalars) -> np.ndarray:
    return np.array([v for _, v in scalars.get("charts/episodic_return", [])])


def torch_params_to_mlx(torch_module, mlx_module) -> None:
    """Give an MLX module the torch twin's weights (names match by design; copied through numpy)."""
    import mlx.core as mx

    weights = [(k, mx.array(v.detach().cpu().numpy())) for k, v in torch_module.state_dict().items()]
    mlx_module.load_weights(weights, strict=True)


def assert_close(mlx_value, torch_value, atol=1e-5, rtol=1e-5, what=""):
    a = np.asarray(mlx_value)
    b = torch_value.detach().cpu().numpy() if hasattr(torch_value, "detach") else np.asarray(torch_value)
    np.testing.assert_allclose(a, b, atol=atol, rtol=rtol, err_msg=what)
