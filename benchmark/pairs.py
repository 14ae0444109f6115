"""Where the script pairs live: discover them, name their files, import one as a module.

A pair is `cleanrl_mlx/<name>_mlx.py` with its twin `cleanrl_torch_reference/<name>_torch.py`. The
runner, the report, the micro-benchmarks, the docs generator and the tests all find scripts (and the
results folder) through here.
"""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("mlx", "torch")
RESULTS_DIR = REPO / "benchmark" / "results"  # committed tables and plots, one folder per sweep
DEFAULT_DIRS = {"mlx": REPO / "cleanrl_mlx", "torch": REPO / "cleanrl_torch_reference"}


def script_path(name: str, framework: str, dirs=None) -> Path:
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r} (choose from {', '.join(FRAMEWORKS)})")
    return Path((dirs or DEFAULT_DIRS)[framework]) / f"{name}_{framework}.py"


def discover(dirs=None) -> list[str]:
    """Names of the complete pairs: every `<name>_mlx.py` that has a `<name>_torch.py` twin."""
    dirs = dirs or DEFAULT_DIRS
    names = (p.name[: -len("_mlx.py")] for p in Path(dirs["mlx"]).glob("*_mlx.py"))
    return sorted(n for n in names if script_path(n, "torch", dirs).is_file())


def check_scripts(names, dirs=None) -> None:
    """Raise SystemExit with one clear line for a name that is not a complete pair."""
    dirs = dirs or DEFAULT_DIRS
    pairs = discover(dirs)
    for name in names:
        if name in pairs:
            continue
        mlx, torch = script_path(name, "mlx", dirs), script_path(name, "torch", dirs)
        if mlx.is_file() or torch.is_file():
            have, missing = (mlx, torch) if mlx.is_file() else (torch, mlx)
            raise SystemExit(f"benchmark: {name!r} has no twin: {have} exists but {missing} does not")
        raise SystemExit(f"benchmark: unknown script {name!r}; pairs found: {', '.join(pairs) or 'none'}")


def load_script(name: str, framework: str, dirs=None):
    """Import a script as a module (its `if __name__ == "__main__"` block does not run)."""
    spec = importlib.util.spec_from_file_location(f"{name}_{framework}", script_path(name, framework, dirs))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_pair(name: str, dirs=None):
    """(MLX script, torch twin) as modules, each framework multiplying matrices with the BLAS it uses in its own process.
    The torch twin comes first: the MLX script loads the system OpenBLAS with RTLD_GLOBAL before it imports mlx, and a
    torch loaded after that binds its `sgemm_` to OpenBLAS instead of its own MKL (allo's micro-benchmark on an AVX-512
    Xeon: torch's hidden-layer matmul 7.6 ms that way, 5.2-5.6 ms on MKL). mlx still binds to OpenBLAS: torch's
    libraries are not in the global symbol scope."""
    torch = load_script(name, "torch", dirs)
    return load_script(name, "mlx", dirs), torch
