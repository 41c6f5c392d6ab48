// The CPU reduction of the global gradient norm, one chunk at a time.
// Compiled once per instruction set like loop.cpp (FUSEDOPT_ISA), with the
// same flags: no contraction, no reassociation. Summing in one running fp32
// accumulator could not be vectorized without reassociating, and its result
// would hang on the order the threads took the chunks; the 2048 lanes of
// Note [norm summation order] (core/norm.h) are independent, so gcc
// vectorizes the fold as written (16 lanes per AVX-512 add, 8 per AVX2, 4 per
// SSE: the same additions in every build), and the result depends on the
// data alone. Bytes: one read of every element (4 B fp32, 2 B bf16/fp16).
#include "fusedopt/mta/traversal.h"
#include "norm.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must name the instruction set this translation unit is built for"
#endif

namespace fusedopt::cpu::FUSEDOPT_ISA {
namespace {

// Step 2 of the order: lane L folds elements L, L + kLanes, ... of the chunk.
// A full row is one loop gcc vectorizes (unit stride, lane-wise); the
// chunk's last, partial row folds the elements it has.
template <norm::NormKind K, typename T>
__attribute__((noinline)) void fold_lanes(const T* __restrict__ x, int64_t n,
                                          float* __restrict__ lanes) {
  using N = norm::Norm<K>;
  int64_t row = 0;
  for (; row + norm::kLanes <= n; row += norm::kLanes) {
    for (int32_t lane = 0; lane < norm::kLanes; ++lane) {
      lanes[lane] = N::combine(lanes[lane], N::contribution(to_float(x[row + lane])));
    }
  }
  for (int64_t i = row; i < n; ++i) {
    lanes[i - row] = N::combine(lanes[i - row], N::contribution(to_float(x[i])));
  }
}

template <norm::NormKind K, typename T>
float partial_of(const T* x, int64_t n) {
  using N = norm::Norm<K>;
  float lanes[norm::kLanes];
  for (float& lane : lanes) lane = norm::kIdentity;
  fold_lanes<K>(x, n, lanes);
  // Step 3: each "thread"'s 4 lanes, then the pairwise tree.
  float values[norm::kThreads];
  for (int32_t t = 0; t < norm::kThreads; ++t) {
    const float four[norm::kLanesPerThread] = {lanes[4 * t], lanes[4 * t + 1], lanes[4 * t + 2],
                                               lanes[4 * t + 3]};
    values[t] = N::thread_value(four);
  }
  for (int32_t half = 1; half < norm::kThreads; half *= 2) {
    for (int32_t t = 0; t < norm::kThreads; t += 2 * half) N::tree_step(values, t, half);
  }
  return values[0];
}

}  // namespace

template <norm::NormKind K>
float chunk_partial(const NormChunk& chunk) {
  switch (chunk.dtype) {
    case ParamDtype::kBFloat16:
      return partial_of<K>(static_cast<const Bf16*>(chunk.data), chunk.n);
    case ParamDtype::kFloat16:
      return partial_of<K>(static_cast<const Fp16*>(chunk.data), chunk.n);
    case ParamDtype::kFloat32:
      break;
  }
  return partial_of<K>(static_cast<const float*>(chunk.data), chunk.n);
}

template float chunk_partial<norm::NormKind::kTwo>(const NormChunk&);
template float chunk_partial<norm::NormKind::kInf>(const NormChunk&);

}  // namespace fusedopt::cpu::FUSEDOPT_ISA
