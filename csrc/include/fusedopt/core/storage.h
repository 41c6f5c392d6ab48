// Storage dtypes of params, grads and states and their fp32 conversions,
// written once for nvcc (device and host passes) and for g++ (the CPU loops
// and the CPU emulation of the CUDA traversal). The math never sees a storage
// dtype (Note [the rule interface] in core/rule.h; Note [state dtypes] below).
#pragma once

#include <cstdint>
#include <cstring>

#include "fusedopt/core/macros.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace fusedopt {

// The storage dtype of params and grads: how the binding tells the CPU loops
// and the CUDA launcher which instantiation to run.
enum class ParamDtype : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Note [state dtypes]: the storage dtype of a call's element states, one per
// call (a param group's `state_dtype`). The rule never sees it: the traversal
// loads each state into fp32 registers and stores it rounded once, to nearest
// even (bf16), as it does for params. kInt8Blockwise is Dettmers et al.'s
// 8-bit blockwise form (core/blockwise8.h): codes into a dynamic map and one
// fp32 absmax per block, which the CPU traversal re-derives per block before
// its store.
enum class StateDtype : int32_t { kFloat32 = 0, kBFloat16 = 1, kInt8Blockwise = 2 };

// bf16 and fp16 as their bit patterns: the same layout as at::BFloat16 and
// at::Half, with no torch or CUDA type in the kernels' interface.
struct Bf16 {
  uint16_t bits;
};
struct Fp16 {
  uint16_t bits;
};

// N elements of one dtype moved by one load or store instruction: 16 bytes is
// the widest (LDG.E.128 / STG.E.128). Its alignment is what the vector path
// requires.
template <typename T, int N>
struct alignas(N * sizeof(T)) Pack {
  T v[N];
};

// Bit casts (memcpy is how C++17 spells them; compilers emit a register move).
FUSEDOPT_HD float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

FUSEDOPT_HD uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

FUSEDOPT_HD float to_float(float x) { return x; }

FUSEDOPT_HD float to_float(Bf16 x) {
#if defined(__CUDACC__)
  __nv_bfloat16_raw raw;
  raw.x = x.bits;
  return __bfloat162float(__nv_bfloat16(raw));
#else
  return bits_to_float(static_cast<uint32_t>(x.bits) << 16);
#endif
}

FUSEDOPT_HD float to_float(Fp16 x) {
#if defined(__CUDACC__)
  __half_raw raw;
  raw.x = x.bits;
  return __half2float(__half(raw));
#else
  // Host: integer bit moves and selects, which gcc vectorizes with any SIMD ISA
  // (a _Float16 conversion stays scalar without AVX-512 FP16, 3x slower).
  // The exponent is rebiased from 15 to 127; inf/NaN get the all-ones
  // exponent; subnormals are normalized by one exact float subtraction
  // (F. Giesen, "half to float done quic").
  constexpr uint32_t kShiftedExp = 0x7C00u << 13;  // the half exponent field, moved to float's
  const uint32_t moved = (static_cast<uint32_t>(x.bits) & 0x7FFFu) << 13;
  const uint32_t exp = moved & kShiftedExp;
  const uint32_t rebiased = moved + ((127u - 15u) << 23);
  const uint32_t special = rebiased + ((128u - 16u) << 23);
  const float subnormal = bits_to_float(rebiased + (1u << 23)) - bits_to_float(113u << 23);
  uint32_t magnitude = exp == kShiftedExp ? special : rebiased;
  magnitude = exp == 0 ? float_to_bits(subnormal) : magnitude;
  return bits_to_float(magnitude | (static_cast<uint32_t>(x.bits) & 0x8000u) << 16);
#endif
}

// Stores round to nearest even, like torch's casts and the CPU backend.
FUSEDOPT_HD void from_float(float x, float& out) { out = x; }

FUSEDOPT_HD void from_float(float x, Bf16& out) {
#if defined(__CUDACC__)
  out.bits = static_cast<__nv_bfloat16_raw>(__float2bfloat16_rn(x)).x;
#else
  const uint32_t bits = float_to_bits(x);
  const uint32_t rounding_bias = 0x7FFFu + ((bits >> 16) & 1u);
  const bool is_nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;  // stays a quiet NaN
  out.bits = static_cast<uint16_t>(is_nan ? 0x7FC0u : (bits + rounding_bias) >> 16);
#endif
}

FUSEDOPT_HD void from_float(float x, Fp16& out) {
#if defined(__CUDACC__)
  out.bits = static_cast<__half_raw>(__float2half_rn(x)).x;
#else
  // Host: round to nearest even with integer ops and selects, vectorizable
  // (F. Giesen, float_to_half_fast3_rtne). Overflow gives inf, NaN a quiet NaN;
  // results below fp16's normal range are rounded by one float add that puts
  // the bits to keep at the bottom of the mantissa.
  constexpr uint32_t kF32Infinity = 255u << 23;
  constexpr uint32_t kF16Overflow = (127u + 16u) << 23;  // 65536: the first float past fp16
  constexpr uint32_t kF16MinNormal = 113u << 23;          // 2^-14
  constexpr uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  const uint32_t bits = float_to_bits(x);
  const uint32_t sign = bits & 0x80000000u;
  const uint32_t magnitude = bits ^ sign;
  const uint32_t special = magnitude > kF32Infinity ? 0x7E00u : 0x7C00u;
  const uint32_t subnormal =
      float_to_bits(bits_to_float(magnitude) + bits_to_float(kDenormMagic)) - kDenormMagic;
  const uint32_t mantissa_odd = (magnitude >> 13) & 1u;
  const uint32_t normal = (magnitude + ((15u - 127u) << 23) + 0xFFFu + mantissa_odd) >> 13;
  uint32_t half = magnitude < kF16MinNormal ? subnormal : normal;
  half = magnitude >= kF16Overflow ? special : half;
  out.bits = static_cast<uint16_t>(half | (sign >> 16));
#endif
}

}  // namespace fusedopt
