// The CPU traversal's torch-free interface: the binding (csrc/binding/cpu.cpp,
// which validates tensors and owns the threads) fills a Work<R>; the per-ISA
// element loops (loop.cpp) run its chunks.
#pragma once

#include <cstdint>

#include "fusedopt/core/chunk_plan.h"
#include "fusedopt/core/master.h"
#include "fusedopt/core/rule.h"
#include "fusedopt/core/storage.h"

namespace fusedopt::cpu {

// One parameter's buffers: all dense, with identical strides, so element i of
// one is element i of the others.
template <class R>
struct Tensor {
  void* param;
  void* grad;  // written only when unscaling (GradScaler)
  // Each state's storage (Work::state_dtype): fp32, bf16, or 8-bit codes; null
  // where the step uses no such state.
  void* state[R::kStates > 0 ? R::kStates : 1];
  // kInt8Blockwise only: each state's per-block absmax (core/blockwise8.h).
  float* absmax[R::kStates > 0 ? R::kStates : 1];
  typename R::PerTensor scalars;
  // Note [master weights] in core/master.h: the master (fp32) or the Kahan
  // compensation (the param's dtype); null for kNone and kStochasticRounding.
  void* store;
  uint32_t rounding_step, tag;  // kStochasticRounding: Philox's counter words
};

template <class R>
struct Work {
  const Tensor<R>* tensors;
  const Chunk* chunks;
  typename R::Launch launch;
  uint32_t state_mask;  // one of R::kStateSets (core/rule.h)
  ParamDtype dtype;
  StateDtype state_dtype;  // Note [state dtypes] in core/storage.h
  // kInt8Blockwise: bit k set when state k's codes use the signed map.
  uint32_t signed_mask;
  // GradScaler's scale: grads are divided by it and stored back unscaled, as
  // torch's fused optimizers do. 0 means no scaler.
  float grad_scale;
  StorePolicy store;  // Note [master weights] in core/master.h
  uint64_t seed;      // kStochasticRounding: Philox's key
};

// Runs chunks [chunk_begin, chunk_end) of the work on the calling thread, with
// the loop of the best instruction set this CPU has (dispatch.cpp).
template <class R>
void run_chunks(const Work<R>& work, int64_t chunk_begin, int64_t chunk_end);

// The instruction set the dispatcher picked: "avx512", "avx2" or "baseline".
// FUSEDOPT_CPU_ISA in the environment forces a lower one (tests compare them).
const char* selected_isa();

// The per-ISA loops, compiled from loop.cpp once per instruction set.
#define FUSEDOPT_DECLARE_ISA(isa)                                      \
  namespace isa {                                                      \
  template <class R>                                                   \
  void run_chunks(const Work<R>& work, int64_t chunk_begin, int64_t chunk_end); \
  }
FUSEDOPT_DECLARE_ISA(avx512)
FUSEDOPT_DECLARE_ISA(avx2)
FUSEDOPT_DECLARE_ISA(baseline)
#undef FUSEDOPT_DECLARE_ISA

}  // namespace fusedopt::cpu
