// The CPU reduction of the global gradient norm, one chunk at a time.
// Compiled once per instruction set like loop.cpp (FUSEDOPT_ISA), with the
// same flags: no contraction, no reassociation. Summing in one running fp32
// accumulator could not be vectorized without reassociating, and its result
// would hang on the order the threads took the chunks; the 2048 lanes of
// Note [norm summation order] (core/norm.h) are independent, so gcc
// vectorizes the fold as written (16 lanes per AVX-512 add, 8 per AVX2, 4 per
// SSE: the same additions in every build), and the result depends on the
// data alone. Bytes: one read of every element (4 B fp32, 2 B bf16/fp16).
#include "norm.h"

#include "fusedopt/core/storage.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must name the instruction set this translation unit is built for"
#endif

namespace fusedopt::cpu::FUSEDOPT_ISA {
namespace {

// Step 2 of the order: lane L folds elements L, L + kLanes, ... of the chunk.
// A row is one loop gcc vectorizes (unit stride, lane-wise). kRowsPerPass rows
// go through the lanes at once, each lane folding them in row order as one
// row at a time would (the same operations, the same bits), so the lanes
// are loaded and stored once per 4 rows. Measured, one thread, against
// torch's get_total_norm in the same run (bench/bench_clip.py, GPT-2 small's
// grads): 0.87x its speed with one row per pass, 0.96x with 4; on 2 x 16M
// elements, 30 interleaved calls: 10.1 ms against torch's 10.4 ms and two
// plain sums' 8.7 ms.
// The chunk's last, partial row folds the elements it has.
constexpr int64_t kRowsPerPass = 4;

template <norm::NormKind K, typename T>
__attribute__((noinline)) void fold_lanes(const T* __restrict__ x, int64_t n,
                                          float* __restrict__ lanes) {
  using N = norm::Norm<K>;
  int64_t row = 0;
  for (; row + kRowsPerPass * norm::kLanes <= n; row += kRowsPerPass * norm::kLanes) {
    const T* __restrict__ r0 = x + row;
    const T* __restrict__ r1 = r0 + norm::kLanes;
    const T* __restrict__ r2 = r1 + norm::kLanes;
    const T* __restrict__ r3 = r2 + norm::kLanes;
    for (int32_t lane = 0; lane < norm::kLanes; ++lane) {
      float value = lanes[lane];
      value = N::combine(value, N::contribution(to_float(r0[lane])));
      value = N::combine(value, N::contribution(to_float(r1[lane])));
      value = N::combine(value, N::contribution(to_float(r2[lane])));
      value = N::combine(value, N::contribution(to_float(r3[lane])));
      lanes[lane] = value;
    }
  }
  for (; row + norm::kLanes <= n; row += norm::kLanes) {
    for (int32_t lane = 0; lane < norm::kLanes; ++lane) {
      lanes[lane] = N::combine(lanes[lane], N::contribution(to_float(x[row + lane])));
    }
  }
  for (int64_t i = row; i < n; ++i) {
    lanes[i - row] = N::combine(lanes[i - row], N::contribution(to_float(x[i])));
  }
}

// The adjacent pairwise tree over the first `width` (a power of two) values,
// level by level: out[i] = combine(in[2i], in[2i + 1]), the tree of Note [norm
// summation order] steps 3 (see Norm::tree_step), in loops gcc vectorizes.
template <norm::NormKind K>
float pairwise_total(float* values, float* scratch, int32_t width) {
  using N = norm::Norm<K>;
  for (; width > 1; width /= 2) {
    for (int32_t i = 0; i < width / 2; ++i) {
      scratch[i] = N::combine(values[2 * i], values[2 * i + 1]);
    }
    for (int32_t i = 0; i < width / 2; ++i) values[i] = scratch[i];
  }
  return values[0];
}

// Lanes past the chunk's last element hold the identity, and so does every
// value of the tree whose lanes all lie there: combining the identity changes
// no bit (a + 0 = a; max(a, 0) = a for a >= 0 or NaN), so a chunk of n < kLanes
// elements folds only the first power of two >= n lanes, with the same
// result. Without this the 4096-element chunks of 2000 x 4096 params spent as
// long in the tree as in the elements.
template <norm::NormKind K, typename T>
float partial_of(const T* x, int64_t n) {
  int32_t width = 1;
  while (width < n && width < norm::kLanes) width *= 2;
  float lanes[norm::kLanes];
  float scratch[norm::kLanes / 2];
  for (int32_t lane = 0; lane < width; ++lane) lanes[lane] = norm::kIdentity;
  fold_lanes<K>(x, n, lanes);
  return pairwise_total<K>(lanes, scratch, width);
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
