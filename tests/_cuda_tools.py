"""Helpers of the CUDA tests that need no GPU: the built library, and the
cuobjdump that ships in triton's wheel (the CUDA 13.0 toolkit on this
project's machines has none)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import fusedopt._C
import torch

SO_PATH = Path(fusedopt._C.__file__)
REPO = Path(__file__).resolve().parents[1]


def cuda_build_expected() -> bool:
    """What FUSEDOPT_CUDA=auto must have decided on this machine."""
    return shutil.which("nvcc") is not None and torch.version.cuda is not None


def cuobjdump() -> str:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    assert tool.is_file(), f"triton's wheel should bundle cuobjdump at {tool}"
    return str(tool)


def run_cuobjdump(*args: str) -> str:
    return subprocess.run(
        [cuobjdump(), *args, str(SO_PATH)], check=True, capture_output=True, text=True
    ).stdout
