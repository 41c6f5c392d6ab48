"""SGD with momentum, dampening and Nesterov momentum (torch.optim.SGD's form),
plus the decoupled weight-decay modes (SGDW), for the Triton kernels:
csrc/include/fusedopt/rules/sgd.h mirrored name for name (Note [the rule
interface] in csrc/include/fusedopt/core/rule.h). Tested against
fusedopt.reference.sgd, like the C++ one.

Bytes per element (fp32 params): read p, g, write p: 12 B; momentum reads and
writes b: +8 B; a GradScaler's unscaled grad written back +4 B.
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
MOMENTUM_BUFFER = tl.constexpr(0)
STATE_NAMES = ("momentum_buffer",)
HAS_STEP = False  # torch's SGD keeps no step count
# Without momentum, with it: the state masks tests/triton_aot.py compiles.
STATE_SETS = (0b0, 0b1)


class Config(NamedTuple):
    momentum: float
    dampening: float
    weight_decay: float
    lr_max: float
    wd_mode: int
    nesterov: bool
    maximize: bool
    first_step: bool


def config(hyper: Mapping[str, Any]) -> Config:
    """From the op's hyperparameters (fusedopt.registry.RULES["sgd"].hyper); the
    floats as floats (an int 0 would reach the kernels as an int argument)."""
    return Config(
        float(hyper["momentum"]),
        float(hyper["dampening"]),
        float(hyper["weight_decay"]),
        float(hyper["lr_max"]),
        int(hyper["weight_decay_mode"]),
        bool(hyper["nesterov"]),
        bool(hyper["maximize"]),
        bool(hyper["first_step"]),
    )


def state_used(k: int, c: Config) -> bool:
    return c.momentum != 0.0


class Launch(NamedTuple):
    momentum: float
    one_minus_dampening: float  # formed in double, as torch's `alpha=1 - dampening`
    l2: float  # wd for WD_L2, else 0
    grad_sign: float  # -1 with maximize, else 1: an exact multiply
    nesterov: float  # 1 or 0
    first_step: float  # 1 or 0: the buffer starts as g (torch's first step)


def launch(c: Config) -> Launch:
    return Launch(
        c.momentum,
        1.0 - c.dampening,
        l2_coefficient(c.wd_mode, c.weight_decay),
        -1.0 if c.maximize else 1.0,
        1.0 if c.nesterov else 0.0,
        1.0 if c.first_step else 0.0,
    )


class PerTensor(NamedTuple):
    neg_lr: float  # -lr
    param_decay: float  # multiplier of p before the update


def per_tensor(c: Config, lr: float, step) -> PerTensor:
    """In double, on the host; SGD keeps no count, so `step` is unused."""
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
    """One block of elements, all fp32: returns (p, s). The momentum buffer is
    read and written only when USED has it (momentum != 0)."""
    g = g * h.grad_sign
    if h.l2 != 0.0:
        g = g + h.l2 * p
    p = p * t.param_decay
    b = s[MOMENTUM_BUFFER]
    if (USED >> MOMENTUM_BUFFER.value) & 1:
        b = tl.where(h.first_step != 0.0, g, b * h.momentum + h.one_minus_dampening * g)
        g = tl.where(h.nesterov != 0.0, g + h.momentum * b, b)
    p = p + t.neg_lr * g
    return p, (b,)
