"""Rprop (Riedmiller & Braun 1993) in torch.optim.Rprop's form, for the Triton
kernels: csrc/include/fusedopt/rules/rprop.h mirrored name for name (Note [the
rule interface] in csrc/include/fusedopt/core/rule.h). Tested against
fusedopt.reference.rprop, like the C++ one.

Bytes per element (fp32 params): read p, g, prev, step_size, write p, prev,
step_size: 28 B; a GradScaler's unscaled grad written back +4 B.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import triton
import triton.language as tl
from fusedopt.kernels.rules.common import sign_like_torch

# State: indices into the kernels' state tuple, in kStateNames' order.
PREV = tl.constexpr(0)
STEP_SIZE = tl.constexpr(1)
STATE_NAMES = ("prev", "step_size")
HAS_STEP = True  # torch keeps a count; no formula reads it
# Both states at every step: the state mask tests/triton_aot.py compiles.
STATE_SETS = (0b11,)


class Config(NamedTuple):
    etaminus: float
    etaplus: float
    step_size_min: float
    step_size_max: float
    maximize: bool


def config(hyper: Mapping[str, Any]) -> Config:
    """From the op's hyperparameters (fusedopt.registry.RULES["rprop"].hyper)."""
    return Config(
        float(hyper["etaminus"]),
        float(hyper["etaplus"]),
        float(hyper["step_size_min"]),
        float(hyper["step_size_max"]),
        bool(hyper["maximize"]),
    )


def state_used(k: int, c: Config) -> bool:
    return True


class Launch(NamedTuple):
    """fp32 in the kernels, as torch stores and compares them in the states' dtype."""

    etaminus: float
    etaplus: float
    step_size_min: float
    step_size_max: float
    grad_sign: float  # -1 with maximize, else 1: an exact multiply


def launch(c: Config) -> Launch:
    return Launch(
        c.etaminus, c.etaplus, c.step_size_min, c.step_size_max, -1.0 if c.maximize else 1.0
    )


class PerTensor(NamedTuple):
    """Nothing depends on the lr or the count."""


def per_tensor(c: Config, lr: float, step) -> PerTensor:
    return PerTensor()


@triton.jit
def per_tensor_device(c, lr, step):
    return PerTensor()


@triton.jit
def clamp_like_torch(x, lo, hi):
    """torch.clamp: NaN stays NaN, and min > max gives max."""
    x = tl.where(x < lo, lo, x)
    return tl.where(x > hi, hi, x)


@triton.jit
def update(p, g, s, USED: tl.constexpr, h, t):
    """One block of elements, all fp32: returns (p, s)."""
    g = g * h.grad_sign
    prev = s[PREV]
    step_size = s[STEP_SIZE]
    sign = sign_like_torch(g * prev)
    factor = tl.where(sign > 0.0, h.etaplus, tl.where(sign < 0.0, h.etaminus, 1.0))
    step_size = clamp_like_torch(step_size * factor, h.step_size_min, h.step_size_max)
    g = tl.where(factor == h.etaminus, 0.0, g)
    p = p + -sign_like_torch(g) * step_size
    return p, (g, step_size)
