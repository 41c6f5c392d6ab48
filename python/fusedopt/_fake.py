"""Fake (meta) implementations of fusedopt's ops, for torch.compile tracing.

Every op of the family fusedopt::<rule>_step_ only mutates its arguments in
place and returns nothing, so the fake implementation has nothing to compute.
fusedopt::grad_norm returns a new float32 0-dim tensor on its tensors' device.
"""

import torch

from fusedopt import _extension
from fusedopt.registry import REDUCTION_RULES, RULES

if _extension.loaded():

    def _step_fake(*args, **kwargs) -> None:
        return None

    for _rule in (*RULES, *REDUCTION_RULES):
        for _overload in ("", ".tensor_lr"):
            torch.library.register_fake(f"fusedopt::{_rule}_step_{_overload}")(_step_fake)

    @torch.library.register_fake("fusedopt::grad_norm")
    def _grad_norm_fake(tensors, norm_type=2.0):
        device = tensors[0].device if tensors else torch.device("cpu")
        return torch.empty((), dtype=torch.float32, device=device)
