// The CUDA kernels' torch-free interface: the binding (csrc/binding/) fills
// the arguments from checked tensors and launches on torch's current stream;
// this side knows nothing of torch.
#pragma once

#include <cuda_runtime_api.h>

#include "fusedopt/core/storage.h"
#include "fusedopt/mta/args.h"

namespace fusedopt::cuda {

// One launch of rule R's element kernel for params of `dtype`: n_blocks
// (1..args.header.n_chunks, mta::grid_blocks) blocks of mta::kBlockSize
// threads, which share out the chunk table. Instantiated for every rule of
// rules/registry.h in kernels.cu.
template <class R>
cudaError_t launch_elements(const mta::LaunchArgs<R>& args, int32_t n_blocks, ParamDtype dtype,
                            cudaStream_t stream);

// One launch that advances args.n_steps step counts (unless *found_inf).
cudaError_t launch_step_increment(const mta::StepIncrementArgs& args, cudaStream_t stream);

}  // namespace fusedopt::cuda
