"""Adagrad (Duchi, Hazan & Singer 2011), in torch.optim.Adagrad's operation
order (`_single_tensor_adagrad`, its dense branch). `sum` starts at
initial_accumulator_value: the optimizer creates it (fusedopt/optim/adagrad.py)."""

from __future__ import annotations

from torch import Tensor

from fusedopt.reference import WeightDecayMode, decay_factor, load_grad


def adagrad(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    lr: float,
    lr_decay: float,
    eps: float,
    weight_decay: float,
    weight_decay_mode: int,
    lr_max: float,
    maximize: bool,
    grad_scale: float | None = None,
) -> None:
    p, g = load_grad(param, grad, grad_scale)
    # t <- t + 1
    t = state["step"].item() + 1
    if maximize:
        g = -g
    # g_t <- grad f(theta_{t-1}) (+ lambda * theta_{t-1} for L2)
    if weight_decay_mode == WeightDecayMode.L2 and weight_decay != 0:
        g = g + weight_decay * p
    # gamma~ <- gamma / (1 + (t - 1) eta)
    clr = lr / (1 + (t - 1) * lr_decay)
    # theta_{t-1} <- (1 - gamma~ * lambda) * theta_{t-1} (decoupled decay, by the lr
    # this step applies)
    p = p * decay_factor(weight_decay_mode, weight_decay, clr, lr_max)
    state_sum = state["sum"]
    # state_sum_t <- state_sum_{t-1} + g_t^2
    state_sum.addcmul_(g, g, value=1)
    # theta_t <- theta_{t-1} - gamma~ g_t / (sqrt(state_sum_t) + eps)
    std = state_sum.sqrt() + eps
    param.copy_(p + (-clr) * g / std)
    state["step"] += 1
