"""fusedopt.NAdam: a drop-in replacement for torch.optim.NAdam.

torch's signature, defaults, ValueErrors and state (`step`, `mu_product`,
`exp_avg`, `exp_avg_sq`; `step` and `mu_product` float32 0-dim tensors on the
CPU unless capturable; on the params' device on the cuda and triton backends,
as torch's capturable layout). `mu_product` is a per-tensor scalar state that
advances with the count (Note [scalar states] in
csrc/include/fusedopt/core/rule.h): on the GPU backends the kernels read and
advance it in device memory, so capturable=True and CUDA graphs work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from fusedopt.optim.base import (
    FusedOptimizer,
    check_betas,
    check_eps,
    check_fused_flags,
    decay_defaults,
    weight_decay_hyper,
)
from fusedopt.registry import RULES


class NAdam(FusedOptimizer):
    """NAdam (Dozat 2016) with torch.optim.NAdam's exact interface."""

    rule = RULES["nadam"]
    group_key_defaults = {"capturable": False}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        weight_decay_mode: str | None = None,
        lr_max: float | None = None,
        backend: str = "auto",
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        check_eps(eps)
        check_betas(betas)
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= momentum_decay:
            raise ValueError(f"Invalid momentum_decay value: {momentum_decay}")
        check_fused_flags(foreach, differentiable, None)
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum_decay": momentum_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            **decay_defaults(weight_decay_mode, lr_max, decoupled_weight_decay),
        }
        super().__init__(params, defaults, backend)

    def initial_state_value(self, group: Mapping[str, Any], key: str) -> float:
        return 1.0 if key == "mu_product" else 0.0

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return {
            "beta1": float(beta1),
            "beta2": float(beta2),
            "eps": float(group["eps"]),
            "momentum_decay": float(group["momentum_decay"]),
            **weight_decay_hyper(group),
            "maximize": group["maximize"],
        }
