// The CUDA side of every rule's op: checks, kernel arguments (cuda_work.h),
// launches on torch's current stream for the params' device.
#pragma once

// Not ATen/cuda/CUDAContext.h: it needs cusparse.h, which the toolkit may lack.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAMacros.h>
#include <c10/cuda/CUDAStream.h>

#include <array>
#include <atomic>

#include "cuda/kernels.h"
#include "cuda_work.h"

namespace fusedopt::binding {

// grad_scale, found_inf and a device lr: read by the kernels, so they must
// live on the params' device (GradScaler keeps them there).
inline const float* device_scalar_ptr(const at::Tensor& t, const char* name, c10::Device device) {
  TORCH_CHECK(t.numel() == 1 && t.scalar_type() == at::kFloat && t.device() == device,
              "fusedopt: ", name, " must be a one-element float32 tensor on ", device.str(),
              " (the params' device), got ", t.numel(), " elements of ",
              c10::toString(t.scalar_type()), " on ", t.device().str());
  return t.data_ptr<float>();
}

// The blocks a launch's grid has at most on `device` (grid_blocks in
// mta/launches.h): `per_sm` per SM (the kernels' __launch_bounds__), all
// resident at once. The SM count is asked of the driver once per device and
// kept, so a step pays nothing for it.
inline int32_t resident_blocks(c10::DeviceIndex device, int32_t per_sm = mta::kMinBlocksPerSm) {
  static std::array<std::atomic<int32_t>, C10_COMPILE_TIME_MAX_GPUS> sm_counts{};
  std::atomic<int32_t>& cached = sm_counts.at(static_cast<size_t>(device));
  int32_t sms = cached.load(std::memory_order_relaxed);
  if (sms == 0) {
    int count = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    sms = static_cast<int32_t>(count);
    cached.store(sms, std::memory_order_relaxed);
  }
  return per_sm * sms;
}

template <class R>
void step_cuda(const char* rule, const StepArgs& a) {
  const auto [lr, lr_on_device, config] = checked_hyper<R>(rule, a, true);
  const uint32_t mask = state_mask<R>(config);
  const StateDtype state_dtype = state_dtype_of(a);
  const StorePolicy store = check_store(rule, a);
  TORCH_CHECK(store == StorePolicy::kNone || state_dtype != StateDtype::kInt8Blockwise,
              "fusedopt: ", rule,
              ": a master-weight policy with 8-bit states has no CUDA kernels yet (the cpu "
              "and reference backends step it)");
  check_lists(rule, a, used_state_names<R>(mask), kScalarLists<R>, c10::DeviceType::CUDA,
              state_dtype);
  if (a.params.empty()) return;
  const c10::Device device = a.params[0].device();
  const bool steps_on_device = !a.steps.empty() && a.steps[0].device() == device;
  check_steps_on(a, steps_on_device ? device : c10::Device(c10::kCPU));
  CudaScalarSources sources{steps_on_device, nullptr, lr, nullptr, nullptr};
  if (lr_on_device) sources.lr = device_scalar_ptr(*a.lr_tensor, "lr", device);
  if (a.grad_scale.has_value()) {
    sources.grad_scale = device_scalar_ptr(*a.grad_scale, "grad_scale", device);
  }
  if (a.found_inf.has_value()) {
    const float* found_inf = device_scalar_ptr(*a.found_inf, "found_inf", device);
    if (steps_on_device || !R::kHasStep) {
      sources.found_inf = found_inf;
    } else if (a.found_inf->item<float>() != 0.0f) {
      // Step counts on the CPU need the answer on the host: one sync, as in
      // GradScaler's own non-fused path. Capturable mode never takes it.
      return;
    }
  }
  const CudaWork<R> work = prepare_cuda<R>(a, config, mask, sources, store);
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  const ParamDtype dtype = param_dtype(a.params[0].scalar_type());
  const int32_t max_blocks = resident_blocks(
      device.index(), work.launches8.empty() ? mta::kMinBlocksPerSm : mta::kMinBlocksPerSm8);
  for (const mta::Launch<R>& launch : work.launches) {
    const int32_t n_blocks = mta::grid_blocks(launch.args.header.n_chunks, max_blocks);
    C10_CUDA_CHECK(cuda::launch_elements<R>(launch.args, n_blocks, dtype, state_dtype, stream));
  }
  for (const mta::Launch<R, mta::Slot8<R>>& launch : work.launches8) {
    const int32_t n_blocks = mta::grid_blocks(launch.args.header.n_chunks, max_blocks);
    C10_CUDA_CHECK(cuda::launch_elements8<R>(launch.args, n_blocks, dtype, stream));
  }
  for (const mta::AdvanceArgs<R>& args : work.advances) {
    C10_CUDA_CHECK(cuda::launch_advance<R>(args, stream));
  }
  for (const mta::StepIncrementArgs& args : work.store_advances) {
    C10_CUDA_CHECK(cuda::launch_increment(args, stream));
  }
  work.advance_host_scalars();
}

}  // namespace fusedopt::binding
