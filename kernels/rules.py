"""The Adam family's update rule for the Triton kernels.

Triton cannot include csrc/include/fusedopt/adam_rule.h, so this file mirrors
it name for name: `adam_hyper`, `adam_tensor_scalars`, `lerp_like_torch`,
`max_propagate_nan`, `adam_update`. A change to one is a change to both; both
are tested against fusedopt.reference on the same cases (STYLE.md, principle 1).

Everything here is fp32 in registers, except `adam_tensor_scalars`, which works
in fp64 like the C++ one (torch computes 1 - beta^t from Python floats). Loads,
stores and dtype casts are the traversal's job (kernels/adam.py), never the
rule's: see Note [state dtypes are a traversal policy] in adam_rule.h.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Values of `weight_decay_mode`, as in adam_rule.h's WeightDecayMode.
WD_L2 = tl.constexpr(0)  # g += wd * p (torch.optim.Adam)
WD_DECOUPLED = tl.constexpr(1)  # p *= 1 - lr * wd (torch.optim.AdamW)
WD_FULLY_DECOUPLED = tl.constexpr(2)  # p *= 1 - wd * lr / lr_max


def adam_hyper(
    beta1: float, beta2: float, eps: float, weight_decay: float, weight_decay_mode: int
) -> dict[str, float]:
    """The per-launch fp32 constants of the element loop (AdamHyper), on the
    host like the C++ one. Differences such as 1 - beta1 are formed in double
    and rounded to fp32 once, when Triton passes them as fp32 kernel arguments."""
    return {
        "one_minus_beta1": 1.0 - beta1,
        "beta2": beta2,
        "one_minus_beta2": 1.0 - beta2,
        "eps": eps,
        "l2": weight_decay if weight_decay_mode == WD_L2.value else 0.0,
    }


@triton.jit
def _pow(base, exponent):
    """base^exponent for 0 < base < 1 in fp64, as exp2(exponent * log2(base)):
    the interpreter has no libdevice.pow. Its relative error is about
    |exponent * log2(base)| ulps of fp64, under 1e-12 for any step count below
    2^24 (where a float32 step stops counting), far below fp32's 6e-8."""
    return tl.exp2(exponent * tl.log2(base))


@triton.jit
def adam_tensor_scalars(lr, step, beta1, beta2, weight_decay, lr_max, WD_MODE: tl.constexpr):
    """The per-tensor constants (AdamTensorScalars) from fp64 lr, step and
    hyperparameters; `step` is the count after this step's increment.
    Returns (neg_step_size, bias_correction2_sqrt, param_decay) in fp32."""
    bias_correction1 = 1.0 - _pow(beta1, step)
    bias_correction2 = 1.0 - _pow(beta2, step)
    param_decay = tl.full((), 1.0, tl.float32)
    if WD_MODE == WD_DECOUPLED:
        param_decay = (1.0 - lr * weight_decay).to(tl.float32)
    if WD_MODE == WD_FULLY_DECOUPLED:
        param_decay = (1.0 - weight_decay * lr / lr_max).to(tl.float32)
    neg_step_size = (-(lr / bias_correction1)).to(tl.float32)
    bias_correction2_sqrt = tl.sqrt(bias_correction2).to(tl.float32)
    return neg_step_size, bias_correction2_sqrt, param_decay


@triton.jit
def lerp_like_torch(start, end, w):
    """torch's lerp (aten/src/ATen/native/Lerp.h): start + w * (end - start) for
    a weight below 0.5, the form that stays exact at w = 1 otherwise."""
    return tl.where(w < 0.5, start + w * (end - start), end - (end - start) * (1.0 - w))


@triton.jit
def max_propagate_nan(a, b):
    """max that propagates NaN from either side, like torch.maximum."""
    return tl.where((a != a) | (a > b), a, b)


@triton.jit
def adam_update(
    p,
    g,
    m,
    v,
    v_max,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    l2,
    neg_step_size,
    bias_correction2_sqrt,
    param_decay,
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
):
    """One block of Adam/AdamW elements, all fp32; returns (p, m, v, v_max).
    `v_max` is read and changed only with AMSGRAD. The traversal applies
    GradScaler's unscale (g / scale) before calling. Division and sqrt are the
    correctly rounded ones (div_rn, sqrt_rn), as in C++ and torch."""
    if MAXIMIZE:
        g = -g
    if l2 != 0.0:
        g = g + l2 * p
    p = p * param_decay
    m = lerp_like_torch(m, g, one_minus_beta1)
    v = v * beta2 + one_minus_beta2 * g * g
    v_hat = v
    if AMSGRAD:
        v_max = max_propagate_nan(v_max, v)
        v_hat = v_max
    denom = tl.div_rn(tl.sqrt_rn(v_hat), bias_correction2_sqrt) + eps
    p = p + tl.div_rn(neg_step_size * m, denom)
    return p, m, v, v_max
