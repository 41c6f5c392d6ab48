"""RMSprop in torch.optim.RMSprop's form and in TensorFlow 1's (timm's
RMSpropTF), for the Triton kernels: csrc/include/fusedopt/rules/rmsprop.h
mirrored name for name (Note [the rule interface] in
csrc/include/fusedopt/core/rule.h); the header's comment has the formulas of
both conventions and their three switches (eps_in_sqrt, tf_ema_order,
lr_in_momentum). Tested against fusedopt.reference.rmsprop, like the C++ one.

Bytes per element (fp32 params): read p, g, v, write p, v: 20 B; momentum
+8 B; centered +8 B; a GradScaler's unscaled grad written back +4 B.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from fusedopt.kernels.rules.common import (
    l2_coefficient,
    param_decay,
    param_decay_device,
)

# State: indices into the kernels' state tuple, in kStateNames' order.
SQUARE_AVG = tl.constexpr(0)
MOMENTUM_BUFFER = tl.constexpr(1)
GRAD_AVG = tl.constexpr(2)
STATE_NAMES = ("square_avg", "momentum_buffer", "grad_avg")
HAS_STEP = True  # torch and timm keep a count; the math never reads it
# square_avg always; momentum_buffer with momentum > 0; grad_avg when centered.
STATE_SETS = (0b001, 0b011, 0b101, 0b111)


class Config(NamedTuple):
    alpha: float
    eps: float
    weight_decay: float
    lr_max: float
    momentum: float
    wd_mode: int
    centered: bool
    maximize: bool
    eps_in_sqrt: bool
    tf_ema_order: bool
    lr_in_momentum: bool


def config(hyper: Mapping[str, Any]) -> Config:
    """From the op's hyperparameters (fusedopt.registry.RULES["rmsprop"].hyper);
    the floats as floats (an int 0 would reach the kernels as an int argument)."""
    return Config(
        float(hyper["alpha"]),
        float(hyper["eps"]),
        float(hyper["weight_decay"]),
        float(hyper["lr_max"]),
        float(hyper["momentum"]),
        int(hyper["weight_decay_mode"]),
        bool(hyper["centered"]),
        bool(hyper["maximize"]),
        bool(hyper["eps_in_sqrt"]),
        bool(hyper["tf_ema_order"]),
        bool(hyper["lr_in_momentum"]),
    )


def state_used(k: int, c: Config) -> bool:
    if k == MOMENTUM_BUFFER.value:
        return c.momentum > 0.0
    if k == GRAD_AVG.value:
        return c.centered
    return True


class Launch(NamedTuple):
    """fp32 in the kernels; 1 - alpha formed in double and rounded once, as
    torch and timm pass it as a Python float."""

    alpha: float
    one_minus_alpha: float
    momentum: float
    eps_in_sqrt: float  # eps under the root (eps_in_sqrt), else 0: x + 0 is exact
    eps_outside: float  # eps after the root (torch), else 0
    l2: float  # wd for WD_L2, else 0
    grad_sign: float  # -1 with maximize, else 1: an exact multiply
    tf_ema_order: float  # 1 or 0
    # 1 where grad_avg's update is a + w * (g - a): TF's order, and torch's lerp for
    # w = 1 - alpha < 0.5; else torch's other form (one select, as in the header).
    ema_from_start: float


def _fp32(x: float) -> float:
    """x rounded to fp32, as the header's static_cast<float>."""
    return torch.tensor(x, dtype=torch.float32).item()


def launch(c: Config) -> Launch:
    return Launch(
        c.alpha,
        1.0 - c.alpha,
        c.momentum,
        c.eps if c.eps_in_sqrt else 0.0,
        0.0 if c.eps_in_sqrt else c.eps,
        l2_coefficient(c.wd_mode, c.weight_decay),
        -1.0 if c.maximize else 1.0,
        1.0 if c.tf_ema_order else 0.0,
        1.0 if c.tf_ema_order or _fp32(1.0 - c.alpha) < 0.5 else 0.0,
    )


class PerTensor(NamedTuple):
    """b = momentum * b + buffer_scale * g / d; p += param_scale * b. Scales of
    1 and -1 are exact multiplies, so each form keeps its source's roundings."""

    neg_lr: float  # -lr (without momentum)
    buffer_scale: float  # lr with lr_in_momentum, else 1
    param_scale: float  # -1 with lr_in_momentum, else -lr
    param_decay: float  # multiplier of p before the update


def per_tensor(c: Config, lr: float, step) -> PerTensor:
    """In double, on the host; the count is not part of the math."""
    return PerTensor(
        -lr,
        lr if c.lr_in_momentum else 1.0,
        -1.0 if c.lr_in_momentum else -lr,
        param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max),
    )


@triton.jit
def per_tensor_device(c, lr, step):
    """per_tensor in float64 on the device (the prologue kernel)."""
    in_momentum = c.lr_in_momentum != 0.0
    return PerTensor(
        (-lr).to(tl.float32),
        tl.where(in_momentum, lr, 1.0).to(tl.float32),
        tl.where(in_momentum, -1.0, -lr).to(tl.float32),
        param_decay_device(c.wd_mode, c.weight_decay, lr, c.lr_max).to(tl.float32),
    )


@triton.jit
def update(p, g, s, USED: tl.constexpr, h, t):
    """One block of elements, all fp32: returns (p, s). MOMENTUM_BUFFER and
    GRAD_AVG are read and written only when USED has them. Division and sqrt
    are the correctly rounded ones, as in C++ and torch."""
    g = g * h.grad_sign
    if h.l2 != 0.0:
        g = g + h.l2 * p
    p = p * t.param_decay
    tf = h.tf_ema_order != 0.0
    v = s[SQUARE_AVG]
    v = tl.where(tf, v + h.one_minus_alpha * (g * g - v), v * h.alpha + h.one_minus_alpha * g * g)
    v_tilde = v
    a = s[GRAD_AVG]
    if (USED >> GRAD_AVG.value) & 1:
        w = h.one_minus_alpha
        a = tl.where(h.ema_from_start != 0.0, a + w * (g - a), g - (g - a) * (1.0 - w))
        v_tilde = v - a * a
    d = tl.sqrt_rn(v_tilde + h.eps_in_sqrt) + h.eps_outside
    b = s[MOMENTUM_BUFFER]
    if (USED >> MOMENTUM_BUFFER.value) & 1:
        b = b * h.momentum + tl.div_rn(t.buffer_scale * g, d)
        p = p + t.param_scale * b
    else:
        p = p + tl.div_rn(t.neg_lr * g, d)
    return p, (v, b, a)
