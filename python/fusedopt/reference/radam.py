"""RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and
Beyond", Algorithm 2), in torch.optim.RAdam's operation order
(`_single_tensor_radam`); decoupled decay as the authors' RAdamW."""

from __future__ import annotations

import math

from torch import Tensor

from fusedopt.reference import WeightDecayMode, decay_factor, load_grad


def radam(
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
    # theta_{t-1} <- (1 - lr * lambda) * theta_{t-1} (decoupled decay, RAdamW)
    p = p * decay_factor(weight_decay_mode, weight_decay, lr, lr_max)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    # m_t <- beta1 * m_{t-1} + (1 - beta1) * g_t
    exp_avg.lerp_(g, 1 - beta1)
    # v_t <- beta2 * v_{t-1} + (1 - beta2) * g_t^2
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    # m_hat_t <- m_t / (1 - beta1^t)
    m_hat = exp_avg / (1 - beta1**t)
    # rho_inf <- 2 / (1 - beta2) - 1; rho_t <- rho_inf - 2 t beta2^t / (1 - beta2^t)
    bias_correction2 = 1 - beta2**t
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2**t / bias_correction2
    # torch's threshold (the paper's Algorithm 2 says rho_t > 4)
    if rho_t > 5:
        # l_t <- sqrt(1 - beta2^t) / (sqrt(v_t) + eps)
        adaptive = math.sqrt(bias_correction2) / (exp_avg_sq.sqrt() + eps)
        # r_t <- sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        rect = math.sqrt(
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        )
        # theta_t <- theta_{t-1} - lr * m_hat_t * r_t * l_t
        param.copy_(p - m_hat * lr * adaptive * rect)
    else:
        # theta_t <- theta_{t-1} - lr * m_hat_t (un-rectified: momentum SGD)
        param.copy_(p - m_hat * lr)
    state["step"] += 1
