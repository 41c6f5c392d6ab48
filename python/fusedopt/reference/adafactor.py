"""Adafactor (Shazeer & Stern 2018), in torch.optim.Adafactor's operation order
(`_single_tensor_adafactor`), with the options of transformers' Adafactor that
torch lacks: first-moment momentum (`first_moment`, `beta1`: state `exp_avg`),
an external lr (`relative_step=False`), warm-up of the relative step
(`warmup_init`) and no parameter scaling (`scale_parameter=False`).

States (torch's keys and shapes): a param of 2+ dims keeps `row_var`
(its shape with the last dim 1) and `col_var` (with the second-to-last dim 1),
factored over its last two dims; a vector (or a 0-dim param) keeps `variance`,
of its shape. `exp_avg` (param's shape) only with first_moment.

`eps1` < 0 stands for torch's eps=(None, ...): the param dtype's machine
epsilon. A param with no element advances its step and changes nothing else
(torch's divides 0.0 by 0.0 on one: ZeroDivisionError in Python)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fusedopt.reference import load_grad

# transformers' warm-up of the relative step: rho_t = min(1e-6 * t, 1 / sqrt(t)).
WARMUP_RATE = 1e-6


def relative_step_size(lr: float, t: float, relative_step: bool, warmup_init: bool) -> float:
    """rho_t: min(lr, 1/sqrt(t)) (torch), min(1e-6 t, 1/sqrt(t)) (warm-up,
    transformers), or the external lr (relative_step=False)."""
    if not relative_step:
        return lr
    cap = WARMUP_RATE * t if warmup_init else lr
    return min(cap, 1 / t**0.5)


def adafactor(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    lr: float,
    beta2_decay: float,
    eps1: float,
    eps2: float,
    d: float,
    weight_decay: float,
    beta1: float,
    first_moment: bool,
    relative_step: bool,
    warmup_init: bool,
    scale_parameter: bool,
    maximize: bool,
    grad_scale: float | None = None,
) -> None:
    p, g = load_grad(param, grad, grad_scale)
    # t <- t + 1
    t = state["step"].item() + 1
    if param.numel() == 0:
        state["step"] += 1
        return
    if maximize:
        g = -g
    if eps1 < 0:
        eps1 = torch.finfo(param.dtype).eps
    # 1 - beta2_t <- t^tau
    one_minus_beta2 = t**beta2_decay
    # rho_t <- min(gamma, 1 / sqrt(t))
    rho = relative_step_size(lr, t, relative_step, warmup_init)
    # alpha_t <- max(eps2, RMS(theta_{t-1})) rho_t
    rms = p.norm(2).item() / math.sqrt(p.numel())
    alpha = max(eps2, rms) * rho if scale_parameter else rho
    # theta_{t-1} <- theta_{t-1} - gamma lambda theta_{t-1}
    if weight_decay != 0:
        p = p * (1 - lr * weight_decay)
    if param.dim() > 1:
        row_var, col_var = state["row_var"], state["col_var"]
        # R_t <- beta2_t R_{t-1} + (1 - beta2_t) mean_cols(G_t^2)
        row_var.lerp_((g * g).mean(dim=-1, keepdim=True), one_minus_beta2)
        # C_t <- beta2_t C_{t-1} + (1 - beta2_t) mean_rows(G_t^2)
        col_var.lerp_((g * g).mean(dim=-2, keepdim=True), one_minus_beta2)
        # V_t <- R_t C_t / max(mean(R_t), eps1)
        var_estimate = row_var * col_var / row_var.mean(dim=-2, keepdim=True).clamp(min=eps1)
    else:
        variance = state["variance"]
        # V_t <- beta2_t V_{t-1} + (1 - beta2_t) G_t^2
        variance.lerp_(g * g, one_minus_beta2)
        var_estimate = variance
    # U_t <- G_t / max(sqrt(V_t), eps1) (torch's rsqrt, then the product)
    update = var_estimate.clamp(min=eps1 * eps1).rsqrt() * g
    # U^_t <- U_t / max(1, RMS(U_t) / d), scaled by alpha_t
    rms_update = update.norm(2).item() / math.sqrt(update.numel())
    update = update * (alpha / max(1.0, rms_update / d))
    if first_moment:
        # m_t <- beta1 m_{t-1} + (1 - beta1) U^_t (transformers' momentum)
        exp_avg = state["exp_avg"]
        exp_avg.mul_(beta1).add_(update, alpha=1 - beta1)
        update = exp_avg
    # theta_t <- theta_{t-1} - U^_t
    param.copy_(p - update)
    state["step"] += 1
