"""fusedopt.Adadelta: a drop-in replacement for torch.optim.Adadelta.

torch's signature, defaults (lr=1.0: torch's lr scales the paper's step),
group keys and state (`step`, `square_avg`, `acc_delta`), plus the
`weight_decay_mode` and `lr_max` keywords (fusedopt.optim.base.decay_defaults).
The decoupled modes decay by p *= 1 - lr * wd: at the default lr of 1 that is
wd itself per step, so a decoupled wd here is a fraction per step (1e-4, say),
not an AdamW-scale 1e-2. Other differences: those of every fusedopt class
(fusedopt/optim/adam.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from fusedopt.optim.base import (
    FusedOptimizer,
    check_eps,
    check_fused_flags,
    check_lr_and_weight_decay,
    decay_defaults,
    weight_decay_hyper,
)
from fusedopt.registry import RULES


class Adadelta(FusedOptimizer):
    """Adadelta (Zeiler, 2012) with torch.optim.Adadelta's exact interface."""

    rule = RULES["adadelta"]
    group_key_defaults = {"capturable": False}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        weight_decay_mode: str | None = None,
        lr_max: float | None = None,
        backend: str = "auto",
    ) -> None:
        check_lr_and_weight_decay(lr, weight_decay)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_eps(eps)
        check_fused_flags(foreach, differentiable, None)
        defaults = {
            "lr": lr,
            "rho": rho,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "capturable": capturable,
            "foreach": foreach,
            "differentiable": differentiable,
            **decay_defaults(weight_decay_mode, lr_max),
        }
        super().__init__(params, defaults, backend)

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "rho": float(group["rho"]),
            "eps": float(group["eps"]),
            **weight_decay_hyper(group),
            "maximize": group["maximize"],
        }
