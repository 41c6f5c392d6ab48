// The factored rules' kernels, torch-free interface: the binding
// (csrc/binding/factored_step.h) fills the arguments (mta/factored.h) from
// checked tensors and launches on torch's current stream.
#pragma once

#include <cuda_runtime_api.h>

#include "fusedopt/core/storage.h"
#include "fusedopt/mta/factored.h"

namespace fusedopt::cuda {

// Queues passes (a) to (e) of rule R (mta/factored.h) for params of `dtype`
// on `stream`, each grid at most max_blocks blocks (the device's resident
// blocks). Instantiated for every rule of rules/reduction_registry.h in
// factored.cu.
template <class R>
cudaError_t launch_factored(const mta::FactoredArgs<R>& args, int32_t max_blocks, ParamDtype dtype,
                            cudaStream_t stream);

}  // namespace fusedopt::cuda
