"""Adadelta (Zeiler 2012, Algorithm 1), in torch.optim.Adadelta's operation
order (`_single_tensor_adadelta`), with torch's lr scaling the step."""

from __future__ import annotations

from torch import Tensor

from fusedopt.reference import WeightDecayMode, decay_factor, load_grad


def adadelta(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    lr: float,
    rho: float,
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
    # g_t <- grad f(theta_{t-1}) (+ lambda * theta_{t-1} for L2)
    if weight_decay_mode == WeightDecayMode.L2 and weight_decay != 0:
        g = g + weight_decay * p
    # theta_{t-1} <- (1 - lr * lambda) * theta_{t-1} (decoupled decay)
    p = p * decay_factor(weight_decay_mode, weight_decay, lr, lr_max)
    square_avg, acc_delta = state["square_avg"], state["acc_delta"]
    # v_t <- rho v_{t-1} + (1 - rho) g_t^2
    square_avg.mul_(rho).addcmul_(g, g, value=1 - rho)
    # Delta x_t <- sqrt(u_{t-1} + eps) / sqrt(v_t + eps) * g_t
    std = square_avg.add(eps).sqrt()
    delta = acc_delta.add(eps).sqrt() / std * g
    # u_t <- rho u_{t-1} + (1 - rho) Delta x_t^2
    acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
    # theta_t <- theta_{t-1} - lr * Delta x_t
    param.copy_(p + (-lr) * delta)
    state["step"] += 1
