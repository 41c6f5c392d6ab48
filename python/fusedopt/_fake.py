"""Fake (meta) implementations of fusedopt's ops, for torch.compile tracing.

Every op of the family fusedopt::<rule>_step_ only mutates its arguments in
place and returns nothing, so the fake implementation has nothing to compute.
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
