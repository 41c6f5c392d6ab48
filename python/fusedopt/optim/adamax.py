"""fusedopt.Adamax: a drop-in replacement for torch.optim.Adamax.

torch's signature, defaults, group keys, state keys and state_dict layout
(`step` a float32 scalar tensor; `exp_avg`, `exp_inf`), so checkpoints move
both ways. torch's Adamax has L2 decay only; `weight_decay_mode` adds the
decoupled modes (p *= 1 - lr * wd, or 1 - wd * lr / lr_max) as on every
fusedopt class. Differences, all deliberate: a fused backend steps every
group (`backend=`), bf16/fp16 params keep float32 states (Note [fp32 states
of low-precision params] in fusedopt/optim/base.py), and
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


class Adamax(FusedOptimizer):
    """Adamax (Kingma & Ba, 2015: Adam with the infinity norm) with
    torch.optim.Adamax's exact interface.

    `weight_decay_mode` ("l2", torch's; "decoupled"; "fully_decoupled") and
    `lr_max` are fusedopt's one keyword for the decay on every class
    (fusedopt.optim.base.decay_defaults). `backend` is one of "auto", "cuda",
    "triton", "cpu", "reference" (see fusedopt.backends).
    """

    rule = RULES["adamax"]
    group_key_defaults = {"capturable": False}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
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
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "capturable": capturable,
            **decay_defaults(weight_decay_mode, lr_max),
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
