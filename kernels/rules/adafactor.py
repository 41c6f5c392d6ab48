"""Adafactor (Shazeer & Stern 2018) in torch.optim.Adafactor's form, with
transformers' options, for the Triton kernels: the math of
csrc/include/fusedopt/rules/adafactor.h mirrored name for name. A reduction
rule (Note [reduction rules] in fusedopt/registry.py): its passes are
kernels/factored.py's. Tested against fusedopt.reference.adafactor.

The per-tensor scalars are float64 tensor expressions on the params' device
(from device-held counts and the passes' sums: no host sync); the element
math is @triton.jit on fp32 blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from fusedopt.kernels.rules.common import lerp_like_torch

STATE_NAMES = ("row_var", "col_var", "variance", "exp_avg")
HAS_STEP = True
# transformers' warm-up of the relative step: rho = min(1e-6 t, 1/sqrt(t)).
WARMUP_RATE = 1e-6


class Config(NamedTuple):
    beta2_decay: float
    eps1: float  # < 0: the param dtype's machine epsilon (torch's None)
    eps2: float
    d: float
    weight_decay: float
    beta1: float
    first_moment: bool
    relative_step: bool
    warmup_init: bool
    scale_parameter: bool
    maximize: bool


def config(hyper: Mapping[str, Any]) -> Config:
    """From the op's hyperparameters (REDUCTION_RULES["adafactor"].hyper)."""
    return Config(
        float(hyper["beta2_decay"]),
        float(hyper["eps1"]),
        float(hyper["eps2"]),
        float(hyper["d"]),
        float(hyper["weight_decay"]),
        float(hyper["beta1"]),
        bool(hyper["first_moment"]),
        bool(hyper["relative_step"]),
        bool(hyper["warmup_init"]),
        bool(hyper["scale_parameter"]),
        bool(hyper["maximize"]),
    )


def state_used(k: int, c: Config) -> bool:
    return k != STATE_NAMES.index("exp_avg") or c.first_moment


def eps1_of(c: Config, dtype_eps: float) -> float:
    return dtype_eps if c.eps1 < 0.0 else c.eps1


def ema_weight(c: Config, step: torch.Tensor) -> torch.Tensor:
    """1 - beta2_t = t^beta2_decay (float64, `step` the count after this step)."""
    return step**c.beta2_decay


def alpha(c: Config, lr, step: torch.Tensor, param_sq: torch.Tensor, numel: int):
    """alpha = max(eps2, RMS(p)) rho (rho alone without scale_parameter)."""
    # A float lr becomes a device tensor by a fill, not a copy (a host-to-device
    # copy of a pageable scalar would synchronize).
    lr_t = lr.to(step) if isinstance(lr, torch.Tensor) else torch.full_like(step, lr)
    if not c.relative_step:
        rho = lr_t
    else:
        cap = WARMUP_RATE * step if c.warmup_init else lr_t
        rho = torch.minimum(cap, 1.0 / step.sqrt())
    if not c.scale_parameter:
        return rho
    rms = param_sq.sqrt() / numel**0.5
    # fmax: a NaN RMS gives eps2, as C++ std::fmax and Python's max(eps2, nan).
    return torch.fmax(torch.full_like(rms, c.eps2), rms) * rho


def step_size(c: Config, alpha_t: torch.Tensor, update_sq: torch.Tensor, numel: int):
    """s = alpha / max(1, RMS(U) / d)."""
    rms = update_sq.sqrt() / (numel**0.5 * c.d)
    return alpha_t / torch.fmax(torch.ones_like(rms), rms)


def param_decay(c: Config, lr) -> float | torch.Tensor:
    """1 - lr * wd (torch decays by the group's lr)."""
    return 1.0 - lr * c.weight_decay if c.weight_decay != 0.0 else 1.0


@triton.jit
def ema(old, mean, w):
    """R or C from the mean of g^2 over a row or column, as torch's lerp_."""
    return lerp_like_torch(old, mean, w)


@triton.jit
def row_mean_floor(mean_row, eps1):
    """max(mean(R), eps1), NaN kept (torch's clamp_)."""
    return tl.where(mean_row < eps1, eps1, mean_row)


@triton.jit
def factored_variance(row, col, row_mean):
    """V of a factored param: R_i C_j / max(mean(R), eps1)."""
    return tl.div_rn(row * col, row_mean)


@triton.jit
def vector_variance(variance, g, w):
    """V of a vector: the EMA of g^2."""
    return lerp_like_torch(variance, g * g, w)


@triton.jit
def raw_update(g, v, eps1_sq):
    """U = rsqrt(max(V, eps1^2)) g, as torch's clamp_, rsqrt_, mul_."""
    floored = tl.where(v < eps1_sq, eps1_sq, v)
    return tl.div_rn(1.0, tl.sqrt_rn(floored)) * g


@triton.jit
def apply(p, u, m, FIRST_MOMENT: tl.constexpr, param_decay, step_size, beta1, one_minus_beta1):
    """(p after this step, m): p (1 - lr wd) - (first_moment ? m : s U)."""
    step = step_size * u
    if FIRST_MOMENT:
        m = m * beta1 + step * one_minus_beta1
        step = m
    return p * param_decay - step, m
