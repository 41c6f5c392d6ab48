"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms",
arXiv:2302.06675, Algorithm 2, "Lion with decoupled weight decay"):

    c_t     <- beta1 m_{t-1} + (1 - beta1) g_t
    theta_t <- theta_{t-1} - eta_t (sign(c_t) + lambda theta_{t-1})
    m_t     <- beta2 m_{t-1} + (1 - beta2) g_t

with fusedopt's weight-decay modes (fusedopt.reference.WeightDecayMode): the
paper's decay is DECOUPLED, theta (1 - eta lambda) - eta sign(c), the same
update written as lucidrains' lion-pytorch (`update_fn`, state key 'exp_avg')
writes it:

    p.data.mul_(1 - lr * wd)
    update = exp_avg.clone().mul_(beta1).add(grad, alpha=1 - beta1).sign_()
    p.add_(update, alpha=-lr)
    exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)

and the order this function follows, so that its fp32 results are the
kernels'. Two differences from lion-pytorch, both of rounding only: its `add`
with `alpha` is an FMA in torch's vectorized CPU kernel, where c and m here
are sums of separately rounded products (sign(c) can differ where |c| is an
ulp); and its `decoupled_weight_decay=True` (wd divided by the lr at
construction) is fusedopt's FULLY_DECOUPLED mode with lr_max that lr.
sign(0) = 0, as torch.sign (and sign(NaN) = 0 too)."""

from __future__ import annotations

from torch import Tensor

from fusedopt.reference import WeightDecayMode, decay_factor, load_grad


def lion(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
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
    # theta_{t-1} <- (1 - eta_t lambda) theta_{t-1} (decoupled decay, the paper's)
    p = p * decay_factor(weight_decay_mode, weight_decay, lr, lr_max)
    exp_avg = state["exp_avg"]
    # c_t <- beta1 m_{t-1} + (1 - beta1) g_t
    c = exp_avg * beta1 + g * (1 - beta1)
    # theta_t <- theta_{t-1} - eta_t sign(c_t)
    param.copy_(p + (-lr) * c.sign())
    # m_t <- beta2 m_{t-1} + (1 - beta2) g_t
    exp_avg.mul_(beta2).add_(g * (1 - beta2))
