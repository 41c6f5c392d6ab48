"""fusedopt.report(): what is built, what runs here, and who steps what."""

from __future__ import annotations

import importlib.util
import logging

import torch

from fusedopt import _extension, backends
from fusedopt.optim.adam import Adam, HFAdamW
from fusedopt.optim.adamax import Adamax
from fusedopt.optim.nadam import NAdam
from fusedopt.optim.radam import RAdam
from fusedopt.reference import WeightDecayMode

logger = logging.getLogger("fusedopt")


def _triton_line() -> str:
    if importlib.util.find_spec("triton") is None:
        return "triton: not installed"
    import triton

    mode = (
        "interpreter on (TRITON_INTERPRET=1): CPU tensors run"
        if backends.triton_interpreter_on()
        else "compiled mode: needs a CUDA GPU"
    )
    return f"triton: {triton.__version__}, {mode}"


# Fully decoupled decay multiplies p by 1 - wd * lr / lr_max: wd is the decay
# per step at the peak lr, so torch-scale values (1e-2) shrink every weight
# ~1% per step. Composer's default for the mode is 1e-5.
FULLY_DECOUPLED_WD_WARNING = 1e-3


# The classes whose update divides by a running RMS of the gradient: an L2
# term wd * p added to the gradient is divided by it too, so params with large
# gradients are barely decayed (Loshchilov & Hutter, 2019, sec. 2). AdamW is
# Adam with decoupled decay.
ADAM_FAMILY = (Adam, HFAdamW, NAdam, RAdam, Adamax)


def _decay_mode(optimizer: torch.optim.Optimizer, group: dict) -> WeightDecayMode | None:
    """The mode the step applies to this group (the class's hyper() is its one
    source), None for a class without weight decay."""
    mode = optimizer.hyper(group).get("weight_decay_mode")
    return None if mode is None else WeightDecayMode(mode)


def _misconfigurations(optimizer: torch.optim.Optimizer) -> list[str]:
    name = type(optimizer).__name__
    groups = [(i, g, _decay_mode(optimizer, g)) for i, g in enumerate(optimizer.param_groups)]
    groups = [(i, g, mode) for i, g, mode in groups if mode is not None]
    # Tensors of fewer than 2 dims are biases and normalisation gains in a
    # network (nanoGPT's no-decay rule); an optimizer of such tensors only is
    # not a network (a vector being fitted), and its decay is meant.
    network = any(p.dim() >= 2 for g in optimizer.param_groups for p in g["params"])
    lines = []
    for index, group, mode in groups:
        wd = float(group["weight_decay"])
        if mode == WeightDecayMode.FULLY_DECOUPLED and wd >= FULLY_DECOUPLED_WD_WARNING:
            lines.append(
                f"  warning: group {index} has weight_decay={wd:g} with "
                "weight_decay_mode='fully_decoupled', which decays p by wd * lr / lr_max per "
                f"step (up to {wd:g} per step); torch-scale values convert as "
                "wd_fully = wd_torch * lr_max"
            )
        if isinstance(optimizer, ADAM_FAMILY) and mode == WeightDecayMode.L2 and wd > 0:
            lines.append(
                f"  likely misconfiguration: group {index}: {name} with weight_decay={wd:g} "
                "adds L2 decay to the gradient (g += wd * p), which the update then divides by "
                "sqrt(v), so params with large gradients are barely decayed; decoupled decay "
                "(AdamW) is what is usually meant: use fusedopt.AdamW or "
                "weight_decay_mode='decoupled'"
            )
        low_dim = sum(p.dim() < 2 for p in group["params"])
        if network and wd > 0 and low_dim:
            lines.append(
                f"  likely misconfiguration: group {index} decays {low_dim} params of fewer "
                "than 2 dims (biases and normalisation gains, in a network; decay should leave "
                f"them alone): fusedopt.param_groups(model, weight_decay={wd:g}) puts them in "
                "a group without decay"
            )
    decoupled = (WeightDecayMode.DECOUPLED, WeightDecayMode.FULLY_DECOUPLED)
    if (
        isinstance(optimizer, ADAM_FAMILY)
        and groups
        and all(mode in decoupled and float(g["weight_decay"]) == 0 for _, g, mode in groups)
    ):
        lines.append(
            f"  likely misconfiguration: {name} with decoupled decay and weight_decay=0 in "
            "every group decays nothing (AdamW without decay is Adam): set weight_decay for "
            "the weight matrices (torch's AdamW default is 1e-2; transformers' "
            "TrainingArguments defaults to 0.0)"
        )
    return lines


def _log_once(optimizer: torch.optim.Optimizer, lines: list[str]) -> None:
    """Says each of these lines once per optimizer, at INFO level: a training
    script that calls report() every epoch logs a misconfiguration once."""
    logged = optimizer.__dict__.setdefault("_logged_misconfigurations", set())
    for line in lines:
        if line not in logged:
            logged.add(line)
            logger.info("fusedopt: %s: %s", type(optimizer).__name__, line.strip())


def report(optimizer: torch.optim.Optimizer | None = None) -> str:
    """A plain-text account of the backends and, given a fusedopt optimizer,
    which backend steps each group's params and why, and its likely
    misconfigurations (each also logged once, at INFO level, to the
    "fusedopt" logger). Print it."""
    lines = [
        "fusedopt report",
        f"torch: {torch.__version__} (CUDA build: "
        f"{torch.version.cuda or 'no'}; CUDA device present: {torch.cuda.is_available()})",
    ]
    if _extension.loaded():
        cuda = f"built for {_extension.cuda_archs()}" if _extension.cuda_built() else "not built"
        lines.append(
            f"extension fusedopt._C: loaded; CPU loop ISA: {_extension.cpu_isa()}; "
            f"CUDA kernels: {cuda}"
        )
    else:
        lines.append(f"extension: {_extension.LOAD_ERROR}")
    lines.append(_triton_line())
    lines.append("backends:")
    for name in backends.BACKEND_NAMES[1:]:
        reason = backends.get(name).unavailable_reason()
        lines.append(f"  {name:<10} {'available' if reason is None else 'unavailable: ' + reason}")
    lines.append(
        "auto order: CUDA tensors "
        + " -> ".join(backends.AUTO_ORDER["cuda"])
        + "; CPU tensors "
        + " -> ".join(backends.AUTO_ORDER["cpu"])
    )
    if optimizer is not None:
        requested = getattr(optimizer, "backend", None)
        lines.append(f"{type(optimizer).__name__} (backend={requested!r}):")
        plan = optimizer.plan()
        if not plan:
            # After zero_grad no param has a grad: what the last step did.
            plan = optimizer.last_step()
            lines.append(
                "  no param has a grad now; the last step():"
                if plan
                else "  no param has a grad yet; the choice is made at the first step()"
            )
        for index, bucket, count, choice in plan:
            dense = "" if bucket.dense else ", not dense"
            # Only a storage other than fp32 is named: an 8-bit group's small
            # tensors keep fp32 states and form a call of their own.
            states = "" if bucket.state_dtype == "fp32" else f", {bucket.state_dtype} states"
            lines.append(
                f"  group {index}: {count} {bucket.dtype} params on {bucket.device}"
                f"{dense}{states} -> {choice.backend.name}"
            )
            for name, reason in choice.passed_over:
                lines.append(f"      passed over {name}: {reason}")
        misconfigurations = _misconfigurations(optimizer)
        _log_once(optimizer, misconfigurations)
        lines.extend(misconfigurations)
    return "\n".join(lines)
