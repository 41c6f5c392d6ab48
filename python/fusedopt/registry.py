"""The rules fusedopt steps: one entry per update rule, the single place where
Python names a rule's op, states and hyperparameters.

A rule's entry must agree with its C++ header (csrc/include/fusedopt/rules/
<name>.h: kStateNames, kHasStep, kHyper) and its Triton mirror
(kernels/rules/<name>.py); tests/test_registry.py checks the op schemas.

Note [step-count protocol]: every backend computes a tensor's per-step scalars
(bias corrections, ...) from its count *plus one*, and advances the count only
after the element pass: the host adds 1 to CPU-held counts after the launches
return, and device-held counts (capturable mode) are advanced by one last
launch that a nonzero `found_inf` turns into a no-op. So a launch that fails,
or a step that GradScaler skips, leaves every count as it was.

Note [state-major lists]: an op takes the states of a call as one list,
state by state: [exp_avg of every param, then exp_avg_sq of every param, ...],
holding only the states this step uses (Rule.used_states).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fusedopt.reference.adam import adam as adam_reference
from fusedopt.reference.lion import lion as lion_reference
from fusedopt.reference.rprop import rprop as rprop_reference
from fusedopt.reference.sgd import sgd as sgd_reference


@dataclass(frozen=True)
class Rule:
    # The op fusedopt::<name>_step_, the C++ header rules/<name>.h, the Triton
    # module kernels/rules/<name>.py and the reference fusedopt.reference.<name>.
    name: str
    # torch's state keys, in the kernels' order.
    states: tuple[str, ...]
    # True when each param keeps a float32 `step` count (torch's key "step").
    has_step: bool
    # The op's hyperparameters after lr, in schema order.
    hyper: tuple[str, ...]
    # The states a step with these hyperparameters reads and writes.
    used_states: Callable[[Mapping[str, Any]], tuple[str, ...]]
    reference: Callable[..., None]
    # A hyperparameter that is True for a call whose states were created in
    # this step (SGD's first step copies the gradient into the buffer): the
    # optimizer splits such params into a call of their own. None: no such flag.
    fresh_flag: str | None = None

    @property
    def op(self):
        import torch

        return getattr(torch.ops.fusedopt, f"{self.name}_step_")


def _adam_states(h: Mapping[str, Any]) -> tuple[str, ...]:
    moments = ("exp_avg", "exp_avg_sq")
    return (*moments, "max_exp_avg_sq") if h["amsgrad"] else moments


def _sgd_states(h: Mapping[str, Any]) -> tuple[str, ...]:
    return ("momentum_buffer",) if h["momentum"] != 0 else ()


def _all_states(states: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[str, ...]]:
    """used_states of a rule that uses every state at every step."""
    return lambda h: states


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            name="adam",
            states=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
            has_step=True,
            hyper=(
                "beta1",
                "beta2",
                "eps",
                "weight_decay",
                "weight_decay_mode",
                "lr_max",
                "amsgrad",
                "maximize",
            ),
            used_states=_adam_states,
            reference=adam_reference,
        ),
        Rule(
            name="sgd",
            states=("momentum_buffer",),
            has_step=False,
            hyper=(
                "momentum",
                "dampening",
                "weight_decay",
                "weight_decay_mode",
                "lr_max",
                "nesterov",
                "maximize",
                "first_step",
            ),
            used_states=_sgd_states,
            reference=sgd_reference,
            fresh_flag="first_step",
        ),
        Rule(
            name="rprop",
            states=("prev", "step_size"),
            has_step=True,
            hyper=("etaminus", "etaplus", "step_size_min", "step_size_max", "maximize"),
            used_states=_all_states(("prev", "step_size")),
            reference=rprop_reference,
        ),
        Rule(
            name="lion",
            states=("exp_avg",),
            has_step=False,
            hyper=("beta1", "beta2", "weight_decay", "weight_decay_mode", "lr_max", "maximize"),
            used_states=_all_states(("exp_avg",)),
            reference=lion_reference,
        ),
    )
}
