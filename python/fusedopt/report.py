"""fusedopt.report(): what is built, what runs here, and who steps what."""

from __future__ import annotations

import importlib.util

import torch

from fusedopt import _extension, backends


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


def _misconfigurations(optimizer: torch.optim.Optimizer) -> list[str]:
    lines = []
    for index, group in enumerate(optimizer.param_groups):
        wd = float(group.get("weight_decay", 0.0))
        if group.get("weight_decay_mode") == "fully_decoupled" and wd >= FULLY_DECOUPLED_WD_WARNING:
            lines.append(
                f"  warning: group {index} has weight_decay={wd:g} with "
                "weight_decay_mode='fully_decoupled', which decays p by wd * lr / lr_max per "
                f"step (up to {wd:g} per step); torch-scale values convert as "
                "wd_fully = wd_torch * lr_max"
            )
    return lines


def report(optimizer: torch.optim.Optimizer | None = None) -> str:
    """A plain-text account of the backends and, given a fusedopt optimizer,
    which backend steps each group's params and why. Print it."""
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
            lines.append(
                f"  group {index}: {count} {bucket.dtype} params on {bucket.device}"
                f"{dense} -> {choice.backend.name}"
            )
            for name, reason in choice.passed_over:
                lines.append(f"      passed over {name}: {reason}")
        lines.extend(_misconfigurations(optimizer))
    return "\n".join(lines)
