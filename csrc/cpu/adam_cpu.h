// CPU backend of the Adam family: the torch-free interface between the binding
// (csrc/ops.cpp, which validates tensors and owns the threads) and the
// per-ISA element loops (adam_cpu_loop.cpp).
#pragma once

#include <cstdint>

#include "fusedopt/adam_rule.h"
#include "fusedopt/chunk_plan.h"
#include "fusedopt/storage_types.h"

namespace fusedopt::cpu {


// One parameter's buffers: all dense, with identical strides, so element i of
// one is element i of the others.
struct AdamTensor {
  void* param;
  void* grad;             // written only when unscaling (GradScaler)
  float* exp_avg;
  float* exp_avg_sq;
  float* max_exp_avg_sq;  // null without amsgrad
  AdamTensorScalars scalars;
};

struct AdamLaunch {
  const AdamTensor* tensors;
  const Chunk* chunks;
  AdamHyper hyper;
  ParamDtype dtype;
  // GradScaler's scale: grads are divided by it and stored back unscaled, as
  // torch's fused optimizers do. 0 means no scaler.
  float grad_scale;
};

// Runs chunks [chunk_begin, chunk_end) of the launch on the calling thread.
void adam_run_chunks(const AdamLaunch& launch, int64_t chunk_begin, int64_t chunk_end);

// The instruction set the dispatcher picked: "avx512", "avx2" or "baseline".
// FUSEDOPT_CPU_ISA in the environment forces a lower one (tests compare them).
const char* selected_isa();

}  // namespace fusedopt::cpu
