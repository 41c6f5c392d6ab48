"""The optimizer cases of the test harness: one Case per fusedopt optimizer.

Adding an optimizer to the harness is adding one entry to CASES: its torch
twin, its hyperparameter grid (each option at least once), the RuleBound of
tests/tolerances.py it uses, what fusedopt adds to torch's signature and
param groups, and the few settings the generic tests need (the hyperparameter
edits between steps, the kwargs that use every state, the bad kwargs and
torch's messages for them).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import fusedopt
import lion_twin
import pytest
import tolerances
import torch
from fusedopt.optim.base import FusedOptimizer


@dataclass(frozen=True)
class Edit:
    """Hyperparameters edited in a group between steps: (step index before which
    it happens, group key, new value), applied alike to fusedopt and torch."""

    id: str
    start: dict[str, Any]
    changes: tuple[tuple[int, str, Any], ...]


@dataclass(frozen=True, eq=False)
class Case:
    name: str
    torch_cls: type[torch.optim.Optimizer]
    fused_cls: type[FusedOptimizer]
    # Every option of the optimizer at least once, lr as a float and as a tensor.
    grid: tuple[dict[str, Any], ...]
    # How far one step can move a param (tolerances.RuleBound, with its reason).
    bound: tolerances.RuleBound
    # Constructor arguments fusedopt adds at the end of torch's signature.
    extra_args: tuple[str, ...]
    # Param-group keys fusedopt adds to torch's.
    extra_group_keys: tuple[str, ...]
    # Options under which every state of the rule is used (state_dict tests).
    stateful: dict[str, Any]
    # Constructor kwargs torch refuses with ValueError, and the message.
    bad_kwargs: tuple[tuple[dict[str, Any], str], ...]
    edits: tuple[Edit, ...]
    # Settings for a short training run that must bring the loss down.
    train_kwargs: dict[str, Any]
    # Per-group hyperparameters for a model of three groups.
    group_options: tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
    # Each option's values: their product (the valid combinations) is the
    # exhaustive sweep of the slow tests.
    options: dict[str, tuple[Any, ...]]
    # lr of the bf16/fp16 budget tests: large enough that a step moves p by more
    # than an ulp of |p|, else every side stalls alike and nothing is compared.
    low_precision_lr: float
    # kwargs of fusedopt-only options -> (torch kwargs, a step pre-hook) giving
    # torch the same trajectory; None where the case has no such option.
    torch_twin: Callable[[dict[str, Any]], tuple[dict[str, Any], Callable | None]] | None = None
    # False where the bf16/fp16 error is not compared with the torch class's
    # (tolerances: error_vs_torch), with the reason in the case.
    low_precision_vs_torch: bool = True

    def __str__(self) -> str:
        return self.name

    def fused_only(self, kwargs: dict[str, Any]) -> bool:
        """True when kwargs use an option torch's class does not have."""
        return any(key in kwargs for key in self.extra_args if key != "backend")

    def make(self, params, kwargs: dict[str, Any], backend: str = "auto") -> FusedOptimizer:
        return self.fused_cls(params, **copy.deepcopy(kwargs), backend=backend)

    def make_torch(self, params, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
        """torch's optimizer on the same trajectory (foreach=False: the
        single-tensor loop, torch's plainest)."""
        kwargs = copy.deepcopy(kwargs)
        hook = None
        if self.fused_only(kwargs):
            kwargs, hook = self.torch_twin(kwargs)
        opt = self.torch_cls(params, **kwargs, foreach=False)
        if hook is not None:
            opt.register_step_pre_hook(hook)
        return opt

    def grid_params(self, entries: Sequence[dict[str, Any]] | None = None) -> list:
        entries = self.grid if entries is None else entries
        return [pytest.param(self, kw, id=f"{self.name}-{kwargs_id(kw)}") for kw in entries]


def kwargs_id(kwargs: dict[str, Any]) -> str:
    parts = []
    for key, value in kwargs.items():
        if value is True:
            parts.append(key)
        elif isinstance(value, torch.Tensor):
            parts.append(f"{key}=T{value.item():g}")
        elif isinstance(value, tuple):
            parts.append(f"{key}=" + ",".join(f"{v:g}" for v in map(float, value)))
        else:
            parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return "-".join(parts) or "defaults"


def _sgd_decoupled_twin(kwargs: dict[str, Any]) -> tuple[dict[str, Any], Callable]:
    """torch.optim.SGD has no decoupled decay: multiply each param that has a
    grad by 1 - lr * wd before torch's step, without decay in it (SGDW as
    fusedopt.SGD does it: p = p * (1 - lr*wd) - lr * b)."""
    kwargs = dict(kwargs)
    decoupled = kwargs.pop("decoupled_weight_decay")
    weight_decay = kwargs.pop("weight_decay", 0.0) if decoupled else 0.0
    if not decoupled:
        return kwargs, None

    @torch.no_grad()
    def decay(optimizer, args, kw):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.mul_(1 - group["lr"] * weight_decay)

    return kwargs, decay


_ADAM_BASE = {"lr": 1e-2, "betas": (0.8, 0.95), "eps": 1e-6}
_ADAM_GRID = tuple(
    {**_ADAM_BASE, "weight_decay": wd, **({"amsgrad": True} if ams else {}), **flags}
    for ams in (False, True)
    for flags in ({}, {"maximize": True})
    for wd in (0.0, 0.1)
) + (
    {"lr": 1e-2},  # torch's default betas and eps
    {"lr": torch.tensor(1e-2), "weight_decay": 0.1},
    {**_ADAM_BASE, "lr": torch.tensor(1e-2), "betas": (torch.tensor(0.8), torch.tensor(0.95))},
)
_ADAM_BAD_KWARGS = (
    ({"lr": -1.0}, "Invalid learning rate"),
    ({"eps": -1e-8}, "Invalid epsilon value"),
    ({"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0"),
    ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1"),
    ({"weight_decay": -0.1}, "Invalid weight_decay value"),
    ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
    ({"betas": (torch.tensor(0.9), 0.99)}, "betas must be either both floats or both Tensors"),
)
_ADAM_EDITS = (
    Edit("lr", {"lr": 1e-2}, ((2, "lr", 3e-2),)),
    Edit("betas", {"lr": 1e-2}, ((2, "betas", (0.5, 0.9)),)),
    Edit("eps", {"lr": 1e-2}, ((2, "eps", 1e-3),)),
    Edit("weight_decay", {"lr": 1e-2, "weight_decay": 0.0}, ((2, "weight_decay", 0.3),)),
    Edit("maximize", {"lr": 1e-2}, ((2, "maximize", True),)),
    Edit(
        "decoupled_weight_decay",
        {"lr": 1e-2, "weight_decay": 0.2},
        ((2, "decoupled_weight_decay", True), (4, "decoupled_weight_decay", False)),
    ),
    Edit("tensor-lr", {"lr": torch.tensor(1e-2)}, ((2, "lr", torch.tensor(3e-2)),)),
)
_ADAM_GROUPS = (
    {"lr": 1e-1, "betas": (0.5, 0.6)},
    {"weight_decay": 0.3, "amsgrad": True},
    {"eps": 1e-3, "maximize": True},
)

_ADAM_OPTIONS = {
    "lr": (1e-2, torch.tensor(1e-2)),
    "betas": ((0.9, 0.999), (0.8, 0.95)),
    "weight_decay": (0.0, 0.1),
    "amsgrad": (False, True),
    "maximize": (False, True),
}

_SGD_GRID = (
    {"lr": 1e-2},
    {"lr": 1e-2, "momentum": 0.9},
    {"lr": 1e-2, "momentum": 0.9, "dampening": 0.5},
    {"lr": 1e-2, "momentum": 0.9, "nesterov": True},
    {"lr": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    {"lr": 1e-2, "weight_decay": 0.1},
    {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.1, "maximize": True},
    {"lr": 1e-2, "maximize": True},
    {"lr": torch.tensor(1e-2)},
    {"lr": torch.tensor(1e-2), "momentum": 0.9, "weight_decay": 0.1},
    {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
    {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.1, "decoupled_weight_decay": True},
)
_SGD_BAD_KWARGS = (
    ({"lr": -1.0}, "Invalid learning rate"),
    ({"momentum": -0.5}, "Invalid momentum value"),
    ({"weight_decay": -0.1}, "Invalid weight_decay value"),
    ({"nesterov": True}, "Nesterov momentum requires a momentum and zero dampening"),
    (
        {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
        "Nesterov momentum requires a momentum and zero dampening",
    ),
    ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
)
_SGD_EDITS = (
    Edit("lr", {"lr": 1e-2, "momentum": 0.9}, ((2, "lr", 3e-2),)),
    Edit("momentum", {"lr": 1e-2, "momentum": 0.9}, ((2, "momentum", 0.5),)),
    # torch creates the buffer at the first step with momentum, as buf = g.
    Edit("momentum-appears", {"lr": 1e-2}, ((2, "momentum", 0.9),)),
    # The buffer stays in the state while momentum is 0, and is used again.
    Edit(
        "momentum-off-on", {"lr": 1e-2, "momentum": 0.9}, ((2, "momentum", 0), (4, "momentum", 0.9))
    ),
    Edit("dampening", {"lr": 1e-2, "momentum": 0.9}, ((2, "dampening", 0.5),)),
    Edit("nesterov", {"lr": 1e-2, "momentum": 0.9}, ((2, "nesterov", True),)),
    Edit("weight_decay", {"lr": 1e-2, "momentum": 0.9}, ((2, "weight_decay", 0.3),)),
    Edit("maximize", {"lr": 1e-2}, ((2, "maximize", True),)),
    Edit("tensor-lr", {"lr": torch.tensor(1e-2)}, ((2, "lr", torch.tensor(3e-2)),)),
)
_SGD_GROUPS = (
    {"lr": 1e-1, "momentum": 0.5},
    {"weight_decay": 0.3, "momentum": 0.9, "nesterov": True},
    {"dampening": 0.5, "momentum": 0.9, "maximize": True},
)

_RPROP_GRID = (
    {"lr": 1e-2},
    {"lr": 1e-2, "etas": (0.3, 1.5)},
    # Both clamps reached from the second step on: 1e-2 * 1.2 > 1.1e-2, 1e-2 * 0.5 < 6e-3.
    {"lr": 1e-2, "step_sizes": (6e-3, 1.1e-2)},
    {"lr": 1e-2, "maximize": True},
    {"lr": 2e-4, "etas": (0.3, 1.5), "maximize": True},
    {"lr": torch.tensor(1e-2)},
)
_RPROP_BAD_KWARGS = (
    ({"lr": -1.0}, "Invalid learning rate"),
    ({"etas": (1.0, 0.5)}, "Invalid eta values: 1.0, 0.5"),
    ({"etas": (0.5, 1.0)}, "Invalid eta values: 0.5, 1.0"),
    ({"etas": (0.0, 1.2)}, "Invalid eta values: 0.0, 1.2"),
    ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
)
_RPROP_EDITS = (
    # No lr edit: torch's Rprop reads lr only when it makes the step sizes, so
    # an edit changes nothing (test_schedulers_drive_fusedopt_as_torch has both agree).
    Edit("etas", {"lr": 1e-2}, ((2, "etas", (0.3, 1.5)),)),
    Edit("step_sizes", {"lr": 1e-2}, ((2, "step_sizes", (6e-3, 1.1e-2)),)),
    Edit("maximize", {"lr": 1e-2}, ((2, "maximize", True),)),
)
_RPROP_GROUPS = (
    {"lr": 1e-1, "etas": (0.4, 1.3)},
    {"step_sizes": (1e-4, 1e-2)},
    {"maximize": True},
)


def _lion_twin(kwargs: dict[str, Any]) -> tuple[dict[str, Any], Callable | None]:
    """tests/lion_twin.Lion has the paper's decoupled decay only. For the other
    modes it steps without decay, after a pre-hook that does fusedopt's:
    g += wd * p (L2; negated where maximize will negate g) or p *= 1 - wd * lr
    / lr_max (fully decoupled), in the kernels' roundings."""
    kwargs = dict(kwargs)
    mode = kwargs.pop("weight_decay_mode", None)
    lr_max = kwargs.pop("lr_max", None)
    if mode in (None, "decoupled"):
        return kwargs, None
    weight_decay = kwargs.pop("weight_decay", 0.0)
    lr_max = float(kwargs["lr"]) if lr_max is None else lr_max

    @torch.no_grad()
    def decay(optimizer, args, kw):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if mode == "l2":
                    sign = -1.0 if group["maximize"] else 1.0
                    p.grad.add_(p * (sign * weight_decay))
                else:
                    p.mul_(1 - weight_decay * float(group["lr"]) / lr_max)

    return kwargs, decay


# Dyadic betas: with bf16/fp16 grads (8 and 11 bits) the c of the first steps
# can be exactly 0 (e.g. 0.8 * 0.05 * g1 + 0.2 * g2 with g2 = -g1 / 5), a tie
# whose sign the fp64 oracle takes from its own rounding of 0.05 (seen: one
# element in 120k moved by lr the other way). With betas of few bits those
# sums are exact in fp32 and fp64 alike, and a tie is 0 on every side.
_LION_BASE = {"lr": 1e-2, "betas": (0.875, 0.96875)}
_LION_GRID = (
    {"lr": 1e-2},  # the paper's betas
    _LION_BASE,
    {**_LION_BASE, "weight_decay": 0.1},
    {**_LION_BASE, "weight_decay": 0.1, "maximize": True},
    {**_LION_BASE, "maximize": True},
    {"lr": torch.tensor(1e-2), "weight_decay": 0.1},
    {**_LION_BASE, "weight_decay": 0.01, "weight_decay_mode": "l2"},
    {**_LION_BASE, "weight_decay": 0.01, "weight_decay_mode": "l2", "maximize": True},
    {**_LION_BASE, "weight_decay": 0.1, "weight_decay_mode": "fully_decoupled"},
    {**_LION_BASE, "weight_decay": 1e-3, "weight_decay_mode": "fully_decoupled", "lr_max": 2e-2},
)
_LION_BAD_KWARGS = (
    ({"lr": -1.0}, "Invalid learning rate"),
    ({"betas": (1.0, 0.99)}, "Invalid beta parameter at index 0"),
    ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1"),
    ({"weight_decay": -0.1}, "Invalid weight_decay value"),
    ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
)
_LION_EDITS = (
    Edit("lr", {"lr": 1e-2}, ((2, "lr", 3e-2),)),
    Edit("betas", {"lr": 1e-2}, ((2, "betas", (0.5, 0.9)),)),
    Edit("weight_decay", {"lr": 1e-2, "weight_decay": 0.0}, ((2, "weight_decay", 0.3),)),
    Edit("maximize", {"lr": 1e-2}, ((2, "maximize", True),)),
    Edit("tensor-lr", {"lr": torch.tensor(1e-2)}, ((2, "lr", torch.tensor(3e-2)),)),
)
_LION_GROUPS = (
    {"lr": 1e-1, "betas": (0.5, 0.6)},
    {"weight_decay": 0.3},
    {"maximize": True},
)

CASES: tuple[Case, ...] = (
    Case(
        name="Adam",
        torch_cls=torch.optim.Adam,
        fused_cls=fusedopt.Adam,
        grid=_ADAM_GRID + ({**_ADAM_BASE, "weight_decay": 0.1, "decoupled_weight_decay": True},),
        bound=tolerances.ADAM,
        extra_args=("weight_decay_mode", "lr_max", "backend"),
        extra_group_keys=(),
        stateful={"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1},
        bad_kwargs=_ADAM_BAD_KWARGS,
        edits=_ADAM_EDITS,
        train_kwargs={"lr": 3e-3, "weight_decay": 0.05},
        group_options=_ADAM_GROUPS,
        options={**_ADAM_OPTIONS, "decoupled_weight_decay": (False, True)},
        low_precision_lr=0.1,
    ),
    Case(
        name="AdamW",
        torch_cls=torch.optim.AdamW,
        fused_cls=fusedopt.AdamW,
        grid=_ADAM_GRID,
        bound=tolerances.ADAM,
        extra_args=("weight_decay_mode", "lr_max", "backend"),
        extra_group_keys=(),
        stateful={"lr": 1e-2, "amsgrad": True},
        bad_kwargs=_ADAM_BAD_KWARGS,
        edits=_ADAM_EDITS,
        train_kwargs={"lr": 3e-3, "weight_decay": 0.05},
        group_options=_ADAM_GROUPS,
        options=_ADAM_OPTIONS,
        low_precision_lr=0.1,
    ),
    Case(
        name="SGD",
        torch_cls=torch.optim.SGD,
        fused_cls=fusedopt.SGD,
        grid=_SGD_GRID,
        bound=tolerances.SGD,
        extra_args=("decoupled_weight_decay", "weight_decay_mode", "lr_max", "backend"),
        extra_group_keys=("decoupled_weight_decay",),
        stateful={"lr": 1e-2, "momentum": 0.9},
        bad_kwargs=_SGD_BAD_KWARGS,
        edits=_SGD_EDITS,
        train_kwargs={"lr": 3e-2, "momentum": 0.9, "weight_decay": 0.05},
        group_options=_SGD_GROUPS,
        options={
            "lr": (1e-2, torch.tensor(1e-2)),
            "momentum": (0.0, 0.9),
            "dampening": (0.0, 0.5),
            "nesterov": (False, True),
            "weight_decay": (0.0, 0.1),
            "maximize": (False, True),
            "decoupled_weight_decay": (False, True),
        },
        low_precision_lr=0.05,
        torch_twin=_sgd_decoupled_twin,
    ),
    Case(
        name="Rprop",
        torch_cls=torch.optim.Rprop,
        fused_cls=fusedopt.Rprop,
        grid=_RPROP_GRID,
        bound=tolerances.RPROP,
        extra_args=("backend",),
        extra_group_keys=(),
        stateful={"lr": 1e-2},
        bad_kwargs=_RPROP_BAD_KWARGS,
        edits=_RPROP_EDITS,
        train_kwargs={"lr": 1e-2},
        group_options=_RPROP_GROUPS,
        options={
            "lr": (1e-2, torch.tensor(1e-2)),
            "etas": ((0.5, 1.2), (0.3, 1.5)),
            "step_sizes": ((1e-6, 50), (6e-3, 1.1e-2)),
            "maximize": (False, True),
        },
        # The step sizes start at lr: over a bf16 ulp of |p| < 2. The ratio of our
        # error to torch's (fp16 step sizes) depends on where lr * 1.2^k falls between
        # grid points of p: measured over lr in 0.011-0.05 on two dtypes, 0.93-1.07,
        # 1.06-1.07 (fp16) only at lr = 0.02, where torch's rounded step sizes land on
        # the favourable side of a near-tie (lr * 1.2^2 is 29.49 fp16 ulps of |p| in
        # [1, 2)); 0.998 (fp16) and 0.96 (bf16) at 0.03.
        low_precision_lr=0.03,
    ),
    Case(
        name="Lion",
        torch_cls=lion_twin.Lion,
        fused_cls=fusedopt.Lion,
        grid=_LION_GRID,
        bound=tolerances.LION,
        extra_args=("weight_decay_mode", "lr_max", "backend"),
        extra_group_keys=(),
        stateful={"lr": 1e-2, "weight_decay": 0.1},
        bad_kwargs=_LION_BAD_KWARGS,
        edits=_LION_EDITS,
        train_kwargs={"lr": 3e-3, "weight_decay": 0.1},
        group_options=_LION_GROUPS,
        options={
            "lr": (1e-2, torch.tensor(1e-2)),
            "betas": ((0.9, 0.99), (0.875, 0.96875)),
            "weight_decay": (0.0, 0.1),
            "maximize": (False, True),
            "weight_decay_mode": (None, "l2", "fully_decoupled"),
        },
        # Every element moves by lr: 0.02 is over a bf16 ulp of |p| < 2.
        low_precision_lr=0.02,
        torch_twin=_lion_twin,
        # Not torch's class but the tests' own twin; and every update is exactly
        # +-lr, so a stored param's rounding error is a fixed function of lr's place
        # between grid points (a bias, not noise): the ratio of two such errors
        # measures lr, not precision (measured 0.61-1.26 over lr in 0.011-0.05).
        # The per-element rounding budget holds as for every case.
        low_precision_vs_torch=False,
    ),
)


def case_params(cases: Sequence[Case] = CASES) -> list:
    return [pytest.param(case, id=case.name) for case in cases]


def grid_params(cases: Sequence[Case] = CASES) -> list:
    """(case, kwargs) over every case's grid."""
    return [param for case in cases for param in case.grid_params()]


def stateful_params(cases: Sequence[Case] = CASES) -> list:
    """(case, kwargs): for each case its first grid entry and its stateful options."""
    return [
        param
        for case in cases
        for param in case.grid_params(
            [case.grid[0]] + ([case.stateful] if case.stateful != case.grid[0] else [])
        )
    ]


def exhaustive_params(cases: Sequence[Case] = CASES) -> list:
    """(case, kwargs) over every valid combination of every case's options."""
    out = []
    for case in cases:
        names = list(case.options)
        for values in itertools.product(*(case.options[n] for n in names)):
            kwargs = dict(zip(names, values))
            try:
                case.make([torch.zeros(1, requires_grad=True)], kwargs)
            except ValueError:
                continue  # nesterov without momentum, or with dampening
            out.append(pytest.param(case, kwargs, id=f"{case.name}-{kwargs_id(kwargs)}"))
    return out


def edit_params(cases: Sequence[Case] = CASES) -> list:
    return [
        pytest.param(case, edit, id=f"{case.name}-{edit.id}")
        for case in cases
        for edit in case.edits
    ]
