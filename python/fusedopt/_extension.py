"""Loads the compiled extension fusedopt._C, or records why it is absent.

The package works without it (the Triton and reference backends are pure
Python); report() and the first optimizer that would have used it say so.
"""

from __future__ import annotations

import warnings

# Loads libc10 / libtorch (and libc10_cuda) before _C, which links them: _C's
# RPATH finds them only when torch sits in the same site-packages.
import torch  # noqa: F401

try:
    from fusedopt import _C  # registers torch.ops.fusedopt.*

    LOAD_ERROR: str | None = None
except ImportError as error:  # a source checkout without a build, or a broken build
    _C = None
    LOAD_ERROR = (
        f"fusedopt._C could not be imported ({error}); build it with "
        "`pip install . --no-build-isolation`"
    )

_warned = False


def loaded() -> bool:
    return _C is not None


def warn_once_if_missing() -> None:
    """Say once, clearly, that the C++/CUDA backends are unavailable."""
    global _warned
    if _C is None and not _warned:
        _warned = True
        warnings.warn(LOAD_ERROR, RuntimeWarning, stacklevel=3)


def cpu_isa() -> str | None:
    return _C.cpu_isa if _C is not None else None


def cuda_built() -> bool:
    return bool(_C is not None and _C.cuda_built)


def cuda_archs() -> str:
    return _C.cuda_archs if _C is not None else ""


def check_hyper(rule: str, lr: float, hyper: list[float]) -> None:
    """fusedopt._C.check_hyper (csrc/binding/register.cpp); needs loaded()."""
    _C.check_hyper(rule, lr, hyper)
