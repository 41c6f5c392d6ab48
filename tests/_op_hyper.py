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
    "adadelta": dict(
        rho=0.9,
        eps=1e-6,
        weight_decay=0.1,
        weight_decay_mode=1,
        lr_max=0.125,
        maximize=False,
    ),
    "adagrad": dict(
        lr_decay=0.1,
        eps=1e-10,
        weight_decay=0.1,
        weight_decay_mode=1,
        lr_max=0.125,
        maximize=False,
    ),
    "adam": dict(
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.1,
        weight_decay_mode=1,
        lr_max=0.125,
        decay_after=False,
        eps_mode=0,
        correct_bias=True,
        amsgrad=True,
        maximize=False,
    ),
    "adamax": dict(
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.1,
        weight_decay_mode=1,
        lr_max=0.125,
        maximize=False,
    ),
    "radam": dict(
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.1,
        weight_decay_mode=1,
        lr_max=0.125,
        maximize=False,
    ),
    "asgd": dict(
        lambd=1e-2,
        alpha=0.75,
        t0=1.0,
        weight_decay=0.1,
        weight_decay_mode=1,
        lr_max=0.125,
        maximize=False,
    ),
    "nadam": dict(
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        momentum_decay=4e-3,
        weight_decay=0.1,
        weight_decay_mode=1,
        lr_max=0.125,
        maximize=False,
    ),
    "rmsprop": dict(
        alpha=0.9,
        eps=1e-8,
        weight_decay=0.1,
        weight_decay_mode=1,
        lr_max=0.125,
        momentum=0.9,
        centered=True,
        maximize=False,
        eps_in_sqrt=False,
        tf_ema_order=False,
        lr_in_momentum=False,
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
    return params, grads, states, scalar_states(rule, [0.0] * len(numels))


# Where a test starts a scalar state (Note [scalar states] in
# csrc/include/fusedopt/core/rule.h): torch's first values, or one a step
# leaves later (ASGD's mu < 1 once averaging has begun).
SCALAR_START = {"mu_product": 0.9, "eta": 0.01, "mu": 0.5}


def scalar_states(rule: str, counts, device="cpu") -> list:
    """The op's state_steps for params at these counts: the counts, then each
    scalar state of the rule at SCALAR_START, scalar-major."""
    spec = RULES[rule]
    if not spec.has_step:
        return []
    steps = [torch.tensor(float(c), device=device) for c in counts]
    return steps + [
        torch.tensor(SCALAR_START[key], device=device) for key in spec.scalars for _ in counts
    ]
