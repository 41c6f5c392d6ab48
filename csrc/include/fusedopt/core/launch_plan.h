// Multi-tensor launch plan: how a list of tensors is split into kernel
// launches whose metadata fits in the kernel arguments. Plain host code, so
// that tests drive it on the CPU with adversarial lists (tests/test_cuda_launch_plan.py).
//
// Each launch holds at most `max_slots` tensors (their pointers travel in the
// kernel arguments) and a table of at most `max_chunks` chunks: entry e is
// chunk `chunk_index[e]` of the tensor in slot `chunk_slot[e]`. A launch's
// grid takes the table's entries in strides of its size (mta/traversal.h). A
// tensor whose chunks do not all fit continues in the next launch, where it
// takes a slot again. Zero-size tensors take no slot and no entry, wherever
// they sit in the list (see plan_chunks in fusedopt/chunk_plan.h).
#pragma once

#include <cstdint>
#include <vector>

#include "fusedopt/core/chunk_plan.h"

namespace fusedopt {

struct LaunchPlan {
  std::vector<int32_t> tensors;     // tensor index (into the caller's list) of each slot
  std::vector<int32_t> chunk_slot;  // slot of each table entry
  // Chunk index within its tensor of each entry. int32 caps a tensor at 2^31
  // chunks (2^47 elements at the CUDA chunk of 2^16); callers check numels.
  std::vector<int32_t> chunk_index;
};

inline std::vector<LaunchPlan> plan_launches(const int64_t* numels, int32_t n_tensors,
                                             int64_t chunk_size, int32_t max_slots,
                                             int32_t max_chunks) {
  std::vector<LaunchPlan> launches;
  for (const Chunk& chunk : plan_chunks(numels, n_tensors, chunk_size)) {
    const bool new_tensor = launches.empty() || launches.back().tensors.back() != chunk.tensor;
    const bool full =
        launches.empty() || static_cast<int32_t>(launches.back().chunk_slot.size()) == max_chunks ||
        (new_tensor && static_cast<int32_t>(launches.back().tensors.size()) == max_slots);
    if (full) launches.emplace_back();
    LaunchPlan& launch = launches.back();
    if (launch.tensors.empty() || launch.tensors.back() != chunk.tensor) {
      launch.tensors.push_back(chunk.tensor);
    }
    launch.chunk_slot.push_back(static_cast<int32_t>(launch.tensors.size()) - 1);
    launch.chunk_index.push_back(static_cast<int32_t>(chunk.start / chunk_size));
  }
  return launches;
}

}  // namespace fusedopt
