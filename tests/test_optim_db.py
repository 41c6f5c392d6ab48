"""torch's own optimizer catalog, run against fusedopt: for every OptimizerInfo
of torch.testing._internal.common_optimizers.optim_db whose class fusedopt
has (same name), every config of optim_inputs_func steps as torch's class
does, and every ErrorOptimizerInput of optim_error_inputs_func raises torch's
error with torch's message. Where fusedopt differs by design, DIFFERENCES
says so and why: those inputs are strict xfails (they must keep failing), and
test_deliberate_differences pins what fusedopt does instead."""

from __future__ import annotations

import copy
import inspect
import re

import fusedopt
import pytest
import torch
from cases import CASES
from fusedopt.optim.base import FusedOptimizer
from tolerances import assert_normwise_close

pytest.importorskip("expecttest", reason="torch's optimizer catalog imports expecttest")
from torch.testing._internal.common_optimizers import (  # noqa: E402
    OptimizerErrorEnum,
    optim_db,
)

STEPS = 4
INFOS = [
    info
    for info in optim_db
    if isinstance(getattr(fusedopt, info.name, None), type)
    and issubclass(getattr(fusedopt, info.name), FusedOptimizer)
]
# Flags fusedopt refuses by design (fusedopt/optim/base.py check_fused_flags),
# with the words of its ValueError.
REFUSED_FLAGS = {
    "foreach": (True, "`foreach=True` cannot apply"),
    "differentiable": (True, "not differentiable"),
    "fused": (False, "always fused"),
}

_FOREACH = (
    "fusedopt refuses foreach=True whatever the other arguments (a fused kernel is not a "
    "foreach loop), with its own ValueError; torch's message names the one combination "
    "its foreach path cannot take"
)
# (optimizer, the input's desc) -> (why fusedopt differs, the regex of its ValueError).
DIFFERENCES: dict[tuple[str, str], tuple[str, str]] = {
    (name, desc): (_FOREACH, "`foreach=True` cannot apply")
    for name in ("Adam", "AdamW")
    for desc in (
        "lr as Tensor doesn't work with foreach & not capturable",
        r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True",
    )
}

# Classes the catalog marks `supports_sparse` (torch steps sparse grads with
# them): fusedopt refuses sparse grads by design, every rule being an
# elementwise pass over dense tensors, where torch's sparse branches touch only
# the rows a gradient holds (nn.Embedding(sparse=True)).
SPARSE_REFUSED = {
    "SGD": "torch's sparse SGD adds the gradient's rows only",
    "Adagrad": "torch's sparse Adagrad updates `sum` and the param at the gradient's rows only",
}


# Optimizers of torch's catalog that the harness (tests/cases.py) does not
# hold, with where they are tested instead.
OUTSIDE_HARNESS = {
    "Adafactor": "a reduction rule, its states not of its params' shapes: tests/test_adafactor.py",
}


def test_the_catalog_covers_every_case():
    """Every optimizer of the harness that torch has has its entry in torch's
    catalog (Lion's twin is the tests' own, tests/lion_twin.py)."""
    torch_named = {c.name for c in CASES if getattr(torch.optim, c.name, None) is c.torch_cls}
    assert {info.name for info in INFOS} == torch_named | set(OUTSIDE_HARNESS)


def _id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,&-]+", "_", text).strip("_")


def _configs(device: str) -> list:
    """(info, kwargs, desc) of every config of every covered optimizer on `device`.
    On the CPU, the configs torch keeps for GPUs (capturable, with tensor lr and
    tensor betas) run too, without capturable, which torch's CPU path refuses."""
    out = []
    for info in INFOS:
        configs = [(c.kwargs, c.desc) for c in info.optim_inputs_func(device=device)]
        if device == "cpu":
            seen = [kw for kw, _ in configs]
            for c in info.optim_inputs_func(device="cuda"):
                kwargs = {k: v for k, v in c.kwargs.items() if k != "capturable"}
                if "capturable" in c.kwargs and not any(_same(kwargs, s) for s in seen):
                    seen.append(kwargs)
                    configs.append((kwargs, f"{c.desc} (capturable dropped: cpu)"))
        out += [
            pytest.param(info, kwargs, id=_id(f"{info.name}-{desc}")) for kwargs, desc in configs
        ]
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(repr(a[k]) == repr(b[k]) for k in a)


def _model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)).to(
        device
    )


def _train(opt, model, device: str) -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1)).to(device)
    for _ in range(STEPS):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().cpu().double().reshape(-1) for t in tensors])


@pytest.mark.parametrize("flags", [{}, {"fused": True}], ids=["as-given", "fused"])
@pytest.mark.parametrize("info,kwargs", _configs("cpu"))
def test_config_steps_as_torch(info, kwargs, flags):
    """The config through fusedopt's class and torch's on one small model: a few
    steps give the same params and states (normwise, over the model)."""
    _run_config(info, kwargs, flags, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("info,kwargs", _configs("cuda") if torch.cuda.is_available() else [])
def test_cuda_config_steps_as_torch(info, kwargs):
    _run_config(info, kwargs, {}, "cuda")


def _run_config(info, kwargs, flags, device):
    if flags.get("fused") and device not in info.supports_fused_on:
        pytest.skip(f"torch's {info.name} has no fused path on {device}")
    ours_model, torch_model = _model(device), _model(device)
    ours_cls, torch_cls = getattr(fusedopt, info.name), info.optim_cls
    opt = ours_cls(ours_model.parameters(), **copy.deepcopy({**kwargs, **flags}))
    ref = torch_cls(torch_model.parameters(), **copy.deepcopy({**kwargs, **flags}))
    _train(opt, ours_model, device)
    _train(ref, torch_model, device)
    ours, theirs = list(ours_model.parameters()), list(torch_model.parameters())
    assert_normwise_close(_flat(ours), _flat(theirs))
    for p, q in zip(ours, theirs):
        assert opt.state[p].keys() == ref.state[q].keys()
    # Every key of any param (Adafactor's differ between matrices and vectors).
    for key in dict.fromkeys(key for q in theirs for key in ref.state[q]):
        assert_normwise_close(
            _flat(opt.state[p][key] for p in ours if key in opt.state[p]),
            _flat(ref.state[q][key] for q in theirs if key in ref.state[q]),
        )
    group, ref_group = opt.param_groups[0], ref.param_groups[0]
    for key, value in ref_group.items():
        if key != "params":
            assert repr(group[key]) == repr(value), key


def _configs_with_refused_flags() -> list:
    """(info, kwargs, flag) for each flag of REFUSED_FLAGS that torch's class has."""
    return [
        pytest.param(*config.values, flag, id=f"{config.id}-{flag}")
        for config in _configs("cpu")
        for flag in REFUSED_FLAGS
        if flag in inspect.signature(config.values[0].optim_cls).parameters
    ]


@pytest.mark.parametrize("info,kwargs,flag", _configs_with_refused_flags())
def test_config_with_a_refused_flag_raises_value_error(info, kwargs, flag):
    """torch takes these flags; fusedopt refuses them by design, clearly."""
    if flag not in inspect.signature(info.optim_cls).parameters:
        pytest.skip(f"torch's {info.name} has no `{flag}` (a TypeError in both)")
    model = _model("cpu")
    value, message = REFUSED_FLAGS[flag]
    kwargs = copy.deepcopy({**kwargs, flag: value})
    with pytest.raises(ValueError, match=message):
        getattr(fusedopt, info.name)(model.parameters(), **kwargs)


def _error_inputs() -> list:
    out = []
    for info in INFOS:
        for error in info.optim_error_inputs_func(device="cpu", dtype=torch.float32):
            desc = error.optimizer_error_input.desc
            marks = []
            if (info.name, desc) in DIFFERENCES:
                reason = DIFFERENCES[info.name, desc][0]
                marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)]
            out.append(pytest.param(info, error, id=_id(f"{info.name}-{desc}"), marks=marks))
    return out


def _params_of(error_input) -> object:
    """The input's params, or (where the catalog leaves them out, the error
    being raised before they are read) a real param, so that only the
    arguments under test can raise."""
    params = error_input.params
    if params is None:
        return [torch.nn.Parameter(torch.randn(2, 2))]
    return params


@pytest.mark.parametrize("info,error", _error_inputs())
def test_error_input_raises_as_torch(info, error):
    given = error.optimizer_error_input
    cls = getattr(fusedopt, info.name)
    params, kwargs = _params_of(given), copy.deepcopy(given.kwargs)
    expect = (
        pytest.warns(error.error_type, match=error.error_regex)
        if issubclass(error.error_type, Warning)
        else pytest.raises(error.error_type, match=error.error_regex)
    )
    if error.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with expect:
            cls(params, **kwargs)
    else:
        opt = cls(params, **kwargs)
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.ones_like(p)
        with expect:
            opt.step()


@pytest.mark.parametrize(
    "name,desc", [pytest.param(*key, id=_id("-".join(key))) for key in DIFFERENCES]
)
def test_deliberate_differences(name, desc):
    """What fusedopt does instead, for each entry of DIFFERENCES."""
    info = next(i for i in INFOS if i.name == name)
    error = next(
        e
        for e in info.optim_error_inputs_func(device="cpu", dtype=torch.float32)
        if e.optimizer_error_input.desc == desc
    )
    given = error.optimizer_error_input
    with pytest.raises(ValueError, match=DIFFERENCES[name, desc][1]):
        getattr(fusedopt, name)(_params_of(given), **copy.deepcopy(given.kwargs))


@pytest.mark.parametrize("info", [pytest.param(i, id=i.name) for i in INFOS if i.supports_sparse])
def test_sparse_grads_are_refused_where_torch_takes_them(info):
    """SPARSE_REFUSED: a clear error before anything is written, not a wrong step."""
    assert info.name in SPARSE_REFUSED, "say why fusedopt refuses what torch takes"
    param = torch.nn.Parameter(torch.randn(4, 2))
    param.grad = torch.ones(4, 2).to_sparse()
    before = param.detach().clone()
    opt = getattr(fusedopt, info.name)([param])
    with pytest.raises(RuntimeError, match=f"{info.name} does not support sparse gradients"):
        opt.step()
    assert torch.equal(param, before)
