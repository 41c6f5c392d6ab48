// The CPU side of every rule's op: checks, per-tensor scalars, one parallel
// region over the call's chunks, then the step counts.
#pragma once

#include <ATen/Parallel.h>

#include <vector>

#include "checks.h"
#include "cpu/loop.h"
#include "fusedopt/core/blockwise8.h"

namespace fusedopt::binding {

// Elements per CPU chunk: 64K fp32 elements are 256 KB per stream, small enough
// to balance many threads over one large tensor and large enough that the
// per-chunk overhead vanishes next to the element loop.
constexpr int64_t kCpuChunkSize = 1 << 16;
static_assert(kCpuChunkSize % kBlock8 == 0, "8-bit state blocks never straddle chunks");
// Fewer elements than this in a whole call run on the calling thread: waking
// the pool costs more than the work.
constexpr int64_t kCpuMinParallelElements = 1 << 15;

template <class R>
void step_cpu(const char* rule, const StepArgs& a) {
  const auto [lr, lr_on_device, config] = checked_hyper<R>(rule, a, false);
  const uint32_t mask = state_mask<R>(config);
  const std::vector<const char*> names = used_state_names<R>(mask);
  const StateDtype state_dtype = names.empty() ? StateDtype::kFloat32 : state_dtype_of(a);
  const StorePolicy store = check_store(rule, a);
  check_lists(rule, a, names, kScalarLists<R>, c10::DeviceType::CPU, state_dtype);
  check_steps_on(a, c10::Device(c10::kCPU));
  const double scale = a.grad_scale.has_value() ? checked_grad_scale(*a.grad_scale) : 0.0;
  // GradScaler found an inf or NaN: skip the step entirely, step counts included.
  if (a.found_inf.has_value() && cpu_scalar(*a.found_inf, "found_inf") != 0.0) return;
  const size_t n = a.params.size();
  if (n == 0) return;

  std::vector<cpu::Tensor<R>> tensors(n);
  std::vector<int64_t> numels(n);
  std::vector<float*> steps(R::kHasStep ? n : 0);
  // Note [scalar states] (core/rule.h): the values after this step, stored
  // once the loops are done; param i's j-th at j * n + i, as in state_steps.
  constexpr int kS = kScalarStates<R>;
  std::vector<float> scalar_states(n * kS);
  int64_t total = 0;
  // Tensors at one step count (nearly always all of them) share their scalars.
  double last_step = -1.0;
  typename R::PerTensor scalars{};
  for (size_t i = 0; i < n; ++i) {
    cpu::Tensor<R>& t = tensors[i];
    t.param = a.params[i].data_ptr();
    t.grad = a.grads[i].data_ptr();
    // (Every dtype was checked: the untyped data_ptr skips the check per call.)
    for (int k = 0, used = 0; k < R::kStates; ++k) {
      t.state[k] = nullptr;
      t.absmax[k] = nullptr;
      if (!((mask >> k) & 1u)) continue;
      t.state[k] = a.states[used * n + i].data_ptr();
      if (state_dtype == StateDtype::kInt8Blockwise) {
        t.absmax[k] = static_cast<float*>(a.states[(names.size() + used) * n + i].data_ptr());
      }
      ++used;
    }
    // Note [step-count protocol]: the scalars of count + 1; the count itself
    // advances below, after the loops.
    if (R::kHasStep) steps[i] = static_cast<float*>(a.steps[i].data_ptr());
    const double step = R::kHasStep ? static_cast<double>(*steps[i]) + 1.0 : 1.0;
    if constexpr (kS > 0) {
      float values[kS];
      for (int j = 0; j < kS; ++j) values[j] = *a.steps[(1 + j) * n + i].data_ptr<float>();
      scalars = per_tensor_of<R>(config, lr, step, values);
      for (int j = 0; j < kS; ++j) scalar_states[j * n + i] = values[j];
    } else if (step != last_step || i == 0) {
      scalars = per_tensor_of<R>(config, lr, step, nullptr);
      last_step = step;
    }
    t.scalars = scalars;
    t.store = nullptr;
    t.rounding_step = t.tag = 0;
    if (store == StorePolicy::kStochasticRounding) {
      // Note [store arguments] in checks.h: the count after this step.
      t.rounding_step = static_cast<uint32_t>(*a.store[i].data_ptr<float>()) + 1;
      t.tag = static_cast<uint32_t>(a.store_tags[i].toInt());
    } else if (store != StorePolicy::kNone) {
      t.store = a.store[i].data_ptr();
    }
    numels[i] = a.params[i].numel();
    total += numels[i];
  }
  const uint64_t seed = static_cast<uint64_t>(a.rounding_seed);
  const std::vector<Chunk> chunks =
      plan_chunks(numels.data(), static_cast<int32_t>(n), kCpuChunkSize);
  const cpu::Work<R> work{tensors.data(),
                          chunks.data(),
                          R::launch(config),
                          mask,
                          param_dtype(a.params[0].scalar_type()),
                          state_dtype,
                          signed_code_mask(a, mask, R::kStates),
                          static_cast<float>(scale),
                          store,
                          seed};
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  if (total < kCpuMinParallelElements) {
    cpu::run_chunks(work, 0, n_chunks);
  } else {
    // One parallel region for the whole call: its chunks are split over the
    // threads in equal runs (torch's per-tensor regions are what caps its fused
    // CPU Adam at ~20-25% of bandwidth on 2000 small tensors: README, Benchmarks).
    at::parallel_for(0, n_chunks, 1,
                     [&](int64_t begin, int64_t end) { cpu::run_chunks(work, begin, end); });
  }
  for (float* step : steps) *step += 1.0f;
  if (store == StorePolicy::kStochasticRounding) {
    for (size_t i = 0; i < n; ++i) *a.store[i].data_ptr<float>() += 1.0f;
  }
  for (size_t j = 0; j < scalar_states.size(); ++j) {
    *a.steps[n + j].data_ptr<float>() = scalar_states[j];
  }
}

}  // namespace fusedopt::binding
