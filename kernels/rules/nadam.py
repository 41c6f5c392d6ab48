"""NAdam (Dozat 2016) in torch.optim.NAdam's form, for the Triton kernels:
csrc/include/fusedopt/rules/nadam.h mirrored name for name. mu_product is a
scalar state (Note [scalar states] in csrc/include/fusedopt/core/rule.h):
per_tensor (host, counts on the CPU) and per_tensor_device (the prologue and
the advance kernel of kernels/mta.py, counts on the device) take its values
before this step and return those after it.

Bytes per element (fp32 params): read p, g, m, v, write p, m, v: 28 B.
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
)

EXP_AVG = tl.constexpr(0)
EXP_AVG_SQ = tl.constexpr(1)
STATE_NAMES = ("exp_avg", "exp_avg_sq")
HAS_STEP = True
SCALAR_NAMES = ("mu_product",)
# Scalar state: indices into the scalars tuple, in kScalarNames' order.
MU_PRODUCT = tl.constexpr(0)
STATE_SETS = (0b11,)


class Config(NamedTuple):
    beta1: float
    beta2: float
    eps: float
    momentum_decay: float
    weight_decay: float
    lr_max: float
    wd_mode: int
    maximize: bool


def config(hyper: Mapping[str, Any]) -> Config:
    return Config(
        float(hyper["beta1"]),
        float(hyper["beta2"]),
        float(hyper["eps"]),
        float(hyper["momentum_decay"]),
        float(hyper["weight_decay"]),
        float(hyper["lr_max"]),
        int(hyper["weight_decay_mode"]),
        bool(hyper["maximize"]),
    )


def state_used(k: int, c: Config) -> bool:
    return True


class Launch(NamedTuple):
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    eps: float
    l2: float  # wd for WD_L2, else 0
    grad_sign: float  # -1 with maximize, else 1


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
    bias_correction2: float  # 1 - beta2^t
    grad_coef: float  # -lr (1 - mu_t) / (1 - mu_product_t)
    exp_avg_coef: float  # -lr mu_{t+1} / (1 - mu_product_t * mu_{t+1})
    param_decay: float  # multiplier of p before the update


def momentum(c: Config, step):
    """mu_t, in double as torch forms it."""
    return c.beta1 * (1.0 - 0.5 * (0.96 ** (step * c.momentum_decay)))


def per_tensor(c: Config, lr: float, step, scalars):
    """On the host: `step` a float64 tensor of the counts after this step,
    `scalars` (mu_product,) a float32 tensor of the products before it.
    Returns (PerTensor of float64 tensors, the scalars after this step)."""
    mu = momentum(c, step)
    mu_next = momentum(c, step + 1.0)
    mu_product = scalars[MU_PRODUCT.value] * mu.to(torch.float32)  # as torch's `mu_product *= mu`
    mu_product_next = mu_product.double() * mu_next
    return (
        PerTensor(
            1.0 - c.beta2**step,
            -lr * (1.0 - mu) / (1.0 - mu_product.double()),
            -lr * mu_next / (1.0 - mu_product_next),
            param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max),
        ),
        (mu_product,),
    )


@triton.jit
def momentum_device(c, step):
    """momentum in float64 on the device. 0.96 through tl.full: a float literal
    is fp32 in Triton, and tl.cast(0.96, tl.float64) gives 0.9599999785 (seen
    in the PTX and the interpreter), which moved mu_product by an fp32 ulp."""
    base = tl.full([], 0.96, tl.float64)
    return c.beta1 * (1.0 - 0.5 * pow_device(base, step * c.momentum_decay))


@triton.jit
def per_tensor_device(c, lr, step, scalars):
    """per_tensor in float64 on the device: `c` the Config in float64, lr a
    scalar, step a block of counts after this step, `scalars` (mu_product,) a
    block of float32 products before it. Returns (PerTensor, (mu_product after,))."""
    mu = momentum_device(c, step)
    mu_next = momentum_device(c, step + 1.0)
    mu_product = scalars[MU_PRODUCT] * mu.to(tl.float32)  # a float32 multiply, as on the host
    mu_product_next = mu_product.to(tl.float64) * mu_next
    per_tensor = PerTensor(
        (1.0 - pow_device(c.beta2, step)).to(tl.float32),
        (-lr * (1.0 - mu) / (1.0 - mu_product.to(tl.float64))).to(tl.float32),
        (-lr * mu_next / (1.0 - mu_product_next)).to(tl.float32),
        param_decay_device(c.wd_mode, c.weight_decay, lr, c.lr_max).to(tl.float32),
    )
    return per_tensor, (mu_product,)


@triton.jit
def update(p, g, s, USED: tl.constexpr, h, t):
    """One block of elements, all fp32: returns (p, s)."""
    g = g * h.grad_sign
    if h.l2 != 0.0:
        g = g + h.l2 * p
    p = p * t.param_decay
    m = lerp_like_torch(s[EXP_AVG], g, h.one_minus_beta1)
    v = s[EXP_AVG_SQ] * h.beta2 + h.one_minus_beta2 * g * g
    denom = tl.sqrt_rn(tl.div_rn(v, t.bias_correction2)) + h.eps
    p = p + tl.div_rn(t.grad_coef * g, denom)
    p = p + tl.div_rn(t.exp_avg_coef * m, denom)
    return p, (m, v)
