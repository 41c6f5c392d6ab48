"""Averaged SGD (Polyak & Juditsky 1992) with the decaying step size
eta_t = lr / (1 + lambd lr t)^alpha, in torch.optim.ASGD's operation order
(`_single_tensor_asgd`): eta and mu are float32 0-dim states that a step uses
and then recomputes for the next one."""

from __future__ import annotations

from torch import Tensor

from fusedopt.reference import WeightDecayMode, decay_factor, load_grad


def asgd(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    lr: float,
    lambd: float,
    alpha: float,
    t0: float,
    weight_decay: float,
    weight_decay_mode: int,
    lr_max: float,
    maximize: bool,
    grad_scale: float | None = None,
) -> None:
    p, g = load_grad(param, grad, grad_scale)
    if maximize:
        g = -g
    t = state["step"].item() + 1
    if weight_decay_mode == WeightDecayMode.L2 and weight_decay != 0:
        g = g + weight_decay * p
    p = p * decay_factor(weight_decay_mode, weight_decay, lr, lr_max)
    eta, mu = state["eta"].item(), state["mu"]
    # theta_t <- (1 - lambd eta) theta_{t-1} - eta g_t
    p = p * (1 - lambd * eta)
    p = p + (-eta) * g
    param.copy_(p)
    # ax_t <- ax_{t-1} + mu (theta_t - ax_{t-1}); a copy while mu = 1 (t <= t0 + 1)
    ax = state["ax"]
    if mu.item() != 1:
        ax.add_((p - ax) * mu)
    else:
        ax.copy_(p)
    # eta_{t+1} = lr / (1 + lambd lr t)^alpha;  mu_{t+1} = 1 / max(1, t - t0)
    state["eta"].fill_(lr / ((1 + lambd * lr * t) ** alpha))
    mu.fill_(1 / max(1, t - t0))
    state["step"] += 1
