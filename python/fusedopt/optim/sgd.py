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

from fusedopt.optim.base import (
    FusedOptimizer,
    check_fused_flags,
    check_lr_and_weight_decay,
    decay_defaults,
    weight_decay_hyper,
)
from fusedopt.registry import RULES


class SGD(FusedOptimizer):
    """Stochastic gradient descent with torch.optim.SGD's exact interface."""

    rule = RULES["sgd"]
    group_key_defaults = {"nesterov": False}

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
        weight_decay_mode: str | None = None,
        lr_max: float | None = None,
        backend: str = "auto",
    ) -> None:
        check_lr_and_weight_decay(lr, weight_decay)
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
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
            **decay_defaults(weight_decay_mode, lr_max, decoupled_weight_decay),
        }
        super().__init__(params, defaults, backend)

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "momentum": float(group["momentum"]),
            "dampening": float(group["dampening"]),
            **weight_decay_hyper(group),
            "nesterov": group["nesterov"],
            "maximize": group["maximize"],
            "first_step": False,  # set per call by the base (Rule.fresh_flag)
        }
