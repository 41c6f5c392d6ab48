// The global-norm kernels: thin shells around mta/reduce.h, whose Note [norm
// summation order] (core/norm.h) they follow. Each block reduces whole chunks
// to partials in their own slots and one finishing block folds them: no
// atomics, so the result is the same bits at every grid size and on every run.
// Torch-free, as kernels.cu.
#include "fusedopt/mta/reduce.h"
#include "norm.h"

namespace fusedopt::cuda {
namespace {

struct NoObserver {
  __device__ void access(const void*, int, bool) {}
};

// Step 3 of the order: the 512 thread values in shared memory, halved level
// by level with a barrier between levels. Returns the total to every thread.
template <norm::NormKind K>
__device__ float block_tree(float* values, float mine) {
  const int32_t thread = static_cast<int32_t>(threadIdx.x);
  values[thread] = mine;
  __syncthreads();
  for (int32_t half = 1; half < norm::kThreads; half *= 2) {
    norm::Norm<K>::tree_step(values, thread, half);
    __syncthreads();
  }
  const float total = values[0];
  // The next call rewrites values[]: every thread has read values[0] first.
  __syncthreads();
  return total;
}

template <norm::NormKind K>
__device__ void partials_body(const mta::NormLaunchArgs& args) {
  __shared__ float values[norm::kThreads];
  NoObserver observer;
  const int32_t thread = static_cast<int32_t>(threadIdx.x);
  for (int32_t entry = static_cast<int32_t>(blockIdx.x); entry < args.header.n_chunks;
       entry += static_cast<int32_t>(gridDim.x)) {
    const float total =
        block_tree<K>(values, mta::norm_entry_thread<K>(args, entry, thread, observer));
    if (thread == 0) args.header.partials[entry] = total;
  }
}

template <norm::NormKind K>
__device__ void finish_body(const float* partials, int32_t n_partials, float* out) {
  __shared__ float values[norm::kThreads];
  const int32_t thread = static_cast<int32_t>(threadIdx.x);
  const float total =
      block_tree<K>(values, mta::norm_finish_thread<K>(partials, n_partials, thread));
  if (thread == 0) *out = norm::Norm<K>::finish(total);
}

}  // namespace

// extern "C": plain names for the SASS checks (tests/test_clip.py).
extern "C" __global__ void __launch_bounds__(norm::kThreads)
    fusedopt_norm2_partials(const mta::NormLaunchArgs args) {
  partials_body<norm::NormKind::kTwo>(args);
}
extern "C" __global__ void __launch_bounds__(norm::kThreads)
    fusedopt_norminf_partials(const mta::NormLaunchArgs args) {
  partials_body<norm::NormKind::kInf>(args);
}
extern "C" __global__ void __launch_bounds__(norm::kThreads)
    fusedopt_norm2_finish(const float* partials, int32_t n_partials, float* out) {
  finish_body<norm::NormKind::kTwo>(partials, n_partials, out);
}
extern "C" __global__ void __launch_bounds__(norm::kThreads)
    fusedopt_norminf_finish(const float* partials, int32_t n_partials, float* out) {
  finish_body<norm::NormKind::kInf>(partials, n_partials, out);
}

cudaError_t launch_norm_partials(const mta::NormLaunchArgs& args, int32_t n_blocks,
                                 norm::NormKind kind, cudaStream_t stream) {
  if (kind == norm::NormKind::kTwo) {
    fusedopt_norm2_partials<<<n_blocks, norm::kThreads, 0, stream>>>(args);
  } else {
    fusedopt_norminf_partials<<<n_blocks, norm::kThreads, 0, stream>>>(args);
  }
  return cudaGetLastError();
}

cudaError_t launch_norm_finish(const float* partials, int32_t n_partials, float* out,
                               norm::NormKind kind, cudaStream_t stream) {
  if (kind == norm::NormKind::kTwo) {
    fusedopt_norm2_finish<<<1, norm::kThreads, 0, stream>>>(partials, n_partials, out);
  } else {
    fusedopt_norminf_finish<<<1, norm::kThreads, 0, stream>>>(partials, n_partials, out);
  }
  return cudaGetLastError();
}

}  // namespace fusedopt::cuda
