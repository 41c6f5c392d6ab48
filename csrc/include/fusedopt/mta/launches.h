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

template <class R>
struct Launch {
  LaunchArgs<R> args;            // args.header.n_chunks: the entries of its chunk table
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
template <class R>
std::vector<Launch<R>> build_launches(const std::vector<Slot<R>>& slots,
                                      const LaunchHeader<R>& header) {
  std::vector<int64_t> numels(slots.size());
  for (size_t i = 0; i < slots.size(); ++i) numels[i] = slots[i].numel;
  std::vector<Launch<R>> launches;
  for (const LaunchPlan& plan :
       plan_launches(numels.data(), static_cast<int32_t>(numels.size()), kChunkSize,
                     LaunchArgs<R>::kSlots, LaunchArgs<R>::kChunks)) {
    Launch<R>& launch = launches.emplace_back();
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
