"""What a benchmark's CSV records beside its numbers: where, when, with what,
and how it was asked for (STYLE.md: benchmarks record provenance)."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
from pathlib import Path

import torch

import fusedopt


def run_text(args: list[str], cwd: Path | None = None) -> str:
    """A command's stdout, or "unknown" when it cannot run or fails."""
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def git_rev() -> str:
    """The commit of the fusedopt source that runs: its package folder's
    checkout (a dev build, PYTHONPATH=python), else the checkout the command
    runs in (an installed wheel run from a clone); "(uncommitted changes)"
    when tracked files differ from it."""
    for where in (Path(fusedopt.__file__).parent, Path.cwd()):
        sha = run_text(["git", "-C", str(where), "rev-parse", "--short", "HEAD"])
        if sha != "unknown":
            dirty = run_text(["git", "-C", str(where), "status", "--porcelain", "-uno"])
            return f"{sha} (uncommitted changes)" if dirty not in ("", "unknown") else sha
    return "unknown (not run from a git checkout)"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def provenance(argv: list[str]) -> dict[str, str]:
    """The CSV's provenance columns (the same on every row); `argv`: the
    command line's arguments, after the program's name."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_rev": git_rev(),
        "fusedopt": fusedopt.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "fusedopt_cpu_isa": str(fusedopt._extension.cpu_isa()),
        "command": shlex.join(["fusedopt-bench", *argv]),
    }
