// Host side of the CUDA Adam kernels: turns one call's tensors (as AdamSlots)
// into the launches' kernel arguments. Torch-free host code, shared by the
// CUDA op and its CPU emulation in csrc/ops.cpp.
#pragma once

#include <cstdint>
#include <vector>

#include "fusedopt/adam_cuda_args.h"
#include "fusedopt/launch_plan.h"

namespace fusedopt::cuda {

// A tensor's numel must stay below this: a block's chunk index is an int32
// (fusedopt/launch_plan.h).
constexpr int64_t kMaxNumel = static_cast<int64_t>(INT32_MAX) * kChunkSize;

struct AdamLaunch {
  AdamLaunchArgs args;
  int32_t n_blocks;
  std::vector<int32_t> tensors;  // index into the call's list of each slot
};

// `common` holds the launch-wide fields; its slots and block map are filled
// here from `tensors` (one AdamSlot per param, zero-size ones included).
inline std::vector<AdamLaunch> build_adam_launches(const std::vector<AdamSlot>& tensors,
                                                   const AdamLaunchArgs& common) {
  std::vector<int64_t> numels(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) numels[i] = tensors[i].numel;
  std::vector<AdamLaunch> launches;
  for (const LaunchPlan& plan : plan_launches(numels.data(), static_cast<int32_t>(numels.size()),
                                              kChunkSize, kMaxSlots, kMaxBlocks)) {
    AdamLaunch& launch = launches.emplace_back();
    launch.args = common;
    launch.n_blocks = static_cast<int32_t>(plan.block_slot.size());
    launch.tensors = plan.tensors;
    for (size_t s = 0; s < plan.tensors.size(); ++s) launch.args.slots[s] = tensors[plan.tensors[s]];
    for (int32_t b = 0; b < launch.n_blocks; ++b) {
      launch.args.block_slot[b] = static_cast<uint8_t>(plan.block_slot[b]);
      launch.args.block_chunk[b] = plan.block_chunk[b];
    }
  }
  return launches;
}

// The step-increment launches for step counts in device memory, every tensor
// included (zero-size ones too: their count advances like the others').
inline std::vector<StepIncrementArgs> build_step_increments(const std::vector<float*>& steps,
                                                            const float* found_inf) {
  std::vector<StepIncrementArgs> launches;
  for (size_t first = 0; first < steps.size(); first += kMaxStepsPerLaunch) {
    StepIncrementArgs& args = launches.emplace_back();
    args.found_inf = found_inf;
    args.n_steps = 0;
    for (size_t i = first; i < steps.size() && args.n_steps < kMaxStepsPerLaunch; ++i) {
      args.steps[args.n_steps++] = steps[i];
    }
  }
  return launches;
}

}  // namespace fusedopt::cuda
