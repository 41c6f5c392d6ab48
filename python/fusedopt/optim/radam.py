"""fusedopt.RAdam: a drop-in replacement for torch.optim.RAdam.

torch's signature, defaults, group keys, state keys and state_dict layout
(`step` a float32 scalar tensor; `exp_avg`, `exp_avg_sq`), so checkpoints move
both ways. The rectification term and the rho_t > 5 switch are per-tensor
scalars computed in double, as torch does from Python floats
(csrc/include/fusedopt/rules/radam.h). Differences, all deliberate: a fused
backend steps every group (`backend=`), bf16/fp16 params keep float32 states
(Note [fp32 states of low-precision params] in fusedopt/optim/base.py), and
`differentiable=True` and `foreach=True` are refused.
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
    check_lr_and_weight_decay,
    decay_defaults,
    weight_decay_hyper,
)
from fusedopt.registry import RULES


class RAdam(FusedOptimizer):
    """RAdam (Liu et al., 2020) with torch.optim.RAdam's exact interface.

    `decoupled_weight_decay=True` gives RAdamW; `weight_decay_mode` ("l2",
    "decoupled", "fully_decoupled") and `lr_max` are fusedopt's one keyword
    for the decay on every class (fusedopt.optim.base.decay_defaults).
    `backend` is one of "auto", "cuda", "triton", "cpu", "reference" (see
    fusedopt.backends).
    """

    rule = RULES["radam"]
    group_key_defaults = {"capturable": False}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
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
        check_lr_and_weight_decay(lr, weight_decay)
        check_eps(eps)
        check_betas(betas)
        check_fused_flags(foreach, differentiable, None)
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "decoupled_weight_decay": decoupled_weight_decay,
            "differentiable": differentiable,
            **decay_defaults(weight_decay_mode, lr_max, decoupled_weight_decay),
        }
        super().__init__(params, defaults, backend)

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return {
            "beta1": float(beta1),
            "beta2": float(beta2),
            "eps": group["eps"],
            **weight_decay_hyper(group),
            "maximize": group["maximize"],
        }
