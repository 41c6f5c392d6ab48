"""fusedopt.ASGD: a drop-in replacement for torch.optim.ASGD.

torch's signature (every argument positional, as torch has it), defaults,
ValueErrors and state (`step`, `eta`, `mu`, `ax`). `eta` and `mu` are
per-tensor scalar states that advance with the count (Note [scalar states] in
csrc/include/fusedopt/core/rule.h). On the cuda and triton backends fusedopt
keeps them, and `step`, on the param's device, as torch does, and the kernels
read and advance them there (no read back: capturable=True and CUDA graphs
work); on the cpu and reference backends, on the CPU unless capturable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from fusedopt.optim.base import (
    FusedOptimizer,
    check_fused_flags,
    check_lr_and_weight_decay,
    decay_defaults,
    weight_decay_hyper,
)
from fusedopt.registry import RULES


class ASGD(FusedOptimizer):
    """Averaged SGD with torch.optim.ASGD's exact interface."""

    rule = RULES["asgd"]
    group_key_defaults = {"capturable": False}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        *,
        weight_decay_mode: str | None = None,
        lr_max: float | None = None,
        backend: str = "auto",
    ) -> None:
        check_lr_and_weight_decay(lr, weight_decay)
        check_fused_flags(foreach, differentiable, None)
        defaults = {
            "lr": lr,
            "lambd": lambd,
            "alpha": alpha,
            "t0": t0,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "capturable": capturable,
            **decay_defaults(weight_decay_mode, lr_max),
        }
        super().__init__(params, defaults, backend)

    def initial_state_value(self, group: Mapping[str, Any], key: str) -> float:
        # torch: eta starts at the group's lr, mu at 1.
        return {"eta": float(group["lr"]), "mu": 1.0}.get(key, 0.0)

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "lambd": float(group["lambd"]),
            "alpha": float(group["alpha"]),
            "t0": float(group["t0"]),
            **weight_decay_hyper(group),
            "maximize": group["maximize"],
        }
