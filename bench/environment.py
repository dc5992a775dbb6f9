"""What a run records about the machine and software it ran on."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


def cpu_name() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (Linux) or :func:`platform.processor`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """The widest vector instruction set torch's CPU kernels use here (``torch.backends.cpu.
    get_cpu_capability()``: ``"AVX2"``, ``"AVX512"``, ...). Two machines whose :func:`cpu_name` is the
    same can differ in it (virtual machines report only the vendor's family, e.g. ``"AMD EPYC"``), and
    with it float32 rounding differs (other vector widths, other summation orders)."""
    return torch.backends.cpu.get_cpu_capability()


def same_rounding(recorded: dict[str, Any]) -> bool:
    """Whether this machine rounds float32 as the one ``recorded`` describes (an
    ``environment.json``): the same :func:`cpu_name` and the same :func:`cpu_capability`. A
    record without ``cpu_capability`` (runs before December 2026) cannot tell, and gives False."""
    return recorded.get("cpu") == cpu_name() and recorded.get("cpu_capability") == cpu_capability()


def git_commit(path: Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the git checkout holding ``path``.

    ``path`` defaults to the metabench source folder; ``None`` values mean "not a git checkout".
    """
    where = str(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return {"commit": sha, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, hardware and git state to store with a run (``environment.json``)."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_capability": cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }
    info.update(git_commit())
    return info
