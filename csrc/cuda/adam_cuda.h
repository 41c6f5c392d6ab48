// The CUDA Adam kernels' torch-free interface: the binding (csrc/ops.cpp)
// fills the arguments from checked tensors and launches on torch's current
// stream; this side knows nothing of torch.
#pragma once

#include <cuda_runtime_api.h>

#include "fusedopt/adam_cuda_args.h"
#include "fusedopt/storage_types.h"

namespace fusedopt::cuda {

// One launch of n_blocks (<= kMaxBlocks) blocks of kBlockSize threads.
cudaError_t launch_adam(const AdamLaunchArgs& args, int32_t n_blocks, ParamDtype dtype,
                        cudaStream_t stream);

// One launch that increments args.n_steps step counts (unless *found_inf).
cudaError_t launch_step_increment(const StepIncrementArgs& args, cudaStream_t stream);

}  // namespace fusedopt::cuda
