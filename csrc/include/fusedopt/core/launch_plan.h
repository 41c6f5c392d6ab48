// Multi-tensor launch plan: how a list of tensors is split into kernel
// launches whose metadata fits in the kernel arguments. Plain host code, so
// that tests drive it on the CPU with adversarial lists (tests/test_cuda_launch_plan.py).
//
// Each launch holds at most `max_slots` tensors (their pointers travel in the
// kernel arguments) and at most `max_blocks` blocks; block b processes chunk
// `block_chunk[b]` of the tensor in slot `block_slot[b]`. A tensor whose chunks
// do not all fit continues in the next launch, where it takes a slot again.
// Zero-size tensors take no slot and no block, wherever they sit in the list
// (see plan_chunks in fusedopt/chunk_plan.h).
#pragma once

#include <cstdint>
#include <vector>

#include "fusedopt/core/chunk_plan.h"

namespace fusedopt {

struct LaunchPlan {
  std::vector<int32_t> tensors;      // tensor index (into the caller's list) of each slot
  std::vector<int32_t> block_slot;   // slot of each block
  // Chunk index within its tensor of each block. int32 caps a tensor at 2^31
  // chunks (2^47 elements at the CUDA chunk of 2^16); callers check numels.
  std::vector<int32_t> block_chunk;
};

inline std::vector<LaunchPlan> plan_launches(const int64_t* numels, int32_t n_tensors,
                                             int64_t chunk_size, int32_t max_slots,
                                             int32_t max_blocks) {
  std::vector<LaunchPlan> launches;
  for (const Chunk& chunk : plan_chunks(numels, n_tensors, chunk_size)) {
    const bool new_tensor = launches.empty() || launches.back().tensors.back() != chunk.tensor;
    const bool full = launches.empty() ||
                      static_cast<int32_t>(launches.back().block_slot.size()) == max_blocks ||
                      (new_tensor && static_cast<int32_t>(launches.back().tensors.size()) == max_slots);
    if (full) launches.emplace_back();
    LaunchPlan& launch = launches.back();
    if (launch.tensors.empty() || launch.tensors.back() != chunk.tensor) {
      launch.tensors.push_back(chunk.tensor);
    }
    launch.block_slot.push_back(static_cast<int32_t>(launch.tensors.size()) - 1);
    launch.block_chunk.push_back(static_cast<int32_t>(chunk.start / chunk_size));
  }
  return launches;
}

}  // namespace fusedopt
