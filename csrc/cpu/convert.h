// Loads and stores between a storage dtype and the fp32 compute type on the
// CPU. The math never sees a storage dtype (see Note [state dtypes are a
// traversal policy] in fusedopt/adam_rule.h).
#pragma once

#include <cstdint>
#include <cstring>

namespace fusedopt::cpu {
// Anonymous: every ISA's translation unit keeps its own copy (see Note
// [internal linkage of host rules] in fusedopt/macros.h).
namespace {

// bf16 as its bit pattern; torch's at::BFloat16 has the same layout.
struct BFloat16 {
  uint16_t bits;
};

// fp16 through the compiler's _Float16 (gcc >= 12 on x86-64): with F16C or
// AVX-512 the conversions vectorize, on the baseline they are software calls.
using Float16 = _Float16;

inline float to_float(float x) { return x; }
inline float to_float(Float16 x) { return static_cast<float>(x); }
inline float to_float(BFloat16 x) {
  const uint32_t bits = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

template <typename T>
inline T from_float(float x);

template <>
inline float from_float<float>(float x) {
  return x;
}

template <>
inline Float16 from_float<Float16>(float x) {
  return static_cast<Float16>(x);
}

// Round to nearest even, as torch's c10::BFloat16 and CUDA's __float2bfloat16_rn
// do; a NaN stays a (quiet) NaN instead of rounding into infinity.
template <>
inline BFloat16 from_float<BFloat16>(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const uint32_t rounding_bias = 0x7FFFu + ((bits >> 16) & 1u);
  const uint32_t rounded = (bits + rounding_bias) >> 16;
  const bool is_nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
  return BFloat16{static_cast<uint16_t>(is_nan ? 0x7FC0u : rounded)};
}

}  // namespace
}  // namespace fusedopt::cpu
