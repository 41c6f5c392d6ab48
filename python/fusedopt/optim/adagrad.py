"""fusedopt.Adagrad: a drop-in replacement for torch.optim.Adagrad.

torch's signature, defaults, group keys and state: `step` (a float32 scalar
on the CPU) and `sum`, created for every param in the constructor as torch
does, `sum` filled with initial_accumulator_value. As in torch, a state
created later (a param group added after construction) starts at the
constructor's value too, not at a group's own initial_accumulator_value.
Differences, all deliberate:
  - sparse gradients (nn.Embedding(sparse=True)) are refused: torch's sparse
    branch updates only the rows a gradient touches, which is not an
    elementwise rule over dense tensors; step those params with torch's class;
  - `weight_decay_mode` and `lr_max` (fusedopt.optim.base.decay_defaults);
    the decoupled modes decay by the lr the step applies, lr_decay included
    (p *= 1 - clr * wd, clr = lr / (1 + (t - 1) * lr_decay));
  - the differences every fusedopt class has (fp32 states for bf16/fp16
    params, the refused flags): fusedopt/optim/adam.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
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


class Adagrad(FusedOptimizer):
    """Adagrad (Duchi, Hazan & Singer, 2011) with torch.optim.Adagrad's exact interface."""

    rule = RULES["adagrad"]
    sparse_grad_hint = (
        "; torch.optim.Adagrad does (nn.Embedding(sparse=True)): step those params with it"
    )

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        weight_decay_mode: str | None = None,
        lr_max: float | None = None,
        backend: str = "auto",
    ) -> None:
        check_lr_and_weight_decay(lr, weight_decay)
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {lr_decay}")
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(
                f"Invalid initial_accumulator_value value: {initial_accumulator_value}"
            )
        check_eps(eps)
        check_fused_flags(foreach, differentiable, fused)
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
            **decay_defaults(weight_decay_mode, lr_max),
        }
        super().__init__(params, defaults, backend)
        # torch creates every param's state here, so a state_dict taken before
        # the first step already holds `step` and `sum`; `step` on the CPU
        # until a plan puts it where its backend keeps it (Note [counts on the
        # device] in fusedopt/optim/base.py).
        for group in self.param_groups:
            for p in group["params"]:
                self._new_state(group, p, self.rule.states, torch.device("cpu"))

    def initial_state_value(self, group: Mapping[str, Any], key: str) -> float:
        # torch's value, from the constructor (self.defaults), for every group.
        return float(self.defaults["initial_accumulator_value"])

    def share_memory(self) -> None:
        """Calls tensor.share_memory_() on the state sum tensors (as torch's)."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "lr_decay": float(group["lr_decay"]),
            "eps": float(group["eps"]),
            **weight_decay_hyper(group),
            "maximize": group["maximize"],
        }
