// Host side of the CUDA traversal: turns one call's tensors (as Slots) into
// the launches' kernel arguments. Torch-free host code, shared by the CUDA op
// (csrc/binding/cuda_work.h) and its CPU emulation (csrc/testing/).
#pragma once

#include <cstdint>
#include <vector>

#include "fusedopt/core/launch_plan.h"
#include "fusedopt/mta/args.h"

namespace fusedopt::mta {

// A tensor's numel must stay below this: a block's chunk index is an int32
// (core/launch_plan.h).
constexpr int64_t kMaxNumel = static_cast<int64_t>(INT32_MAX) * kChunkSize;

template <class R>
struct Launch {
  LaunchArgs<R> args;
  int32_t n_blocks;
  std::vector<int32_t> tensors;  // index into the call's list of each slot
};

// The launches of one call: `header` holds the launch-wide fields; each
// launch's slots and block map are filled from `slots` (one per param,
// zero-size ones included; they take no slot).
template <class R>
std::vector<Launch<R>> build_launches(const std::vector<Slot<R>>& slots,
                                      const LaunchHeader<R>& header) {
  std::vector<int64_t> numels(slots.size());
  for (size_t i = 0; i < slots.size(); ++i) numels[i] = slots[i].numel;
  std::vector<Launch<R>> launches;
  for (const LaunchPlan& plan :
       plan_launches(numels.data(), static_cast<int32_t>(numels.size()), kChunkSize,
                     LaunchArgs<R>::kSlots, LaunchArgs<R>::kBlocks)) {
    Launch<R>& launch = launches.emplace_back();
    launch.args.header = header;
    launch.n_blocks = static_cast<int32_t>(plan.block_slot.size());
    launch.tensors = plan.tensors;
    for (size_t s = 0; s < plan.tensors.size(); ++s) launch.args.slots[s] = slots[plan.tensors[s]];
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
  for (size_t first = 0; first < steps.size(); first += kStepsPerLaunch) {
    StepIncrementArgs& args = launches.emplace_back();
    args.found_inf = found_inf;
    args.n_steps = 0;
    for (size_t i = first; i < steps.size() && args.n_steps < kStepsPerLaunch; ++i) {
      args.steps[args.n_steps++] = steps[i];
    }
  }
  return launches;
}

// Blocks of kBlockSize threads that one step-increment launch needs.
inline int32_t step_increment_blocks(const StepIncrementArgs& args) {
  return (args.n_steps + kBlockSize - 1) / kBlockSize;
}

}  // namespace fusedopt::mta
