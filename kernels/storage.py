"""The Triton kernels' conversions between fp32 and the storage dtype of
params, grads and states, mirrored from csrc/include/fusedopt/core/storage.h
(`to_float`, `from_float`): exact loads, and stores that round to nearest
even, bit for bit as the CPU backend's (Note [bit-identical backends] in
kernels/mta.py); and the 8-bit blockwise states' decode, block absmax and
encode, mirrored from csrc/include/fusedopt/core/blockwise8.h.

bf16 goes through its bits, because Triton's interpreter gets both directions
wrong (triton 3.8, measured on every pattern): its fp32 -> bf16 cast
truncates (half of 2^20 random fp32 patterns off by one ulp, and a NaN whose
payload is in the low 16 bits becomes an inf), and its bf16 -> fp32 cast
garbles the 254 nonzero subnormals (to zero or to other values). Written as
integer operations, the conversion is the same on a GPU and under the
interpreter, so CPU tests check the rounding that a GPU runs. It costs ~6
SASS instructions per stored value more than cvt.rn.bf16x2.f32 (Adam's bf16
kernel, sm_90: 1232 -> 1328 instructions for 16 stored values per thread,
registers unchanged; bounded in tests/test_triton_static.py), in a loop that
moves 22 B per element. fp16 needs nothing: the interpreter's cast is numpy's
astype, which rounds to nearest even like a GPU's cvt.rn.f16.f32 (measured:
2^20 random patterns and the edges, overflow to inf, subnormals, NaN, all as
torch rounds them).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fusedopt.reference import codecs

# fp32 bit fields (IEEE 754 binary32).
F32_ABS_MASK = tl.constexpr(0x7FFFFFFF)
F32_INFINITY = tl.constexpr(0x7F800000)
# The quiet NaN a bf16 store writes for any NaN, as storage.h's host path does.
BF16_QUIET_NAN = tl.constexpr(0x7FC0)
BF16_SHIFT = tl.constexpr(16)  # bf16 is the top half of an fp32


@triton.jit
def to_float(x):
    """x (fp32, bf16 or fp16) in fp32, exactly: a bf16 moved into the top half
    of an fp32 word, as storage.h does on the host."""
    if x.dtype == tl.bfloat16:
        bits = x.to(tl.uint16, bitcast=True).to(tl.uint32)
        return (bits << BF16_SHIFT).to(tl.float32, bitcast=True)
    return x.to(tl.float32)


@triton.jit
def from_float(x, DTYPE: tl.constexpr):
    """fp32 x rounded to nearest even in DTYPE. bf16: add half an ulp less
    one, plus the lowest kept bit (ties go to even), and keep the top half:
    overflow carries into the exponent and gives inf, an inf stays inf, a
    NaN becomes BF16_QUIET_NAN."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        rounding_bias = 0x7FFF + ((bits >> BF16_SHIFT) & 1)
        is_nan = (bits & F32_ABS_MASK) > F32_INFINITY
        rounded = tl.where(is_nan, BF16_QUIET_NAN, (bits + rounding_bias) >> BF16_SHIFT)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(DTYPE)


# --- 8-bit blockwise states (csrc/include/fusedopt/core/blockwise8.h) ------------------
# Elements per absmax (kBlock8) and codes per map (kCodes8).
BLOCK8 = tl.constexpr(256)
CODES8 = tl.constexpr(256)
# Rows of the codec table (codec_table()), CODES8 fp32 each: the two maps, then
# the two maps' 255 midpoints (the last entry of a midpoint row is never read).
ROW_SIGNED_MAP = tl.constexpr(0)
ROW_UNSIGNED_MAP = tl.constexpr(1)
ROW_SIGNED_MIDPOINTS = tl.constexpr(2)
ROW_UNSIGNED_MIDPOINTS = tl.constexpr(3)
CODEC_ROWS = 4
# The encoder's binary search: 8 halvings of [0, 256).
SEARCH_STEPS = tl.constexpr(8)


def codec_table(device) -> torch.Tensor:
    """The four code tables of blockwise8.h as one fp32 [CODEC_ROWS, CODES8]
    tensor on `device`, from their definition (fusedopt.reference.codecs)."""
    table = torch.zeros((CODEC_ROWS, CODES8.value), dtype=torch.float32)
    for signed, map_row, midpoint_row in (
        (True, ROW_SIGNED_MAP, ROW_SIGNED_MIDPOINTS),
        (False, ROW_UNSIGNED_MAP, ROW_UNSIGNED_MIDPOINTS),
    ):
        table[map_row.value] = codecs.dynamic_map(signed)
        table[midpoint_row.value, : CODES8.value - 1] = codecs.dynamic_midpoints(signed)
    return table.to(device)


@triton.jit
def broadcast_blocks8(values, BLOCK: tl.constexpr):
    """Per-block values ([BLOCK // BLOCK8]) as [BLOCK], each over its block."""
    return tl.reshape(tl.broadcast_to(values[:, None], (BLOCK // BLOCK8, BLOCK8)), (BLOCK,))


@triton.jit
def decode8(codes, absmax, table, SIGNED: tl.constexpr):
    """fp32 values of uint8 code bits: map[code] * absmax, the block's absmax
    of each element (blockwise8.h)."""
    row = ROW_SIGNED_MAP if SIGNED else ROW_UNSIGNED_MAP
    return tl.load(table + row * CODES8 + codes.to(tl.int32)) * absmax


@triton.jit
def block_absmax8(x, mask, BLOCK: tl.constexpr):
    """The absmax of each BLOCK8 elements of x ([BLOCK // BLOCK8]): the max of
    their magnitude bits, an integer max in which a NaN's bits lie above
    inf's, as blockwise8.h's magnitude_bits; elements outside `mask` (None:
    all inside) count as 0."""
    bits = x.to(tl.int32, bitcast=True) & F32_ABS_MASK
    if mask is not None:
        bits = tl.where(mask, bits, 0)
    most = tl.max(tl.reshape(bits, (BLOCK // BLOCK8, BLOCK8)), axis=1)
    return most.to(tl.float32, bitcast=True)


@triton.jit
def encode8(x, absmax, table, SIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """The uint8 codes of x ([BLOCK]) given each block's absmax
    ([BLOCK // BLOCK8]): x / absmax (IEEE; an all-zero block divides by 1),
    then the count of midpoints strictly below it by blockwise8.h's
    encode_code8 search, eight branch-free halvings whose compares are the
    same on every backend (a NaN compares below none: code 0). The CPU and
    CUDA kernels run encode_code8_fast, which tests/test_state_dtypes.py holds
    to this search's codes on every float of [-1, 1]."""
    divisor = broadcast_blocks8(tl.where(absmax == 0.0, 1.0, absmax), BLOCK)
    normalized = tl.div_rn(x, divisor)
    midpoints = table + (ROW_SIGNED_MIDPOINTS if SIGNED else ROW_UNSIGNED_MIDPOINTS) * CODES8
    index = tl.zeros((BLOCK,), dtype=tl.int32)
    for step in tl.static_range(SEARCH_STEPS):
        half = (CODES8 // 2) >> step
        index += tl.where(normalized > tl.load(midpoints + index + (half - 1)), half, 0)
    return index.to(tl.uint8)


# --- master-weight stores ---------------------------------------------------------------
# Mirrored from csrc/include/fusedopt/core/master.h (Note [master weights]) and
# core/philox.h, name for name; fusedopt.reference.master is their definition.

# StorePolicy's codes (core/master.h), the kernels' STORE_POLICY.
STORE_NONE = tl.constexpr(0)
STORE_MASTER_WEIGHTS = tl.constexpr(1)
STORE_KAHAN_SUM = tl.constexpr(2)
STORE_STOCHASTIC_ROUNDING = tl.constexpr(3)
# Random123's multipliers and Weyl key increments (core/philox.h).
PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)
PHILOX_ROUNDS = tl.constexpr(10)
BF16_QUIET_BIT = tl.constexpr(0x40)  # stochastic_round_bf16's quieting of a NaN
# The random bits a rounding adds below bf16's last bit: Philox's word 0's top 16.
ROUNDING_SHIFT = tl.constexpr(16)


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """One Philox4x32-10 block of uint32 words: counter (c0..c3), key (k0,
    k1). tl.umulhi is the product's high word (mul.hi.u32), the plain
    product its low word; static_range unrolls the 10 rounds."""
    m0 = tl.full([], PHILOX_M0, tl.uint32)
    m1 = tl.full([], PHILOX_M1, tl.uint32)
    for r in tl.static_range(PHILOX_ROUNDS):
        if r > 0:
            k0 = k0 + PHILOX_W0
            k1 = k1 + PHILOX_W1
        hi0 = tl.umulhi(c0, m0)
        lo0 = c0 * m0
        hi1 = tl.umulhi(c2, m1)
        lo1 = c2 * m1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@triton.jit
def rounding_bits(seed, count, tag, index):
    """The 16 random bits of elements `index` (int64, the param's memory
    order) of a param at rounding step `count` with tag `tag` (uint32), under
    the int64 `seed`'s 64 bits: core/master.h's rounding_bits."""
    lo = index.to(tl.uint32)
    hi = (index >> 32).to(tl.uint32)
    zeros = tl.zeros(index.shape, tl.uint32)
    words = philox4x32_10(
        lo, hi, count + zeros, tag + zeros, seed.to(tl.uint32), (seed >> 32).to(tl.uint32)
    )
    return words[0] >> ROUNDING_SHIFT


@triton.jit
def stochastic_round_bf16(x, bits):
    """fp32 x rounded to bf16 by 16 random bits (core/master.h): the carry of
    bits + x's low half rounds up; a NaN becomes a quiet NaN."""
    raw = x.to(tl.uint32, bitcast=True)
    is_nan = (raw & F32_ABS_MASK) > F32_INFINITY
    rounded = tl.where(is_nan, (raw >> BF16_SHIFT) | BF16_QUIET_BIT, (raw + bits) >> BF16_SHIFT)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
