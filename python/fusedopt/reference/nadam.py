"""NAdam (Dozat 2016, "Incorporating Nesterov Momentum into Adam", with the
momentum schedule mu_t = beta1 (1 - 0.5 * 0.96^(t * psi)) of its Algorithm 2)
in torch.optim.NAdam's operation order (`_single_tensor_nadam`): mu_product,
the running product of the mu_t, is a float32 0-dim state multiplied in
float32, as torch keeps it."""

from __future__ import annotations

from torch import Tensor

from fusedopt.reference import WeightDecayMode, decay_factor, load_grad


def momentum(beta1: float, momentum_decay: float, t: float) -> float:
    """mu_t = beta1 (1 - 0.5 * 0.96^(t * psi))."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (t * momentum_decay)))


def nadam(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    momentum_decay: float,
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
    # g_t (+ lambda * theta_{t-1} for L2); decoupled: theta_{t-1} *= 1 - lr * lambda
    if weight_decay_mode == WeightDecayMode.L2 and weight_decay != 0:
        g = g + weight_decay * p
    p = p * decay_factor(weight_decay_mode, weight_decay, lr, lr_max)
    mu = momentum(beta1, momentum_decay, t)
    mu_next = momentum(beta1, momentum_decay, t + 1)
    # prod_{i<=t} mu_i, in float32 as torch's 0-dim state
    mu_product = state["mu_product"]
    mu_product.mul_(mu)
    mu_product_next = mu_product.item() * mu_next
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    # m_t <- beta1 m_{t-1} + (1 - beta1) g_t;  v_t <- beta2 v_{t-1} + (1 - beta2) g_t^2
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    # sqrt(v_hat_t) + eps with v_hat_t = v_t / (1 - beta2^t)
    denom = (exp_avg_sq / (1 - beta2**t)).sqrt() + eps
    # theta_t <- theta_{t-1} - lr (1 - mu_t) / (1 - prod_{i<=t} mu_i) g_t / denom
    #                        - lr mu_{t+1} / (1 - prod_{i<=t+1} mu_i) m_t / denom
    p = p + (-lr * (1.0 - mu) / (1.0 - mu_product.item())) * g / denom
    p = p + ((-lr * mu_next) / (1.0 - mu_product_next)) * exp_avg / denom
    param.copy_(p)
    state["step"] += 1
