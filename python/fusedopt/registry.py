"""The rules fusedopt steps: one entry per update rule, the single place where
Python names a rule's op, states and hyperparameters.

A rule's entry must agree with its C++ header (csrc/include/fusedopt/rules/
<name>.h: kStateNames, kHasStep, kHyper) and its Triton mirror
(kernels/rules/<name>.py); tests/test_registry.py checks the op schemas.

Note [step-count protocol]: every backend computes a tensor's per-step scalars
(bias corrections, ...) from its count *plus one*, and advances the count only
after the element pass: the host adds 1 to CPU-held counts after the launches
return, and device-held counts (the GPU backends' layout: Note [counts on the
device] in fusedopt/optim/base.py) are advanced by one last launch that a
nonzero `found_inf` turns into a no-op. So a launch that fails, or a step that
GradScaler skips, leaves every count as it was.

Note [state-major lists]: an op takes the states of a call as one list,
state by state: [exp_avg of every param, then exp_avg_sq of every param, ...],
holding only the states this step uses (Rule.used_states).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fusedopt.reference.adadelta import adadelta as adadelta_reference
from fusedopt.reference.adafactor import adafactor as adafactor_reference
from fusedopt.reference.adagrad import adagrad as adagrad_reference
from fusedopt.reference.adam import adam as adam_reference
from fusedopt.reference.adamax import adamax as adamax_reference
from fusedopt.reference.asgd import asgd as asgd_reference
from fusedopt.reference.lion import lion as lion_reference
from fusedopt.reference.nadam import nadam as nadam_reference
from fusedopt.reference.radam import radam as radam_reference
from fusedopt.reference.rmsprop import rmsprop as rmsprop_reference
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
    # Per-tensor float32 scalar states besides "step" (NAdam's mu_product),
    # passed after the counts in state_steps, scalar-major: Note [scalar
    # states] in csrc/include/fusedopt/core/rule.h.
    scalars: tuple[str, ...] = ()
    # A hyperparameter that is True for a call whose states were created in
    # this step (SGD's first step copies the gradient into the buffer): the
    # optimizer splits such params into a call of their own. None: no such flag.
    fresh_flag: str | None = None
    # The states that never go below zero (second moments, sums of squares,
    # step sizes): with state_dtype="int8" they take the unsigned dynamic map,
    # whose 256 codes all lie in [0, 1], the others the signed one
    # (fusedopt.reference.codecs; bitsandbytes' "udynamic" and "dynamic").
    nonnegative: tuple[str, ...] = ()
    # Note [param-shaped states]: for a rule whose states are not all of its
    # param's shape (factored moments), (state name, param) -> the state's
    # shape, or None where that param keeps no such state. None: every used
    # state has its param's shape and every param keeps every used state.
    state_shape: Callable[[str, Any], tuple[int, ...] | None] | None = None
    # The backends that implement the rule; None: every backend.
    backends: tuple[str, ...] | None = None

    def states_of(self, param: Any, used: tuple[str, ...]) -> tuple[str, ...]:
        """The used states that `param` keeps (all of them, but with state_shape)."""
        if self.state_shape is None:
            return used
        return tuple(name for name in used if self.state_shape(name, param) is not None)

    @property
    def scalar_keys(self) -> tuple[str, ...]:
        """The state keys of the op's state_steps runs, in order."""
        return ("step", *self.scalars) if self.has_step else ()

    @property
    def scalar_lists(self) -> int:
        return len(self.scalar_keys)

    @property
    def op(self):
        import torch

        return getattr(torch.ops.fusedopt, f"{self.name}_step_")


def _adam_states(h: Mapping[str, Any]) -> tuple[str, ...]:
    moments = ("exp_avg", "exp_avg_sq")
    return (*moments, "max_exp_avg_sq") if h["amsgrad"] else moments


def _rmsprop_states(h: Mapping[str, Any]) -> tuple[str, ...]:
    momentum = ("momentum_buffer",) if h["momentum"] > 0 else ()
    return ("square_avg", *momentum, *(("grad_avg",) if h["centered"] else ()))


def _all_states(states: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[str, ...]]:
    """used_states of a rule that reads and writes every state at every step."""
    return lambda h: states


def _adafactor_states(h: Mapping[str, Any]) -> tuple[str, ...]:
    second = ("row_var", "col_var", "variance")
    return (*second, "exp_avg") if h["first_moment"] else second


def _adafactor_state_shape(name: str, param: Any) -> tuple[int, ...] | None:
    """torch.optim.Adafactor's shapes: a param of 2+ dims is factored over its
    last two dims (row_var: last dim 1; col_var: second-to-last dim 1), a
    vector or 0-dim param keeps a full `variance`; `exp_avg` is full."""
    shape = tuple(param.shape)
    factored = len(shape) > 1
    if name == "row_var":
        return (*shape[:-1], 1) if factored else None
    if name == "col_var":
        return (*shape[:-2], 1, shape[-1]) if factored else None
    if name == "variance":
        return None if factored else shape
    return shape


def _sgd_states(h: Mapping[str, Any]) -> tuple[str, ...]:
    return ("momentum_buffer",) if h["momentum"] != 0 else ()


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            name="adadelta",
            states=("square_avg", "acc_delta"),
            nonnegative=("square_avg", "acc_delta"),
            has_step=True,
            hyper=("rho", "eps", "weight_decay", "weight_decay_mode", "lr_max", "maximize"),
            used_states=_all_states(("square_avg", "acc_delta")),
            reference=adadelta_reference,
        ),
        Rule(
            name="adagrad",
            states=("sum",),
            nonnegative=("sum",),
            has_step=True,
            hyper=("lr_decay", "eps", "weight_decay", "weight_decay_mode", "lr_max", "maximize"),
            used_states=_all_states(("sum",)),
            reference=adagrad_reference,
        ),
        Rule(
            name="adam",
            states=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
            nonnegative=("exp_avg_sq", "max_exp_avg_sq"),
            has_step=True,
            hyper=(
                "beta1",
                "beta2",
                "eps",
                "weight_decay",
                "weight_decay_mode",
                "lr_max",
                "decay_after",
                "eps_mode",
                "correct_bias",
                "amsgrad",
                "maximize",
            ),
            used_states=_adam_states,
            reference=adam_reference,
        ),
        Rule(
            name="adamax",
            states=("exp_avg", "exp_inf"),
            nonnegative=("exp_inf",),
            has_step=True,
            hyper=(
                "beta1",
                "beta2",
                "eps",
                "weight_decay",
                "weight_decay_mode",
                "lr_max",
                "maximize",
            ),
            used_states=_all_states(("exp_avg", "exp_inf")),
            reference=adamax_reference,
        ),
        Rule(
            name="radam",
            states=("exp_avg", "exp_avg_sq"),
            nonnegative=("exp_avg_sq",),
            has_step=True,
            hyper=(
                "beta1",
                "beta2",
                "eps",
                "weight_decay",
                "weight_decay_mode",
                "lr_max",
                "maximize",
            ),
            used_states=_all_states(("exp_avg", "exp_avg_sq")),
            reference=radam_reference,
        ),
        Rule(
            name="asgd",
            states=("ax",),
            has_step=True,
            hyper=(
                "lambd",
                "alpha",
                "t0",
                "weight_decay",
                "weight_decay_mode",
                "lr_max",
                "maximize",
            ),
            used_states=lambda h: ("ax",),
            reference=asgd_reference,
            scalars=("eta", "mu"),
        ),
        Rule(
            name="nadam",
            states=("exp_avg", "exp_avg_sq"),
            nonnegative=("exp_avg_sq",),
            has_step=True,
            hyper=(
                "beta1",
                "beta2",
                "eps",
                "momentum_decay",
                "weight_decay",
                "weight_decay_mode",
                "lr_max",
                "maximize",
            ),
            used_states=lambda h: ("exp_avg", "exp_avg_sq"),
            reference=nadam_reference,
            scalars=("mu_product",),
        ),
        Rule(
            name="rmsprop",
            states=("square_avg", "momentum_buffer", "grad_avg"),
            nonnegative=("square_avg",),
            has_step=True,
            hyper=(
                "alpha",
                "eps",
                "weight_decay",
                "weight_decay_mode",
                "lr_max",
                "momentum",
                "centered",
                "maximize",
                "eps_in_sqrt",
                "tf_ema_order",
                "lr_in_momentum",
            ),
            used_states=_rmsprop_states,
            reference=rmsprop_reference,
        ),
        Rule(
            name="lion",
            states=("exp_avg",),
            has_step=False,
            hyper=("beta1", "beta2", "weight_decay", "weight_decay_mode", "lr_max", "maximize"),
            used_states=_all_states(("exp_avg",)),
            reference=lion_reference,
        ),
        Rule(
            name="rprop",
            states=("prev", "step_size"),
            nonnegative=("step_size",),
            has_step=True,
            hyper=("etaminus", "etaplus", "step_size_min", "step_size_max", "maximize"),
            used_states=_all_states(("prev", "step_size")),
            reference=rprop_reference,
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
    )
}


# Note [reduction rules]: rules that are not elementwise, whose step needs
# per-tensor or per-row/column reductions of the grads before the element pass
# (factored second moments). Apart from RULES, whose every rule every backend's
# elementwise traversal steps: a reduction rule's `backends` names the ones
# that implement it, and its states may have other shapes than its param's
# (Note [param-shaped states]).
REDUCTION_RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            name="adafactor",
            states=("row_var", "col_var", "variance", "exp_avg"),
            has_step=True,
            hyper=(
                "beta2_decay",
                "eps1",
                "eps2",
                "d",
                "weight_decay",
                "beta1",
                "first_moment",
                "relative_step",
                "warmup_init",
                "scale_parameter",
                "maximize",
            ),
            used_states=_adafactor_states,
            reference=adafactor_reference,
            state_shape=_adafactor_state_shape,
            backends=("reference", "cpu", "cuda", "triton"),
        ),
    )
}
