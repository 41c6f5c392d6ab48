"""The Triton kernels' conversions between fp32 and the storage dtype of
params and grads, mirrored from csrc/include/fusedopt/core/storage.h
(`to_float`, `from_float`): exact loads, and stores that round to nearest
even, bit for bit as the CPU backend's (Note [bit-identical backends] in
kernels/mta.py).

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

import triton
import triton.language as tl

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
