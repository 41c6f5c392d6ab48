"""Adadelta (Zeiler 2012) in torch.optim.Adadelta's form, for the Triton
kernels: csrc/include/fusedopt/rules/adadelta.h mirrored name for name (Note
[the rule interface] in csrc/include/fusedopt/core/rule.h). Tested against
fusedopt.reference.adadelta, like the C++ one.

Bytes per element (fp32 params): read p, g, square_avg, acc_delta, write p
and the two states: 28 B; a GradScaler's unscaled grad written back +4 B.
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
SQUARE_AVG = tl.constexpr(0)
ACC_DELTA = tl.constexpr(1)
STATE_NAMES = ("square_avg", "acc_delta")
HAS_STEP = True  # torch keeps a count; the update does not read it
# Both states always: the state masks tests/triton_aot.py compiles.
STATE_SETS = (0b11,)


class Config(NamedTuple):
    rho: float
    eps: float
    weight_decay: float
    lr_max: float
    wd_mode: int
    maximize: bool


def config(hyper: Mapping[str, Any]) -> Config:
    """From the op's hyperparameters (fusedopt.registry.RULES["adadelta"].hyper);
    the floats as floats (an int 0 would reach the kernels as an int argument)."""
    return Config(
        float(hyper["rho"]),
        float(hyper["eps"]),
        float(hyper["weight_decay"]),
        float(hyper["lr_max"]),
        int(hyper["weight_decay_mode"]),
        bool(hyper["maximize"]),
    )


def state_used(k: int, c: Config) -> bool:
    return True


class Launch(NamedTuple):
    """fp32 in the kernels: 1 - rho is formed in double and rounded once, as
    torch passes `1 - rho` as a Python float to `addcmul_`."""

    rho: float
    one_minus_rho: float
    eps: float
    l2: float  # wd for WD_L2, else 0
    grad_sign: float  # -1 with maximize, else 1: an exact multiply


def launch(c: Config) -> Launch:
    return Launch(
        c.rho,
        1.0 - c.rho,
        c.eps,
        l2_coefficient(c.wd_mode, c.weight_decay),
        -1.0 if c.maximize else 1.0,
    )


class PerTensor(NamedTuple):
    neg_lr: float  # -lr
    param_decay: float  # multiplier of p before the update


def per_tensor(c: Config, lr: float, step) -> PerTensor:
    """In double, on the host; the update does not read the count."""
    return PerTensor(-lr, param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max))


@triton.jit
def per_tensor_device(c, lr, step):
    """per_tensor in float64 on the device (the prologue kernel)."""
    return PerTensor(
        (-lr).to(tl.float32),
        param_decay_device(c.wd_mode, c.weight_decay, lr, c.lr_max).to(tl.float32),
    )


@triton.jit
def update(p, g, s, USED: tl.constexpr, h, t):
    """One block of elements, all fp32: returns (p, s). Division and sqrt are
    the correctly rounded ones, as in C++ and torch."""
    g = g * h.grad_sign
    if h.l2 != 0.0:
        g = g + h.l2 * p
    p = p * t.param_decay
    square_avg = s[SQUARE_AVG] * h.rho + h.one_minus_rho * g * g
    # The header's sqrt(acc_delta + eps), taken before rms_grad: the same
    # operations on the same values, so the same bits, in an order that kept
    # ptxas (sm_120, fp fusion off) from spilling a pointer to the stack (8 B).
    rms_delta = tl.sqrt_rn(s[ACC_DELTA] + h.eps)
    rms_grad = tl.sqrt_rn(square_avg + h.eps)
    delta = tl.div_rn(rms_delta, rms_grad) * g
    acc_delta = s[ACC_DELTA] * h.rho + h.one_minus_rho * delta * delta
    p = p + t.neg_lr * delta
    return p, (square_avg, acc_delta)
