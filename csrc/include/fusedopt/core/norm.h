// The global gradient norm's arithmetic, shared by the CPU reduction
// (csrc/cpu/norm.cpp) and the CUDA one (mta/reduce.h): the per-element
// contribution, the combine, the finish, and the one summation order both
// follow. Torch-free: compiled by g++ and nvcc.
//
// Note [norm summation order]: a reduction's result depends on its order, so
// the order is fixed here, by the data alone (never by the thread count, the
// grid size or the ISA), and both backends follow it; the result is then
// deterministic, and the CPU backend and the CUDA kernel body (emulated on the
// CPU) give the same bits (tests/test_clip.py).
//   1. Elements are cut into chunks of 64K, tensor by tensor (core/chunk_plan.h,
//      the element traversal's map), and each chunk reduced on its own.
//   2. In a chunk, element i belongs to lane i % kLanes; each lane folds its
//      elements in increasing order from the identity (0). kLanes = 2048 is a
//      CUDA block's 512 threads x 4 elements of one 16-byte fp32 load, so a
//      thread holds its 4 lanes in registers; on the CPU, 2048 independent
//      lanes are what lets gcc vectorize the fold without reassociating a sum
//      (-ffp-contract=off, no -ffast-math), and its 8 KB stay in L1.
//   3. The 2048 lanes fold into 512 values, (l0 + l1) + (l2 + l3) per thread,
//      then a pairwise tree halves them (tree_step): the error of a pairwise
//      sum grows with log2 of the count, where one running sum's grows with
//      the count.
//   4. The chunks' partials, in chunk order, are folded the same way: partial
//      c into value c % kThreads in increasing c, then the same tree.
// Every fold accumulates in fp32, whatever the grads' dtype, as torch's
// vector_norm does for bf16/fp16 (its per-tensor norms are then rounded to
// the grads' dtype; this sum is not).
#pragma once

#include <cmath>
#include <cstdint>

#include "fusedopt/core/macros.h"

namespace fusedopt::norm {

// The norms with a fused path; other p go through the reference
// (python/fusedopt/clip.py). The values are part of the ops' schema.
enum class NormKind : int32_t { kTwo = 0, kInf = 1 };

// Threads of a CUDA reduction block, and lanes per thread (one 16-byte fp32
// load): see Note [norm summation order].
constexpr int32_t kThreads = 512;
constexpr int32_t kLanesPerThread = 4;
constexpr int32_t kLanes = kThreads * kLanesPerThread;

// The identity of both combines: 0 (squares and absolute values are >= 0).
constexpr float kIdentity = 0.0f;

template <NormKind K>
struct Norm {
  // One element's share: x^2 for the 2-norm, |x| for the max norm.
  FUSEDOPT_HD_MEMBER static float contribution(float x) {
    if constexpr (K == NormKind::kTwo) {
      return x * x;
    } else {
      return std::fabs(x);
    }
  }
  // Sum, or a max that propagates NaN as torch's does (a NaN in either
  // operand gives NaN; an inf squared is inf, so a sum is inf or NaN too).
  FUSEDOPT_HD_MEMBER static float combine(float a, float b) {
    if constexpr (K == NormKind::kTwo) {
      return a + b;
    } else {
      return (a > b || a != a) ? a : b;
    }
  }
  // The norm from the combined total.
  FUSEDOPT_HD_MEMBER static float finish(float total) {
    if constexpr (K == NormKind::kTwo) {
      return std::sqrt(total);
    } else {
      return total;
    }
  }
  // Step 3 of Note [norm summation order]: one thread's 4 lanes.
  FUSEDOPT_HD_MEMBER static float thread_value(const float (&lanes)[kLanesPerThread]) {
    return combine(combine(lanes[0], lanes[1]), combine(lanes[2], lanes[3]));
  }
  // One level of the pairwise tree over `values` (kThreads of them): value t
  // takes in value t + half when t is a multiple of 2 half (half a power of
  // two: a mask, not a division). Each level reads only what earlier levels
  // wrote, so running the threads of a level in any order, or one after
  // another, gives the same result; on a GPU a barrier separates the levels.
  // After half = 1, 2, ..., kThreads / 2, values[0] is the total. Steps 2-3
  // together are the adjacent pairwise tree over the kLanes lanes: level k
  // combines the pairs (2i, 2i + 1) of level k - 1, which is how the CPU
  // loops compute it (pairwise_total in csrc/cpu/norm.cpp).
  FUSEDOPT_HD_MEMBER static void tree_step(float* values, int32_t thread, int32_t half) {
    if ((thread & (2 * half - 1)) == 0) {
      values[thread] = combine(values[thread], values[thread + half]);
    }
  }
};

}  // namespace fusedopt::norm
