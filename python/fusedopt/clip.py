"""Gradient clipping by the global norm: fusedopt.clip_grad_norm_, its
reduction grad_norm, and the plain-PyTorch reference both are tested against.

The 2-norm and the max norm are one multi-tensor reduction per device (the op
fusedopt::grad_norm on the cpu and cuda backends, kernels/norm.py on triton):
fp32 accumulation whatever the grads' dtype, in the fixed order of Note [norm
summation order] (csrc/include/fusedopt/core/norm.h), so the result is the
same bits on every run, thread count and backend but the reference. Other p
(0, 1, 3, -inf, ...) take the reference, torch's formula: the norm of the
per-tensor norms.

Nothing is read back on the host (unless error_if_nonfinite=True, which must
look, as torch's does): the norm stays on the device, the coefficient
min(max_norm / (norm + 1e-6), 1) is computed there, and the grads are scaled
by torch._foreach_mul_, as torch scales them. A non-finite norm propagates as
in torch: the coefficient is 0 (norm inf) or NaN, and so are the grads' finite
elements (an inf grad times 0 is NaN).

Sharded grads (DTensor, FSDP2, tensor parallel) are refused: their global norm
needs an all-reduce across ranks, which this reduction does not do yet.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from fusedopt import backends
from fusedopt._checks import KERNEL_PARAM_DTYPES, is_dense
from fusedopt.reference import compute_dtype

# The norms with a fused path (NormKind in core/norm.h).
FUSED_NORM_TYPES = (2.0, math.inf)
# torch's clip_grad_norm_ adds this to the norm before dividing: the same
# coefficient, and no division by zero for all-zero grads.
CLIP_EPS = 1e-6


def reference_grad_norm(tensors: Sequence[Tensor], norm_type: float = 2.0) -> Tensor:
    """The reference: torch's formula (the p-norm of the per-tensor p-norms),
    each tensor's norm in float32 (float64 for fp64 tensors), on the first
    tensor's device. Zero-size tensors take no part (torch's inf norm raises
    on one: a max over nothing has no identity)."""
    device = tensors[0].device
    tensors = [t for t in tensors if t.numel() > 0]
    if not tensors:
        return torch.zeros((), dtype=torch.float32, device=device)
    norms = [torch.linalg.vector_norm(t, norm_type, dtype=compute_dtype(t.dtype)) for t in tensors]
    dtype = functools.reduce(torch.promote_types, [n.dtype for n in norms])
    return torch.linalg.vector_norm(
        torch.stack([n.to(device=device, dtype=dtype) for n in norms]), norm_type
    )


def _sharded(tensors: Sequence[Tensor]) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return any(isinstance(t, DTensor) for t in tensors)


def _norm_backend(requested: str, device: torch.device, tensors: Sequence[Tensor]) -> str:
    """The backend that reduces one device's tensors: the optimizers' choice
    (fusedopt.backends.resolve) for a bucket that stands for the whole list,
    mixed fp32/bf16/fp16 included (one reduction reads them all)."""
    dtype = next((t.dtype for t in tensors if t.dtype not in KERNEL_PARAM_DTYPES), torch.float32)
    bucket = backends.Bucket(device, dtype, all(is_dense(t) for t in tensors))
    return backends.resolve(requested, bucket).backend.name


def _device_norm(backend: str, tensors: Sequence[Tensor], norm_type: float) -> Tensor:
    if backend == "reference" or norm_type not in FUSED_NORM_TYPES:
        return reference_grad_norm(tensors, norm_type)
    if backend == "triton":
        from fusedopt.kernels.norm import grad_norm as triton_grad_norm

        return triton_grad_norm(tensors, norm_type)
    return torch.ops.fusedopt.grad_norm(list(tensors), norm_type)


def grad_norm(
    tensors: Iterable[Tensor], norm_type: float = 2.0, *, backend: str = "auto"
) -> Tensor:
    """The p-norm of all the tensors' elements as one vector, a float32 0-dim
    tensor on the first tensor's device (one per device, then their norm, as
    torch combines devices). No host sync. `backend` as the optimizers'
    (auto: cpu or cuda, else triton, else reference)."""
    tensors = list(tensors)
    norm_type = float(norm_type)
    if _sharded(tensors):
        raise NotImplementedError(
            "fusedopt: the grads are DTensors (sharded: FSDP2, tensor parallel); their global "
            "norm needs an all-reduce across ranks, which fusedopt's reduction does not do yet. "
            "Use torch.nn.utils.clip_grad_norm_, which reduces DTensors across ranks."
        )
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    if backend not in backends.BACKEND_NAMES:
        raise ValueError(
            f"fusedopt: unknown backend {backend!r}; choose one of {backends.BACKEND_NAMES}"
        )
    by_device: dict[torch.device, list[Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t)
    norms = [
        _device_norm(_norm_backend(backend, device, ts), ts, norm_type)
        for device, ts in by_device.items()
    ]
    if len(norms) == 1:
        return norms[0]
    first = tensors[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(first) for n in norms]), norm_type)


def clip_coefficient(total_norm: Tensor, max_norm: float) -> Tensor:
    """torch's min(max_norm / (norm + 1e-6), 1), on the norm's device: 0 for an
    inf norm, NaN for a NaN one (torch.clamp keeps NaN)."""
    return torch.clamp(max_norm / (total_norm + CLIP_EPS), max=1.0)


def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    *,
    backend: str = "auto",
) -> Tensor:
    """torch.nn.utils.clip_grad_norm_, with the norm as one fused reduction.

    Scales every grad in place by min(max_norm / (total_norm + 1e-6), 1) and
    returns the total norm of the grads (as one vector) before clipping, on the
    grads' device. norm_type 2 and inf are fused (fp32 accumulation, a fixed
    summation order: deterministic); any other p takes the reference path,
    torch's formula. No host sync, so it can be captured in a CUDA graph,
    unless error_if_nonfinite=True, which reads the norm to raise torch's
    RuntimeError for an inf or NaN norm.

    Differences from torch, on purpose: the norm is accumulated in fp32 over
    all elements (torch rounds each tensor's norm to the grads' dtype first,
    and computes the coefficient in that dtype); the value returned is rounded
    to the dtype torch returns (the grads' dtype, promoted across dtypes),
    while the coefficient uses the fp32 norm. `foreach` is accepted for the
    signature and changes nothing: the reduction is fused, the scaling is
    torch._foreach_mul_. `backend` as the optimizers'. DTensor grads are
    refused (their norm needs an all-reduce across ranks).
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm_type = float(norm_type)
    total = grad_norm(grads, norm_type, backend=backend)
    if error_if_nonfinite and torch.logical_or(total.isnan(), total.isinf()):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from "
            "`parameters` is non-finite, so it cannot be clipped. To disable "
            "this error and scale the gradients by the non-finite norm anyway, "
            "set `error_if_nonfinite=False`"
        )
    coefficient = clip_coefficient(total, float(max_norm))
    by_device: dict[torch.device, list[Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    for device, device_grads in by_device.items():
        torch._foreach_mul_(device_grads, coefficient.to(device))
    return total.to(functools.reduce(torch.promote_types, [g.dtype for g in grads]))
