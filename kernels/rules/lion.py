"""Lion (Chen et al. 2023, Algorithm 2) with fusedopt's weight-decay modes,
for the Triton kernels: csrc/include/fusedopt/rules/lion.h mirrored name for
name (Note [the rule interface] in csrc/include/fusedopt/core/rule.h; Note
[Lion's sign of a sum] in the header). Tested against fusedopt.reference.lion,
like the C++ one.

Bytes per element (fp32 params): read p, g, m, write p, m: 20 B; a
GradScaler's unscaled grad written back +4 B.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import triton
import triton.language as tl
from fusedopt.kernels.rules.common import (
    l2_coefficient,
    mul_rn,
    param_decay,
    param_decay_device,
)

# State: indices into the kernels' state tuple, in kStateNames' order.
EXP_AVG = tl.constexpr(0)
STATE_NAMES = ("exp_avg",)
HAS_STEP = False  # no formula reads a count
# The one state at every step: the state mask tests/triton_aot.py compiles.
STATE_SETS = (0b1,)


class Config(NamedTuple):
    beta1: float
    beta2: float
    weight_decay: float
    lr_max: float
    wd_mode: int
    maximize: bool


def config(hyper: Mapping[str, Any]) -> Config:
    """From the op's hyperparameters (fusedopt.registry.RULES["lion"].hyper); the
    floats as floats (an int 0 would reach the kernels as an int argument)."""
    return Config(
        float(hyper["beta1"]),
        float(hyper["beta2"]),
        float(hyper["weight_decay"]),
        float(hyper["lr_max"]),
        int(hyper["weight_decay_mode"]),
        bool(hyper["maximize"]),
    )


def state_used(k: int, c: Config) -> bool:
    return True


class Launch(NamedTuple):
    """fp32 in the kernels; 1 - beta formed in double and rounded once."""

    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    l2: float  # wd for WD_L2, else 0
    grad_sign: float  # -1 with maximize, else 1: an exact multiply


def launch(c: Config) -> Launch:
    return Launch(
        c.beta1,
        1.0 - c.beta1,
        c.beta2,
        1.0 - c.beta2,
        l2_coefficient(c.wd_mode, c.weight_decay),
        -1.0 if c.maximize else 1.0,
    )


class PerTensor(NamedTuple):
    neg_lr: float  # -lr
    param_decay: float  # multiplier of p before the update


def per_tensor(c: Config, lr: float, step) -> PerTensor:
    """In double, on the host; Lion keeps no count, so `step` is unused."""
    return PerTensor(-lr, param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max))


@triton.jit
def per_tensor_device(c, lr, step):
    """per_tensor in float64 on the device (the prologue kernel)."""
    return PerTensor(
        (-lr).to(tl.float32),
        param_decay_device(c.wd_mode, c.weight_decay, lr, c.lr_max).to(tl.float32),
    )


@triton.jit
def sign_of_sum(x, y):
    """torch.sign(x + y) of the fp32 sum without forming it: nothing for fp
    fusion to contract (Note [Lion's sign of a sum])."""
    return tl.where(x > -y, 1.0, tl.where(x < -y, -1.0, 0.0))


@triton.jit
def update(p, g, s, USED: tl.constexpr, h, t):
    """One block of elements, all fp32: returns (p, s)."""
    g = g * h.grad_sign
    if h.l2 != 0.0:
        g = g + mul_rn(h.l2, p)
    p = p * t.param_decay
    m = s[EXP_AVG]
    # c = beta1 * m + (1 - beta1) * g
    sign_c = sign_of_sum(h.beta1 * m, h.one_minus_beta1 * g)
    p = p + t.neg_lr * sign_c
    m = mul_rn(h.beta2, m) + mul_rn(h.one_minus_beta2, g)
    return p, (m,)
