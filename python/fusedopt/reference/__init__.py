"""The reference rules: the plainest PyTorch code of each update rule.

They are the fallback where no kernel fits and the oracle every backend is
tested against, so they stay boring: one tensor at a time, one line per line of
the paper's pseudo-code, no fusion and no cleverness. One module per rule,
named as its C++ header (csrc/include/fusedopt/rules/<name>.h) and its Triton
mirror (kernels/rules/<name>.py).

Every rule function has one signature:
    rule(param, grad, state, *, lr, grad_scale=None, **hyperparameters)
`state` maps torch's state keys to this param's tensors: the states the step
uses (Rule.used_states) and, for a rule with step counts, "step" (the count
before this step; the function advances it by one at the end, as every
backend does: Note [step-count protocol] in fusedopt/registry.py). With
`grad_scale` (GradScaler) the gradient is divided by it first and stored back
unscaled, as torch's fused optimizers do.

Precision policy (the same as every fusedopt kernel): the math runs in float32
(float64 when the param is float64, which is how the tests build an fp64
oracle); optimizer states are float32 (float64 for a float64 param); a bf16 or
fp16 param is read into the compute dtype and rounded back once, at the store.
"""

from __future__ import annotations

from enum import IntEnum

import torch
from torch import Tensor


class WeightDecayMode(IntEnum):
    """How weight decay enters the update; values match
    csrc/include/fusedopt/rules/common.h (they are part of the op schemas)."""

    L2 = 0  # g += wd * p: torch.optim.Adam, torch.optim.SGD
    DECOUPLED = 1  # p *= 1 - lr * wd: AdamW (Loshchilov & Hutter), as torch does it
    FULLY_DECOUPLED = 2  # p *= 1 - wd * lr / lr_max: the decay ignores the lr's scale


def compute_dtype(param_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def load_grad(param: Tensor, grad: Tensor, grad_scale: float | None) -> tuple[Tensor, Tensor]:
    """(p, g) in the compute dtype; with GradScaler's scale, g is unscaled and
    stored back unscaled into `grad`."""
    dtype = compute_dtype(param.dtype)
    g = grad.to(dtype)
    if grad_scale is not None:
        g = g / grad_scale
        grad.copy_(g)
    return param.to(dtype), g


def decay_factor(mode: int, weight_decay: float, lr: float, lr_max: float) -> float:
    """The multiplier of p before the update under decoupled decay (1 for L2)."""
    if mode == WeightDecayMode.DECOUPLED:
        return 1 - lr * weight_decay
    if mode == WeightDecayMode.FULLY_DECOUPLED:
        return 1 - weight_decay * lr / lr_max
    return 1.0
