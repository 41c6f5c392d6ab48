"""Adam and AdamW (Kingma & Ba 2015, Algorithm 1; Loshchilov & Hutter 2019),
in torch.optim.Adam's operation order (`_single_tensor_adam`), with the eps
and bias-correction conventions of other sources (EpsMode, `correct_bias`)
and transformers.AdamW's decay order (`decay_after`): Note [Adam conventions]
in csrc/include/fusedopt/rules/adam.h. Each form below is its source's
formula, written out apart."""

from __future__ import annotations

import math
from enum import IntEnum

import torch
from torch import Tensor

from fusedopt.reference import WeightDecayMode, decay_factor, load_grad


class EpsMode(IntEnum):
    """Where eps enters; values match EpsMode in rules/adam.h (the op schema)."""

    TORCH = 0  # sqrt(v) / sqrt(1 - beta2^t) + eps: torch.optim.Adam
    HAT = 1  # sqrt(v) + eps, the bias corrections in the step size: Kingma & Ba's
    ROOT = 2  # sqrt(v_hat + eps): optax's eps_root


def adam(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    weight_decay_mode: int,
    lr_max: float,
    decay_after: bool,
    eps_mode: int,
    correct_bias: bool,
    amsgrad: bool,
    maximize: bool,
    grad_scale: float | None = None,
) -> None:
    p, g = load_grad(param, grad, grad_scale)
    if maximize:
        g = -g
    # t <- t + 1
    t = state["step"].item() + 1
    # g_t <- grad f(theta_{t-1}) (+ lambda * theta_{t-1} for L2)
    if weight_decay_mode == WeightDecayMode.L2 and weight_decay != 0:
        g = g + weight_decay * p
    # theta_{t-1} <- (1 - lr * lambda) * theta_{t-1} (decoupled decay, AdamW)
    if not decay_after:
        p = p * decay_factor(weight_decay_mode, weight_decay, lr, lr_max)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    # m_t <- beta1 * m_{t-1} + (1 - beta1) * g_t
    exp_avg.lerp_(g, 1 - beta1)
    # v_t <- beta2 * v_{t-1} + (1 - beta2) * g_t^2
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    # AMSGrad (Reddi et al. 2018): normalize by the running maximum of v_t
    v = exp_avg_sq
    if amsgrad:
        max_exp_avg_sq = state["max_exp_avg_sq"]
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    # m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t); without correct_bias
    # (BERT's original and transformers.AdamW's correct_bias=False) m and v as they are
    bias_correction1 = 1 - beta1**t if correct_bias else 1.0
    bias_correction2 = 1 - beta2**t if correct_bias else 1.0
    if eps_mode == EpsMode.TORCH:
        # theta_t <- theta_{t-1} - lr * m_hat / (sqrt(v_hat) + eps), the corrections
        # folded into the step size and the denominator as torch does
        step_size = lr / bias_correction1
        denom = v.sqrt() / math.sqrt(bias_correction2) + eps
    elif eps_mode == EpsMode.HAT:
        # Kingma & Ba 2015, Section 2, the "more efficient" order: alpha_t = alpha *
        # sqrt(1 - beta2^t) / (1 - beta1^t), theta_t <- theta_{t-1} - alpha_t * m_t /
        # (sqrt(v_t) + eps_hat); TF/Keras' Adam and transformers.AdamW (v4.x)
        step_size = lr * math.sqrt(bias_correction2) / bias_correction1
        denom = v.sqrt() + eps
    else:
        # optax.scale_by_adam(eps=0, eps_root=eps): m_hat / sqrt(v_hat + eps_root)
        step_size = lr / bias_correction1
        denom = (v / bias_correction2 + eps).sqrt()
    p = p + (-step_size) * exp_avg / denom
    if decay_after:
        # transformers.AdamW (v4.x), after the update: if wd > 0:
        # p.add_(p, alpha=-lr * wd), the decoupled rate applied to the updated p
        rate = {
            WeightDecayMode.DECOUPLED: lr * weight_decay,
            WeightDecayMode.FULLY_DECOUPLED: weight_decay * lr / lr_max,
        }.get(weight_decay_mode, 0.0)
        if rate != 0:
            p = p + (-rate) * p
    param.copy_(p)
    state["step"] += 1
