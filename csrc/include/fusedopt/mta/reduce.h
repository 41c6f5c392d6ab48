// The CUDA multi-tensor reduction of the global gradient norm, as host+device
// code that takes the block, the entry and the thread as arguments, like the
// element traversal (mta/traversal.h): the kernels (csrc/cuda/norm.cu) call
// it with blockIdx.x / threadIdx.x and a shared-memory tree, the CPU
// emulation (csrc/testing/) in loops, so the chunk map, the vector/scalar
// path choice and the summation order run on the CPU in tests.
//
// Two kernels: the partials kernel reduces each chunk of the element
// traversal's map (core/launch_plan.h, the same 64K chunks and launch split)
// to one fp32 partial, written to its own slot of a partials buffer (no
// atomics: the result does not depend on which block took which chunk, nor on
// the grid size); the finishing kernel, one block, folds the partials and
// writes the norm. The order is Note [norm summation order] in core/norm.h.
// Bytes: one read of every element (4 B fp32, 2 B bf16/fp16), 4 B written per
// chunk, 4 B read per chunk by the finishing block.
#pragma once

#include <cstdint>
#include <vector>

#include "fusedopt/core/launch_plan.h"
#include "fusedopt/core/norm.h"
#include "fusedopt/core/storage.h"
#include "fusedopt/mta/args.h"
#include "fusedopt/mta/traversal.h"

namespace fusedopt::mta {

static_assert(norm::kThreads == kBlockSize && norm::kLanesPerThread == kGroup,
              "a reduction block is the element traversal's block: 512 threads x 4 lanes");

// One tensor of a reduction launch. Its dtype is per tensor: one launch
// reduces a list of mixed fp32/bf16/fp16 grads (a uniform branch per chunk).
struct NormSlot {
  const void* data;
  int64_t numel;
  ParamDtype dtype;
};

struct NormHeader {
  float* partials;  // this launch's first entry's slot in the call's partials buffer
  int32_t n_chunks;
};

// Slots and chunks per reduction launch, from the kernel-parameter space as
// for the element kernels (slots_per_launch in mta/args.h): 256 slots of 24 B
// and 5,317 chunks at 32 KB, so GPT-2 small (148 tensors, 1,995 chunks) is one
// launch.
constexpr int32_t norm_slots_per_launch() {
  const size_t share = (kMaxKernelArgBytes - sizeof(NormHeader)) * kSlotShareNumerator /
                       kSlotShareDenominator / sizeof(NormSlot);
  return static_cast<int32_t>(share < kMaxSlotsPerLaunch ? share : kMaxSlotsPerLaunch);
}
constexpr int32_t norm_chunks_per_launch() {
  return static_cast<int32_t>(
      (kMaxKernelArgBytes - sizeof(NormHeader) - norm_slots_per_launch() * sizeof(NormSlot) - 16) /
      kChunkEntryBytes);
}

struct NormLaunchArgs {
  static constexpr int32_t kSlots = norm_slots_per_launch();
  static constexpr int32_t kChunks = norm_chunks_per_launch();
  NormHeader header;
  NormSlot slots[kSlots];
  int32_t chunk_index[kChunks];
  uint8_t chunk_slot[kChunks];
};
static_assert(NormLaunchArgs::kSlots >= 1 && NormLaunchArgs::kSlots <= 256,
              "chunk_slot is a uint8");
static_assert(sizeof(NormLaunchArgs) <= kMaxKernelArgBytes,
              "a reduction launch's metadata must fit the kernel-parameter space");

// The launches of one call, and the partials (one per chunk, in chunk order)
// they fill: launch l's partials start where launch l - 1's end.
struct NormWork {
  std::vector<NormLaunchArgs> launches;
  int32_t n_chunks = 0;  // of the whole call: the finishing block's input
};

inline NormWork build_norm_launches(const std::vector<NormSlot>& slots, float* partials) {
  std::vector<int64_t> numels(slots.size());
  for (size_t i = 0; i < slots.size(); ++i) numels[i] = slots[i].numel;
  NormWork work;
  for (const LaunchPlan& plan :
       plan_launches(numels.data(), static_cast<int32_t>(numels.size()), kChunkSize,
                     NormLaunchArgs::kSlots, NormLaunchArgs::kChunks)) {
    NormLaunchArgs& args = work.launches.emplace_back();
    args.header.partials = partials + work.n_chunks;
    args.header.n_chunks = static_cast<int32_t>(plan.chunk_slot.size());
    for (size_t s = 0; s < plan.tensors.size(); ++s) args.slots[s] = slots[plan.tensors[s]];
    for (int32_t e = 0; e < args.header.n_chunks; ++e) {
      args.chunk_slot[e] = static_cast<uint8_t>(plan.chunk_slot[e]);
      args.chunk_index[e] = plan.chunk_index[e];
    }
    work.n_chunks += args.header.n_chunks;
  }
  return work;
}

// Thread `thread`'s value of one chunk (n elements of `x`): its 4 lanes
// (Note [norm summation order], step 2), by 16-byte-or-less packs where the
// chunk's start is aligned to one (lanes 4t..4t+3 of a row are one pack), one
// element at a time otherwise. Both paths fold the same elements into the same
// lanes in the same order, so an unaligned view gives the aligned one's bits.
// Missing elements load as 0, the combine's identity.
template <norm::NormKind K, typename T, typename Observer>
FUSEDOPT_HD float norm_chunk_thread(const T* x, int32_t n, int32_t thread, Observer& observer) {
  using N = norm::Norm<K>;
  constexpr int kPack = kPackSize<T, kGroup>;
  const bool aligned =
      reinterpret_cast<uintptr_t>(x) % static_cast<uintptr_t>(kPack * sizeof(T)) == 0;
  float lanes[kGroup] = {norm::kIdentity, norm::kIdentity, norm::kIdentity, norm::kIdentity};
  for (int32_t row = 0; row < n; row += norm::kLanes) {
    const int32_t first = row + thread * kGroup;
    float v[kGroup];
    if (aligned && first + kGroup <= n) {
      load_floats(x, Contiguous<kGroup>{first}, v, observer);
    } else {
      load_floats(x, Strided<kGroup>{first, 1, n}, v, observer);
    }
    for (int j = 0; j < kGroup; ++j) lanes[j] = N::combine(lanes[j], N::contribution(v[j]));
  }
  return N::thread_value(lanes);
}

// Thread `thread`'s value of table entry `entry` of a launch: the slot's dtype
// picks the load (a uniform branch).
template <norm::NormKind K, typename Observer>
FUSEDOPT_HD float norm_entry_thread(const NormLaunchArgs& args, int32_t entry, int32_t thread,
                                    Observer& observer) {
  const NormSlot& slot = args.slots[args.chunk_slot[entry]];
  const int64_t chunk_start = static_cast<int64_t>(args.chunk_index[entry]) * kChunkSize;
  const int64_t left = slot.numel - chunk_start;
  const int32_t n = static_cast<int32_t>(left < kChunkSize ? left : kChunkSize);
  switch (slot.dtype) {
    case ParamDtype::kBFloat16:
      return norm_chunk_thread<K>(static_cast<const Bf16*>(slot.data) + chunk_start, n, thread,
                                  observer);
    case ParamDtype::kFloat16:
      return norm_chunk_thread<K>(static_cast<const Fp16*>(slot.data) + chunk_start, n, thread,
                                  observer);
    case ParamDtype::kFloat32:
      break;
  }
  return norm_chunk_thread<K>(static_cast<const float*>(slot.data) + chunk_start, n, thread,
                              observer);
}

// The finishing block's thread `thread`: partials thread, thread + kThreads,
// ... folded in order (Note [norm summation order], step 4).
template <norm::NormKind K>
FUSEDOPT_HD float norm_finish_thread(const float* partials, int32_t n_partials, int32_t thread) {
  float value = norm::kIdentity;
  for (int32_t c = thread; c < n_partials; c += norm::kThreads) {
    value = norm::Norm<K>::combine(value, partials[c]);
  }
  return value;
}

}  // namespace fusedopt::mta
