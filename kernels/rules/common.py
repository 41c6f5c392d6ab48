"""Pieces of math that several rules share, mirrored name for name from
csrc/include/fusedopt/rules/common.h: weight-decay modes, `l2_coefficient`,
`param_decay`, `lerp_like_torch`, `max_propagate_nan`, `sign_like_torch`,
`mul_rn`.

Host functions (`l2_coefficient`, `param_decay`, `sqrt`) take Python floats,
or float64 tensors for the per-tensor table (kernels/mta.py), like the C++
ones take doubles. `*_device` functions are their @triton.jit mirrors in
float64 for the per-tensor prologue kernel; the rest is fp32 in registers.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# Values of `weight_decay_mode` (WeightDecayMode in common.h; part of the op schemas).
WD_L2 = tl.constexpr(0)  # g += wd * p (torch.optim.Adam, torch.optim.SGD)
WD_DECOUPLED = tl.constexpr(1)  # p *= 1 - lr * wd (torch.optim.AdamW)
WD_FULLY_DECOUPLED = tl.constexpr(2)  # p *= 1 - wd * lr / lr_max


def l2_coefficient(mode: int, weight_decay: float) -> float:
    """The wd that is added to the gradient (L2), 0 in the decoupled modes."""
    return weight_decay if mode == WD_L2.value else 0.0


def param_decay(mode: int, weight_decay: float, lr: float, lr_max: float) -> float:
    """The multiplier of p before the update, in double like torch's Python floats."""
    if mode == WD_DECOUPLED.value:
        return 1.0 - lr * weight_decay
    if mode == WD_FULLY_DECOUPLED.value:
        return 1.0 - weight_decay * lr / lr_max
    return 1.0


def sqrt(x):
    """Correctly rounded sqrt of a float or a float64 tensor (`x ** 0.5` is
    glibc's pow for a float, within 0.52 ulp instead of 0.5)."""
    return torch.sqrt(x) if isinstance(x, torch.Tensor) else math.sqrt(x)


@triton.jit
def param_decay_device(mode, weight_decay, lr, lr_max):
    """param_decay on float64 values (`mode` too: a config field, kernels/mta.py);
    `lr` a scalar, or a block of per-tensor lrs (Adagrad's lr_decay)."""
    decay = tl.zeros_like(lr) + 1.0
    if mode == WD_DECOUPLED:
        decay = 1.0 - lr * weight_decay
    if mode == WD_FULLY_DECOUPLED:
        decay = 1.0 - weight_decay * lr / lr_max
    return decay


@triton.jit
def pow_device(base, exponent):
    """base^exponent for 0 < base < 1 in float64, as exp2(exponent * log2(base)):
    the interpreter has no libdevice.pow. Its relative error is about
    |exponent * log2(base)| ulps of fp64, under 1e-12 for any step count below
    2^24 (where a float32 count stops counting), far below fp32's 6e-8."""
    return tl.exp2(exponent * tl.log2(base))


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
def sign_like_torch(x):
    """torch.sign on floats: (0 < x) - (x < 0), so sign(+-0) = 0 and sign(NaN) = 0."""
    return tl.where(x > 0.0, 1.0, tl.where(x < 0.0, -1.0, 0.0))


@triton.jit
def mul_rn(a, b):
    """a * b rounded on its own, as common.h's and torch's separate mul and
    add round it: the kernels are compiled without fp fusion (Note
    [bit-identical backends] in kernels/mta.py), so no add absorbs it into an
    FMA on a GPU either."""
    return a * b
