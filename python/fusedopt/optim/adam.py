"""fusedopt.Adam and fusedopt.AdamW: drop-in replacements for torch.optim's.

Same signatures, defaults, param-group keys, state keys and state_dict layout
as torch 2.x (`step` is a float32 scalar tensor; `exp_avg`, `exp_avg_sq`,
`max_exp_avg_sq`), so checkpoints move both ways and LR schedulers work as they
are. Differences, all deliberate:
  - every group is stepped by a fused backend (see fusedopt.backends); the
    extra `backend=` argument picks one, and `fusedopt.report(opt)` says which;
  - bf16/fp16 params keep float32 states (torch keeps them in the param's
    dtype), and the math runs in float32: Note [fp32 states of low-precision
    params] in fusedopt/optim/base.py;
  - `differentiable=True` and `foreach=True` are refused: a fused kernel is
    neither a graph of autograd ops nor a foreach loop.
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


class Adam(FusedOptimizer):
    """Adam (Kingma & Ba, 2015) with torch.optim.Adam's exact interface.

    `decoupled_weight_decay=True` gives AdamW; `weight_decay_mode` ("l2",
    "decoupled", "fully_decoupled") and `lr_max` are fusedopt's one keyword
    for the decay on every class (fusedopt.optim.base.decay_defaults).
    `backend` is one of "auto", "cuda", "triton", "cpu", "reference" (see
    fusedopt.backends).
    """

    rule = RULES["adam"]
    group_key_defaults = {"amsgrad": False, "capturable": False}
    sparse_grad_hint = ", please consider SparseAdam instead"

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        weight_decay_mode: str | None = None,
        lr_max: float | None = None,
        backend: str = "auto",
    ) -> None:
        check_lr_and_weight_decay(lr, weight_decay)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not (
            all(isinstance(beta, float) for beta in betas)
            or all(isinstance(beta, Tensor) for beta in betas)
        ):
            raise ValueError("betas must be either both floats or both Tensors")
        check_fused_flags(foreach, differentiable, fused)
        for i, beta in enumerate(betas):
            if isinstance(beta, Tensor) and beta.numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element")
        # As torch keeps them: floats, or 0-dim tensors (hyper() reads either).
        betas = tuple(b.squeeze() if isinstance(b, Tensor) else b for b in betas)
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
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
            "amsgrad": group["amsgrad"],
            "maximize": group["maximize"],
        }


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019) with torch.optim.AdamW's exact interface."""

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        weight_decay_mode: str | None = None,
        lr_max: float | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            weight_decay_mode=weight_decay_mode,
            lr_max=lr_max,
            backend=backend,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
