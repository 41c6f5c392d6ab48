"""Fake (meta) implementations of fusedopt's ops, for torch.compile tracing.

The ops only mutate their arguments in place and return nothing, so the fake
implementation has nothing to compute.
"""

import torch

from fusedopt import _extension

if _extension.loaded():

    def _adam_step_fake(*args, **kwargs) -> None:
        return None

    for _name in ("fusedopt::adam_step_", "fusedopt::adam_step_.tensor_lr"):
        torch.library.register_fake(_name)(_adam_step_fake)
