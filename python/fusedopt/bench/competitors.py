"""Who steps in a benchmark: for each fusedopt optimizer, torch's paths for
its twin (for-loop, foreach, fused where torch has it), fusedopt's backends,
and, for Adam and AdamW, the other fused CPU/GPU Adams when they import
(DeepSpeed's DeepSpeedCPUAdam, bitsandbytes, torchao). Nothing is installed
for them: a missing one is skipped with a printed line."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import fusedopt
from fusedopt.bench.workloads import FP32_STATE_BYTES, state_bytes_per_element

Factory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]
# torch's three paths, by the flag that picks each.
TORCH_PATHS = {
    "for-loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
# Bytes of one element of an 8-bit optimizer's state; the block scales (one
# fp32 per 256 elements in bitsandbytes and torchao: 1.6%) are not counted.
INT8_STATE_BYTES = 1


@dataclass(frozen=True)
class Entry:
    """One optimizer as benchmarked: fusedopt's class name, its kwargs (the
    usual configuration: the states most runs keep), and torch's twin, if any."""

    name: str
    kwargs: dict[str, Any]
    torch_cls: type[torch.optim.Optimizer] | None
    torch_kwargs: dict[str, Any] = field(default_factory=dict)


ENTRIES = {
    e.name: e
    for e in (
        Entry("AdamW", {"lr": 1e-3, "weight_decay": 1e-2}, torch.optim.AdamW),
        Entry("Adam", {"lr": 1e-3, "weight_decay": 1e-2}, torch.optim.Adam),
        Entry("SGD", {"lr": 1e-3, "momentum": 0.9}, torch.optim.SGD),
        Entry("Adagrad", {"lr": 1e-2}, torch.optim.Adagrad),
        Entry("RMSprop", {"lr": 1e-3, "momentum": 0.9}, torch.optim.RMSprop),
        Entry("RMSpropTF", {"lr": 1e-3, "momentum": 0.9}, None),
        Entry("RAdam", {"lr": 1e-3}, torch.optim.RAdam),
        Entry("NAdam", {"lr": 1e-3}, torch.optim.NAdam),
        Entry("Adamax", {"lr": 1e-3}, torch.optim.Adamax),
        Entry("Adadelta", {"lr": 1.0}, torch.optim.Adadelta),
        Entry("Rprop", {"lr": 1e-3}, torch.optim.Rprop),
        Entry("ASGD", {"lr": 1e-3}, torch.optim.ASGD),
        Entry("Lion", {"lr": 1e-4}, None),
        Entry("HFAdamW", {"lr": 1e-3, "weight_decay": 1e-2}, None),
    )
}


def optimizer_names(spec: str) -> list[str]:
    """ "adamw,sgd" (any case) or "all" -> fusedopt's class names."""
    if spec.strip().lower() == "all":
        return list(ENTRIES)
    by_lower = {name.lower(): name for name in ENTRIES}
    names = []
    for word in filter(None, (w.strip() for w in spec.split(","))):
        if word.lower() not in by_lower:
            raise ValueError(f"unknown optimizer {word!r}: choose from {', '.join(ENTRIES)}, all")
        names.append(by_lower[word.lower()])
    return names


@dataclass(frozen=True)
class Competitor:
    """One way to step: a name for the table, how to build the optimizer over
    a param list, and what its states cost per element (the bytes model)."""

    name: str
    make: Factory
    states: int  # states read and written per element by one step
    state_bytes: int | None  # bytes per state element; None: the param's dtype (torch's way)

    def bytes_per_element(self, dtype: torch.dtype) -> int:
        state_bytes = self.state_bytes or torch.finfo(dtype).bits // 8
        return state_bytes_per_element(dtype, self.states, state_bytes)


def states_used(entry: Entry) -> int:
    """From the rule: the states this configuration's step reads and writes."""
    cls = getattr(fusedopt, entry.name)
    opt = cls([torch.zeros(1, requires_grad=True)], **entry.kwargs)
    return len(cls.rule.used_states(opt.hyper(opt.param_groups[0])))


def torch_has(entry: Entry, path: str, device: str) -> bool:
    """Whether torch's twin takes this path's flag on this device (fused is
    CPU and CUDA for Adam, AdamW, SGD, Adagrad in torch 2.14; it says so by
    raising at construction)."""
    if entry.torch_cls is None:
        return False
    p = torch.zeros(1, device=device, requires_grad=True)
    try:
        entry.torch_cls([p], **entry.kwargs, **entry.torch_kwargs, **TORCH_PATHS[path])
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class ThirdParty:
    """Another library's optimizer for one of ours: its module (to find), how
    to build it, and the bytes of its states."""

    label: str
    module: str
    make: Callable[[Any, list[torch.Tensor], Entry], torch.optim.Optimizer]
    state_bytes: int | None


def _deepspeed(mod, ps, entry):
    return mod.DeepSpeedCPUAdam(ps, **entry.kwargs, adamw_mode=entry.name == "AdamW")


THIRD_PARTY = {
    "AdamW": (
        ThirdParty("DeepSpeedCPUAdam", "deepspeed.ops.adam", _deepspeed, FP32_STATE_BYTES),
        ThirdParty(
            "bitsandbytes AdamW",
            "bitsandbytes.optim",
            lambda m, ps, e: m.AdamW(ps, **e.kwargs),
            FP32_STATE_BYTES,
        ),
        ThirdParty(
            "bitsandbytes AdamW8bit",
            "bitsandbytes.optim",
            lambda m, ps, e: m.AdamW8bit(ps, **e.kwargs),
            INT8_STATE_BYTES,
        ),
        ThirdParty(
            "torchao AdamW8bit",
            "torchao.optim",
            lambda m, ps, e: m.AdamW8bit(ps, **e.kwargs),
            INT8_STATE_BYTES,
        ),
    ),
    "Adam": (
        ThirdParty("DeepSpeedCPUAdam", "deepspeed.ops.adam", _deepspeed, FP32_STATE_BYTES),
        ThirdParty(
            "bitsandbytes Adam",
            "bitsandbytes.optim",
            lambda m, ps, e: m.Adam(ps, **e.kwargs),
            FP32_STATE_BYTES,
        ),
        ThirdParty(
            "torchao Adam8bit",
            "torchao.optim",
            lambda m, ps, e: m.Adam8bit(ps, **e.kwargs),
            INT8_STATE_BYTES,
        ),
    ),
}


def module_found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def competitors(
    name: str, backends: list[str], torch_paths: list[str], device: str
) -> tuple[list[Competitor], list[str]]:
    """The competitors of optimizer `name`, and a line for each one skipped."""
    entry = ENTRIES[name]
    states = states_used(entry)
    out, skipped = [], []
    for path in torch_paths:
        if not torch_has(entry, path, device):
            if entry.torch_cls is not None:
                skipped.append(f"torch {path}: torch's {name} has no {path} path on {device}")
            continue
        flags = {**entry.kwargs, **entry.torch_kwargs, **TORCH_PATHS[path]}
        out.append(
            Competitor(f"torch {path}", lambda ps, f=flags: entry.torch_cls(ps, **f), states, None)
        )
    if entry.torch_cls is None:
        skipped.append(f"torch: torch.optim has no {name}")
    cls = getattr(fusedopt, name)
    for backend in backends:
        out.append(
            Competitor(
                f"fusedopt {backend}",
                lambda ps, b=backend: cls(ps, **entry.kwargs, backend=b),
                states,
                FP32_STATE_BYTES,
            )
        )
    for other in THIRD_PARTY.get(name, ()):
        top = other.module.split(".")[0]
        if not module_found(other.module):
            skipped.append(f"{other.label}: skipped, {top} is not installed")
            continue
        out.append(
            Competitor(
                other.label,
                lambda ps, o=other: o.make(importlib.import_module(o.module), ps, entry),
                states,
                other.state_bytes,
            )
        )
    return out, skipped
