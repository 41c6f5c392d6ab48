"""The global gradient norm in Triton: the partials kernel, the finishing
kernel, then their launcher.

A mirror of csrc/include/fusedopt/core/norm.h (the contribution, the combine,
the finish) and of its Note [norm summation order], which mta/reduce.h and
the CPU loops follow too: chunks of CHUNK elements (the element frame's map),
LANES lanes per chunk folded row by row, then an adjacent pairwise tree; the
chunk partials folded into THREADS values, then the same tree. The C++ order
(a thread's 4 lanes as (l0 + l1) + (l2 + l3), then tree_step's halving) is
that tree, so these kernels give the CPU backend's bits
(tests/test_clip.py), on a GPU too: no contraction (FP_FUSION off at every
launch, as the element frame: Note [bit-identical backends] in mta.py) and
IEEE square root. No atomics: each chunk writes its own partial.
Bytes: one read of every element (4 B fp32, 2 B bf16/fp16), 8 B per chunk.

Every load is masked (no vector hints): the reduction reads each grad once,
and has not been timed on a GPU yet; the element frame's aligned-block path
(kernels/mta.py) is where to look when it is.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from fusedopt.kernels.mta import FP_FUSION
from fusedopt.kernels.storage import to_float
from torch import Tensor

# NormKind in core/norm.h.
KIND_TWO = tl.constexpr(0)
KIND_INF = tl.constexpr(1)
# Note [norm summation order]: 64K-element chunks (kChunkSize), 2048 lanes
# (kLanes: 512 threads x 4), 512 values in the finishing fold (kThreads).
CHUNK = 1 << 16
LANES = 2048
THREADS = 512
# Columns of the tensor table (one int64 row per tensor) and of the block
# table (one int64 row per chunk: its tensor, first element, partial's slot).
COL_ADDRESS = tl.constexpr(0)
COL_NUMEL = tl.constexpr(1)
TENSOR_COLS = tl.constexpr(2)
COL_TENSOR = tl.constexpr(0)
COL_START = tl.constexpr(1)
COL_SLOT = tl.constexpr(2)
BLOCK_COLS = tl.constexpr(3)

_KINDS = {2.0: 0, math.inf: 1}


@triton.jit
def contribution(x, KIND: tl.constexpr):
    """One element's share: x^2, or |x| for the max norm."""
    if KIND == KIND_TWO:
        return x * x
    return tl.abs(x)


@triton.jit
def combine(a, b, KIND: tl.constexpr):
    """Sum, or a max that propagates NaN (Norm::combine)."""
    if KIND == KIND_TWO:
        return a + b
    return tl.where((a > b) | (a != a), a, b)


@triton.jit
def _tree(values, LOG2_N: tl.constexpr, KIND: tl.constexpr):
    """The adjacent pairwise tree over 2^LOG2_N values, to a 1-element tensor."""
    for _ in tl.static_range(LOG2_N):
        lower, upper = tl.split(tl.reshape(values, (values.shape[0] // 2, 2)))
        values = combine(lower, upper, KIND)
    return values


@triton.jit
def _partials_kernel(
    tensor_table,
    block_table,
    partials,
    DTYPE: tl.constexpr,
    KIND: tl.constexpr,
    CHUNK_SIZE: tl.constexpr,
    N_LANES: tl.constexpr,
):
    """One chunk per program: its lanes folded row by row, then the tree."""
    pid = tl.program_id(0)
    tensor = tl.load(block_table + pid * BLOCK_COLS + COL_TENSOR)
    start = tl.load(block_table + pid * BLOCK_COLS + COL_START)
    slot = tl.load(block_table + pid * BLOCK_COLS + COL_SLOT)
    row = tensor_table + tensor * TENSOR_COLS
    x_ptr = tl.load(row + COL_ADDRESS).to(tl.pointer_type(DTYPE))
    numel = tl.load(row + COL_NUMEL)
    lanes = tl.zeros((N_LANES,), tl.float32)
    for r in tl.range(0, tl.minimum(numel - start, CHUNK_SIZE), N_LANES):
        offs = start + r + tl.arange(0, N_LANES)
        # Masked elements load as 0, the combine's identity.
        x = to_float(tl.load(x_ptr + offs, mask=offs < numel, other=0.0))
        lanes = combine(lanes, contribution(x, KIND), KIND)
    tl.store(partials + slot + tl.arange(0, 1), _tree(lanes, N_LANES.bit_length() - 1, KIND))


@triton.jit
def _finish_kernel(partials, n_partials, out, KIND: tl.constexpr, N_THREADS: tl.constexpr):
    """One program: partial c folded into value c % N_THREADS, the tree, the finish."""
    values = tl.zeros((N_THREADS,), tl.float32)
    for r in tl.range(0, n_partials, N_THREADS):
        offs = r + tl.arange(0, N_THREADS)
        values = combine(values, tl.load(partials + offs, mask=offs < n_partials, other=0.0), KIND)
    total = _tree(values, N_THREADS.bit_length() - 1, KIND)
    if KIND == KIND_TWO:
        total = tl.sqrt_rn(total)
    tl.store(out + tl.arange(0, 1), total)


def _on_device(host: Tensor, device: torch.device) -> Tensor:
    """A host table on the device without a host sync (pinned, non_blocking)."""
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def grad_norm(tensors: Sequence[Tensor], norm_type: float = 2.0) -> Tensor:
    """The norm (2 or inf) of all the tensors' elements as one vector: a
    float32 0-dim tensor on their device, as fusedopt::grad_norm. One launch
    of the partials kernel per dtype present (mixed lists welcome), then the
    finishing kernel; nothing is read back on the host."""
    if float(norm_type) not in _KINDS:
        raise ValueError(f"fusedopt: grad_norm takes norm_type 2 or inf, got {norm_type}")
    if not tensors:
        raise ValueError("fusedopt: grad_norm needs at least one tensor")
    kind = _KINDS[float(norm_type)]
    device = tensors[0].device
    numels = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
    chunks = (numels + CHUNK - 1) // CHUNK
    tensor_of = torch.repeat_interleave(torch.arange(len(tensors)), chunks)
    first = torch.cumsum(chunks, 0) - chunks
    starts = (torch.arange(len(tensor_of)) - first[tensor_of]) * CHUNK
    blocks = torch.stack([tensor_of, starts, torch.arange(len(tensor_of))], dim=1)
    table = torch.stack([torch.tensor([t.data_ptr() for t in tensors]), numels], dim=1)
    n_chunks = len(tensor_of)
    partials = torch.empty(max(n_chunks, 1), dtype=torch.float32, device=device)
    out = torch.empty((), dtype=torch.float32, device=device)
    guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with guard:
        table_dev = _on_device(table, device)
        dtypes = torch.tensor([_DTYPE_CODES[t.dtype] for t in tensors])
        for dtype, code in _DTYPE_CODES.items():
            rows = blocks[dtypes[tensor_of] == code]
            if len(rows) == 0:
                continue
            _partials_kernel[(len(rows),)](
                table_dev,
                _on_device(rows.contiguous(), device),
                partials,
                DTYPE=_TL_DTYPES[dtype],
                KIND=kind,
                CHUNK_SIZE=CHUNK,
                N_LANES=LANES,
                enable_fp_fusion=FP_FUSION,
            )
        _finish_kernel[(1,)](
            partials, n_chunks, out, KIND=kind, N_THREADS=THREADS, enable_fp_fusion=FP_FUSION
        )
    return out


_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
