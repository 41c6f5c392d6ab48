// Storage dtypes of the CUDA traversal and their fp32 conversions, written
// once for nvcc (device and host passes) and for g++ (the CPU emulation of the
// traversal, csrc/ops.cpp). The math never sees a storage dtype (see Note
// [state dtypes are a traversal policy] in fusedopt/adam_rule.h).
#pragma once

#include <cstdint>
#include <cstring>

#include "fusedopt/macros.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace fusedopt {

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

FUSEDOPT_HD float to_float(float x) { return x; }

FUSEDOPT_HD float to_float(Bf16 x) {
#if defined(__CUDACC__)
  __nv_bfloat16_raw raw;
  raw.x = x.bits;
  return __bfloat162float(__nv_bfloat16(raw));
#else
  const uint32_t bits = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

FUSEDOPT_HD float to_float(Fp16 x) {
#if defined(__CUDACC__)
  __half_raw raw;
  raw.x = x.bits;
  return __half2float(__half(raw));
#else
  _Float16 h;  // gcc >= 12 on x86-64, as in csrc/cpu/convert.h
  std::memcpy(&h, &x.bits, sizeof(h));
  return static_cast<float>(h);
#endif
}

// Stores round to nearest even, like torch's casts and the CPU backend.
FUSEDOPT_HD void from_float(float x, float& out) { out = x; }

FUSEDOPT_HD void from_float(float x, Bf16& out) {
#if defined(__CUDACC__)
  out.bits = static_cast<__nv_bfloat16_raw>(__float2bfloat16_rn(x)).x;
#else
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const uint32_t rounding_bias = 0x7FFFu + ((bits >> 16) & 1u);
  const bool is_nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;  // stays a quiet NaN
  out.bits = static_cast<uint16_t>(is_nan ? 0x7FC0u : (bits + rounding_bias) >> 16);
#endif
}

FUSEDOPT_HD void from_float(float x, Fp16& out) {
#if defined(__CUDACC__)
  out.bits = static_cast<__half_raw>(__float2half_rn(x)).x;
#else
  const _Float16 h = static_cast<_Float16>(x);
  std::memcpy(&out.bits, &h, sizeof(h));
#endif
}

}  // namespace fusedopt
