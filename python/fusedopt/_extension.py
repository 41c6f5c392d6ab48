"""Loads the compiled extension fusedopt._C, or records why it is absent.

The package works without it (the Triton and reference backends are pure
Python); report() and the first optimizer that would have used it say so.

_C links torch's C++ libraries, whose ABI changes from one torch version to
the next: it loads only into the torch it was compiled against. The build
records that torch's version in fusedopt._build (a torch-free module built
beside _C, csrc/build_info.cpp); under any other torch, _C is not loaded at
all (loading it could crash, or fail later in ways that do not name the
cause), and the error says how to rebuild.
"""

from __future__ import annotations

import warnings
from types import ModuleType

# Loads libc10 / libtorch (and libc10_cuda) before _C, which links them: _C's
# RPATH finds them only when torch sits in the same site-packages.
import torch

REBUILD = "`pip install . --no-build-isolation` from fusedopt's source"


def load(torch_version: str) -> tuple[ModuleType | None, str | None]:
    """(fusedopt._C, None) if it is built for torch `torch_version`, else
    (None, why not and how to rebuild)."""
    try:
        from fusedopt import _build
    except ImportError as error:  # a source checkout without a build, or a broken build
        return None, f"fusedopt._C is not built ({error}); build it with {REBUILD}"
    if _build.torch_version != torch_version:
        return None, (
            f"fusedopt._C was built against torch {_build.torch_version}, but this is torch "
            f"{torch_version}; a compiled extension loads only into the torch it was built "
            f"against. Rebuild it in this environment (the one with torch {torch_version}) "
            f"with {REBUILD}"
        )
    try:
        from fusedopt import _C  # registers torch.ops.fusedopt.*
    except ImportError as error:
        return None, f"fusedopt._C could not be imported ({error}); rebuild it with {REBUILD}"
    return _C, None


_C, LOAD_ERROR = load(str(torch.__version__))

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
