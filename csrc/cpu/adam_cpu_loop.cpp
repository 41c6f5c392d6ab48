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

template <typename P, bool kAmsgrad, bool kUnscale>
void run_chunks(const AdamLaunch& launch, int64_t chunk_begin, int64_t chunk_end) {
  AdamHyper hyper = launch.hyper;
  hyper.amsgrad = kAmsgrad;  // a compile-time constant lets the compiler drop the branch
  const float grad_scale = launch.grad_scale;
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const Chunk chunk = launch.chunks[c];
    const AdamTensor& t = launch.tensors[chunk.tensor];
    const AdamTensorScalars scalars = t.scalars;
    P* __restrict__ param = static_cast<P*>(t.param) + chunk.start;
    P* __restrict__ grad = static_cast<P*>(t.grad) + chunk.start;
    float* __restrict__ exp_avg = t.exp_avg + chunk.start;
    float* __restrict__ exp_avg_sq = t.exp_avg_sq + chunk.start;
    float* __restrict__ max_exp_avg_sq = kAmsgrad ? t.max_exp_avg_sq + chunk.start : nullptr;
    for (int64_t i = 0; i < chunk.size; ++i) {
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
