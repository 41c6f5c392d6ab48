"""Averaged SGD in torch.optim.ASGD's form, for the Triton kernels:
csrc/include/fusedopt/rules/asgd.h mirrored name for name. eta and mu are
scalar states (Note [scalar states] in csrc/include/fusedopt/core/rule.h):
per_tensor runs on the host only and returns their new values.

Bytes per element (fp32 params): read p, g, ax, write p, ax: 20 B.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from fusedopt.kernels.rules.common import l2_coefficient, param_decay

AX = tl.constexpr(0)
STATE_NAMES = ("ax",)
HAS_STEP = True
SCALAR_NAMES = ("eta", "mu")
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
    eta, mu = scalars
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
