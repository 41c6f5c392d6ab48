// The global-norm kernels' torch-free interface (mta/reduce.h): the binding
// (csrc/binding/norm_op.h) fills the arguments from checked tensors and
// launches on torch's current stream.
#pragma once

#include <cuda_runtime_api.h>

#include "fusedopt/core/norm.h"
#include "fusedopt/mta/reduce.h"

namespace fusedopt::cuda {

// One launch of the partials kernel: n_blocks (1..args.header.n_chunks)
// blocks of norm::kThreads threads share out the chunk table.
cudaError_t launch_norm_partials(const mta::NormLaunchArgs& args, int32_t n_blocks,
                                 norm::NormKind kind, cudaStream_t stream);

// The finishing block: *out = the norm of the n_partials partials (0 for none).
cudaError_t launch_norm_finish(const float* partials, int32_t n_partials, float* out,
                               norm::NormKind kind, cudaStream_t stream);

}  // namespace fusedopt::cuda
