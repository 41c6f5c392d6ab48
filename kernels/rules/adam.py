"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019) for the Triton
kernels: csrc/include/fusedopt/rules/adam.h mirrored name for name (Note [the
rule interface] in csrc/include/fusedopt/core/rule.h). A change to one is a
change to both; both are tested against fusedopt.reference.adam.

The eps and bias-correction conventions (`eps_mode`, `correct_bias`) and
HF's decay order (`decay_after`): Note [Adam conventions] in the header.

Bytes per element (fp32 params, any convention): read p, g, m, v, write p,
m, v: 28 B; amsgrad +8 B; a GradScaler's unscaled grad written back +4 B.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import triton
import triton.language as tl
from fusedopt.kernels.rules.common import (
    WD_DECOUPLED,
    WD_FULLY_DECOUPLED,
    l2_coefficient,
    lerp_like_torch,
    max_propagate_nan,
    param_decay,
    param_decay_device,
    pow_device,
    sqrt,
)

# State: indices into the kernels' state tuple, in kStateNames' order.
EXP_AVG = tl.constexpr(0)
EXP_AVG_SQ = tl.constexpr(1)
MAX_EXP_AVG_SQ = tl.constexpr(2)
STATE_NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
HAS_STEP = True
# Without amsgrad, with it: the state masks tests/triton_aot.py compiles.
STATE_SETS = (0b011, 0b111)
# Values of `eps_mode` (EpsMode in the header; part of the op schema).
EPS_TORCH = tl.constexpr(0)  # p += -lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
EPS_HAT = tl.constexpr(1)  # p += -(lr*sqrt(bc2)/bc1) * m / (sqrt(v) + eps)
EPS_ROOT = tl.constexpr(2)  # p += -lr/bc1 * m / sqrt(v/bc2 + eps)


class Config(NamedTuple):
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    lr_max: float
    wd_mode: int
    eps_mode: int
    decay_after: bool
    correct_bias: bool
    amsgrad: bool
    maximize: bool


def config(hyper: Mapping[str, Any]) -> Config:
    """From the op's hyperparameters (fusedopt.registry.RULES["adam"].hyper); the
    floats as floats (an int 0 would reach the kernels as an int argument)."""
    return Config(
        float(hyper["beta1"]),
        float(hyper["beta2"]),
        float(hyper["eps"]),
        float(hyper["weight_decay"]),
        float(hyper["lr_max"]),
        int(hyper["weight_decay_mode"]),
        int(hyper["eps_mode"]),
        bool(hyper["decay_after"]),
        bool(hyper["correct_bias"]),
        bool(hyper["amsgrad"]),
        bool(hyper["maximize"]),
    )


def state_used(k: int, c: Config) -> bool:
    return k != MAX_EXP_AVG_SQ.value or c.amsgrad


class Launch(NamedTuple):
    """fp32 in the kernels: differences like 1 - beta1 are formed in double and
    rounded once, as torch passes `1 - beta1` as a Python float to `lerp_`."""

    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    eps: float  # added to the denominator; 0 with EPS_ROOT
    eps_root: float  # added under the square root: eps with EPS_ROOT, else 0
    l2: float  # wd for WD_L2, else 0
    grad_sign: float  # -1 with maximize, else 1: an exact multiply
    decay_after: float  # 1 when the decay applies to the updated p, else 0


def launch(c: Config) -> Launch:
    root = c.eps_mode == EPS_ROOT.value
    return Launch(
        1.0 - c.beta1,
        c.beta2,
        1.0 - c.beta2,
        0.0 if root else c.eps,
        c.eps if root else 0.0,
        l2_coefficient(c.wd_mode, c.weight_decay),
        -1.0 if c.maximize else 1.0,
        1.0 if c.decay_after else 0.0,
    )


class PerTensor(NamedTuple):
    """The bias-correction terms a mode does not use are 1 (Note [Adam conventions])."""

    neg_step_size: float  # -lr / (1 - beta1^t); EPS_HAT: times sqrt(1 - beta2^t)
    bias_correction2: float  # EPS_ROOT: 1 - beta2^t, divides v under the root
    bias_correction2_sqrt: float  # EPS_TORCH: sqrt(1 - beta2^t), divides sqrt(v)
    # The multiplier of p before the update (1 - lr * wd), or with decay_after
    # the c of p += c * p after it (-lr * wd).
    param_decay: float


def per_tensor(c: Config, lr: float, step) -> PerTensor:
    """In double, on the host: `step` (the count after this step's increment)
    is a float, or a float64 tensor of every tensor's count."""
    bias_correction1 = 1.0 - c.beta1**step if c.correct_bias else 1.0
    bias_correction2 = 1.0 - c.beta2**step if c.correct_bias else 1.0
    bias_correction2_sqrt = sqrt(bias_correction2)
    # As transformers.AdamW forms it from Python floats: lr * sqrt(bc2) / bc1.
    if c.eps_mode == EPS_HAT.value:
        step_size = lr * bias_correction2_sqrt / bias_correction1
    else:
        step_size = lr / bias_correction1
    return PerTensor(
        -step_size,
        bias_correction2 if c.eps_mode == EPS_ROOT.value else 1.0,
        bias_correction2_sqrt if c.eps_mode == EPS_TORCH.value else 1.0,
        decay(c, lr),
    )


def decay(c: Config, lr: float) -> float:
    """param_decay: common's multiplier, or HF's -lr * wd (the decay rate of
    the decoupled modes, negated) kept in full, not as 1 - lr * wd in fp32."""
    if not c.decay_after:
        return param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max)
    rate = 0.0
    if c.wd_mode == WD_DECOUPLED.value:
        rate = lr * c.weight_decay
    if c.wd_mode == WD_FULLY_DECOUPLED.value:
        rate = c.weight_decay * lr / c.lr_max
    return -rate


@triton.jit
def per_tensor_device(c, lr, step):
    """per_tensor in float64 on the device (the prologue kernel): `c` is the
    Config in float64, lr a scalar, step a block of counts (or one count)."""
    corrected = c.correct_bias != 0.0
    bias_correction1 = tl.where(corrected, 1.0 - pow_device(c.beta1, step), 1.0)
    bias_correction2 = tl.where(corrected, 1.0 - pow_device(c.beta2, step), 1.0)
    bias_correction2_sqrt = tl.sqrt(bias_correction2)
    step_size = tl.where(
        c.eps_mode == EPS_HAT,
        lr * bias_correction2_sqrt / bias_correction1,
        lr / bias_correction1,
    )
    return PerTensor(
        (-step_size).to(tl.float32),
        tl.where(c.eps_mode == EPS_ROOT, bias_correction2, 1.0).to(tl.float32),
        tl.where(c.eps_mode == EPS_TORCH, bias_correction2_sqrt, 1.0).to(tl.float32),
        decay_device(c, lr).to(tl.float32),
    )


@triton.jit
def decay_device(c, lr):
    """decay on float64 values."""
    rate = tl.full((), 0.0, tl.float64)
    if c.wd_mode == WD_DECOUPLED:
        rate = lr * c.weight_decay
    if c.wd_mode == WD_FULLY_DECOUPLED:
        rate = c.weight_decay * lr / c.lr_max
    return tl.where(
        c.decay_after != 0.0,
        -rate,
        param_decay_device(c.wd_mode, c.weight_decay, lr, c.lr_max),
    )


@triton.jit
def update(p, g, s, USED: tl.constexpr, h, t):
    """One block of elements, all fp32: returns (p, s). `s` is the state tuple
    (EXP_AVG, ...); MAX_EXP_AVG_SQ is read and written only when USED has it.
    Division and sqrt are the correctly rounded ones, as in C++ and torch."""
    g = g * h.grad_sign
    if h.l2 != 0.0:
        g = g + h.l2 * p
    if h.decay_after == 0.0:
        p = p * t.param_decay  # decoupled decay, torch's order
    m = lerp_like_torch(s[EXP_AVG], g, h.one_minus_beta1)
    v = s[EXP_AVG_SQ] * h.beta2 + h.one_minus_beta2 * g * g
    v_hat = v
    v_max = s[MAX_EXP_AVG_SQ]
    if (USED >> MAX_EXP_AVG_SQ.value) & 1:
        v_max = max_propagate_nan(v_max, v)
        v_hat = v_max
    # Note [Adam conventions]: one form for every eps_mode.
    root = tl.sqrt_rn(tl.div_rn(v_hat, t.bias_correction2) + h.eps_root)
    denom = tl.div_rn(root, t.bias_correction2_sqrt) + h.eps
    p = p + tl.div_rn(t.neg_step_size * m, denom)
    # Or HF's order: p += c * p after the update, c = 0 without decay_after;
    # skipped at c = 0 as HF skips wd = 0 (0 * inf would turn an inf p into NaN).
    after = h.decay_after * t.param_decay
    if after != 0.0:
        p = p + after * p
    return p, (m, v, v_max)
