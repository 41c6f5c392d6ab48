"""torch.compile around step(), as torch documents it for its own optimizers
(https://pytorch.org/tutorials/recipes/compiling_optimizer_lr_scheduler.html):
a tensor lr that a scheduler changes at every step, `torch.compile(fn)` around
`opt.step(); sched.step()`. Every fusedopt class: the same results as eager,
no more graph breaks than torch's class of the same name, no recompile once
its states exist (Note [compiled steps] in fusedopt/optim/base.py)."""

from __future__ import annotations

import copy

import fusedopt
import pytest
import torch
from cases import CASES, exhaustive_params
from fusedopt.optim.base import FusedOptimizer
from torch._dynamo.utils import counters

STEPS = 4
# Classes that have no Case (tests/cases.py), with the options that use every state.
# The 8-bit classes: min_8bit_size 0, so that the small model's tensors keep
# 8-bit states (its largest has 32 elements).
EXTRA_KWARGS = {
    "HFAdamW": {"lr": 1e-2, "weight_decay": 0.1},
    "Adafactor": {"lr": 1e-2, "weight_decay": 0.1},
    "Adam8bit": {"lr": 1e-2, "weight_decay": 0.1, "min_8bit_size": 0},
    "AdamW8bit": {"lr": 1e-2, "weight_decay": 0.1, "min_8bit_size": 0},
}


def _classes() -> list[type[FusedOptimizer]]:
    """Every optimizer class fusedopt exports."""
    return [
        cls
        for cls in map(fusedopt.__dict__.get, fusedopt.__all__)
        if isinstance(cls, type) and issubclass(cls, FusedOptimizer)
    ]


def _kwargs(cls: type[FusedOptimizer]) -> dict:
    """The class's Case's stateful options (or EXTRA_KWARGS'), lr a tensor."""
    cases = [case for case in CASES if case.fused_cls is cls]
    if cases:
        kwargs = dict(cases[0].stateful)
    else:
        assert cls.__name__ in EXTRA_KWARGS, f"{cls.__name__}: add a Case or EXTRA_KWARGS entry"
        kwargs = dict(EXTRA_KWARGS[cls.__name__])
    kwargs["lr"] = torch.tensor(float(kwargs.get("lr", 1.0)))
    return kwargs


def _run(make, compiled: bool, backend="inductor", schedule: bool = True):
    """STEPS steps of a small model, its lr scheduled unless not `schedule`;
    returns the model, the optimizer, the graph breaks, and the number of
    distinct graphs compiled after each step (each step's lr is a new value)."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    x = torch.randn(16, 8)
    opt = make(model.parameters())
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9) if schedule else None

    def fn():
        opt.step()
        if sched is not None:
            sched.step()

    if compiled:
        fn = torch.compile(fn, backend=backend)
    graphs = []
    for _ in range(STEPS):
        opt.zero_grad()
        model(x).sum().backward()
        fn()
        graphs.append(counters["stats"]["unique_graphs"])
    return model, opt, sum(counters["graph_break"].values()), graphs


class _OpCalls:
    """An inductor backend that records how often a compiled graph holding a
    fusedopt op runs: the op runs compiled, not in an eager fallback."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        compiled = compile_fx(gm, example_inputs)
        if not any("fusedopt" in str(node.target) for node in gm.graph.nodes):
            return compiled

        def run(*args):
            self.calls += 1
            return compiled(*args)

        return run


@pytest.mark.parametrize("cls", _classes(), ids=lambda cls: cls.__name__)
def test_compiled_step_with_a_scheduled_tensor_lr(cls):
    kwargs = _kwargs(cls)
    op_calls = _OpCalls()
    model, opt, breaks, graphs = _run(
        lambda ps: cls(ps, **copy.deepcopy(kwargs)), compiled=True, backend=op_calls
    )
    eager_model, eager_opt, _, _ = _run(lambda ps: cls(ps, **copy.deepcopy(kwargs)), False)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        assert torch.equal(p, q)
        for key, value in eager_opt.state[q].items():
            assert torch.equal(opt.state[p][key], value), key
    # Every step ran the op compiled, and the graphs made at the first two
    # steps (a class whose first step copies the grad into a fresh state
    # compiles that step apart, as torch's SGD does) serve every later lr.
    assert op_calls.calls == STEPS
    assert graphs[1] == graphs[-1], f"recompiled after step 2: distinct graphs {graphs}"

    namesake = getattr(torch.optim, cls.__name__, None)
    if namesake is not None:
        # Graph breaks are dynamo's, before any backend: torch's is compiled
        # with the cheap "eager" backend.
        _, _, torch_breaks, _ = _run(
            lambda ps: namesake(ps, **copy.deepcopy(_torch_kwargs(cls, kwargs))), True, "eager"
        )
        assert breaks <= torch_breaks
    else:
        # One break, which every optimizer's compiled fn has (torch's too): the
        # scheduler wraps opt.step in a function dynamo does not trace.
        assert breaks == 1

    # step() alone: one graph, no break.
    explained = torch._dynamo.explain(opt.step)()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def _torch_kwargs(cls: type[FusedOptimizer], kwargs: dict) -> dict:
    """kwargs without the options fusedopt adds to torch's signature."""
    cases = [case for case in CASES if case.fused_cls is cls]
    extra = cases[0].extra_args if cases else ()
    return {key: value for key, value in kwargs.items() if key not in extra}


@pytest.mark.slow
@pytest.mark.parametrize("case,kwargs", exhaustive_params())
def test_compiled_step_equals_eager_every_option(case, kwargs):
    """Every valid combination of every class's options: step() compiles into
    one graph with no break and gives eager's results bit for bit. No
    scheduler: a float lr that changes at every step recompiles every step
    (torch's classes too; hence the tensor lr above)."""
    model, opt, _, _ = _run(lambda ps: case.make(ps, kwargs), True, "eager", schedule=False)
    eager_model, _, _, _ = _run(lambda ps: case.make(ps, kwargs), False, schedule=False)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        assert torch.equal(p, q)
    explained = torch._dynamo.explain(opt.step)()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
