// The CUDA side of every rule's op, up to the launches: the kernels'
// arguments filled from checked tensors. Shared by the CUDA op (cuda_step.h)
// and its CPU emulation (csrc/testing/), which runs the same arguments
// through the traversal on CPU tensors.
#pragma once

#include <utility>
#include <vector>

#include "checks.h"
#include "fusedopt/mta/launches.h"

namespace fusedopt::binding {

// Where the kernels read a call's step counts, lr and GradScaler's tensors.
struct CudaScalarSources {
  // Step counts in the kernels' memory: the kernels compute the scalars and a
  // last launch advances the counts (capturable). Else the host computes the
  // scalars and advances the counts after the launches.
  bool steps_in_kernel;
  const float* lr;  // lr in the kernels' memory, or null for the host value
  double lr_value;
  const float* grad_scale;  // null without a GradScaler
  const float* found_inf;   // read by the kernels; null when the host checked it
};

template <class R>
struct CudaWork {
  std::vector<mta::Launch<R>> launches;
  std::vector<mta::StepIncrementArgs> step_increments;  // empty unless steps_in_kernel
  std::vector<float*> host_steps;  // advanced by the host after the launches
  // Note [scalar states] (core/rule.h): (where, value after this step),
  // stored by the host after the launches.
  std::vector<std::pair<float*, float>> host_scalar_states;

  // The host's part of Note [step-count protocol], once the launches are queued.
  void advance_host_scalars() const {
    for (float* step : host_steps) *step += 1.0f;
    for (const auto& [where, value] : host_scalar_states) *where = value;
  }
};

// Fills every launch's kernel arguments from checked tensors of a call
// (`config` and `mask` from R::config and state_mask).
template <class R>
CudaWork<R> prepare_cuda(const StepArgs& a, const typename R::Config& config, uint32_t mask,
                         const CudaScalarSources& sources) {
  const size_t n = a.params.size();
  constexpr int kS = kScalarStates<R>;
  if constexpr (kS > 0) {
    TORCH_CHECK(!sources.steps_in_kernel && sources.lr == nullptr, "fusedopt: ",
                R::kScalarNames[0],
                " is kept on the host (Note [scalar states]): this rule takes neither step "
                "counts on the GPU (capturable=True) nor a CUDA-tensor lr yet");
  }
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(a.params[i].numel() < mta::kMaxNumel, "fusedopt: param ", i, " has ",
                a.params[i].numel(), " elements; the CUDA kernels take fewer than ",
                mta::kMaxNumel, " (2^31 chunks of ", mta::kChunkSize, ")");
  }
  mta::LaunchHeader<R> header{};
  header.config = config;
  header.launch = R::launch(config);
  header.state_mask = mask;
  header.lr = sources.lr;
  header.lr_value = sources.lr_value;
  header.grad_scale = sources.grad_scale;
  header.found_inf = sources.found_inf;
  header.scalars_on_device = sources.steps_in_kernel || sources.lr != nullptr;
  CudaWork<R> work;
  std::vector<mta::Slot<R>> slots(n);
  std::vector<float*> device_steps;
  for (size_t i = 0; i < n; ++i) {
    mta::Slot<R>& slot = slots[i];
    slot.param = a.params[i].data_ptr();
    slot.grad = a.grads[i].data_ptr();
    for (int k = 0, used = 0; k < R::kStates; ++k) {
      slot.state[k] = (mask >> k) & 1u ? a.states[used++ * n + i].data_ptr<float>() : nullptr;
    }
    slot.numel = a.params[i].numel();
    float* step = R::kHasStep ? a.steps[i].data_ptr<float>() : nullptr;
    // Note [step-count protocol]: the scalars of count + 1 (1 for a rule
    // without counts); the host advances its counts once the launches are queued.
    slot.host_step = step != nullptr && !sources.steps_in_kernel ? *step + 1.0f : 1.0f;
    if (sources.steps_in_kernel) {
      slot.step = step;
      if (step != nullptr) device_steps.push_back(step);
      continue;
    }
    float values[kS > 0 ? kS : 1];
    for (int j = 0; j < kS; ++j) values[j] = *a.steps[(1 + j) * n + i].data_ptr<float>();
    slot.scalars = per_tensor_of<R>(config, sources.lr_value,
                                    static_cast<double>(slot.host_step), values);
    for (int j = 0; j < kS; ++j) {
      work.host_scalar_states.emplace_back(a.steps[(1 + j) * n + i].data_ptr<float>(), values[j]);
    }
    if (step != nullptr) work.host_steps.push_back(step);
  }
  work.launches = mta::build_launches<R>(slots, header);
  if (sources.steps_in_kernel) {
    work.step_increments = mta::build_step_increments(device_steps, sources.found_inf);
  }
  return work;
}

}  // namespace fusedopt::binding
