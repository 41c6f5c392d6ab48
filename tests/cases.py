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
import inspect
import itertools
import math
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
    # States made of the param's own values (ASGD's average ax), which differ
    # between backends as much as p does in bf16/fp16.
    param_states: tuple[str, ...] = ()
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
        # timm's classes have no `foreach`: their only path is a single-tensor loop.
        has_foreach = "foreach" in inspect.signature(self.torch_cls).parameters
        opt = self.torch_cls(params, **kwargs, **({"foreach": False} if has_foreach else {}))
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


def _group_lr(optimizer, group, p) -> float:
    return float(group["lr"])


def _decay_twin(*, torch_decouples: bool = False, step_lr=_group_lr):
    """The torch twin of fusedopt's `weight_decay_mode` (and of SGD's
    `decoupled_weight_decay`, which torch's SGD lacks) for a class whose torch
    original has L2 decay and, where `torch_decouples`, decoupled_weight_decay:
    "l2" and "decoupled" map onto torch's own arguments where it has them;
    otherwise torch steps without decay after a pre-hook that multiplies each
    param that has a grad by fusedopt's factor (fusedopt.reference.decay_factor),
    1 - lr_t * wd or 1 - wd * lr_t / lr_max, with lr_t = step_lr(optimizer,
    group, p) the lr this step applies (Adagrad's clr)."""

    def twin(kwargs: dict[str, Any]) -> tuple[dict[str, Any], Callable | None]:
        kwargs = dict(kwargs)
        mode = kwargs.pop("weight_decay_mode", None)
        lr_max = kwargs.pop("lr_max", None)
        if not torch_decouples and kwargs.pop("decoupled_weight_decay", False):
            mode = mode or "decoupled"  # SGDW
        if mode in (None, "l2"):
            return kwargs, None
        if mode == "decoupled" and torch_decouples:
            return {**kwargs, "decoupled_weight_decay": True}, None
        kwargs.pop("decoupled_weight_decay", None)
        weight_decay = kwargs.pop("weight_decay", 0.0)
        lr_max = float(kwargs["lr"]) if lr_max is None else float(lr_max)

        @torch.no_grad()
        def decay(optimizer, args, kw):
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        lr_t = step_lr(optimizer, group, p)
                        if mode == "decoupled":
                            p.mul_(1 - lr_t * weight_decay)
                        else:
                            p.mul_(1 - weight_decay * lr_t / lr_max)

        return kwargs, decay

    return twin


def _adam_twin(decoupled_default: bool):
    """torch.optim.Adam/AdamW on the trajectory of fusedopt's Adam conventions,
    by identities that hold exactly in real arithmetic (so the two agree to
    rounding), with bc1 = 1 - beta1^t, bc2 = 1 - beta2^t:
      - weight_decay_mode="fully_decoupled": decoupled decay with wd / lr_max
        (p *= 1 - lr * (wd / lr_max)), whatever the lr does;
      - eps_mode="hat": torch's form with eps / sqrt(bc2) (multiply torch's
        numerator and denominator by sqrt(bc2));
      - correct_bias=False: torch's form with lr * bc1 / sqrt(bc2) and eps /
        sqrt(bc2), and the decoupled decay's wd scaled back by the lr's factor.
    The step pre-hook sets each group's eps, lr and wd for its next step t
    (every param of these tests steps every time)."""

    def twin(kwargs: dict[str, Any]) -> tuple[dict[str, Any], Callable | None]:
        kwargs = dict(kwargs)
        mode = kwargs.pop("weight_decay_mode", None)
        lr_max = kwargs.pop("lr_max", None)
        correct_bias = kwargs.pop("correct_bias", True)
        eps_mode = kwargs.pop("eps_mode", "torch")
        decoupled = kwargs.get("decoupled_weight_decay", decoupled_default)
        if mode == "fully_decoupled":
            lr_max = float(kwargs["lr"]) if lr_max is None else lr_max
            kwargs["weight_decay"] = kwargs.get("weight_decay", 0.0) / lr_max
        if mode is not None and decoupled_default is False:
            kwargs["decoupled_weight_decay"] = decoupled = mode != "l2"
        if correct_bias and eps_mode == "torch":
            return kwargs, None
        lr0 = kwargs.get("lr", 1e-3)
        eps0 = kwargs.get("eps", 1e-8)
        wd0 = kwargs.get("weight_decay", 1e-2 if decoupled_default else 0.0)

        @torch.no_grad()
        def convention(optimizer, args, kw):
            for group in optimizer.param_groups:
                states = [optimizer.state[p] for p in group["params"] if optimizer.state[p]]
                t = states[0]["step"].item() + 1 if states else 1
                beta1, beta2 = map(float, group["betas"])
                bc2_sqrt = math.sqrt(1 - beta2**t)
                group["eps"] = eps0 / bc2_sqrt
                if not correct_bias:
                    factor = (1 - beta1**t) / bc2_sqrt
                    group["lr"] = lr0 * factor
                    group["weight_decay"] = wd0 / factor if decoupled else wd0

        return kwargs, convention

    return twin


_ADAM_BASE = {"lr": 1e-2, "betas": (0.8, 0.95), "eps": 1e-6}
# fusedopt's conventions (Note [Adam conventions] in rules/adam.h) against
# torch through _adam_twin; eps_mode="root" has no torch twin:
# tests/test_conventions.py checks it against optax's formula.
_ADAM_CONVENTIONS = (
    {**_ADAM_BASE, "eps_mode": "hat"},
    {**_ADAM_BASE, "eps_mode": "hat", "weight_decay": 0.1, "amsgrad": True},
    {**_ADAM_BASE, "correct_bias": False, "weight_decay": 0.1},
    # (eps_mode="hat" with correct_bias=False is torch's form: bc2 = 1)
    {**_ADAM_BASE, "lr": torch.tensor(1e-2), "correct_bias": False},
    {**_ADAM_BASE, "weight_decay": 1e-3, "weight_decay_mode": "fully_decoupled"},
    {**_ADAM_BASE, "weight_decay": 1e-3, "weight_decay_mode": "fully_decoupled", "lr_max": 0.1},
)
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

_NADAM_GRID = (
    {"lr": 1e-2},
    {"lr": 1e-2, "betas": (0.8, 0.95), "eps": 1e-6, "momentum_decay": 0.1},
    {"lr": 1e-2, "weight_decay": 0.1},
    {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
    {"lr": 1e-2, "weight_decay": 0.1, "maximize": True},
    {"lr": torch.tensor(1e-2), "momentum_decay": 0.0},
)
_NADAM_BAD_KWARGS = (
    ({"lr": -1.0}, "Invalid learning rate"),
    ({"eps": -1e-8}, "Invalid epsilon value"),
    ({"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0"),
    ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1"),
    ({"weight_decay": -0.1}, "Invalid weight_decay value"),
    ({"momentum_decay": -0.1}, "Invalid momentum_decay value"),
    ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
)
_NADAM_EDITS = (
    Edit("lr", {"lr": 1e-2}, ((2, "lr", 3e-2),)),
    Edit("betas", {"lr": 1e-2}, ((2, "betas", (0.5, 0.9)),)),
    Edit("momentum_decay", {"lr": 1e-2}, ((2, "momentum_decay", 0.1),)),
    Edit("weight_decay", {"lr": 1e-2}, ((2, "weight_decay", 0.3),)),
    Edit(
        "decoupled_weight_decay",
        {"lr": 1e-2, "weight_decay": 0.2},
        ((2, "decoupled_weight_decay", True),),
    ),
    Edit("maximize", {"lr": 1e-2}, ((2, "maximize", True),)),
)
_NADAM_GROUPS = (
    {"lr": 1e-1, "betas": (0.5, 0.6)},
    {"weight_decay": 0.3, "momentum_decay": 0.1},
    {"eps": 1e-3, "maximize": True, "decoupled_weight_decay": True, "weight_decay": 0.1},
)

# t0 small enough that the averaging starts within the tests' steps (mu < 1
# from step t0 + 2 on).
_ASGD_GRID = (
    {"lr": 1e-2},
    {"lr": 1e-2, "t0": 0.0},
    {"lr": 1e-2, "lambd": 1e-2, "alpha": 0.5, "t0": 1.0, "weight_decay": 0.1},
    {"lr": 1e-2, "weight_decay": 0.1, "maximize": True, "t0": 1.0},
    {"lr": torch.tensor(1e-2), "t0": 0.0},
)
_ASGD_BAD_KWARGS = (
    ({"lr": -1.0}, "Invalid learning rate"),
    ({"weight_decay": -0.1}, "Invalid weight_decay value"),
    ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
)
_ASGD_EDITS = (
    Edit("lr", {"lr": 1e-2, "t0": 0.0}, ((2, "lr", 3e-2),)),
    Edit("lambd", {"lr": 1e-2}, ((2, "lambd", 1e-2),)),
    # lambd = 1 makes eta's schedule, and so alpha, visible within the steps.
    Edit("alpha", {"lr": 1e-2, "lambd": 1.0}, ((2, "alpha", 0.5),)),
    Edit("t0", {"lr": 1e-2}, ((2, "t0", 0.0),)),
    Edit("weight_decay", {"lr": 1e-2}, ((2, "weight_decay", 0.3),)),
    Edit("maximize", {"lr": 1e-2}, ((2, "maximize", True),)),
)
_ASGD_GROUPS = (
    {"lr": 1e-1, "t0": 1.0},
    {"weight_decay": 0.3, "lambd": 1e-2},
    {"alpha": 0.5, "maximize": True, "t0": 0.0},
)


# With L2 decay, eps=1e-4. The first step moves p by lr * g / (sqrt(1 - alpha)
# |g| + eps), whose sensitivity to g is up to lr / eps where g + wd * p cancels.
# torch's g.add(p, alpha=wd) is one FMA on the CPU (measured: bitwise
# fma(p, float(wd), g)); fusedopt's loops (-ffp-contract=off) round wd * p
# first. With eps=1e-8 or 1e-6 the one or two elements of 280K where g + wd * p
# nearly cancels decide the fp64 error ratio (seen: 2.3x and 3.3x torch's, each
# from one element); at 1e-4 that half-ulp of wd * p moves p by < 1e-6.
_RMSPROP_GRID = (
    {"lr": 1e-2},
    {"lr": 1e-2, "alpha": 0.9, "eps": 1e-6},
    {"lr": 1e-2, "weight_decay": 0.1, "eps": 1e-4},
    {"lr": 1e-2, "momentum": 0.9},
    {"lr": 1e-2, "centered": True},
    {"lr": 1e-2, "momentum": 0.9, "centered": True, "weight_decay": 0.1, "eps": 1e-4},
    {"lr": 1e-2, "momentum": 0.5, "maximize": True},
    # 1 - alpha >= 0.5: torch's lerp of grad_avg takes its other branch.
    {"lr": 1e-2, "alpha": 0.3, "centered": True},
    {"lr": torch.tensor(1e-2), "momentum": 0.9, "weight_decay": 0.1, "eps": 1e-4},
    {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.1, "weight_decay_mode": "decoupled"},
    {"lr": 1e-2, "weight_decay": 0.1, "weight_decay_mode": "fully_decoupled", "lr_max": 2e-2},
)
_RMSPROP_BAD_KWARGS = (
    ({"lr": -1.0}, "Invalid learning rate"),
    ({"eps": -1e-8}, "Invalid epsilon value"),
    ({"momentum": -0.5}, "Invalid momentum value"),
    ({"weight_decay": -0.1}, "Invalid weight_decay value"),
    ({"alpha": -0.1}, "Invalid alpha value"),
    ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
)
_RMSPROP_EDITS = (
    Edit("lr", {"lr": 1e-2, "momentum": 0.9}, ((2, "lr", 3e-2),)),
    Edit("alpha", {"lr": 1e-2, "centered": True}, ((2, "alpha", 0.5),)),
    Edit("eps", {"lr": 1e-2}, ((2, "eps", 1e-3),)),
    Edit("momentum", {"lr": 1e-2, "momentum": 0.9}, ((2, "momentum", 0.5),)),
    Edit("weight_decay", {"lr": 1e-2, "momentum": 0.9}, ((2, "weight_decay", 0.3),)),
    Edit("maximize", {"lr": 1e-2}, ((2, "maximize", True),)),
    Edit("tensor-lr", {"lr": torch.tensor(1e-2)}, ((2, "lr", torch.tensor(3e-2)),)),
)
_RMSPROP_GROUPS = (
    {"lr": 3e-2, "alpha": 0.9},
    {"weight_decay": 0.3, "momentum": 0.9, "centered": True},
    {"eps": 1e-3, "momentum": 0.5, "maximize": True},
)

_RMSPROP_TF_GRID = (
    {"lr": 1e-2},  # timm's defaults: alpha 0.9, eps 1e-10, lr in the momentum buffer
    {"lr": 1e-2, "eps": 1e-3, "momentum": 0.9},  # the EfficientNet / MobileNet recipe
    {"lr": 1e-2, "momentum": 0.9, "lr_in_momentum": False},
    {"lr": 1e-2, "momentum": 0.5, "centered": True},
    # TF's order of the averages where torch's lerp would take its other branch.
    {"lr": 1e-2, "alpha": 0.3, "centered": True},
    {"lr": 1e-2, "weight_decay": 0.1},
    {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.1, "decoupled_decay": True},
    {"lr": torch.tensor(1e-2), "momentum": 0.9},
    {"lr": 1e-2, "weight_decay": 0.1, "weight_decay_mode": "fully_decoupled", "lr_max": 2e-2},
)
_RMSPROP_TF_BAD_KWARGS = (  # timm's messages (timm/optim/_helpers.py, _validate_scalar)
    ({"lr": -1.0}, "Invalid learning rate"),
    ({"eps": -1e-8}, "Invalid epsilon"),
    ({"momentum": -0.5}, "Invalid momentum"),
    ({"weight_decay": -0.1}, "Invalid weight_decay"),
    ({"alpha": -0.1}, "Invalid alpha value"),
    ({"lr": torch.tensor([1e-3, 1e-3])}, "learning rate must be a scalar or scalar tensor"),
)
_RMSPROP_TF_EDITS = (
    # TF keeps each step's lr in the buffer: an lr change reaches new gradients only.
    Edit("lr", {"lr": 1e-2, "momentum": 0.9}, ((2, "lr", 3e-2),)),
    Edit(
        "lr-torch-momentum",
        {"lr": 1e-2, "momentum": 0.9, "lr_in_momentum": False},
        ((2, "lr", 3e-2),),
    ),
    Edit(
        "lr_in_momentum",
        {"lr": 1e-2, "momentum": 0.9},
        ((2, "lr_in_momentum", False), (3, "lr", 3e-2)),
    ),
    # lr^2 / lr0 differs from lr only once the lr has moved from the constructor's.
    Edit(
        "corrected_weight_decay",
        {"lr": 1e-2, "weight_decay": 0.1, "decoupled_decay": True, "corrected_weight_decay": True},
        ((2, "lr", 3e-2),),
    ),
    Edit("alpha", {"lr": 1e-2, "centered": True}, ((2, "alpha", 0.5),)),
    Edit("eps", {"lr": 1e-2}, ((2, "eps", 1e-3),)),
    Edit("momentum", {"lr": 1e-2, "momentum": 0.9}, ((2, "momentum", 0.5),)),
    Edit("decoupled_decay", {"lr": 1e-2, "weight_decay": 0.2}, ((2, "decoupled_decay", True),)),
    Edit(
        "tensor-lr", {"lr": torch.tensor(1e-2), "momentum": 0.9}, ((2, "lr", torch.tensor(3e-2)),)
    ),
)
_RMSPROP_TF_GROUPS = (
    {"lr": 3e-2, "alpha": 0.99},
    {"weight_decay": 0.3, "momentum": 0.9, "centered": True},
    {"eps": 1e-3, "momentum": 0.5, "lr_in_momentum": False, "decoupled_decay": True},
)


class _RMSpropTFOnReference(fusedopt.RMSpropTF):
    """fusedopt.RMSpropTF on the reference backend, whose rule
    (fusedopt/reference/rmsprop.py) follows timm's source line by line: what
    the harness compares with where timm is not installed."""

    def __init__(self, params, *args, **kwargs) -> None:
        super().__init__(params, *args, **kwargs, backend="reference")


_signature = inspect.signature(fusedopt.RMSpropTF.__init__)
_RMSpropTFOnReference.__init__.__signature__ = _signature.replace(
    parameters=[p for p in _signature.parameters.values() if p.kind is not p.KEYWORD_ONLY]
)


def _timm_rmsprop_tf() -> type[torch.optim.Optimizer]:
    """timm's RMSpropTF, the class fusedopt.RMSpropTF reproduces, where timm is
    installed; else fusedopt's own on the reference backend."""
    try:
        from timm.optim import RMSpropTF
    except ImportError:
        return _RMSpropTFOnReference
    return RMSpropTF


TIMM_RMSPROP_TF = _timm_rmsprop_tf()


def _adagrad_step_lr(optimizer, group, p) -> float:
    """Adagrad's clr = lr / (1 + (t - 1) * lr_decay) at the coming step t (torch
    creates `step` in the constructor: it is there before the first step)."""
    return float(group["lr"]) / (1 + optimizer.state[p]["step"].item() * group["lr_decay"])


_ADAGRAD_GRID = (
    {"lr": 1e-2},
    {"lr": 1e-2, "lr_decay": 0.5},
    {"lr": 1e-2, "weight_decay": 0.1},
    {"lr": 1e-2, "initial_accumulator_value": 0.1},
    {"lr": 1e-2, "eps": 1e-3},
    {"lr": 1e-2, "weight_decay": 0.1, "maximize": True},
    {
        "lr": 1e-2,
        "lr_decay": 0.1,
        "weight_decay": 0.1,
        "initial_accumulator_value": 0.5,
        "eps": 1e-6,
        "maximize": True,
    },
    {"lr": torch.tensor(1e-2)},
    {"lr": torch.tensor(1e-2), "lr_decay": 0.5, "weight_decay": 0.1},
    {"lr": 1e-2, "lr_decay": 0.5, "weight_decay": 0.1, "weight_decay_mode": "decoupled"},
    {"lr": 1e-2, "lr_decay": 0.5, "weight_decay": 0.1, "weight_decay_mode": "fully_decoupled"},
    {"lr": 1e-2, "weight_decay": 0.1, "weight_decay_mode": "fully_decoupled", "lr_max": 0.05},
)
_ADAGRAD_BAD_KWARGS = (
    ({"lr": -1.0}, "Invalid learning rate"),
    ({"lr_decay": -0.5}, "Invalid lr_decay value: -0.5"),
    ({"weight_decay": -0.1}, "Invalid weight_decay value"),
    ({"initial_accumulator_value": -0.1}, "Invalid initial_accumulator_value value: -0.1"),
    ({"eps": -1e-10}, "Invalid epsilon value"),
    ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
)
_ADAGRAD_EDITS = (
    Edit("lr", {"lr": 1e-2}, ((2, "lr", 3e-2),)),
    Edit("lr_decay", {"lr": 1e-2}, ((2, "lr_decay", 0.5),)),
    Edit("eps", {"lr": 1e-2}, ((2, "eps", 1e-1),)),
    Edit("weight_decay", {"lr": 1e-2}, ((2, "weight_decay", 0.3),)),
    Edit("maximize", {"lr": 1e-2}, ((2, "maximize", True),)),
    Edit("tensor-lr", {"lr": torch.tensor(1e-2)}, ((2, "lr", torch.tensor(3e-2)),)),
)
# No initial_accumulator_value here: torch's new states take the constructor's.
_ADAGRAD_GROUPS = (
    {"lr": 1e-1, "lr_decay": 0.5},
    {"weight_decay": 0.3, "eps": 1e-3},
    {"lr_decay": 0.1, "maximize": True},
)

_ADADELTA_GRID = (
    {},
    {"lr": 0.5},
    {"rho": 0.5},
    {"eps": 1e-3},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "maximize": True},
    {"rho": 0.95, "eps": 1e-4, "weight_decay": 0.9, "maximize": True},
    {"lr": torch.tensor(0.5)},
    {"lr": torch.tensor(0.5), "weight_decay": 0.1},
    {"lr": 0.5, "weight_decay": 0.1, "weight_decay_mode": "decoupled"},
    {"lr": 0.5, "weight_decay": 0.1, "weight_decay_mode": "fully_decoupled"},
    {"lr": 0.5, "weight_decay": 0.1, "weight_decay_mode": "fully_decoupled", "lr_max": 2.0},
)
_ADADELTA_BAD_KWARGS = (
    ({"lr": -1.0}, "Invalid learning rate"),
    ({"rho": 1.1}, "Invalid rho value: 1.1"),
    ({"rho": -0.1}, "Invalid rho value"),
    ({"eps": -1e-6}, "Invalid epsilon value"),
    ({"weight_decay": -0.1}, "Invalid weight_decay value"),
    ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
)
_ADADELTA_EDITS = (
    Edit("lr", {}, ((2, "lr", 3.0),)),
    Edit("rho", {}, ((2, "rho", 0.5),)),
    Edit("eps", {}, ((2, "eps", 1e-3),)),
    Edit("weight_decay", {}, ((2, "weight_decay", 0.3),)),
    Edit("maximize", {}, ((2, "maximize", True),)),
    Edit("tensor-lr", {"lr": torch.tensor(1.0)}, ((2, "lr", torch.tensor(3.0)),)),
)
_ADADELTA_GROUPS = (
    {"lr": 3.0, "rho": 0.5},
    {"weight_decay": 0.3, "eps": 1e-4},
    {"rho": 0.95, "maximize": True},
)


# The fusedopt-only weight-decay modes, for a case's grid. The fully decoupled
# mode's wd is Composer-sized (wd_fully = wd_torch * lr_max): 0.1 would shrink
# p by 10% a step.
def _decay_mode_entries(base: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    return (
        {**base, "weight_decay": 0.1, "weight_decay_mode": "decoupled"},
        {**base, "weight_decay": 5e-4, "weight_decay_mode": "fully_decoupled"},
        {**base, "weight_decay": 5e-4, "weight_decay_mode": "fully_decoupled", "lr_max": 4e-2},
    )


_RADAM_BASE = {"lr": 1e-2, "betas": (0.8, 0.95), "eps": 1e-6}
# rho_t passes 5 at step 6 with beta2 = 0.95 or 0.999 (7 with 0.8), and never
# with beta2 <= 0.6 (rho_inf <= 4): 10-step runs cross the switch.
_RADAM_GRID = tuple(
    {**_RADAM_BASE, **decay, **flags}
    for flags in ({}, {"maximize": True})
    for decay in (
        {},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
    )
) + (
    {"lr": 1e-2},  # torch's default betas and eps
    {"lr": torch.tensor(1e-2), "weight_decay": 0.1},
    {"lr": 1e-2, "betas": (0.8, 0.6)},  # never rectified
    {"lr": 1e-2, "betas": (0.0, 0.8)},
    *_decay_mode_entries(_RADAM_BASE),
)
# torch's checks, in torch's words (radam.py, adamax.py).
_BETAS_EPS_BAD_KWARGS = (
    ({"lr": -1.0}, "Invalid learning rate"),
    ({"eps": -1e-8}, "Invalid epsilon value"),
    ({"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0"),
    ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1"),
    ({"weight_decay": -0.1}, "Invalid weight_decay value"),
    ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
)
_RADAM_EDITS = (
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

_ADAMAX_BASE = {"lr": 1e-2, "betas": (0.8, 0.95), "eps": 1e-6}
_ADAMAX_GRID = tuple(
    {**_ADAMAX_BASE, **decay, **flags}
    for flags in ({}, {"maximize": True})
    for decay in ({}, {"weight_decay": 0.1})
) + (
    {},  # torch's defaults: lr 2e-3
    {"lr": torch.tensor(1e-2), "weight_decay": 0.1},
    {"lr": 1e-2, "betas": (0.0, 0.5), "eps": 0.0},
    *_decay_mode_entries(_ADAMAX_BASE),
)
_ADAMAX_EDITS = (
    Edit("lr", {"lr": 1e-2}, ((2, "lr", 3e-2),)),
    Edit("betas", {"lr": 1e-2}, ((2, "betas", (0.5, 0.9)),)),
    Edit("eps", {"lr": 1e-2}, ((2, "eps", 1e-1),)),
    Edit("weight_decay", {"lr": 1e-2, "weight_decay": 0.0}, ((2, "weight_decay", 0.3),)),
    Edit("maximize", {"lr": 1e-2}, ((2, "maximize", True),)),
    Edit("tensor-lr", {"lr": torch.tensor(1e-2)}, ((2, "lr", torch.tensor(3e-2)),)),
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
        grid=_ADAM_GRID
        + _ADAM_CONVENTIONS
        + ({**_ADAM_BASE, "weight_decay": 0.1, "decoupled_weight_decay": True},),
        bound=tolerances.ADAM,
        extra_args=(
            "weight_decay_mode",
            "lr_max",
            "correct_bias",
            "eps_mode",
            "state_dtype",
            "backend",
        ),
        extra_group_keys=(),
        stateful={"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1},
        bad_kwargs=_ADAM_BAD_KWARGS,
        edits=_ADAM_EDITS,
        train_kwargs={"lr": 3e-3, "weight_decay": 0.05},
        group_options=_ADAM_GROUPS,
        options={
            **_ADAM_OPTIONS,
            "decoupled_weight_decay": (False, True),
            "eps_mode": ("torch", "hat"),
            "correct_bias": (True, False),
        },
        low_precision_lr=0.1,
        torch_twin=_adam_twin(decoupled_default=False),
    ),
    Case(
        name="AdamW",
        torch_cls=torch.optim.AdamW,
        fused_cls=fusedopt.AdamW,
        grid=_ADAM_GRID + _ADAM_CONVENTIONS,
        bound=tolerances.ADAM,
        extra_args=(
            "weight_decay_mode",
            "lr_max",
            "correct_bias",
            "eps_mode",
            "state_dtype",
            "backend",
        ),
        extra_group_keys=(),
        stateful={"lr": 1e-2, "amsgrad": True},
        bad_kwargs=_ADAM_BAD_KWARGS,
        edits=_ADAM_EDITS,
        train_kwargs={"lr": 3e-3, "weight_decay": 0.05},
        group_options=_ADAM_GROUPS,
        options=_ADAM_OPTIONS,
        low_precision_lr=0.1,
        torch_twin=_adam_twin(decoupled_default=True),
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
        torch_twin=_decay_twin(),
    ),
    Case(
        name="RMSprop",
        torch_cls=torch.optim.RMSprop,
        fused_cls=fusedopt.RMSprop,
        grid=_RMSPROP_GRID,
        bound=tolerances.RMSPROP,
        extra_args=("weight_decay_mode", "lr_max", "backend"),
        extra_group_keys=(),
        stateful={"lr": 1e-2, "momentum": 0.9, "centered": True, "weight_decay": 0.1},
        bad_kwargs=_RMSPROP_BAD_KWARGS,
        edits=_RMSPROP_EDITS,
        train_kwargs={"lr": 3e-3, "momentum": 0.5, "weight_decay": 0.05},
        group_options=_RMSPROP_GROUPS,
        options={
            "lr": (1e-2, torch.tensor(1e-2)),
            "alpha": (0.99, 0.9),
            "momentum": (0.0, 0.9),
            "centered": (False, True),
            "weight_decay": (0.0, 0.1),
            "maximize": (False, True),
        },
        low_precision_lr=1e-2,
        torch_twin=_decay_twin(),
    ),
    Case(
        name="RMSpropTF",
        torch_cls=TIMM_RMSPROP_TF,
        fused_cls=fusedopt.RMSpropTF,
        grid=_RMSPROP_TF_GRID,
        bound=tolerances.RMSPROP,
        extra_args=("weight_decay_mode", "lr_max", "backend"),
        extra_group_keys=(),
        stateful={"lr": 1e-2, "momentum": 0.9, "centered": True, "weight_decay": 0.1},
        bad_kwargs=_RMSPROP_TF_BAD_KWARGS,
        edits=_RMSPROP_TF_EDITS,
        train_kwargs={"lr": 3e-3, "momentum": 0.5, "weight_decay": 0.05},
        group_options=_RMSPROP_TF_GROUPS,
        options={
            "lr": (1e-2, torch.tensor(1e-2)),
            "alpha": (0.9, 0.99),
            "eps": (1e-10, 1e-3),
            "momentum": (0.0, 0.9),
            "centered": (False, True),
            "weight_decay": (0.0, 0.1),
            "decoupled_decay": (False, True),
            "lr_in_momentum": (True, False),
        },
        low_precision_lr=1e-2,
        torch_twin=_decay_twin(),
    ),
    Case(
        name="NAdam",
        torch_cls=torch.optim.NAdam,
        fused_cls=fusedopt.NAdam,
        grid=_NADAM_GRID,
        bound=tolerances.NADAM,
        extra_args=("weight_decay_mode", "lr_max", "backend"),
        extra_group_keys=(),
        stateful={"lr": 1e-2, "weight_decay": 0.1},
        bad_kwargs=_NADAM_BAD_KWARGS,
        edits=_NADAM_EDITS,
        train_kwargs={"lr": 3e-3, "weight_decay": 0.05},
        group_options=_NADAM_GROUPS,
        options={
            "lr": (1e-2, torch.tensor(1e-2)),
            "betas": ((0.9, 0.999), (0.8, 0.95)),
            "momentum_decay": (4e-3, 0.1),
            "weight_decay": (0.0, 0.1),
            "decoupled_weight_decay": (False, True),
            "maximize": (False, True),
        },
        low_precision_lr=0.1,
    ),
    Case(
        name="ASGD",
        torch_cls=torch.optim.ASGD,
        fused_cls=fusedopt.ASGD,
        grid=_ASGD_GRID,
        bound=tolerances.ASGD,
        extra_args=("weight_decay_mode", "lr_max", "backend"),
        extra_group_keys=(),
        stateful={"lr": 1e-2, "t0": 0.0},
        bad_kwargs=_ASGD_BAD_KWARGS,
        edits=_ASGD_EDITS,
        train_kwargs={"lr": 3e-2, "weight_decay": 0.05, "t0": 5.0},
        group_options=_ASGD_GROUPS,
        options={
            "lr": (1e-2, torch.tensor(1e-2)),
            "lambd": (1e-4, 1e-2),
            "alpha": (0.75, 0.5),
            "t0": (1e6, 0.0),
            "weight_decay": (0.0, 0.1),
            "maximize": (False, True),
        },
        low_precision_lr=0.05,
        param_states=("ax",),
    ),
    Case(
        name="Adagrad",
        torch_cls=torch.optim.Adagrad,
        fused_cls=fusedopt.Adagrad,
        grid=_ADAGRAD_GRID,
        bound=tolerances.ADAGRAD,
        extra_args=("weight_decay_mode", "lr_max", "backend"),
        extra_group_keys=(),
        stateful={
            "lr": 1e-2,
            "lr_decay": 0.1,
            "weight_decay": 0.1,
            "initial_accumulator_value": 0.1,
        },
        bad_kwargs=_ADAGRAD_BAD_KWARGS,
        edits=_ADAGRAD_EDITS,
        train_kwargs={"lr": 3e-2, "weight_decay": 0.05},
        group_options=_ADAGRAD_GROUPS,
        options={
            "lr": (1e-2, torch.tensor(1e-2)),
            "lr_decay": (0.0, 0.5),
            "weight_decay": (0.0, 0.1),
            "initial_accumulator_value": (0.0, 0.1),
            "eps": (1e-10, 1e-3),
            "maximize": (False, True),
            "weight_decay_mode": ("l2", "decoupled", "fully_decoupled"),
        },
        low_precision_lr=0.1,
        torch_twin=_decay_twin(step_lr=_adagrad_step_lr),
    ),
    Case(
        name="Adadelta",
        torch_cls=torch.optim.Adadelta,
        fused_cls=fusedopt.Adadelta,
        grid=_ADADELTA_GRID,
        bound=tolerances.ADADELTA,
        extra_args=("weight_decay_mode", "lr_max", "backend"),
        extra_group_keys=(),
        stateful={"weight_decay": 0.1},
        bad_kwargs=_ADADELTA_BAD_KWARGS,
        edits=_ADADELTA_EDITS,
        train_kwargs={"lr": 10.0, "weight_decay": 0.05},
        group_options=_ADADELTA_GROUPS,
        options={
            "lr": (1.0, torch.tensor(1.0)),
            "rho": (0.9, 0.5),
            "eps": (1e-6, 1e-3),
            "weight_decay": (0.0, 0.1),
            "maximize": (False, True),
            "weight_decay_mode": ("l2", "decoupled", "fully_decoupled"),
        },
        low_precision_lr=10.0,
        torch_twin=_decay_twin(),
    ),
    Case(
        name="RAdam",
        torch_cls=torch.optim.RAdam,
        fused_cls=fusedopt.RAdam,
        grid=_RADAM_GRID,
        bound=tolerances.RADAM,
        extra_args=("weight_decay_mode", "lr_max", "backend"),
        extra_group_keys=(),
        stateful={"lr": 1e-2, "weight_decay": 0.1},
        bad_kwargs=_BETAS_EPS_BAD_KWARGS,
        edits=_RADAM_EDITS,
        train_kwargs={"lr": 3e-3, "weight_decay": 0.05},
        group_options=(
            {"lr": 1e-1, "betas": (0.5, 0.6)},
            {"weight_decay": 0.3, "decoupled_weight_decay": True},
            {"eps": 1e-3, "maximize": True},
        ),
        options={
            "lr": (1e-2, torch.tensor(1e-2)),
            "betas": ((0.9, 0.999), (0.8, 0.95), (0.9, 0.6)),
            "weight_decay": (0.0, 0.1),
            "decoupled_weight_decay": (False, True),
            "maximize": (False, True),
        },
        low_precision_lr=0.1,
        torch_twin=_decay_twin(torch_decouples=True),
    ),
    Case(
        name="Adamax",
        torch_cls=torch.optim.Adamax,
        fused_cls=fusedopt.Adamax,
        grid=_ADAMAX_GRID,
        bound=tolerances.ADAMAX,
        extra_args=("weight_decay_mode", "lr_max", "backend"),
        extra_group_keys=(),
        stateful={"lr": 1e-2, "weight_decay": 0.1},
        bad_kwargs=_BETAS_EPS_BAD_KWARGS,
        edits=_ADAMAX_EDITS,
        train_kwargs={"lr": 1e-2, "weight_decay": 0.05},
        group_options=(
            {"lr": 1e-1, "betas": (0.5, 0.6)},
            {"weight_decay": 0.3},
            {"eps": 1e-3, "maximize": True},
        ),
        options={
            "lr": (1e-2, torch.tensor(1e-2)),
            "betas": ((0.9, 0.999), (0.8, 0.95)),
            "weight_decay": (0.0, 0.1),
            "maximize": (False, True),
            "weight_decay_mode": ("l2", "decoupled"),
        },
        low_precision_lr=0.1,
        torch_twin=_decay_twin(),
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
