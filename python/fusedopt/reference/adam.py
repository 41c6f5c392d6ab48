"""Adam and AdamW (Kingma & Ba 2015, Algorithm 1; Loshchilov & Hutter 2019),
in torch.optim.Adam's operation order (`_single_tensor_adam`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fusedopt.reference import WeightDecayMode, decay_factor, load_grad


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
    # theta_t <- theta_{t-1} - lr * m_hat_t / (sqrt(v_hat_t) + eps), with the bias
    # corrections m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t) folded
    # into the step size and the denominator as torch does
    step_size = lr / (1 - beta1**t)
    denom = v.sqrt() / math.sqrt(1 - beta2**t) + eps
    param.copy_(p + (-step_size) * exp_avg / denom)
    state["step"] += 1
