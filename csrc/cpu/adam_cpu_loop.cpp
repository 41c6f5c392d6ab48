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
// stored back; bf16/fp16 params move 2 B instead of 4 for p read, p written and
// g read: 22 B.
//
// Software prefetching (4 KB ahead, across tensor boundaries) was tried and
// measured: no change on 2000 x 16 KB tensors nor on one 32 MB tensor, so the
// loop leaves it to the hardware.
#include "adam_cpu.h"
#include "fusedopt/storage_types.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must name the instruction set this translation unit is built for"
#endif
#define FUSEDOPT_CAT2(a, b) a##b
#define FUSEDOPT_CAT(a, b) FUSEDOPT_CAT2(a, b)

namespace fusedopt::cpu {
namespace {

// One chunk's elements, in a function of its own whose __restrict__
// parameters tell gcc that the streams never overlap, so the vector loop
// needs no run-time overlap check. (To check that a change keeps the loops
// vectorized: -fopt-info-vec, or -fdump-tree-vect-details for the reasons.)
template <typename P, bool kAmsgrad, bool kUnscale>
__attribute__((noinline)) void run_elements(P* __restrict__ param, P* __restrict__ grad,
                                            float* __restrict__ exp_avg,
                                            float* __restrict__ exp_avg_sq,
                                            float* __restrict__ max_exp_avg_sq, int64_t n,
                                            AdamHyper hyper, const AdamTensorScalars scalars,
                                            const float grad_scale) {
  hyper.amsgrad = kAmsgrad;  // a compile-time constant lets the compiler drop the branch
  for (int64_t i = 0; i < n; ++i) {
    float p = to_float(param[i]);
    float g = to_float(grad[i]);
    if (kUnscale) {
      g = g / grad_scale;
      from_float(g, grad[i]);
    }
    float m = exp_avg[i];
    float v = exp_avg_sq[i];
    float v_max = kAmsgrad ? max_exp_avg_sq[i] : 0.0f;
    adam_update(p, g, m, v, v_max, hyper, scalars);
    from_float(p, param[i]);
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if (kAmsgrad) max_exp_avg_sq[i] = v_max;
  }
}

template <typename P, bool kAmsgrad, bool kUnscale>
void run_chunks(const AdamLaunch& launch, int64_t chunk_begin, int64_t chunk_end) {
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const Chunk chunk = launch.chunks[c];
    const AdamTensor& t = launch.tensors[chunk.tensor];
    run_elements<P, kAmsgrad, kUnscale>(
        static_cast<P*>(t.param) + chunk.start, static_cast<P*>(t.grad) + chunk.start,
        t.exp_avg + chunk.start, t.exp_avg_sq + chunk.start,
        kAmsgrad ? t.max_exp_avg_sq + chunk.start : nullptr, chunk.size, launch.hyper, t.scalars,
        launch.grad_scale);
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
      return run_for_dtype<Bf16>(launch, chunk_begin, chunk_end);
    case ParamDtype::kFloat16:
      return run_for_dtype<Fp16>(launch, chunk_begin, chunk_end);
  }
}

}  // namespace fusedopt::cpu
