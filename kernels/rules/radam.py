"""RAdam (Liu et al. 2020) for the Triton kernels: csrc/include/fusedopt/rules/
radam.h mirrored name for name (Note [the rule interface] in
csrc/include/fusedopt/core/rule.h). A change to one is a change to both; both
are tested against fusedopt.reference.radam.

Bytes per element (fp32 params): read p, g, m, v, write p, m, v: 28 B; a
GradScaler's unscaled grad written back +4 B.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from fusedopt.kernels.rules.common import (
    l2_coefficient,
    lerp_like_torch,
    param_decay,
    param_decay_device,
    pow_device,
    sqrt,
)

# State: indices into the kernels' state tuple, in kStateNames' order.
EXP_AVG = tl.constexpr(0)
EXP_AVG_SQ = tl.constexpr(1)
STATE_NAMES = ("exp_avg", "exp_avg_sq")
HAS_STEP = True
# Both states at every step: the state masks tests/triton_aot.py compiles.
STATE_SETS = (0b11,)
# kRhoThreshold: torch's `rho_t > 5.0` switch to the rectified step.
RHO_THRESHOLD = tl.constexpr(5.0)


class Config(NamedTuple):
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    lr_max: float
    wd_mode: int
    maximize: bool


def config(hyper: Mapping[str, Any]) -> Config:
    """From the op's hyperparameters (fusedopt.registry.RULES["radam"].hyper); the
    floats as floats (an int 0 would reach the kernels as an int argument)."""
    return Config(
        float(hyper["beta1"]),
        float(hyper["beta2"]),
        float(hyper["eps"]),
        float(hyper["weight_decay"]),
        float(hyper["lr_max"]),
        int(hyper["weight_decay_mode"]),
        bool(hyper["maximize"]),
    )


def state_used(k: int, c: Config) -> bool:
    return True


class Launch(NamedTuple):
    """fp32 in the kernels: 1 - beta1 and 1 - beta2 formed in double and rounded
    once, as torch passes them as Python floats."""

    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    eps: float
    l2: float  # wd for WD_L2, else 0
    grad_sign: float  # -1 with maximize, else 1: an exact multiply


def launch(c: Config) -> Launch:
    return Launch(
        1.0 - c.beta1,
        c.beta2,
        1.0 - c.beta2,
        c.eps,
        l2_coefficient(c.wd_mode, c.weight_decay),
        -1.0 if c.maximize else 1.0,
    )


class PerTensor(NamedTuple):
    neg_step_size: float  # -lr / (1 - beta1^t)
    bias_correction2_sqrt: float  # sqrt(1 - beta2^t)
    rect: float  # r_t when rho_t > RHO_THRESHOLD, else 0 (un-rectified)
    param_decay: float  # multiplier of p before the update


def _rect_squared(rho_t, rho_inf):
    return (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)


def per_tensor(c: Config, lr: float, step) -> PerTensor:
    """In double, on the host: `step` (the count after this step's increment)
    is a float, or a float64 tensor of every tensor's count. rho_t in torch's
    order: rho_inf - ((2 t) beta2^t) / (1 - beta2^t)."""
    bias_correction1 = 1.0 - c.beta1**step
    bias_correction2 = 1.0 - c.beta2**step
    rho_inf = 2.0 / (1.0 - c.beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * c.beta2**step / bias_correction2
    if isinstance(step, torch.Tensor):
        rectified = rho_t > RHO_THRESHOLD.value
        # Where not rectified the square may be negative or divide by 0: not selected.
        rect = torch.where(rectified, sqrt(_rect_squared(rho_t, rho_inf)), 0.0)
    else:
        rect = sqrt(_rect_squared(rho_t, rho_inf)) if rho_t > RHO_THRESHOLD.value else 0.0
    return PerTensor(
        -(lr / bias_correction1),
        sqrt(bias_correction2),
        rect,
        param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max),
    )


@triton.jit
def per_tensor_device(c, lr, step):
    """per_tensor in float64 on the device (the prologue kernel): `c` is the
    Config in float64, lr a scalar, step a block of counts."""
    bias_correction1 = 1.0 - pow_device(c.beta1, step)
    beta2_t = pow_device(c.beta2, step)
    bias_correction2 = 1.0 - beta2_t
    rho_inf = 2.0 / (1.0 - c.beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2_t / bias_correction2
    rect_squared = (rho_t - 4.0) * (rho_t - 2.0) * rho_inf
    rect_squared = rect_squared / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
    rect = tl.where(rho_t > RHO_THRESHOLD, tl.sqrt(rect_squared), 0.0)
    return PerTensor(
        (-(lr / bias_correction1)).to(tl.float32),
        tl.sqrt(bias_correction2).to(tl.float32),
        rect.to(tl.float32),
        param_decay_device(c.wd_mode, c.weight_decay, lr, c.lr_max).to(tl.float32),
    )


@triton.jit
def update(p, g, s, USED: tl.constexpr, h, t):
    """One block of elements, all fp32: returns (p, s). Division and sqrt are
    the correctly rounded ones, as in C++ and torch; `t.rect` selects the
    rectified or the un-rectified step (a per-tensor value: no branch)."""
    g = g * h.grad_sign
    if h.l2 != 0.0:
        g = g + h.l2 * p
    p = p * t.param_decay
    m = lerp_like_torch(s[EXP_AVG], g, h.one_minus_beta1)
    v = s[EXP_AVG_SQ] * h.beta2 + h.one_minus_beta2 * g * g
    step = m * t.neg_step_size
    # torch's float / tensor is reciprocal() times the float (Tensor.__rtruediv__).
    adaptive = tl.div_rn(1.0, tl.sqrt_rn(v) + h.eps) * t.bias_correction2_sqrt
    p = p + tl.where(t.rect != 0.0, step * adaptive * t.rect, step)
    return p, (m, v)
