"""Adagrad (Duchi, Hazan & Singer 2011) in torch.optim.Adagrad's form, for the
Triton kernels: csrc/include/fusedopt/rules/adagrad.h mirrored name for name
(Note [the rule interface] in csrc/include/fusedopt/core/rule.h). Tested
against fusedopt.reference.adagrad, like the C++ one.

Bytes per element (fp32 params): read p, g, sum, write p, sum: 20 B; a
GradScaler's unscaled grad written back +4 B.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import triton
import triton.language as tl
from fusedopt.kernels.rules.common import (
    l2_coefficient,
    param_decay,
    param_decay_device,
)

# State: indices into the kernels' state tuple, in kStateNames' order.
SUM = tl.constexpr(0)
STATE_NAMES = ("sum",)
HAS_STEP = True
# `sum` is always used: the state masks tests/triton_aot.py compiles.
STATE_SETS = (0b1,)


class Config(NamedTuple):
    lr_decay: float
    eps: float
    weight_decay: float
    lr_max: float
    wd_mode: int
    maximize: bool


def config(hyper: Mapping[str, Any]) -> Config:
    """From the op's hyperparameters (fusedopt.registry.RULES["adagrad"].hyper);
    the floats as floats (an int 0 would reach the kernels as an int argument)."""
    return Config(
        float(hyper["lr_decay"]),
        float(hyper["eps"]),
        float(hyper["weight_decay"]),
        float(hyper["lr_max"]),
        int(hyper["weight_decay_mode"]),
        bool(hyper["maximize"]),
    )


def state_used(k: int, c: Config) -> bool:
    return True


class Launch(NamedTuple):
    eps: float
    l2: float  # wd for WD_L2, else 0
    grad_sign: float  # -1 with maximize, else 1: an exact multiply


def launch(c: Config) -> Launch:
    return Launch(c.eps, l2_coefficient(c.wd_mode, c.weight_decay), -1.0 if c.maximize else 1.0)


class PerTensor(NamedTuple):
    neg_clr: float  # -lr / (1 + (t - 1) * lr_decay), as torch's `value=-clr`
    param_decay: float  # multiplier of p before the update


def per_tensor(c: Config, lr: float, step) -> PerTensor:
    """In double, on the host: `step` (the count after this step's increment)
    is a float, or a float64 tensor of every tensor's count."""
    clr = lr / (1.0 + (step - 1.0) * c.lr_decay)
    return PerTensor(-clr, param_decay(c.wd_mode, c.weight_decay, clr, c.lr_max))


@triton.jit
def per_tensor_device(c, lr, step):
    """per_tensor in float64 on the device (the prologue kernel): `c` is the
    Config in float64, lr a scalar, step a block of counts."""
    clr = lr / (1.0 + (step - 1.0) * c.lr_decay)
    return PerTensor(
        (-clr).to(tl.float32),
        param_decay_device(c.wd_mode, c.weight_decay, clr, c.lr_max).to(tl.float32),
    )


@triton.jit
def update(p, g, s, USED: tl.constexpr, h, t):
    """One block of elements, all fp32: returns (p, s). Division and sqrt are
    the correctly rounded ones, as in C++ and torch."""
    g = g * h.grad_sign
    if h.l2 != 0.0:
        g = g + h.l2 * p
    p = p * t.param_decay
    total = s[SUM] + g * g
    denom = tl.sqrt_rn(total) + h.eps
    p = p + tl.div_rn(t.neg_clr * g, denom)
    return p, (total,)
