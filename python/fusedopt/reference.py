"""The reference rules: the plainest PyTorch code of each update rule.

They are the fallback where no kernel fits and the oracle every backend is
tested against, so they stay boring: one tensor at a time, one line per line of
the paper's pseudo-code, no fusion and no cleverness.

Precision policy (the same as every fusedopt kernel): the math runs in float32
(float64 when the param is float64, which is how the tests build an fp64
oracle); optimizer states are float32 (float64 for a float64 param); a bf16 or
fp16 param is read into the compute dtype and rounded back once, at the store.
"""

from __future__ import annotations

import math
from enum import IntEnum

import torch
from torch import Tensor


class WeightDecayMode(IntEnum):
    """How weight decay enters the update; values match csrc/include/fusedopt/adam_rule.h."""

    L2 = 0  # g += wd * p, Adam (Kingma & Ba) with an L2 penalty
    DECOUPLED = 1  # p *= 1 - lr * wd, AdamW (Loshchilov & Hutter), as torch does it
    FULLY_DECOUPLED = 2  # p *= 1 - wd * lr / lr_max: the decay ignores the lr's scale


def compute_dtype(param_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def adam_step_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None,
    step: Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    weight_decay_mode: WeightDecayMode,
    lr_max: float,
    amsgrad: bool,
    maximize: bool,
    grad_scale: float | None = None,
) -> None:
    """One Adam/AdamW step of one tensor, in place (Kingma & Ba 2015, Algorithm 1).

    `step` is the count before this step; it is incremented here. With
    `grad_scale` (GradScaler), the gradient is divided by it first and stored
    back unscaled, as torch's fused optimizers do.
    """
    dtype = compute_dtype(param.dtype)
    p = param.to(dtype)
    g = grad.to(dtype)
    if grad_scale is not None:
        g = g / grad_scale
        grad.copy_(g)
    if maximize:
        g = -g
    # t <- t + 1
    step += 1
    t = step.item()
    # g_t <- grad f(theta_{t-1}) (+ lambda * theta_{t-1} for L2)
    if weight_decay_mode == WeightDecayMode.L2 and weight_decay != 0:
        g = g + weight_decay * p
    # theta_{t-1} <- (1 - lr * lambda) * theta_{t-1} (decoupled decay, AdamW)
    if weight_decay_mode == WeightDecayMode.DECOUPLED:
        p = p * (1 - lr * weight_decay)
    if weight_decay_mode == WeightDecayMode.FULLY_DECOUPLED:
        p = p * (1 - weight_decay * lr / lr_max)
    # m_t <- beta1 * m_{t-1} + (1 - beta1) * g_t
    exp_avg.lerp_(g, 1 - beta1)
    # v_t <- beta2 * v_{t-1} + (1 - beta2) * g_t^2
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    # AMSGrad (Reddi et al. 2018): normalize by the running maximum of v_t
    v = exp_avg_sq
    if amsgrad:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    # theta_t <- theta_{t-1} - lr * m_hat_t / (sqrt(v_hat_t) + eps), with the bias
    # corrections m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t) folded
    # into the step size and the denominator as torch does
    bias_correction1 = 1 - beta1**t
    bias_correction2 = 1 - beta2**t
    step_size = lr / bias_correction1
    denom = v.sqrt() / math.sqrt(bias_correction2) + eps
    p = p + (-step_size) * exp_avg / denom
    param.copy_(p)
