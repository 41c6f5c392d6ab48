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
  // Step counts (and a rule's scalar states) in the kernels' memory: the
  // kernels compute the scalars and a last launch advances the counts and the
  // scalar states (capturable). Else the host computes the scalars and
  // advances them after the launches.
  bool steps_in_kernel;
  const float* lr;  // lr in the kernels' memory, or null for the host value
  double lr_value;
  const float* grad_scale;  // null without a GradScaler
  const float* found_inf;   // read by the kernels; null when the host checked it
};

template <class R>
struct CudaWork {
  // The element launches: `launches`, or with 8-bit blockwise states `launches8`.
  std::vector<mta::Launch<R>> launches;
  std::vector<mta::Launch<R, mta::Slot8<R>>> launches8;
  std::vector<mta::AdvanceArgs<R>> advances;  // empty unless steps_in_kernel
  // Stochastic rounding's rounding_step counts, advanced on the device after
  // the element launches (Note [store arguments] in checks.h).
  std::vector<mta::StepIncrementArgs> store_advances;
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
// (`config` and `mask` from R::config and state_mask; `store` from check_store).
template <class R>
CudaWork<R> prepare_cuda(const StepArgs& a, const typename R::Config& config, uint32_t mask,
                         const CudaScalarSources& sources, StorePolicy store) {
  const size_t n = a.params.size();
  constexpr int kS = kScalarStates<R>;
  if constexpr (kS > 0) {
    // The host advances host-held scalar states, and their next values need
    // lr: reading a device lr on the host would sync.
    TORCH_CHECK(sources.steps_in_kernel || sources.lr == nullptr, "fusedopt: with step counts ",
                "and ", R::kScalarNames[0],
                " on the CPU, the host advances them and needs lr's value: pass lr as a float or "
                "a CPU tensor, or keep state_steps on the params' device (Note [scalar states])");
  }
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(a.params[i].numel() < mta::kMaxNumel, "fusedopt: param ", i, " has ",
                a.params[i].numel(), " elements; the CUDA kernels take fewer than ",
                mta::kMaxNumel, " (2^31 chunks of ", mta::kChunkSize, ")");
  }
  // Note [state dtypes]: 8-bit blockwise states come as each used state's
  // codes, then each one's absmax (checks.h, state_dtype_of).
  const bool blockwise = state_dtype_of(a) == StateDtype::kInt8Blockwise;
  const size_t n_used = used_state_names<R>(mask).size();
  mta::LaunchHeader<R> header{};
  header.config = config;
  header.launch = R::launch(config);
  header.state_mask = mask;
  header.signed_mask = blockwise ? signed_code_mask(a, mask, R::kStates) : 0u;
  header.lr = sources.lr;
  header.lr_value = sources.lr_value;
  header.grad_scale = sources.grad_scale;
  header.found_inf = sources.found_inf;
  header.scalars_on_device = sources.steps_in_kernel || sources.lr != nullptr;
  header.store_policy = store;
  header.rounding_seed = static_cast<uint64_t>(a.rounding_seed);
  CudaWork<R> work;
  std::vector<float*> rounding_steps;
  // Slot8s: the Slots, and their absmax (null unless the states are 8-bit).
  std::vector<mta::Slot8<R>> slots(n);
  std::vector<float*> device_steps;
  std::vector<float*> device_scalar_states;  // tensor-major: mta::build_advances
  for (size_t i = 0; i < n; ++i) {
    mta::Slot8<R>& slot = slots[i];
    slot.param = a.params[i].data_ptr();
    slot.grad = a.grads[i].data_ptr();
    for (int k = 0, used = 0; k < R::kStates; ++k) {
      slot.state[k] = nullptr;
      slot.absmax[k] = nullptr;
      if (!((mask >> k) & 1u)) continue;
      slot.state[k] = a.states[used * n + i].data_ptr();
      if (blockwise) {
        slot.absmax[k] = static_cast<float*>(a.states[(n_used + used) * n + i].data_ptr());
      }
      ++used;
    }
    slot.numel = a.params[i].numel();
    slot.store = nullptr;
    slot.tag = 0;
    if (store != StorePolicy::kNone) slot.store = a.store[i].data_ptr();
    if (store == StorePolicy::kStochasticRounding) {
      slot.tag = static_cast<uint32_t>(a.store_tags[i].toInt());
      rounding_steps.push_back(a.store[i].data_ptr<float>());
    }
    float* step = R::kHasStep ? a.steps[i].data_ptr<float>() : nullptr;
    // Note [step-count protocol]: the scalars of count + 1 (1 for a rule
    // without counts); the host advances its counts once the launches are queued.
    slot.host_step = step != nullptr && !sources.steps_in_kernel ? *step + 1.0f : 1.0f;
    if (sources.steps_in_kernel) {
      slot.step = step;
      if (step != nullptr) device_steps.push_back(step);
      for (int j = 0; j < kS; ++j) {
        float* value = a.steps[(1 + j) * n + i].data_ptr<float>();
        if constexpr (kS > 0) slot.scalar_state[j] = value;
        device_scalar_states.push_back(value);
      }
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
  if (blockwise) {
    work.launches8 = mta::build_launches<R>(slots, header);
  } else {
    work.launches =
        mta::build_launches<R>(std::vector<mta::Slot<R>>(slots.begin(), slots.end()), header);
  }
  work.store_advances = mta::build_increments(rounding_steps, sources.found_inf);
  if (sources.steps_in_kernel) {
    work.advances = mta::build_advances<R>(device_steps, device_scalar_states, header);
  }
  return work;
}

}  // namespace fusedopt::binding
