// The kernels of the factored rules: thin shells around the block bodies of
// mta/factored.h, which state the passes, the bytes moved and the order of every
// sum. Each kernel is a grid-stride loop over the call's items (or params),
// one block each at a time; no atomics, so the bits do not depend on the grid.
// Torch-free, as kernels.cu; built with --fmad=false as every kernel here
// (CMakeLists.txt): the fp32 math is the CPU's, uncontracted.
#include "factored.h"
#include "fusedopt/rules/reduction_registry.h"

namespace fusedopt::cuda {
namespace {

// The block policy of factored.h on a GPU: a phase is this thread's share,
// then a barrier.
struct DeviceBlock {
  double* lanes;
  template <class F>
  __device__ void each(F&& f) {
    f(static_cast<int32_t>(threadIdx.x));
    __syncthreads();
  }
};

// Grid-stride over [0, n): one block per unit at a time.
template <class Body>
__device__ void blocks_over(int64_t n, Body&& body) {
  __shared__ double lanes[mta::kFactoredThreads];
  DeviceBlock block{lanes};
  for (int64_t k = blockIdx.x; k < n; k += gridDim.x) body(k, block);
}

int32_t grid(int64_t units, int32_t max_blocks) {
  return static_cast<int32_t>(units < max_blocks ? units : max_blocks);
}

}  // namespace

// extern "C": plain names for the SASS checks (tests/test_cuda_sass.py):
// fusedopt_<rule>_<pass>[_<dtype>].
#define FUSEDOPT_ITEM_KERNEL(Type, name, pass, suffix, P)                       \
  extern "C" __global__ void __launch_bounds__(mta::kFactoredThreads)           \
      fusedopt_##name##_##pass##_##suffix(const mta::FactoredArgs<Type> args) { \
    if (mta::factored_skip(args)) return;                                       \
    blocks_over(args.n_items, [&](int64_t k, DeviceBlock& block) {              \
      mta::pass##_item<Type, P>(args, k, block);                                \
    });                                                                         \
  }
#define FUSEDOPT_ITEM_KERNELS(Type, name, pass)       \
  FUSEDOPT_ITEM_KERNEL(Type, name, pass, fp32, float) \
  FUSEDOPT_ITEM_KERNEL(Type, name, pass, bf16, Bf16)  \
  FUSEDOPT_ITEM_KERNEL(Type, name, pass, fp16, Fp16)
#define FUSEDOPT_ITEM_LAUNCH(name, pass, blocks)                                           \
  switch (dtype) {                                                                         \
    case ParamDtype::kFloat32:                                                             \
      fusedopt_##name##_##pass##_fp32<<<blocks, mta::kFactoredThreads, 0, stream>>>(args); \
      break;                                                                               \
    case ParamDtype::kBFloat16:                                                            \
      fusedopt_##name##_##pass##_bf16<<<blocks, mta::kFactoredThreads, 0, stream>>>(args); \
      break;                                                                               \
    case ParamDtype::kFloat16:                                                             \
      fusedopt_##name##_##pass##_fp16<<<blocks, mta::kFactoredThreads, 0, stream>>>(args); \
      break;                                                                               \
  }
#define FUSEDOPT_FACTORED_KERNELS(Type, name)                                                 \
  FUSEDOPT_ITEM_KERNELS(Type, name, reduce_inputs)                                            \
  FUSEDOPT_ITEM_KERNELS(Type, name, reduce_updates)                                           \
  FUSEDOPT_ITEM_KERNELS(Type, name, apply)                                                    \
  extern "C" __global__ void __launch_bounds__(mta::kFactoredThreads)                         \
      fusedopt_##name##_statistics(const mta::FactoredArgs<Type> args) {                      \
    if (mta::factored_skip(args)) return;                                                     \
    blocks_over(args.n_slots, [&](int64_t i, DeviceBlock& block) {                            \
      mta::statistics_slot<Type>(args, i, block);                                             \
    });                                                                                       \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(mta::kFactoredThreads)                         \
      fusedopt_##name##_finish(const mta::FactoredArgs<Type> args) {                          \
    if (mta::factored_skip(args)) return;                                                     \
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * mta::kFactoredThreads + threadIdx.x;  \
         i < args.n_slots; i += static_cast<int64_t>(gridDim.x) * mta::kFactoredThreads) {    \
      mta::finish_slot<Type>(args, i);                                                        \
    }                                                                                         \
  }                                                                                           \
  template <>                                                                                 \
  cudaError_t launch_factored<Type>(const mta::FactoredArgs<Type>& args, int32_t max_blocks,  \
                                    ParamDtype dtype, cudaStream_t stream) {                  \
    const int32_t item_blocks = grid(args.n_items, max_blocks);                               \
    const int32_t slot_blocks = grid(args.n_slots, max_blocks);                               \
    const int32_t finish_blocks =                                                             \
        grid((args.n_slots + mta::kFactoredThreads - 1) / mta::kFactoredThreads, max_blocks); \
    if (item_blocks > 0) FUSEDOPT_ITEM_LAUNCH(name, reduce_inputs, item_blocks)               \
    fusedopt_##name##_statistics<<<slot_blocks, mta::kFactoredThreads, 0, stream>>>(args);    \
    if (item_blocks > 0) FUSEDOPT_ITEM_LAUNCH(name, reduce_updates, item_blocks)              \
    fusedopt_##name##_finish<<<finish_blocks, mta::kFactoredThreads, 0, stream>>>(args);      \
    if (item_blocks > 0) FUSEDOPT_ITEM_LAUNCH(name, apply, item_blocks)                       \
    return cudaGetLastError();                                                                \
  }
FUSEDOPT_FOR_EACH_REDUCTION_RULE(FUSEDOPT_FACTORED_KERNELS)
#undef FUSEDOPT_FACTORED_KERNELS
#undef FUSEDOPT_ITEM_LAUNCH
#undef FUSEDOPT_ITEM_KERNELS
#undef FUSEDOPT_ITEM_KERNEL

}  // namespace fusedopt::cuda
