"""Adamax (Kingma & Ba 2015, Algorithm 2) for the Triton kernels:
csrc/include/fusedopt/rules/adamax.h mirrored name for name (Note [the rule
interface] in csrc/include/fusedopt/core/rule.h). A change to one is a change
to both; both are tested against fusedopt.reference.adamax.

Bytes per element (fp32 params): read p, g, m, u, write p, m, u: 28 B; a
GradScaler's unscaled grad written back +4 B.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import triton
import triton.language as tl
from fusedopt.kernels.rules.common import (
    l2_coefficient,
    lerp_like_torch,
    max_propagate_nan,
    param_decay,
    param_decay_device,
    pow_device,
)

# State: indices into the kernels' state tuple, in kStateNames' order.
EXP_AVG = tl.constexpr(0)
EXP_INF = tl.constexpr(1)
STATE_NAMES = ("exp_avg", "exp_inf")
HAS_STEP = True
# Both states at every step: the state masks tests/triton_aot.py compiles.
STATE_SETS = (0b11,)


class Config(NamedTuple):
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    lr_max: float
    wd_mode: int
    maximize: bool


def config(hyper: Mapping[str, Any]) -> Config:
    """From the op's hyperparameters (fusedopt.registry.RULES["adamax"].hyper); the
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
    """fp32 in the kernels: 1 - beta1 formed in double and rounded once, as torch
    passes it to `lerp_`."""

    one_minus_beta1: float
    beta2: float
    eps: float
    l2: float  # wd for WD_L2, else 0
    grad_sign: float  # -1 with maximize, else 1: an exact multiply


def launch(c: Config) -> Launch:
    return Launch(
        1.0 - c.beta1,
        c.beta2,
        c.eps,
        l2_coefficient(c.wd_mode, c.weight_decay),
        -1.0 if c.maximize else 1.0,
    )


class PerTensor(NamedTuple):
    neg_step_size: float  # -lr / (1 - beta1^t): torch's `-clr`
    param_decay: float  # multiplier of p before the update


def per_tensor(c: Config, lr: float, step) -> PerTensor:
    """In double, on the host: `step` (the count after this step's increment)
    is a float, or a float64 tensor of every tensor's count."""
    bias_correction = 1.0 - c.beta1**step
    return PerTensor(-(lr / bias_correction), param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max))


@triton.jit
def per_tensor_device(c, lr, step):
    """per_tensor in float64 on the device (the prologue kernel): `c` is the
    Config in float64, lr a scalar, step a block of counts."""
    bias_correction = 1.0 - pow_device(c.beta1, step)
    return PerTensor(
        (-(lr / bias_correction)).to(tl.float32),
        param_decay_device(c.wd_mode, c.weight_decay, lr, c.lr_max).to(tl.float32),
    )


@triton.jit
def update(p, g, s, USED: tl.constexpr, h, t):
    """One block of elements, all fp32: returns (p, s). The infinity norm's max
    propagates NaN from either side, as torch.maximum; the division is the
    correctly rounded one, as in C++ and torch."""
    g = g * h.grad_sign
    if h.l2 != 0.0:
        g = g + h.l2 * p
    p = p * t.param_decay
    m = lerp_like_torch(s[EXP_AVG], g, h.one_minus_beta1)
    u = max_propagate_nan(s[EXP_INF] * h.beta2, tl.abs(g) + h.eps)
    p = p + tl.div_rn(t.neg_step_size * m, u)
    return p, (m, u)
