"""Each rule's op arguments for the tests that call fusedopt's ops directly
(test_registry.py, test_cuda_build.py, test_cuda_emulation.py).

OP_HYPER[rule] names every hyperparameter of Rule.hyper, with values under
which a step uses every state of the rule (Rule.used_states). Adding a rule
adds its entry here; test_registry.py fails until it does.
"""

from __future__ import annotations

import torch
from fusedopt.registry import RULES

OP_HYPER = {
    "adam": dict(
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.1,
        weight_decay_mode=1,
        lr_max=0.125,
        amsgrad=True,
        maximize=False,
    ),
    "sgd": dict(
        momentum=0.9,
        dampening=0.1,
        weight_decay=0.1,
        weight_decay_mode=1,
        lr_max=0.125,
        nesterov=False,
        maximize=False,
        first_step=False,
    ),
    "rprop": dict(
        etaminus=0.5,
        etaplus=1.2,
        step_size_min=1e-6,
        step_size_max=50.0,
        maximize=False,
    ),
    "lion": dict(
        beta1=0.9,
        beta2=0.99,
        weight_decay=0.1,
        weight_decay_mode=1,
        lr_max=0.125,
        maximize=False,
    ),
}


def op_lists(rule: str, numels, dtype: torch.dtype = torch.float32, hyper=None):
    """(params, grads, states, state_steps) for one call: states state-major
    (Note [state-major lists] in fusedopt/registry.py), zero, float32; counts 0."""
    spec = RULES[rule]
    used = spec.used_states(OP_HYPER[rule] if hyper is None else hyper)
    params = [torch.randn(n).to(dtype) for n in numels]
    grads = [torch.randn(n).to(dtype) for n in numels]
    states = [torch.zeros(n) for _ in used for n in numels]
    steps = [torch.zeros(()) for _ in numels] if spec.has_step else []
    return params, grads, states, steps
