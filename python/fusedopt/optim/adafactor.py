"""fusedopt.Adafactor: a drop-in replacement for torch.optim.Adafactor.

torch's signature, defaults, ValueErrors, group keys and state: `step` (a
float32 scalar on the CPU), and per param either `row_var` and `col_var`
(a param of 2+ dims, factored over its last two dims: its shape with the last
dim 1, and with the second-to-last dim 1) or `variance` (a vector or 0-dim
param, its shape). The rule: fusedopt/reference/adafactor.py.

Keywords torch lacks (transformers.optimization.Adafactor's options), each
a group key only when given, so a torch-style optimizer keeps torch's keys:
  - `beta1` (None: off): first-moment momentum on the clipped, scaled update,
    state `exp_avg` (m = beta1 m + (1 - beta1) U; p -= m), as transformers;
  - `relative_step=False`: the step size is the external lr (transformers'
    relative_step=False), instead of torch's min(lr, 1/sqrt(t));
  - `warmup_init=True`: the relative step is min(1e-6 t, 1/sqrt(t))
    (transformers'; needs relative_step);
  - `scale_parameter=False`: the step size is not scaled by max(eps2, RMS(p)).
transformers' Adafactor(lr=None, eps=(e1, e2), clip_threshold=c,
decay_rate=tau, beta1=b, weight_decay=wd, scale_parameter=s,
relative_step=r, warmup_init=w) is fusedopt.Adafactor(lr=1e-2 if r else lr,
beta2_decay=tau, eps=(e1, e2), d=c, weight_decay=wd, beta1=b,
scale_parameter=s, relative_step=r, warmup_init=w), with two differences,
both torch's choices (tests/test_adafactor.py measures what is left):
  - eps1: torch clamps the estimate (max(mean(R), eps1), max(V, eps1^2));
    transformers adds eps1 to g^2 before the means. With transformers'
    eps1 = 1e-30 both are inert unless a row of grads is all but zero;
  - weight decay: torch decays by lr * wd, transformers by its step size
    (alpha) * wd; the same where alpha = lr (relative_step=False,
    scale_parameter=False).

Differences from torch, all deliberate:
  - a zero-size param advances its step and changes nothing else: torch's
    RMS divides 0.0 by 0.0 on one (ZeroDivisionError);
  - eps=(None, ...) takes the machine epsilon of each param's dtype: torch's
    takes the first param's for the whole group;
  - fp32 states for bf16/fp16 params (fusedopt/optim/base.py), no host sync;
  - GradScaler's grad_scale and found_inf are applied in the step (torch's
    refuses them);
  - DTensor params (FSDP2) are refused: the row and column statistics span
    the shards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from fusedopt.optim.base import FusedOptimizer
from fusedopt.registry import REDUCTION_RULES

# The keywords torch lacks, with the values that leave torch's rule as it is.
EXTRA_DEFAULTS: dict[str, Any] = {
    "beta1": None,
    "relative_step": True,
    "warmup_init": False,
    "scale_parameter": True,
}


class Adafactor(FusedOptimizer):
    """Adafactor (Shazeer & Stern, 2018) with torch.optim.Adafactor's exact
    interface, plus transformers' beta1, relative_step, warmup_init and
    scale_parameter; `backend` is one of "auto", "cuda", "triton", "cpu",
    "reference" (see fusedopt.backends)."""

    rule = REDUCTION_RULES["adafactor"]

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        beta1: float | None = None,
        relative_step: bool = True,
        warmup_init: bool = False,
        scale_parameter: bool = True,
        backend: str = "auto",
    ) -> None:
        # torch's checks, with torch's messages.
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 >= beta2_decay:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps[0] is not None and not 0.0 <= eps[0]:
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
        if not 0.0 <= eps[1]:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
        if not 1.0 <= d:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
        if foreach:
            raise ValueError("fusedopt optimizers are fused; `foreach=True` cannot apply")
        if beta1 is not None and not 0.0 <= beta1 < 1.0:
            raise ValueError(f"beta1 should be in [0, 1) but is: {beta1}")
        if warmup_init and not relative_step:
            raise ValueError("`warmup_init=True` requires `relative_step=True`")
        extras = {
            "beta1": beta1,
            "relative_step": relative_step,
            "warmup_init": warmup_init,
            "scale_parameter": scale_parameter,
        }
        defaults = {
            "lr": lr,
            "beta2_decay": beta2_decay,
            "eps": eps,
            "d": d,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "maximize": maximize,
            **{k: v for k, v in extras.items() if v != EXTRA_DEFAULTS[k]},
        }
        super().__init__(params, defaults, backend)

    def whole_tensor_reason(self, group: Mapping[str, Any]) -> str | None:
        # Note [sharded params] in fusedopt/optim/base.py.
        return (
            super().whole_tensor_reason(group)
            or "its row and column statistics and its RMS span the shards"
        )

    def _bucket_keys(self, params: list[Tensor], grads: list[Tensor]) -> list[tuple]:
        # The factored kernels index rows and columns: a param of 2+ dims is
        # "dense" for them only when it and its grad are contiguous (others,
        # channels_last say, go to the reference backend).
        if any(p.is_complex() for p in params):
            raise RuntimeError("Adafactor does not support complex parameters")  # torch's words
        keys = super()._bucket_keys(params, grads)
        return [
            (device, dtype, dense and (p.dim() < 2 or (p.is_contiguous() and g.is_contiguous())))
            for (device, dtype, dense), p, g in zip(keys, params, grads)
        ]

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        eps1, eps2 = group["eps"]
        beta1 = group.get("beta1", EXTRA_DEFAULTS["beta1"])
        return {
            "beta2_decay": float(group["beta2_decay"]),
            # Negative: each param dtype's machine epsilon (torch's None).
            "eps1": -1.0 if eps1 is None else float(eps1),
            "eps2": float(eps2),
            "d": float(group["d"]),
            "weight_decay": float(group["weight_decay"]),
            "beta1": 0.0 if beta1 is None else float(beta1),
            "first_moment": beta1 is not None,
            "relative_step": bool(group.get("relative_step", True)),
            "warmup_init": bool(group.get("warmup_init", False)),
            "scale_parameter": bool(group.get("scale_parameter", True)),
            "maximize": bool(group["maximize"]),
        }
