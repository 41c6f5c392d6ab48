"""The Triton mirrors of the update rules: one module per rule, named as its
C++ header (csrc/include/fusedopt/rules/<name>.h) and its entry in
fusedopt.registry.RULES, holding the same names as the header:

    STATE_NAMES, HAS_STEP, STATE_SETS   kStateNames, kHasStep, kStateSets
    <STATE> constants                   the State enum: indices into the state tuple
    Config, config(hyper)               Config, config()
    state_used(k, config)               state_used()
    Launch, launch(config)              the fp32 per-launch constants (kernel arguments)
    PerTensor, per_tensor(config, lr, step)
                                        the per-tensor scalars, in double on the host
    per_tensor_device(config, lr, step) the same in float64 on the device (@triton.jit)
    update(p, g, s, USED, h, t)         one block of elements in fp32 (@triton.jit)

kernels/mta.py is the one kernel frame that loads, stores and traverses for
every rule; a rule never touches memory.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def get(name: str) -> ModuleType:
    """The rule module `name` (fusedopt.registry's rule name)."""
    return importlib.import_module(f"{__name__}.{name}")
