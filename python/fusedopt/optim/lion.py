"""fusedopt.Lion: Lion (Chen et al. 2023, "Symbolic Discovery of Optimization
Algorithms", Algorithm 2), which torch does not have.

The interface is torch's conventions for a new optimizer: the paper's
defaults (lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0), `maximize`,
`foreach` and `differentiable` (refused when set, as on every fusedopt
class), one state `exp_avg` (the key of lucidrains' lion-pytorch, so its
checkpoints load), no step count. The decay is the paper's, decoupled
(p *= 1 - lr * wd), unless `weight_decay_mode` says otherwise
(fusedopt.optim.base.decay_defaults). The update is a sign, so every element
moves by lr: the paper takes an lr 3-10x smaller than AdamW's and a weight
decay 3-10x larger, to keep lr * wd.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from fusedopt.optim.base import (
    FusedOptimizer,
    check_betas,
    check_fused_flags,
    check_lr_and_weight_decay,
    decay_defaults,
    weight_decay_hyper,
)
from fusedopt.registry import RULES


class Lion(FusedOptimizer):
    """Lion (EvoLved Sign Momentum). `weight_decay_mode` ("l2", "decoupled",
    "fully_decoupled"; default "decoupled") and `lr_max` are fusedopt's one
    keyword for the decay on every class; `backend` is one of "auto", "cuda",
    "triton", "cpu", "reference" (see fusedopt.backends)."""

    rule = RULES["lion"]
    # Decoupled by default: a group unpickled without the key stays decoupled.
    group_key_defaults = {"decoupled_weight_decay": True}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        weight_decay_mode: str | None = None,
        lr_max: float | None = None,
        backend: str = "auto",
    ) -> None:
        check_lr_and_weight_decay(lr, weight_decay)
        check_betas(betas)
        check_fused_flags(foreach, differentiable, fused=None)
        defaults = {
            "lr": lr,
            "betas": betas,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            **decay_defaults(weight_decay_mode, lr_max),
        }
        super().__init__(params, defaults, backend)

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return {
            "beta1": float(beta1),
            "beta2": float(beta2),
            **weight_decay_hyper(group, decoupled_default=True),
            "maximize": group["maximize"],
        }
