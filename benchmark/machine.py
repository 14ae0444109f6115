"""What a benchmark ran on: CPU, cores, OS, Python and the versions of the frameworks."""

import os
import platform
import socket
import subprocess
import sys
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


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict:
    """Read without importing mlx or torch (cheap enough to record with every run)."""
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "mlx": version("mlx"),
        "torch": version("torch"),
        "gymnasium": version("gymnasium"),
        "numpy": version("numpy"),
    }


def describe(info: dict) -> str:
    """One line naming the machine and the versions."""
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['os']}; Python {info['python']}, mlx {info['mlx']}, "
        f"torch {info['torch']}, gymnasium {info['gymnasium']}"
    )
