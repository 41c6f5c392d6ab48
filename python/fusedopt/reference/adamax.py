"""Adamax (Kingma & Ba 2015, Algorithm 2: Adam with the infinity norm), in
torch.optim.Adamax's operation order (`_single_tensor_adamax`)."""

from __future__ import annotations

import torch
from torch import Tensor

from fusedopt.reference import WeightDecayMode, decay_factor, load_grad


def adamax(
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
    # theta_{t-1} <- (1 - lr * lambda) * theta_{t-1} (decoupled decay: fusedopt's)
    p = p * decay_factor(weight_decay_mode, weight_decay, lr, lr_max)
    exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
    # m_t <- beta1 * m_{t-1} + (1 - beta1) * g_t
    exp_avg.lerp_(g, 1 - beta1)
    # u_t <- max(beta2 * u_{t-1}, |g_t| + eps) (torch.maximum: NaN from either side)
    torch.maximum(exp_inf.mul_(beta2), g.abs() + eps, out=exp_inf)
    # theta_t <- theta_{t-1} - (lr / (1 - beta1^t)) * m_t / u_t
    param.copy_(p.addcdiv(exp_avg, exp_inf, value=-(lr / (1 - beta1**t))))
    state["step"] += 1
