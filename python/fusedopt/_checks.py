"""Argument checks of the Python backends (reference, Triton), mirroring the
C++ binding's (csrc/binding/checks.cpp): they run before anything is written,
so a refused step changes nothing. Driven by the rule's state names, so every
rule gets the same checks and messages."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fusedopt import _extension
from fusedopt.reference import compute_dtype

if TYPE_CHECKING:
    from fusedopt.registry import Rule

KERNEL_PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The storage of 8-bit blockwise states in check_lists' `state_dtype`
# (fusedopt.reference.codecs): codes, then each state's absmax, state-major.
INT8_BLOCKWISE = "int8"
CODE_DTYPES = (torch.int8, torch.uint8)


def states_storage(states: Sequence[Tensor]) -> str:
    """The state dtype of a call's states (Note [state dtypes] in
    csrc/include/fusedopt/core/storage.h), read from the first state as the
    C++ binding reads it: "int8" for int8/uint8 codes, "bf16", else "fp32"."""
    if not states:
        return "fp32"
    dtype = states[0].dtype
    if dtype in CODE_DTYPES:
        return INT8_BLOCKWISE
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def storage_state_dtype(storage: str, default: torch.dtype | None) -> torch.dtype | str | None:
    """check_lists' `state_dtype` for states stored as `storage`; fp32 storage
    keeps the backend's own (`default`: None, the compute dtype, for the reference)."""
    if storage == "bf16":
        return torch.bfloat16
    if storage == INT8_BLOCKWISE:
        return INT8_BLOCKWISE
    return default


def is_dense(t: Tensor) -> bool:
    """True when the tensor covers its memory with no gaps and no overlap
    (contiguous, channels_last or any permutation of contiguous): then a flat
    loop over its storage visits each element once. ATen's
    is_non_overlapping_and_dense, which Python does not expose."""
    if t.is_contiguous() or t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def same_layout(a: Tensor, b: Tensor) -> bool:
    """Same sizes, and the same strides on every dim longer than 1 (a size-1
    dim's stride moves no element, and autograd does not keep it equal: a
    channels_last (64, 32, 1, 1) weight's grad may come contiguous). Mirrors
    same_layout in csrc/binding/checks.cpp."""
    return a.shape == b.shape and all(
        n == 1 or sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride())
    )


def check_hyper(rule: Rule, lr: float | Tensor, hyper: Mapping[str, Any]) -> None:
    """The hyperparameter checks of the rule's op (its R::check and the lr's:
    finite and >= 0), with the op's RuntimeError and message, for every
    backend. One source: the C++ checks in csrc/include/fusedopt/rules/<rule>.h,
    called through fusedopt._C.check_hyper. Without the extension there is
    nothing to call, and only the Python backends run: they then step
    unchecked values (the missing extension is reported, fusedopt.report()).

    A tensor lr on a GPU is not read (a host sync), as the CUDA op does not."""
    if not _extension.loaded():
        return
    if isinstance(lr, Tensor):
        lr = lr.item() if lr.device.type == "cpu" else 0.0
    _extension.check_hyper(rule.name, float(lr), [float(hyper[name]) for name in rule.hyper])


def check_lists(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    states: Sequence[Tensor],
    state_steps: Sequence[Tensor],
    *,
    state_names: Sequence[str],
    scalar_lists: int,
    state_dtype: torch.dtype | str | None,
    require_dense: bool,
    state_shape: Callable[[str, Tensor], tuple[int, ...] | None] | None = None,
) -> None:
    """`states` is state-major (Note [state-major lists] in fusedopt/registry.py)
    with one run of len(params) tensors per name in `state_names`, and
    `state_steps` has `scalar_lists` runs (Rule.scalar_lists: the count, then
    each scalar state).
    `state_dtype` None means "the param's compute dtype" (the reference);
    `require_dense` asks for the flat-loop layout of the kernels.
    `state_dtype` INT8_BLOCKWISE: `states` holds each state's codes (int8 or
    uint8, its param's shape and layout), then each state's absmax (float32,
    one per block: fusedopt.reference.codecs), both state-major.

    Whole-list comparisons first (for 2000 params, ~3x faster than one loop
    that checks each tensor); only when one fails does the loop below find the
    culprit and say what is wrong with it.

    With `state_shape` (Rule.state_shape: Note [param-shaped states] in
    fusedopt/registry.py), each name's run holds the states of the params
    that keep one, of the shape it gives, contiguous where it is not the
    param's shape."""
    if state_shape is not None:
        _check_shaped(
            params,
            grads,
            states,
            state_steps,
            state_names,
            scalar_lists,
            state_dtype,
            require_dense,
            state_shape,
        )
        return
    n = len(params)
    if state_dtype == INT8_BLOCKWISE:
        _check_blockwise(
            params, grads, states, state_steps, state_names, scalar_lists, require_dense
        )
        return
    want = [n, n * len(state_names), n * scalar_lists]
    got = [len(grads), len(states), len(state_steps)]
    if got != want:
        raise RuntimeError(
            f"fusedopt: for {n} params, want {want[0]} grads, {want[1]} states "
            f"({', '.join(state_names) or 'none'}, state-major) and {want[2]} state_steps; "
            f"got {got[0]}, {got[1]} and {got[2]}"
        )
    lists = [("grad", grads)] + [
        (name, states[k * n : (k + 1) * n]) for k, name in enumerate(state_names)
    ]
    if not _lists_pass(params, lists, state_steps, state_dtype, require_dense):
        _raise_first_failure(params, lists, state_steps, state_dtype, require_dense)


def _check_blockwise(params, grads, states, state_steps, state_names, scalar_lists, require_dense):
    """check_lists for 8-bit blockwise states: each state's codes as a state
    of their own dtype, then the absmax of each."""
    from fusedopt.reference.codecs import absmax_shape

    n, used = len(params), len(state_names)
    if len(states) != 2 * n * used:
        raise RuntimeError(
            f"fusedopt: for {n} params with 8-bit states, want {2 * n * used} states "
            f"(the codes of {', '.join(state_names) or 'none'}, then their absmax, state-major); "
            f"got {len(states)}"
        )
    check_lists(
        params,
        grads,
        [],
        state_steps,
        state_names=(),
        scalar_lists=scalar_lists,
        state_dtype=None,
        require_dense=require_dense,
    )
    for k, name in enumerate(state_names):
        codes = states[k * n : (k + 1) * n]
        dtype = codes[0].dtype if codes else torch.int8
        if dtype not in CODE_DTYPES:
            raise RuntimeError(
                f"fusedopt: the 8-bit codes of {name} must be int8 or uint8, got {dtype}"
            )
        check_lists(
            params,
            grads,
            codes,
            [],
            state_names=(name,),
            scalar_lists=0,
            state_dtype=dtype,
            require_dense=require_dense,
        )
        for i, (p, absmax) in enumerate(zip(params, states[(used + k) * n : (used + k + 1) * n])):
            want = absmax_shape(p.numel())
            if (
                absmax.dtype != torch.float32
                or tuple(absmax.shape) != want
                or absmax.device != p.device
                or not absmax.is_contiguous()
            ):
                raise RuntimeError(
                    f"fusedopt: the absmax of {name} {i} must be a contiguous float32 tensor of "
                    f"shape {want} on {p.device}, got {absmax.dtype} of shape "
                    f"{tuple(absmax.shape)} on {absmax.device}"
                )


def _lists_pass(params, lists, state_steps, state_dtype, require_dense) -> bool:
    dtypes = [p.dtype for p in params]
    if any(d.is_complex for d in set(dtypes)):
        return False
    state_dtypes = [state_dtype or compute_dtype(d) for d in dtypes]
    shapes = [p.shape for p in params]
    devices = [p.device for p in params]
    strides = [p.stride() for p in params] if require_dense else None
    if require_dense and not all(p.is_contiguous() or is_dense(p) for p in params):
        return False
    for name, tensors in lists:
        if any(t.layout is not torch.strided for t in tensors):
            return False
        if [t.dtype for t in tensors] != (dtypes if name == "grad" else state_dtypes):
            return False
        if [t.shape for t in tensors] != shapes or [t.device for t in tensors] != devices:
            return False
        if require_dense and [t.stride() for t in tensors] != strides:
            if not all(same_layout(t, p) for t, p in zip(tensors, params)):
                return False
    return all(s.numel() == 1 and s.dtype is torch.float32 for s in state_steps)


def _raise_first_failure(params, lists, state_steps, state_dtype, require_dense) -> None:
    for i, p in enumerate(params):
        if p.is_complex():
            raise RuntimeError(f"fusedopt: complex params are not supported (param {i})")
        if require_dense and not is_dense(p):
            raise RuntimeError(
                f"fusedopt: param {i} must be dense (contiguous or a permutation of it); got "
                f"sizes {tuple(p.shape)} strides {p.stride()}"
            )
        want_state = state_dtype or compute_dtype(p.dtype)
        for name, tensors in lists:
            t = tensors[i]
            dtype = p.dtype if name == "grad" else want_state
            if t.layout != torch.strided:
                raise RuntimeError(f"fusedopt: sparse {name} {i} is not supported")
            if t.device != p.device or t.shape != p.shape or t.dtype != dtype:
                raise RuntimeError(
                    f"fusedopt: {name} {i} must be {dtype} of shape {tuple(p.shape)} on "
                    f"{p.device}, got {t.dtype} of shape {tuple(t.shape)} on {t.device}"
                )
            if require_dense and not same_layout(t, p):
                raise RuntimeError(
                    f"fusedopt: {name} {i} must have its param's strides {p.stride()}, "
                    f"got {t.stride()}"
                )
    for i, step in enumerate(state_steps):
        if step.numel() != 1 or step.dtype != torch.float32:
            raise RuntimeError(
                f"fusedopt: state_steps[{i}] must be a one-element float32 tensor, got "
                f"{step.numel()} elements of {step.dtype}"
            )
    raise AssertionError("fusedopt: a list check failed but no tensor explains it")


def _check_shaped(
    params,
    grads,
    states,
    state_steps,
    state_names,
    scalar_lists,
    state_dtype,
    require_dense,
    state_shape,
) -> None:
    n = len(params)
    owners = [[(i, state_shape(name, p)) for i, p in enumerate(params)] for name in state_names]
    owners = [[(i, shape) for i, shape in run if shape is not None] for run in owners]
    want = [n, sum(map(len, owners)), n * scalar_lists]
    got = [len(grads), len(states), len(state_steps)]
    if got != want:
        raise RuntimeError(
            f"fusedopt: for {n} params, want {want[0]} grads, {want[1]} states "
            f"({', '.join(state_names) or 'none'}, state-major, where each param keeps "
            f"one) and {want[2]} state_steps; got {got[0]}, {got[1]} and {got[2]}"
        )
    lists = [("grad", grads)]
    if not _lists_pass(params, lists, state_steps, state_dtype, require_dense):
        _raise_first_failure(params, lists, state_steps, state_dtype, require_dense)
    k = 0
    for name, run in zip(state_names, owners):
        for i, shape in run:
            p, t = params[i], states[k]
            k += 1
            dtype = state_dtype or compute_dtype(p.dtype)
            if (
                t.layout is not torch.strided
                or tuple(t.shape) != shape
                or t.dtype != dtype
                or t.device != p.device
            ):
                raise RuntimeError(
                    f"fusedopt: {name} {i} must be {dtype} of shape {shape} on {p.device}, "
                    f"got {t.dtype} of shape {tuple(t.shape)} on {t.device}"
                )
            if not require_dense:
                continue
            layout_ok = same_layout(t, p) if shape == tuple(p.shape) else t.is_contiguous()
            if not layout_ok:
                raise RuntimeError(
                    f"fusedopt: {name} {i} must be contiguous or have its param's strides; "
                    f"got strides {t.stride()}"
                )


def store_policy(group: Mapping[str, Any]) -> str:
    """The group's master-weight policy (fusedopt.reference.master): the one
    of its policy keys that is True, else "none"; a ValueError naming the
    constraint for two at once, a non-bool, or a seed outside [0, 2^64)."""
    from fusedopt.reference import master

    chosen = []
    for key in master.POLICIES:
        value = group.get(key, False)
        if not isinstance(value, bool):
            raise ValueError(f"fusedopt: {key} must be a bool, got {value!r}")
        if value:
            chosen.append(key)
    if len(chosen) > 1:
        raise ValueError(
            f"fusedopt: a param group takes at most one of {master.POLICIES}, got {chosen}"
        )
    seed = group.get(master.SEED_KEY, master.DEFAULT_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"fusedopt: {master.SEED_KEY} must be an int in [0, 2^64), got {seed!r}")
    return chosen[0] if chosen else master.NONE


def param_store_policy(policy: str, param: Tensor) -> str:
    """The group's policy as it applies to one param: "none" for an fp32 or
    fp64 param (its store is exact), a RuntimeError where the param's dtype
    has no such policy (stochastic rounding of fp16)."""
    from fusedopt.reference import master

    if policy == master.NONE or param.dtype not in KERNEL_PARAM_DTYPES[1:]:
        return master.NONE
    if param.dtype not in master.POLICY_DTYPES[policy]:
        raise RuntimeError(
            f"fusedopt: {policy}=True applies to "
            f"{' and '.join(map(str, master.POLICY_DTYPES[policy]))} params, got a "
            f"{param.dtype} param of shape {tuple(param.shape)}; use master_weights or "
            "kahan_sum for it"
        )
    return policy
