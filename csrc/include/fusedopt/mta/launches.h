// Host side of the CUDA traversal: turns one call's tensors (as Slots) into
// the launches' kernel arguments. Torch-free host code, shared by the CUDA op
// (csrc/binding/cuda_work.h) and its CPU emulation (csrc/testing/).
#pragma once

#include <cstdint>
#include <vector>

#include "fusedopt/core/launch_plan.h"
#include "fusedopt/mta/args.h"

namespace fusedopt::mta {

// A tensor's numel must stay below this: a table entry's chunk index is an
// int32 (core/launch_plan.h).
constexpr int64_t kMaxNumel = static_cast<int64_t>(INT32_MAX) * kChunkSize;

// S: the slot type (LaunchArgs).
template <class R, class S = Slot<R>>
struct Launch {
  LaunchArgs<R, S> args;         // args.header.n_chunks: the entries of its chunk table
  std::vector<int32_t> tensors;  // index into the call's list of each slot
};

// Blocks of a launch's grid: one per chunk, up to `max_blocks`, the blocks
// that are resident at once (the CUDA op: kMinBlocksPerSm x the device's SMs,
// binding/cuda_step.h); block b takes the table's entries b, b + grid, ...
// (element_thread in mta/traversal.h). A block that goes on to another chunk
// skips what a new block pays: its retirement and launch, and the global read
// of found_inf that gates its first loads (one round trip, under 1 us);
// grad_scale and found_inf are read once per launch and thread.
//
// What it does not change is the last round of equal chunks. Fp32 Adam on an
// H100 (264 resident blocks), chunk counts from this plan
// (tests/test_cuda_launch_plan.py, test_persistent_grid_on_the_issue_workloads):
//
//   workload         chunks per launch   blocks started    waves before;      last round
//                                        before -> after   chunks per block   (blocks busy)
//   2000 x 4096      7 x 254, 1 x 222    254, 222 (same)   0.96, 0.84; 1      all
//   GPT-2 small      1,995               1,995 -> 264      7.56; 7 or 8       147 of 264
//   one 64M tensor   1,024               1,024 -> 264      3.88; 3 or 4       232 of 264
//   320 chunks       320                 320 -> 264        1.21; 1 or 2       56 of 264
//
// Before, the hardware ran the same last round as a partial wave, so a launch
// still takes ceil(chunks / 264) chunk times if every block moves its bytes at
// a fixed rate. It moves them faster when fewer blocks share HBM: by Little's
// law a round covers HBM's latency with ~72 blocks (3.35 TB/s x ~0.7 us / 32 KB
// in flight per block: 512 threads x 4 streams x 16 B; an estimate, not a
// measurement), so only the 320-chunk launch's last round runs below
// bandwidth. Evening that out needs entries smaller than a chunk in the last
// round, not a smaller grid.
inline int32_t grid_blocks(int32_t n_chunks, int32_t max_blocks) {
  return n_chunks < max_blocks ? n_chunks : max_blocks;
}

// The launches of one call: `header` holds the call-wide fields; each
// launch's slots and chunk table are filled from `slots` (one per param,
// zero-size ones included; they take no slot).
template <class R, class S>
std::vector<Launch<R, S>> build_launches(const std::vector<S>& slots,
                                         const LaunchHeader<R>& header) {
  std::vector<int64_t> numels(slots.size());
  for (size_t i = 0; i < slots.size(); ++i) numels[i] = slots[i].numel;
  std::vector<Launch<R, S>> launches;
  for (const LaunchPlan& plan :
       plan_launches(numels.data(), static_cast<int32_t>(numels.size()), kChunkSize,
                     LaunchArgs<R, S>::kSlots, LaunchArgs<R, S>::kChunks)) {
    Launch<R, S>& launch = launches.emplace_back();
    launch.args.header = header;
    launch.args.header.n_chunks = static_cast<int32_t>(plan.chunk_slot.size());
    launch.tensors = plan.tensors;
    for (size_t s = 0; s < plan.tensors.size(); ++s) launch.args.slots[s] = slots[plan.tensors[s]];
    for (int32_t e = 0; e < launch.args.header.n_chunks; ++e) {
      launch.args.chunk_slot[e] = static_cast<uint8_t>(plan.chunk_slot[e]);
      launch.args.chunk_index[e] = plan.chunk_index[e];
    }
  }
  return launches;
}

// The advance launches (Note [the advance launch] in mta/args.h) for step
// counts in device memory, every tensor included (zero-size ones too: their
// count and scalar states advance like the others'). `steps[i]` is tensor i's
// count; `scalar_states[i * kScalarStates<R> + j]` its j-th scalar state (none
// for a rule without). `header` gives config, lr and found_inf.
// Count increments (fusedopt_step_increment) of `steps`, unless *found_inf:
// the step counts of a rule without scalar states, and stochastic rounding's
// rounding_step counts (Note [store arguments] in binding/checks.h).
inline std::vector<StepIncrementArgs> build_increments(const std::vector<float*>& steps,
                                                       const float* found_inf) {
  std::vector<StepIncrementArgs> launches;
  for (size_t first = 0; first < steps.size(); first += kStepsPerLaunch) {
    StepIncrementArgs& args = launches.emplace_back();
    const size_t end =
        first + kStepsPerLaunch < steps.size() ? first + kStepsPerLaunch : steps.size();
    args.found_inf = found_inf;
    args.n_steps = static_cast<int32_t>(end - first);
    for (size_t i = first; i < end; ++i) args.steps[i - first] = steps[i];
  }
  return launches;
}

template <class R>
std::vector<AdvanceArgs<R>> build_advances(const std::vector<float*>& steps,
                                           const std::vector<float*>& scalar_states,
                                           const LaunchHeader<R>& header) {
  constexpr int kS = kScalarStates<R>;
  if constexpr (kS == 0) {
    return build_increments(steps, header.found_inf);
  } else {
    std::vector<AdvanceArgs<R>> launches;
    constexpr int32_t kPerLaunch = ScalarAdvanceArgs<R>::kSteps;
    for (size_t first = 0; first < steps.size(); first += kPerLaunch) {
      AdvanceArgs<R>& args = launches.emplace_back();
      const size_t end = first + kPerLaunch < steps.size() ? first + kPerLaunch : steps.size();
      const int32_t n_steps = static_cast<int32_t>(end - first);
      args.header = {header.config, header.lr, header.lr_value, header.found_inf, n_steps};
      for (size_t i = first; i < end; ++i) {
        ScalarAdvanceEntry<R>& entry = args.entries[i - first];
        entry.step = steps[i];
        for (int j = 0; j < kS; ++j) entry.scalar_state[j] = scalar_states[i * kS + j];
      }
    }
    return launches;
  }
}

// Blocks of kBlockSize threads that one advance launch needs: a thread per tensor.
inline int32_t advance_blocks(int32_t n_steps) { return (n_steps + kBlockSize - 1) / kBlockSize; }
inline int32_t advance_blocks(const StepIncrementArgs& args) {
  return advance_blocks(args.n_steps);
}
template <class R>
int32_t advance_blocks(const ScalarAdvanceArgs<R>& args) {
  return advance_blocks(args.header.n_steps);
}

}  // namespace fusedopt::mta
