"""Averaged SGD in torch.optim.ASGD's form, for the Triton kernels:
csrc/include/fusedopt/rules/asgd.h mirrored name for name. eta and mu are
scalar states (Note [scalar states] in csrc/include/fusedopt/core/rule.h):
per_tensor (host, counts on the CPU) and per_tensor_device (the prologue and
the advance kernel of kernels/mta.py, counts on the device) take the values
this step uses and return the next step's.

Bytes per element (fp32 params): read p, g, ax, write p, ax: 20 B.
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
    pow_device,
)

AX = tl.constexpr(0)
STATE_NAMES = ("ax",)
HAS_STEP = True
SCALAR_NAMES = ("eta", "mu")
# Scalar states: indices into the scalars tuple, in kScalarNames' order.
ETA = tl.constexpr(0)
MU = tl.constexpr(1)
STATE_SETS = (0b1,)


class Config(NamedTuple):
    lambd: float
    alpha: float
    t0: float
    weight_decay: float
    lr_max: float
    wd_mode: int
    maximize: bool


def config(hyper: Mapping[str, Any]) -> Config:
    return Config(
        float(hyper["lambd"]),
        float(hyper["alpha"]),
        float(hyper["t0"]),
        float(hyper["weight_decay"]),
        float(hyper["lr_max"]),
        int(hyper["weight_decay_mode"]),
        bool(hyper["maximize"]),
    )


def state_used(k: int, c: Config) -> bool:
    return True


class Launch(NamedTuple):
    l2: float  # wd for WD_L2, else 0
    grad_sign: float  # -1 with maximize, else 1


def launch(c: Config) -> Launch:
    return Launch(l2_coefficient(c.wd_mode, c.weight_decay), -1.0 if c.maximize else 1.0)


class PerTensor(NamedTuple):
    param_decay: float  # 1 - lr * wd in the decoupled modes, else 1
    eta_decay: float  # 1 - lambd * eta
    neg_eta: float  # -eta
    mu: float  # the averaging weight
    copy_param: float  # 1 when mu == 1: torch copies p into ax


def per_tensor(c: Config, lr: float, step, scalars):
    """On the host: `step` a float64 tensor of the counts after this step,
    `scalars` (eta, mu) float32 tensors of the values this step uses.
    Returns (PerTensor of float64 tensors, the scalars for the next step)."""
    eta, mu = scalars[ETA.value], scalars[MU.value]
    eta64 = eta.double()
    next_eta = (lr / (1.0 + c.lambd * lr * step) ** c.alpha).to(torch.float32)
    next_mu = (1.0 / torch.clamp(step - c.t0, min=1.0)).to(torch.float32)
    return (
        PerTensor(
            param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max),
            1.0 - c.lambd * eta64,
            -eta64,
            mu.double(),
            (mu == 1.0).double(),
        ),
        (next_eta, next_mu),
    )


@triton.jit
def per_tensor_device(c, lr, step, scalars):
    """per_tensor in float64 on the device: `c` the Config in float64, lr a
    scalar, step a block of counts after this step, `scalars` (eta, mu) blocks
    of the float32 values this step uses. Returns (PerTensor, (eta, mu) for the
    next step). pow_device's base here is 1 + lambd lr t, above 1: exp2(alpha *
    log2(base)) is within about |alpha log2(base)| fp64 ulps all the same
    (common.py), under 1e-13 relative for alpha <= 1 and a base below 2^100,
    far below the fp32 ulp that eta is rounded to."""
    eta = scalars[ETA].to(tl.float64)
    mu = scalars[MU]
    next_eta = (lr / pow_device(1.0 + c.lambd * lr * step, c.alpha)).to(tl.float32)
    next_mu = (1.0 / tl.maximum(step - c.t0, 1.0)).to(tl.float32)
    per_tensor = PerTensor(
        param_decay_device(c.wd_mode, c.weight_decay, lr, c.lr_max).to(tl.float32),
        (1.0 - c.lambd * eta).to(tl.float32),
        (-eta).to(tl.float32),
        mu,
        tl.where(mu == 1.0, 1.0, 0.0),
    )
    return per_tensor, (next_eta, next_mu)


@triton.jit
def update(p, g, s, USED: tl.constexpr, h, t):
    """One block of elements, all fp32: returns (p, s)."""
    g = g * h.grad_sign
    if h.l2 != 0.0:
        g = g + h.l2 * p
    p = p * t.param_decay
    p = p * t.eta_decay
    p = p + t.neg_eta * g
    # A branch on the tensor's scalar (uniform in a program): tl.where here
    # gave the sm_90 kernel an 8-byte stack frame.
    ax = s[AX]
    if t.copy_param != 0.0:
        ax = p
    else:
        ax = ax + (p - ax) * t.mu
    return p, (ax,)
