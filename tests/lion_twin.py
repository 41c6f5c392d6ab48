"""The torch twin of fusedopt.Lion for the parity tests: torch has no Lion, so
this is a plain torch.optim.Optimizer running Chen et al. 2023, Algorithm 2
(Lion with decoupled weight decay), with torch ops one tensor at a time, as
torch's `_single_tensor_*` functions do and in lucidrains' lion-pytorch order
(decay, then the sign step, then the momentum). Its states are in the
param's dtype, as torch keeps them.

It takes fusedopt.Lion's torch-style signature (`foreach` and
`differentiable` are accepted and ignored: it is always the single-tensor
loop) and raises the same ValueErrors, so that the harness compares
signatures, messages and state_dicts with it as with a torch class. Products
and sums are separate ops (no `add(..., alpha=)`, which torch's vectorized
CPU kernel makes an FMA): the same roundings as fusedopt's kernels, so that
sign(c) agrees exactly.
"""

from __future__ import annotations

import torch


class Lion(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
    ) -> None:
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = float(group["lr"])
            beta1, beta2 = group["betas"]
            weight_decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = -p.grad if group["maximize"] else p.grad
                state = self.state[p]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg = state["exp_avg"]
                # theta_{t-1} <- (1 - eta_t lambda) theta_{t-1}
                p.mul_(1 - lr * weight_decay)
                # c_t <- beta1 m_{t-1} + (1 - beta1) g_t
                c = exp_avg * beta1 + grad * (1 - beta1)
                # theta_t <- theta_{t-1} - eta_t sign(c_t)
                p.add_(c.sign(), alpha=-lr)
                # m_t <- beta2 m_{t-1} + (1 - beta2) g_t
                exp_avg.mul_(beta2).add_(grad * (1 - beta2))
        return loss
