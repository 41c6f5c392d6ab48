"""SGD with momentum, dampening and Nesterov momentum (Sutskever et al. 2013),
in torch.optim.SGD's form (`_single_tensor_sgd`): the lr multiplies the
momentum buffer's output, not its input, so a schedule changes the step of the
accumulated velocity at once (as in torch; Loshchilov & Hutter's SGDW,
Algorithm 1, puts the lr inside the buffer instead)."""

from __future__ import annotations

from torch import Tensor

from fusedopt.reference import WeightDecayMode, decay_factor, load_grad


def sgd(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    weight_decay_mode: int,
    lr_max: float,
    nesterov: bool,
    maximize: bool,
    first_step: bool,
    grad_scale: float | None = None,
) -> None:
    p, g = load_grad(param, grad, grad_scale)
    if maximize:
        g = -g
    # g_t <- grad f(theta_{t-1}) (+ lambda * theta_{t-1} for L2)
    if weight_decay_mode == WeightDecayMode.L2 and weight_decay != 0:
        g = g + weight_decay * p
    # theta_{t-1} <- (1 - lr * lambda) * theta_{t-1} (decoupled decay, SGDW)
    p = p * decay_factor(weight_decay_mode, weight_decay, lr, lr_max)
    if momentum != 0:
        buf = state["momentum_buffer"]
        # b_1 <- g_1; b_t <- mu * b_{t-1} + (1 - dampening) * g_t
        if first_step:
            buf.copy_(g)
        else:
            buf.mul_(momentum).add_(g, alpha=1 - dampening)
        # Nesterov: g_t + mu * b_t; else b_t
        g = g + momentum * buf if nesterov else buf
    # theta_t <- theta_{t-1} - lr * g_t
    param.copy_(p + (-lr) * g)
