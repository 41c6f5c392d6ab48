"""The rule registry (fusedopt/registry.py) against what the C++ registered
(csrc/include/fusedopt/rules/registry.h, csrc/binding/step_args.h): one op
family fusedopt::<rule>_step_ with the same schema shape for every rule
(Note [one op family]), fake implementations for torch.compile, the test-only
ops of fusedopt._testing, the reference functions' keywords, and the C++
state names in the binding's messages."""

import inspect

import fusedopt  # noqa: F401  (registers the ops and their fake implementations)
import pytest
import torch
from _op_hyper import OP_HYPER, op_lists
from fusedopt.registry import REDUCTION_RULES, RULES

OVERLOADS = ["default", "tensor_lr"]
LISTS = ["params", "grads", "states", "state_steps"]
SCALER = ["grad_scale", "found_inf"]
# Note [store arguments] in csrc/binding/checks.h: a master-weight policy.
STORE = ["store_policy", "store", "store_tags", "rounding_seed"]
EMULATION_EXTRA = ["steps_in_kernel", "lr_in_kernel", "threads_per_block", "max_grid_blocks"]


def _schema(op_packet, overload):
    return getattr(op_packet, overload)._schema


def test_op_hyper_table_covers_every_rule():
    assert set(OP_HYPER) == set(RULES), "add the new rule to tests/_op_hyper.py"
    for name, rule in RULES.items():
        assert list(OP_HYPER[name]) == list(rule.hyper), name
        assert rule.used_states(OP_HYPER[name]) == rule.states, f"{name}: not every state used"


def test_one_op_per_rule_and_nothing_else():
    ops = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fusedopt::")}
    rules = (*RULES, *REDUCTION_RULES)  # the reduction rules: tests/test_adafactor.py
    steps = {f"fusedopt::{r}_step_{o}" for r in rules for o in ("", ".tensor_lr")}
    # The one op that is not a rule's: the global gradient norm (fusedopt/clip.py).
    assert ops == steps | {"fusedopt::grad_norm"}


@pytest.mark.parametrize("overload", OVERLOADS)
@pytest.mark.parametrize("name", RULES)
def test_step_op_schema(name, overload):
    rule = RULES[name]
    schema = _schema(rule.op, overload)
    args = schema.arguments
    assert [a.name for a in args] == [*LISTS, "lr", *rule.hyper, *SCALER, *STORE]
    assert str(args[4].type) == ("float" if overload == "default" else "Tensor")
    # The four lists and the store are mutated in place (Tensor(a!)[]); nothing else is.
    writes = [bool(a.alias_info and a.alias_info.is_write) for a in args]
    assert writes == [True] * 4 + [False] * (len(args) - 8) + [False, True, False, False]
    assert all(a.kwarg_only for a in args[4:]), "everything after the lists is keyword-only"
    assert [str(a.type) for a in args[-6:]] == ["Optional[Tensor]"] * 2 + [
        "int",
        "Optional[List[Tensor]]",
        "List[int]",
        "int",
    ]
    assert list(schema.returns) == []


@pytest.mark.parametrize("name", RULES)
def test_emulation_op_schema(name):
    pytest.importorskip(
        "fusedopt._testing", reason="fusedopt._testing is built only with FUSEDOPT_TESTING=1"
    )
    op = getattr(torch.ops.fusedopt_testing, f"{name}_emulate_step_")
    args = _schema(op, "default").arguments
    assert [a.name for a in args] == [
        *LISTS,
        "lr",
        *RULES[name].hyper,
        *SCALER,
        *STORE,
        *EMULATION_EXTRA,
    ]
    assert str(args[4].type) == "Tensor"


def test_testing_ops_are_one_per_rule_plus_the_launch_plan_and_the_norm():
    pytest.importorskip(
        "fusedopt._testing", reason="fusedopt._testing is built only with FUSEDOPT_TESTING=1"
    )
    ops = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fusedopt_testing::")}
    want = {f"fusedopt_testing::{r}_emulate_step_" for r in RULES}
    # The reduction rules' CUDA passes (tests/test_adafactor.py).
    want |= {f"fusedopt_testing::{r}_emulate_factored_step_" for r in REDUCTION_RULES}
    assert ops == want | {"fusedopt_testing::launch_plan", "fusedopt_testing::grad_norm_emulate"}


@pytest.mark.parametrize("name", RULES)
def test_reference_takes_the_op_hyperparameters(name):
    rule = RULES[name]
    params = inspect.signature(rule.reference).parameters
    keywords = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
    assert set(keywords) == {"lr", "grad_scale", *rule.hyper}


@pytest.mark.parametrize("overload", OVERLOADS)
@pytest.mark.parametrize("name", RULES)
def test_op_schema_and_fake_impl_pass_opcheck(name, overload):
    """torch.library.opcheck: the schema's mutation annotations are true, and
    the fake implementation is registered and agrees (torch.compile traces it)."""
    params, grads, states, steps = op_lists(name, [5, 17])
    lr = 1e-3 if overload == "default" else torch.tensor(1e-3)
    torch.library.opcheck(
        getattr(RULES[name].op, overload),
        (params, grads, states, steps),
        dict(lr=lr, **OP_HYPER[name]),
        test_utils=("test_schema", "test_faketensor"),
    )


STATES = [(name, state) for name in RULES for state in RULES[name].states]


@pytest.mark.parametrize("name,state", STATES, ids=[f"{n}-{s}" for n, s in STATES])
def test_wrong_dtype_state_error_names_the_state(name, state):
    """The binding's messages use the C++ kStateNames, which must be torch's
    keys as the Python registry names them, in the same order."""
    rule = RULES[name]
    numels = [5, 3]
    params, grads, states, steps = op_lists(name, numels)
    k = rule.states.index(state)
    states[k * len(numels)] = states[k * len(numels)].double()  # state-major: param 0
    before = [p.clone() for p in params]
    with pytest.raises(RuntimeError, match=rf"fusedopt: {state} 0 must be Float, got Double"):
        rule.op(params, grads, states, steps, lr=1e-3, **OP_HYPER[name])
    assert all(torch.equal(p, b) for p, b in zip(params, before)), "a refused call writes nothing"
