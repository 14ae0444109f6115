"""What a benchmark ran on: CPU, cores, OS, Python and the versions of the frameworks."""

import os
import platform
import re
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata


def cpu_model() -> str:
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True).stdout.strip()
        except OSError:
            pass
    return platform.processor() or platform.machine()


def simd() -> str:
    """The widest vector instructions the CPU has (Linux; '' elsewhere): MLX's and torch's kernels, and so their
    ratio, depend on it (ppo's MLX/torch ratio: 2.39 on an AVX-512 VM, issue21-s11-ppo-6seeds; 3.02 on an AVX2 one,
    avx2-ppo-a2c)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith(("flags", "Features"))), [])
    except OSError:
        return ""
    return next(
        (name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("asimd", "NEON")) if flag in flags),
        "",
    )


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


@lru_cache(maxsize=None)
def torch_blas() -> str:
    """The BLAS torch's build multiplies with on the CPU (`BLAS_INFO` of its build config: mkl for the x86 wheels),
    asked of a fresh interpreter so that the caller never imports torch; "" where torch is missing or does not say.
    The MLX scripts name theirs (the system OpenBLAS on Linux) in their startup line."""
    code = "import torch; print(torch.__config__.show())"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    found = re.search(r"\bBLAS_INFO=(\w+)", out)
    return found.group(1) if found else ""


def machine_info() -> dict:
    """Read without importing mlx or torch (cheap enough to record with every run)."""
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "simd": simd(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "mlx": version("mlx"),
        "torch": version("torch"),
        "gymnasium": version("gymnasium"),
        "numpy": version("numpy"),
    }


def cpu_label(info: dict) -> str:
    """The CPU's name with its vector unit where it was recorded: `AMD EPYC (AVX2)`."""
    return f"{info['cpu']} ({info['simd']})" if info.get("simd") else info["cpu"]


def join_cpus(labels) -> str:
    """Distinct CPU labels, `; `-joined; a bare name (vector unit not recorded) is left out where another label names
    the same CPU with its vector unit."""
    labels = set(labels)
    return "; ".join(sorted(la for la in labels if not any(other.startswith(f"{la} (") for other in labels)))


def describe(info: dict) -> str:
    """One line naming the machine and the versions."""
    return (
        f"{cpu_label(info)}, {info['cores']} cores, {info['os']}; Python {info['python']}, mlx {info['mlx']}, "
        f"torch {info['torch']}, gymnasium {info['gymnasium']}"
    )


def peak_rss_mb(pid="self"):
    """Peak resident memory (MB) of a live process, from VmHWM in /proc/<pid>/status (Linux); None where
    that cannot be read. Not getrusage's ru_maxrss: Linux carries it over from the parent across fork
    and exec, so a child started by a big process (a test runner) reports at least the parent's size."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None
