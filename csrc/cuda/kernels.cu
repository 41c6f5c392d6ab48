// The CUDA kernels of every rule: per rule, param dtype and state dtype, a thin shell
// around the traversal in fusedopt/mta/traversal.h (which states the bytes
// moved per element) and the rule's update (fusedopt/rules/<name>.h). Optional
// states, maximize, the weight-decay mode and GradScaler are uniform runtime
// branches: free in a memory-bound kernel, and 6 kernels per rule instead of
// dozens.
//
// Torch-free on purpose: a .cu that includes torch compiles ~20x slower
// (measured: ~31 s against 1.6 s for two archs).
#include "fusedopt/core/blockwise8.h"
#include "fusedopt/mta/launches.h"
#include "fusedopt/mta/traversal.h"
#include "fusedopt/rules/registry.h"
#include "kernels.h"

#if !defined(FUSEDOPT_SMALL_KERNEL_ARGS) && CUDART_VERSION < 12010
#error "kernel parameters over 4 KB need CUDA >= 12.1; CMake sets FUSEDOPT_SMALL_KERNEL_ARGS"
#endif

namespace fusedopt::cuda {
namespace {

// The kernels see every access through this: it compiles to nothing.
struct NoObserver {
  __device__ void access(const void*, int, bool) {}
  __device__ void updated(int32_t, int64_t, int32_t) {}
};

template <class R, typename P, typename S, StorePolicy kStore>
__device__ void element_kernel_body(const mta::LaunchArgs<R>& args) {
  NoObserver observer;
  mta::element_thread<R, P, S, kStore>(args, static_cast<int32_t>(blockIdx.x), static_cast<int32_t>(gridDim.x),
                            static_cast<int32_t>(threadIdx.x), mta::kBlockSize, observer);
}

// With 8-bit blockwise states (Note [8-bit blocks on the GPU] in
// mta/traversal.h): the block first copies the four code tables from
// __constant__ into shared memory (4 KB), where a warp's data-dependent
// indices cost bank conflicts at worst instead of one constant-cache access
// per distinct address; then each thread is one lane (kLanes = 1).
template <class R, typename P>
__device__ void element_kernel_body8(const mta::LaunchArgs8<R>& args) {
  __shared__ float signed_map[kCodes8], unsigned_map[kCodes8];
  __shared__ float signed_midpoints[kCodes8 - 1], unsigned_midpoints[kCodes8 - 1];
  for (int32_t i = static_cast<int32_t>(threadIdx.x); i < kCodes8; i += mta::kBlockSize) {
    signed_map[i] = kSignedMap[i];
    unsigned_map[i] = kUnsignedMap[i];
    if (i < kCodes8 - 1) {
      signed_midpoints[i] = kSignedMidpoints[i];
      unsigned_midpoints[i] = kUnsignedMidpoints[i];
    }
  }
  __syncthreads();
  const mta::Codec8Tables tables{signed_map, unsigned_map, signed_midpoints, unsigned_midpoints};
  NoObserver observer;
  mta::element_lanes8<R, P, 1>(args, static_cast<int32_t>(blockIdx.x),
                               static_cast<int32_t>(gridDim.x), static_cast<int32_t>(threadIdx.x),
                               mta::kBlockSize, tables, observer);
}

}  // namespace

// The advance kernels (Note [the advance launch] in mta/args.h): one for all
// rules without scalar states, and one per rule with scalar states, listed
// here by hand. `advance` is their overload set: a rule with scalar states
// missing below fails to compile at its launch_advance, "no matching function".
extern "C" __global__ void __launch_bounds__(mta::kBlockSize)
    fusedopt_step_increment(const mta::StepIncrementArgs args) {
  mta::advance_thread(args, static_cast<int32_t>(blockIdx.x), static_cast<int32_t>(threadIdx.x));
}

static cudaError_t advance(const mta::StepIncrementArgs& args, cudaStream_t stream) {
  fusedopt_step_increment<<<mta::advance_blocks(args), mta::kBlockSize, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t launch_increment(const mta::StepIncrementArgs& args, cudaStream_t stream) {
  return advance(args, stream);
}

#define FUSEDOPT_SCALAR_ADVANCE_KERNEL(Type, name)                                              \
  extern "C" __global__ void __launch_bounds__(mta::kBlockSize)                                 \
      fusedopt_##name##_advance(const mta::ScalarAdvanceArgs<Type> args) {                      \
    mta::advance_thread<Type>(args, static_cast<int32_t>(blockIdx.x),                           \
                              static_cast<int32_t>(threadIdx.x));                               \
  }                                                                                             \
  static cudaError_t advance(const mta::ScalarAdvanceArgs<Type>& args, cudaStream_t stream) {   \
    fusedopt_##name##_advance<<<mta::advance_blocks(args), mta::kBlockSize, 0, stream>>>(args); \
    return cudaGetLastError();                                                                  \
  }
FUSEDOPT_SCALAR_ADVANCE_KERNEL(Asgd, asgd)
FUSEDOPT_SCALAR_ADVANCE_KERNEL(NAdam, nadam)
#undef FUSEDOPT_SCALAR_ADVANCE_KERNEL

// extern "C": plain symbol names (fusedopt_<rule>_<dtype>,
// fusedopt_<rule>_<dtype>_sbf16 with bf16 states, fusedopt_<rule>_<dtype>_s8
// with 8-bit blockwise states; a 16-bit param's policy kernels add _master,
// _kahan and, bf16 only, _sround: Note [master weights] in core/master.h, one
// kernel per policy as mta::chunk_thread says), so that the SASS checks
// (tests/test_cuda_sass.py) find each kernel by name. __launch_bounds__: see
// mta::kMinBlocksPerSm (and kMinBlocksPerSm8).
#define FUSEDOPT_ELEMENT_KERNEL(Type, name, suffix, P, S, store)                      \
  extern "C" __global__ void __launch_bounds__(mta::kBlockSize, mta::kMinBlocksPerSm) \
      fusedopt_##name##_##suffix(const mta::LaunchArgs<Type> args) {                  \
    element_kernel_body<Type, P, S, StorePolicy::store>(args);                        \
  }
#define FUSEDOPT_ELEMENT_KERNEL8(Type, name, suffix, P)                                \
  extern "C" __global__ void __launch_bounds__(mta::kBlockSize, mta::kMinBlocksPerSm8) \
      fusedopt_##name##_##suffix(const mta::LaunchArgs8<Type> args) {                  \
    element_kernel_body8<Type, P>(args);                                              \
  }
// A 16-bit param dtype's kernels: plain, then master weights and Kahan.
#define FUSEDOPT_16BIT_KERNELS(Type, name, suffix, P, S)                      \
  FUSEDOPT_ELEMENT_KERNEL(Type, name, suffix, P, S, kNone)                    \
  FUSEDOPT_ELEMENT_KERNEL(Type, name, suffix##_master, P, S, kMasterWeights) \
  FUSEDOPT_ELEMENT_KERNEL(Type, name, suffix##_kahan, P, S, kKahanSum)
#define FUSEDOPT_BF16_KERNELS(Type, name, suffix, S)      \
  FUSEDOPT_16BIT_KERNELS(Type, name, suffix, Bf16, S)     \
  FUSEDOPT_ELEMENT_KERNEL(Type, name, suffix##_sround, Bf16, S, kStochasticRounding)
#define FUSEDOPT_CALL(name, suffix) \
  fusedopt_##name##_##suffix<<<n_blocks, mta::kBlockSize, 0, stream>>>(args)
// The kernel of the launch's policy (check_store took it for this dtype).
#define FUSEDOPT_CALL_16BIT(name, suffix)                   \
  if (store == StorePolicy::kMasterWeights) {               \
    FUSEDOPT_CALL(name, suffix##_master);                   \
  } else if (store == StorePolicy::kKahanSum) {             \
    FUSEDOPT_CALL(name, suffix##_kahan);                    \
  } else {                                                  \
    FUSEDOPT_CALL(name, suffix);                            \
  }
#define FUSEDOPT_CALL_BF16(name, suffix)                    \
  if (store == StorePolicy::kStochasticRounding) {          \
    FUSEDOPT_CALL(name, suffix##_sround);                   \
  } else {                                                  \
    FUSEDOPT_CALL_16BIT(name, suffix)                       \
  }
// Per rule: param dtypes x state dtypes (fp32, bf16, 8-bit), with the 16-bit
// params' policy kernels (fp32 and bf16 states; cuda_step.h refuses a policy
// with 8-bit states): 23 kernels.
#define FUSEDOPT_RULE_KERNELS(Type, name)                                                     \
  static_assert(mta::check_launch_args<Type>());                                              \
  FUSEDOPT_ELEMENT_KERNEL(Type, name, fp32, float, float, kNone)                              \
  FUSEDOPT_BF16_KERNELS(Type, name, bf16, float)                                              \
  FUSEDOPT_16BIT_KERNELS(Type, name, fp16, Fp16, float)                                       \
  FUSEDOPT_ELEMENT_KERNEL(Type, name, fp32_sbf16, float, Bf16, kNone)                         \
  FUSEDOPT_BF16_KERNELS(Type, name, bf16_sbf16, Bf16)                                         \
  FUSEDOPT_16BIT_KERNELS(Type, name, fp16_sbf16, Fp16, Bf16)                                  \
  FUSEDOPT_ELEMENT_KERNEL8(Type, name, fp32_s8, float)                                        \
  FUSEDOPT_ELEMENT_KERNEL8(Type, name, bf16_s8, Bf16)                                         \
  FUSEDOPT_ELEMENT_KERNEL8(Type, name, fp16_s8, Fp16)                                         \
  template <>                                                                                 \
  cudaError_t launch_elements<Type>(const mta::LaunchArgs<Type>& args, int32_t n_blocks,      \
                                    ParamDtype dtype, StateDtype state_dtype,                 \
                                    cudaStream_t stream) {                                    \
    const StorePolicy store = args.header.store_policy;                                       \
    const bool bf16_states = state_dtype == StateDtype::kBFloat16;                            \
    switch (dtype) {                                                                          \
      case ParamDtype::kFloat32:                                                              \
        if (bf16_states) {                                                                    \
          FUSEDOPT_CALL(name, fp32_sbf16);                                                    \
        } else {                                                                              \
          FUSEDOPT_CALL(name, fp32);                                                          \
        }                                                                                     \
        break;                                                                                \
      case ParamDtype::kBFloat16:                                                             \
        if (bf16_states) {                                                                    \
          FUSEDOPT_CALL_BF16(name, bf16_sbf16)                                                \
        } else {                                                                              \
          FUSEDOPT_CALL_BF16(name, bf16)                                                      \
        }                                                                                     \
        break;                                                                                \
      case ParamDtype::kFloat16:                                                              \
        if (bf16_states) {                                                                    \
          FUSEDOPT_CALL_16BIT(name, fp16_sbf16)                                               \
        } else {                                                                              \
          FUSEDOPT_CALL_16BIT(name, fp16)                                                     \
        }                                                                                     \
        break;                                                                                \
    }                                                                                         \
    return cudaGetLastError();                                                                \
  }                                                                                           \
  template <>                                                                                 \
  cudaError_t launch_elements8<Type>(const mta::LaunchArgs8<Type>& args, int32_t n_blocks,    \
                                     ParamDtype dtype, cudaStream_t stream) {                 \
    switch (dtype) {                                                                          \
      case ParamDtype::kFloat32:                                                              \
        FUSEDOPT_CALL(name, fp32_s8);                                                         \
        break;                                                                                \
      case ParamDtype::kBFloat16:                                                             \
        FUSEDOPT_CALL(name, bf16_s8);                                                         \
        break;                                                                                \
      case ParamDtype::kFloat16:                                                              \
        FUSEDOPT_CALL(name, fp16_s8);                                                         \
        break;                                                                                \
    }                                                                                         \
    return cudaGetLastError();                                                                \
  }                                                                                           \
  template <>                                                                                 \
  cudaError_t launch_advance<Type>(const mta::AdvanceArgs<Type>& args, cudaStream_t stream) { \
    return advance(args, stream);                                                             \
  }
FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_RULE_KERNELS)
#undef FUSEDOPT_RULE_KERNELS
#undef FUSEDOPT_CALL_BF16
#undef FUSEDOPT_CALL_16BIT
#undef FUSEDOPT_CALL
#undef FUSEDOPT_BF16_KERNELS
#undef FUSEDOPT_16BIT_KERNELS
#undef FUSEDOPT_ELEMENT_KERNEL8
#undef FUSEDOPT_ELEMENT_KERNEL

}  // namespace fusedopt::cuda
