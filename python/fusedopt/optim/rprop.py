"""fusedopt.Rprop: a drop-in replacement for torch.optim.Rprop.

torch's signature, defaults, ValueErrors, group keys and states: `step` (a
float32 count, as torch keeps it; no formula reads it), `prev` (the last
gradient, 0 where its sign flipped) and `step_size` (one per element,
starting at the group's lr). The lr only seeds the step sizes, so a
scheduler that changes it later changes nothing, as in torch. No weight
decay, as in torch, so no weight-decay keywords.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from fusedopt.optim.base import FusedOptimizer, check_fused_flags, check_lr_and_weight_decay
from fusedopt.registry import RULES


class Rprop(FusedOptimizer):
    """Resilient backpropagation (Riedmiller & Braun, 1993) with
    torch.optim.Rprop's exact interface. `backend` is one of "auto", "cuda",
    "triton", "cpu", "reference" (see fusedopt.backends)."""

    rule = RULES["rprop"]
    group_key_defaults = {"capturable": False}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        backend: str = "auto",
    ) -> None:
        check_lr_and_weight_decay(lr, weight_decay=0.0)  # torch's lr checks; Rprop has no decay
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
        check_fused_flags(foreach, differentiable, fused=None)
        defaults = {
            "lr": lr,
            "etas": etas,
            "step_sizes": step_sizes,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "capturable": capturable,
        }
        super().__init__(params, defaults, backend)

    def initial_state_value(self, group: Mapping[str, Any], key: str) -> float:
        # torch: full_like(grad, lr) for the step sizes, zeros for prev.
        return float(group["lr"]) if key == "step_size" else 0.0

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        etaminus, etaplus = group["etas"]
        step_size_min, step_size_max = group["step_sizes"]
        return {
            "etaminus": float(etaminus),
            "etaplus": float(etaplus),
            "step_size_min": float(step_size_min),
            "step_size_max": float(step_size_max),
            "maximize": group["maximize"],
        }
