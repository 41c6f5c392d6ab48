// The CUDA kernels' torch-free interface: the binding (csrc/binding/) fills
// the arguments from checked tensors and launches on torch's current stream;
// this side knows nothing of torch.
#pragma once

#include <cuda_runtime_api.h>

#include "fusedopt/core/storage.h"
#include "fusedopt/mta/args.h"

namespace fusedopt::cuda {

// One launch of rule R's element kernel for params of `dtype` and states of
// `state_dtype` (fp32 or bf16): n_blocks
// (1..args.header.n_chunks, mta::grid_blocks) blocks of mta::kBlockSize
// threads, which share out the chunk table. Instantiated for every rule of
// rules/registry.h in kernels.cu.
template <class R>
cudaError_t launch_elements(const mta::LaunchArgs<R>& args, int32_t n_blocks, ParamDtype dtype,
                            StateDtype state_dtype, cudaStream_t stream);

// The same with 8-bit blockwise states (mta::Slot8): n_blocks of them, at most
// mta::kMinBlocksPerSm8 per SM resident.
template <class R>
cudaError_t launch_elements8(const mta::LaunchArgs8<R>& args, int32_t n_blocks, ParamDtype dtype,
                             cudaStream_t stream);

// One advance launch of rule R (Note [the advance launch] in mta/args.h): its
// step counts, and its scalar states where it keeps any, unless *found_inf.
// Instantiated for every rule in kernels.cu.
template <class R>
cudaError_t launch_advance(const mta::AdvanceArgs<R>& args, cudaStream_t stream);

// One launch of fusedopt_step_increment: count += 1 for each of its counts,
// unless *found_inf (stochastic rounding's rounding_step counts).
cudaError_t launch_increment(const mta::StepIncrementArgs& args, cudaStream_t stream);

}  // namespace fusedopt::cuda
