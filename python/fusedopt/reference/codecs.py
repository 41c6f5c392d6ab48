"""Storage codecs of optimizer states (Note [state dtypes] in
csrc/include/fusedopt/core/storage.h), in plain PyTorch: the definition every
backend's codec is tested against.

A state is stepped in float32 whatever its storage: loaded (decoded) into
float32, updated by the rule, stored (encoded) once.

  - "fp32": as is.
  - "bf16": bfloat16, stored rounded to nearest even (torch's cast).
  - "int8": 8-bit blockwise (Dettmers et al. 2022, "8-bit Optimizers via
    Block-wise Quantization"; bitsandbytes' layout): blocks of BLOCK elements
    of the flattened state, each with a float32 absmax (the largest |x| of the
    block) and one byte per element, the index of the code nearest to x / absmax
    in a 256-entry dynamic map. Signed states (first moments) use the signed
    map, states that never go below zero (second moments) the unsigned one,
    whose 256 codes all lie in [0, 1]. Tensors under MIN_8BIT_SIZE elements
    keep float32 states, as bitsandbytes' `min_8bit_size` does: their codes and
    absmax would cost more than they save, and small tensors (biases, norms)
    are the ones where quantization error matters most.

Encoding is the same on every backend, bit for bit: the code is the number of
the map's midpoints (float32, `dynamic_midpoints`) strictly below x / absmax
(x / absmax in float32 by IEEE division; the nearest code, ties to the lower
one), 0 for a NaN; absmax 0 encodes every element as the code of 0. absmax
is the largest magnitude of the block, taken on the magnitudes' bits, so a
NaN in a block makes its absmax that NaN (and the block decodes to NaN).
bitsandbytes finds the code by a binary search over the sorted map too, with
its own tie and edge rules: its codes can differ from these by one at ties.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

STATE_DTYPES = ("fp32", "bf16", "int8")
# The storage of each state dtype's codes (int8: the signed map's codes are
# kept in int8 tensors and the unsigned map's in uint8, so a code tensor says
# which map decodes it; the byte is the code's index in the map either way).
BF16 = torch.bfloat16
# Elements per absmax: bitsandbytes' blocksize for its 8-bit optimizers (256),
# which the CPU loops take as their per-block unit (csrc/cpu/loop.cpp) and the
# CUDA and CPU chunk sizes are multiples of.
BLOCK = 256
# bitsandbytes' `min_8bit_size`: smaller tensors keep float32 states.
MIN_8BIT_SIZE = 4096
# The dynamic map's shape (bitsandbytes' create_dynamic_map defaults): 7
# decades, 10^-7..1, each a linear grid, with the sign as the 8th bit.
MAX_EXPONENT_BITS = 7
TOTAL_BITS = 8


@functools.cache
def dynamic_map(signed: bool) -> Tensor:
    """The 256 codes of Dettmers' dynamic quantization map, sorted, float32.

    Decade i (i = 0..6) holds the midpoints of a linear grid of n_i + 1 points
    from 0.1 to 1, times 10^(i - 6): n_i = 2^i signed (and their negatives), 2^(i+1)
    unsigned; plus 0 and 1. Signed: 2 * 127 + 2 codes; unsigned: 254 + 2. As
    bitsandbytes' create_dynamic_map builds it: float32 grids and midpoints,
    scaled by the decade's power of ten in float32."""
    codes: list[Tensor] = []
    for i in range(MAX_EXPONENT_BITS):
        points = 2 ** (i + (0 if signed else 1)) + 1
        grid = torch.linspace(0.1, 1.0, points, dtype=torch.float32)
        midpoints = (grid[:-1] + grid[1:]) / 2.0
        scaled = midpoints * (10.0 ** (i - (MAX_EXPONENT_BITS - 1)))
        codes.append(scaled)
        if signed:
            codes.append(-scaled)
    codes.append(torch.tensor([0.0, 1.0]))
    table = torch.cat(codes).sort().values
    assert table.numel() == 2**TOTAL_BITS
    return table


@functools.cache
def dynamic_midpoints(signed: bool) -> Tensor:
    """The 255 float32 midpoints between neighbouring codes: the encoder's
    decision boundaries."""
    table = dynamic_map(signed)
    return (table[:-1] + table[1:]) / 2.0


def code_dtype(signed: bool) -> torch.dtype:
    return torch.int8 if signed else torch.uint8


def is_signed_code(codes: Tensor) -> bool:
    return codes.dtype == torch.int8


def absmax_shape(numel: int) -> tuple[int]:
    return ((numel + BLOCK - 1) // BLOCK,)


def _memory_order(t: Tensor) -> Tensor:
    """A dense tensor's elements as a 1-D view in memory order: blocks follow
    the storage, as the kernels' flat loops walk it."""
    return t.as_strided((t.numel(),), (1,))


def decode_8bit(codes: Tensor, absmax: Tensor) -> Tensor:
    """float32 values of 8-bit blockwise codes, in the codes' layout:
    map[code] * the absmax of its block."""
    table = dynamic_map(is_signed_code(codes)).to(codes.device)
    index = _memory_order(codes).view(torch.uint8).long()
    scale = absmax.repeat_interleave(BLOCK)[: index.numel()]
    out = torch.empty_like(codes, dtype=torch.float32, memory_format=torch.preserve_format)
    _memory_order(out).copy_(table[index] * scale)
    return out


def encode_8bit(values: Tensor, codes: Tensor, absmax: Tensor) -> None:
    """Stores float32 `values` into `codes` (its dtype picks the map) and
    `absmax`, blockwise (module docstring)."""
    laid_out = torch.empty_like(codes, dtype=torch.float32, memory_format=torch.preserve_format)
    flat = _memory_order(laid_out.copy_(values))
    n = flat.numel()
    padded = torch.zeros(absmax.numel() * BLOCK, dtype=torch.float32, device=flat.device)
    padded[:n] = flat
    blocks = padded.view(-1, BLOCK)
    # The largest magnitude's bits: a NaN's lie above inf's, so a block with
    # a NaN gets a NaN absmax, the same NaN on every backend.
    magnitude_bits = blocks.view(torch.int32) & 0x7FFFFFFF
    new_absmax = magnitude_bits.amax(dim=1).view(torch.float32)
    safe = torch.where(new_absmax == 0, 1.0, new_absmax)
    normalized = torch.where(new_absmax[:, None] == 0, 0.0, blocks / safe[:, None])
    midpoints = dynamic_midpoints(is_signed_code(codes)).to(flat.device)
    index = torch.searchsorted(midpoints, normalized.contiguous(), right=False)
    index = torch.where(normalized.isnan(), 0, index)
    absmax.copy_(new_absmax)
    _memory_order(codes).view(torch.uint8).copy_(index.reshape(-1)[:n].to(torch.uint8))


def new_8bit(values: Tensor, like: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """The codes (in `like`'s layout) and absmax of `values` (`like`'s shape)."""
    codes = torch.empty_like(like, dtype=code_dtype(signed), memory_format=torch.preserve_format)
    absmax = torch.empty(absmax_shape(like.numel()), dtype=torch.float32, device=like.device)
    encode_8bit(values, codes, absmax)
    return codes, absmax


def decode(stored: list[Tensor], absmax: list[Tensor]) -> list[Tensor]:
    """The compute-dtype values of a param's stored states (`absmax`: each
    one's, for 8-bit states, else empty). fp32 (and the reference's fp64)
    states are returned as they are, so a rule updates them in place."""
    if absmax:
        return [decode_8bit(codes, a) for codes, a in zip(stored, absmax)]
    return [s.float() if s.dtype == BF16 else s for s in stored]


def encode(values: list[Tensor], stored: list[Tensor], absmax: list[Tensor]) -> None:
    """Stores decode()'s values, updated, back into their storage: bf16
    rounded to nearest even (torch's cast), 8-bit re-encoded blockwise."""
    for k, (value, into) in enumerate(zip(values, stored)):
        if absmax:
            encode_8bit(value, into, absmax[k])
        elif value is not into:
            into.copy_(value)
