// The CPU element loop of the Adam family. CMake compiles this file once per
// instruction set (FUSEDOPT_ISA = avx512, avx2, baseline) with that ISA's
// flags, and adam_cpu_dispatch.cpp picks one at run time: a wheel never
// assumes the build machine's CPU (-march=native is banned).
//
// The loop is written for the compiler's auto-vectorizer: unit stride, no
// aliasing between the streams, no loop-carried dependence, and the only
// switches that change memory traffic (param dtype, amsgrad, unscale) lifted
// into template parameters so the inner loop carries no data-dependent
// memory access. Bytes per element (fp32 params): read p, g, m, v and write
// p, m, v = 28 B; +8 B with amsgrad; +4 B when a GradScaler's unscaled grad is
// stored back; bf16/fp16 params save 2 B on each of p and g.
#include "adam_cpu.h"
#include "convert.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must name the instruction set this translation unit is built for"
#endif
#define FUSEDOPT_CAT2(a, b) a##b
#define FUSEDOPT_CAT(a, b) FUSEDOPT_CAT2(a, b)

namespace fusedopt::cpu {
namespace {

// Elements per inner block: the element loop runs over blocks this long, and
// each block first prefetches the block kPrefetchDistance elements ahead.
constexpr int64_t kBlock = 256;
// 4 KB of fp32 ahead per stream. The hardware prefetcher stops at 4 KB page
// boundaries and starts cold on every new tensor; with many small tensors
// (2000 x 16 KB) that is most of the traffic, so we fetch across both.
constexpr int64_t kPrefetchDistance = 1024;
constexpr int64_t kCacheLine = 64;

// The buffers of one chunk, offset to the chunk's first element.
template <typename P>
struct ChunkPointers {
  P* param;
  P* grad;
  float* exp_avg;
  float* exp_avg_sq;
  float* max_exp_avg_sq;
  int64_t size;
};

template <typename P>
ChunkPointers<P> chunk_pointers(const AdamLaunch& launch, int64_t c, bool amsgrad) {
  const Chunk chunk = launch.chunks[c];
  const AdamTensor& t = launch.tensors[chunk.tensor];
  return {static_cast<P*>(t.param) + chunk.start, static_cast<P*>(t.grad) + chunk.start,
          t.exp_avg + chunk.start, t.exp_avg_sq + chunk.start,
          amsgrad ? t.max_exp_avg_sq + chunk.start : nullptr, chunk.size};
}

template <typename T>
void prefetch_block(const T* base, int64_t first, int64_t last) {
  const char* begin = reinterpret_cast<const char*>(base + first);
  const char* end = reinterpret_cast<const char*>(base + last);
  for (const char* line = begin; line < end; line += kCacheLine) __builtin_prefetch(line, 1);
}

template <typename P, bool kAmsgrad>
void prefetch(const ChunkPointers<P>& c, int64_t first, int64_t last) {
  prefetch_block(c.param, first, last);
  prefetch_block(c.grad, first, last);
  prefetch_block(c.exp_avg, first, last);
  prefetch_block(c.exp_avg_sq, first, last);
  if (kAmsgrad) prefetch_block(c.max_exp_avg_sq, first, last);
}

template <typename P, bool kAmsgrad, bool kUnscale>
void run_block(const ChunkPointers<P>& c, int64_t first, int64_t last, const AdamHyper& hyper,
               const AdamTensorScalars& scalars, float grad_scale) {
  P* __restrict__ param = c.param;
  P* __restrict__ grad = c.grad;
  float* __restrict__ exp_avg = c.exp_avg;
  float* __restrict__ exp_avg_sq = c.exp_avg_sq;
  float* __restrict__ max_exp_avg_sq = c.max_exp_avg_sq;
  for (int64_t i = first; i < last; ++i) {
    float p = to_float(param[i]);
    float g = to_float(grad[i]);
    if (kUnscale) {
      g = g / grad_scale;
      grad[i] = from_float<P>(g);
    }
    float m = exp_avg[i];
    float v = exp_avg_sq[i];
    float v_max = kAmsgrad ? max_exp_avg_sq[i] : 0.0f;
    adam_update(p, g, m, v, v_max, hyper, scalars);
    param[i] = from_float<P>(p);
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if (kAmsgrad) max_exp_avg_sq[i] = v_max;
  }
}

template <typename P, bool kAmsgrad, bool kUnscale>
void run_chunks(const AdamLaunch& launch, int64_t chunk_begin, int64_t chunk_end) {
  AdamHyper hyper = launch.hyper;
  hyper.amsgrad = kAmsgrad;  // a compile-time constant lets the compiler drop the branch
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const ChunkPointers<P> chunk = chunk_pointers<P>(launch, c, kAmsgrad);
    const AdamTensorScalars scalars = launch.tensors[launch.chunks[c].tensor].scalars;
    // Ahead of the first block, the next chunk's head: it is the start of a
    // new tensor more often than not.
    if (c + 1 < chunk_end) {
      const ChunkPointers<P> next = chunk_pointers<P>(launch, c + 1, kAmsgrad);
      prefetch<P, kAmsgrad>(next, 0, next.size < kPrefetchDistance ? next.size : kPrefetchDistance);
    }
    for (int64_t first = 0; first < chunk.size; first += kBlock) {
      const int64_t last = first + kBlock < chunk.size ? first + kBlock : chunk.size;
      if (last + kPrefetchDistance <= chunk.size) {
        prefetch<P, kAmsgrad>(chunk, first + kPrefetchDistance, last + kPrefetchDistance);
      }
      run_block<P, kAmsgrad, kUnscale>(chunk, first, last, hyper, scalars, launch.grad_scale);
    }
  }
}

template <typename P>
void run_for_dtype(const AdamLaunch& launch, int64_t chunk_begin, int64_t chunk_end) {
  const bool unscale = launch.grad_scale != 0.0f;
  if (launch.hyper.amsgrad) {
    unscale ? run_chunks<P, true, true>(launch, chunk_begin, chunk_end)
            : run_chunks<P, true, false>(launch, chunk_begin, chunk_end);
  } else {
    unscale ? run_chunks<P, false, true>(launch, chunk_begin, chunk_end)
            : run_chunks<P, false, false>(launch, chunk_begin, chunk_end);
  }
}

}  // namespace

void FUSEDOPT_CAT(adam_run_chunks_, FUSEDOPT_ISA)(const AdamLaunch& launch, int64_t chunk_begin,
                                                   int64_t chunk_end) {
  switch (launch.dtype) {
    case ParamDtype::kFloat32:
      return run_for_dtype<float>(launch, chunk_begin, chunk_end);
    case ParamDtype::kBFloat16:
      return run_for_dtype<BFloat16>(launch, chunk_begin, chunk_end);
    case ParamDtype::kFloat16:
      return run_for_dtype<Float16>(launch, chunk_begin, chunk_end);
  }
}

}  // namespace fusedopt::cpu
