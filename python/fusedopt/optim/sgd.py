"""fusedopt.SGD: a drop-in replacement for torch.optim.SGD.

torch's signature, defaults, group keys and state (`momentum_buffer`, present
only with momentum, set to the first step's gradient as torch does), plus
`decoupled_weight_decay` as on torch.optim.Adam: the decay p *= 1 - lr * wd
instead of g += wd * p (SGDW). As in torch, the lr multiplies the momentum
buffer's output, not its input; Loshchilov & Hutter's SGDW (Algorithm 1)
applies eta_t inside the buffer, which differs from this form under a
schedule. The group key `decoupled_weight_decay` is fusedopt's addition: torch
ignores it when it loads a fusedopt state_dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from fusedopt.optim.base import FusedOptimizer, check_fused_flags, check_tensor_lr
from fusedopt.reference import WeightDecayMode
from fusedopt.registry import RULES


class SGD(FusedOptimizer):
    """Stochastic gradient descent with torch.optim.SGD's exact interface."""

    rule = RULES["sgd"]

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        backend: str = "auto",
    ) -> None:
        check_tensor_lr(lr)
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        check_fused_flags(foreach, differentiable, fused)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults, backend)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            group.setdefault("decoupled_weight_decay", False)

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "momentum": float(group["momentum"]),
            "dampening": float(group["dampening"]),
            "weight_decay": float(group["weight_decay"]),
            "weight_decay_mode": int(
                WeightDecayMode.DECOUPLED
                if group.get("decoupled_weight_decay", False)
                else WeightDecayMode.L2
            ),
            "lr_max": 1.0,
            "nesterov": group["nesterov"],
            "maximize": group["maximize"],
            "first_step": False,  # set per call by the base (Rule.fresh_flag)
        }
