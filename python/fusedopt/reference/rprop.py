"""Rprop (Riedmiller & Braun 1993, "A Direct Adaptive Method for Faster
Backpropagation Learning: The RPROP Algorithm"), in torch.optim.Rprop's form
(`_single_tensor_rprop`, the algorithm in its docstring): a step size per
element, grown by etaplus while the gradient keeps its sign and shrunk by
etaminus when it flips, where the element then does not move and its
remembered gradient becomes 0. The step sizes start at the group's lr (made
by the optimizer with the state); lr takes no part in a step."""

from __future__ import annotations

from torch import Tensor

from fusedopt.reference import load_grad


def rprop(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    lr: float,
    etaminus: float,
    etaplus: float,
    step_size_min: float,
    step_size_max: float,
    maximize: bool,
    grad_scale: float | None = None,
) -> None:
    p, g = load_grad(param, grad, grad_scale)
    if maximize:
        g = -g
    prev, step_size = state["prev"], state["step_size"]
    # g^i_prev g^i_t > 0: eta_+; < 0: eta_-; = 0: 1 (torch.sign: sign(NaN) = 0)
    factor = (g * prev).sign()
    factor[factor.gt(0)] = etaplus
    factor[factor.lt(0)] = etaminus
    factor[factor.eq(0)] = 1
    # eta^i_t <- clamp(eta^i_{t-1} * factor, Gamma_min, Gamma_max)
    step_size.mul_(factor).clamp_(step_size_min, step_size_max)
    # where the sign flipped: g^i_t <- 0
    g = g.clone()
    g[factor.eq(etaminus)] = 0
    # theta_t <- theta_{t-1} - eta_t sign(g_t)
    param.copy_(p.addcmul(g.sign(), step_size, value=-1))
    # g_prev <- g_t
    prev.copy_(g)
    state["step"] += 1
