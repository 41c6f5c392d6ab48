// The kernel arguments of the CUDA multi-tensor traversal: plain structs of
// raw pointers and numbers, derived from the rule (Note [the rule interface]
// in core/rule.h), shared by the kernels (csrc/cuda/kernels.cu), the binding
// that fills them (csrc/binding/cuda_work.h) and the CPU emulation of the
// traversal (csrc/testing/).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "fusedopt/core/master.h"
#include "fusedopt/core/rule.h"

namespace fusedopt::mta {

// Elements per chunk: 64K, as torch's and apex's multi-tensor apply. A block
// of 512 threads moves 28 B x 64K = 1.8 MB per fp32 Adam chunk, so the
// per-chunk set-up (metadata reads, scalars) vanishes next to the element loop.
constexpr int64_t kChunkSize = 1 << 16;
// Threads per block: 512, as torch; with 4 fp32 elements per thread and
// iteration, a chunk is 32 iterations of the block-stride loop.
constexpr int32_t kBlockSize = 512;
// Blocks of kBlockSize threads that must fit on one SM at once: the kernels'
// __launch_bounds__ (csrc/cuda/kernels.cu), which caps ptxas at 64 registers
// per thread (64K registers per SM / (2 x 512)). Without it sm_100 and sm_120
// took 77-79 registers for Adam's 16-bit kernels, one block per SM. It is also
// how many blocks per SM a launch's persistent grid has (grid_blocks in
// mta/launches.h): every block of the grid is resident from the start.
constexpr int32_t kMinBlocksPerSm = 2;
// The same for the kernels of 8-bit blockwise states: one block, so ptxas may
// give a thread 128 registers. A thread holds 8 elements, and each state's 8
// stepped values until its warp's max (Note [8-bit blocks on the GPU] in
// mta/traversal.h): capped at 64 registers, Adam's fp32 kernel spilled 284 B
// (sm_90, nvcc 13); at 128 it takes 128 and RMSprop 122, and no 8-bit kernel
// spills on sm_80 to sm_120 (at most 118, 128, 126, 106 registers). Bytes in
// flight per SM (an estimate, not a measurement): 512 threads x (p and g: 2 x
// 32 B, codes: 3 x 8 B) = 44 KB for fp32 Adam, against 2 x 512 x 5 x 16 B =
// 80 KB for its fp32-state kernel.
constexpr int32_t kMinBlocksPerSm8 = 1;

// The kernel-parameter space: 32,764 bytes since CUDA 12.1 on Volta and newer
// (CUDA C++ Programming Guide, "Function Parameters"; needs a driver >= 530,
// which every torch build that this one links requires). CMake defines
// FUSEDOPT_SMALL_KERNEL_ARGS for an older nvcc, which has the classic 4 KB.
#if defined(FUSEDOPT_SMALL_KERNEL_ARGS)
constexpr size_t kMaxKernelArgBytes = 4096;
#else
constexpr size_t kMaxKernelArgBytes = 32764;
#endif

// The device addresses of a tensor's scalar states (Note [scalar states] in
// core/rule.h), for a rule that keeps kS of them: the element kernels read the
// values before this step there when the counts live in device memory. Empty
// for every other rule (an empty base takes no space), so their slots, and the
// slots per launch derived from them, do not grow. At 32 KB, NAdam's slot
// grows from 72 to 80 B (254 slots and 2,460 chunks a launch, from 256 and
// 2,837: GPT-2 small still takes one launch), ASGD's from 64 to 80 B (255 and
// 2,448, from 256 and 3,252); each 8 B more since the master-weight store (Slot).
template <int kS>
struct SlotScalarStates {
  const float* scalar_state[kS];  // null when the host owns the counts
};
template <>
struct SlotScalarStates<0> {};

// One tensor of a launch. Every buffer is dense with the param's strides, so
// element i of one is element i of the others.
template <class R>
struct Slot : SlotScalarStates<kScalarStates<R>> {
  void* param;             // fp32, bf16 or fp16 (the launch's dtype)
  void* grad;              // the param's dtype; written back only when unscaling
  // fp32, bf16 or 8-bit codes (the launch's state dtype: Note [state dtypes]
  // in core/storage.h); null where the step uses no such state.
  void* state[R::kStates > 0 ? R::kStates : 1];
  const float* step;       // the count in device memory, or null when the host owns it
  int64_t numel;           // 64-bit: tensors over 2^31 elements are real
  typename R::PerTensor scalars;  // computed on the host; read when !scalars_on_device
  float host_step;         // the host's count after this step, for a device lr with host counts
  // Note [master weights] in core/master.h, under the launch's store_policy:
  // the param's tag, stochastic rounding's Philox word 3 (in host_step's
  // padding), and its master (fp32) or Kahan compensation (the param's
  // dtype), or for stochastic rounding its rounding_step count (float32,
  // device memory); null without a policy. Adam's slot: 80 -> 88 B, 254 -> 231
  // slots a launch, so 2000 params of 4096 take 9 launches, not 8.
  uint32_t tag;
  void* store;
};

// One tensor of a launch with 8-bit blockwise states: a Slot and each state's
// fp32 absmax, one per kBlock8 elements (core/blockwise8.h; null where the
// step uses no such state). A type of its own, so that the slots of fp32 and
// bf16 launches keep their size (Adam's would grow from 80 to 104 B: 2000 x
// 4096 params in 11 launches instead of 8).
template <class R>
struct Slot8 : Slot<R> {
  float* absmax[R::kStates > 0 ? R::kStates : 1];
};

// The launch-wide fields of LaunchArgs, apart so that their size is known
// when the table sizes are derived from what is left.
template <class R>
struct LaunchHeader {
  typename R::Config config;  // for the scalars computed in the kernel
  typename R::Launch launch;
  uint32_t state_mask;        // the states this step loads and stores (core/rule.h)
  // 8-bit blockwise states: bit k set when state k's codes use the signed map.
  uint32_t signed_mask;
  // lr: read from device memory when non-null (capturable, a tensor lr), else lr_value.
  const float* lr;
  double lr_value;
  // GradScaler: grads are divided by *grad_scale and stored back; null without
  // a scaler. A nonzero *found_inf skips the whole step; null when the host
  // already checked it (host-owned step counts need that answer on the host).
  const float* grad_scale;
  const float* found_inf;
  // True when the kernel computes each tensor's PerTensor itself: the step
  // counts or lr live on the device, and reading them on the host would sync
  // (and break CUDA graph capture).
  bool scalars_on_device;
  // Chunks in this launch's table (chunk_slot, chunk_index): each launch sets its own.
  int32_t n_chunks;
  // How bf16/fp16 params are stored (Note [master weights] in core/master.h;
  // Slot::store), and stochastic rounding's Philox key.
  StorePolicy store_policy;
  uint64_t rounding_seed;
};

// Slots and chunks per launch, derived from the rule's slot size and the
// kernel-parameter space, as ATen derives its depth table: slots take up to
// kSlotShare of the space (capped at 256, the uint8 chunk -> slot index), the
// chunk table (5 bytes an entry: a uint8 slot and an int32 chunk index) the
// rest. For Adam at 32 KB: 231 slots of 88 B and 2,453 chunks, so 2000 x 4096
// fp32 params take 9 launches and GPT-2 small (148 tensors, 1,995 chunks) one.
constexpr size_t kSlotShareNumerator = 5, kSlotShareDenominator = 8;
constexpr size_t kMaxSlotsPerLaunch = 256;
constexpr size_t kChunkEntryBytes = sizeof(uint8_t) + sizeof(int32_t);

template <class R, class S = Slot<R>>
constexpr int32_t slots_per_launch() {
  const size_t share = (kMaxKernelArgBytes - sizeof(LaunchHeader<R>)) * kSlotShareNumerator /
                       kSlotShareDenominator / sizeof(S);
  return static_cast<int32_t>(share < kMaxSlotsPerLaunch ? share : kMaxSlotsPerLaunch);
}

template <class R, class S = Slot<R>>
constexpr int32_t chunks_per_launch() {
  // 16 bytes of slack for the padding between the arrays.
  return static_cast<int32_t>(
      (kMaxKernelArgBytes - sizeof(LaunchHeader<R>) - slots_per_launch<R, S>() * sizeof(S) - 16) /
      kChunkEntryBytes);
}

// S: the slot type, Slot<R>, or Slot8<R> for 8-bit blockwise states (LaunchArgs8).
template <class R, class S = Slot<R>>
struct LaunchArgs {
  static constexpr int32_t kSlots = slots_per_launch<R, S>();
  static constexpr int32_t kChunks = chunks_per_launch<R, S>();
  LaunchHeader<R> header;
  S slots[kSlots];
  // Entry e of the table is chunk chunk_index[e] of slots[chunk_slot[e]]
  // (core/launch_plan.h); block b of the grid takes entries b, b + grid, ...
  int32_t chunk_index[kChunks];
  uint8_t chunk_slot[kChunks];
};

template <class R>
using LaunchArgs8 = LaunchArgs<R, Slot8<R>>;

// Note [the advance launch]: step counts in device memory are advanced after
// all of a call's element launches have read them (Note [step-count protocol],
// fusedopt/registry.py), by one more launch per batch of tensors, one thread
// per tensor, which a nonzero *found_inf turns into a no-op. What a rule gets:
//   - without scalar states (every rule but NAdam and ASGD): the one shared
//     kernel fusedopt_step_increment, count += 1, StepIncrementArgs below;
//   - with scalar states (NAdam's mu_product, ASGD's eta and mu): a kernel of
//     its own, fusedopt_<rule>_advance, ScalarAdvanceArgs<R>, which also
//     writes the values after this step, per_tensor_of(config, lr, count + 1,
//     values) from the values before it, exactly as the host path does, then
//     count += 1. The element launches read the old values (scalars_in_kernel
//     in mta/traversal.h) and nothing writes them before this launch.
// kStepsPerLaunch: the kernel-parameter space less found_inf and n_steps, 8
// bytes per count's address (4,093 at 32 KB, 510 at 4 KB).
constexpr int32_t kStepsPerLaunch =
    static_cast<int32_t>((kMaxKernelArgBytes - 2 * sizeof(void*)) / sizeof(float*));

struct StepIncrementArgs {
  const float* found_inf;  // nonzero: counts stay unchanged (GradScaler skipped the step)
  int32_t n_steps;
  float* steps[kStepsPerLaunch];
};
static_assert(sizeof(StepIncrementArgs) <= kMaxKernelArgBytes,
              "the step list must fit the kernel-parameter space");

// The launch-wide fields of ScalarAdvanceArgs: what per_tensor_of needs
// besides the count and the values.
template <class R>
struct ScalarAdvanceHeader {
  typename R::Config config;
  const float* lr;  // lr in device memory (a tensor lr), or null for lr_value
  double lr_value;
  const float* found_inf;  // nonzero: counts and scalar states stay unchanged
  int32_t n_steps;
};

// One tensor: its count and its kScalarStates<R> scalar states.
template <class R>
struct ScalarAdvanceEntry {
  float* step;
  float* scalar_state[kScalarStates<R>];
};

// Tensors per advance launch of a rule with scalar states: what the kernel-
// parameter space holds after the header, 8 bytes per address (NAdam: 16 B a
// tensor, 2,042 per launch at 32 KB; ASGD: 24 B, 1,361).
template <class R>
constexpr int32_t scalar_advances_per_launch() {
  return static_cast<int32_t>((kMaxKernelArgBytes - sizeof(ScalarAdvanceHeader<R>)) /
                              sizeof(ScalarAdvanceEntry<R>));
}

template <class R>
struct ScalarAdvanceArgs {
  static constexpr int32_t kSteps = scalar_advances_per_launch<R>();
  ScalarAdvanceHeader<R> header;
  ScalarAdvanceEntry<R> entries[kSteps];
};

// The advance launch's arguments of rule R (Note [the advance launch]).
template <class R>
using AdvanceArgs =
    std::conditional_t<kScalarStates<R> == 0, StepIncrementArgs, ScalarAdvanceArgs<R>>;

template <class R>
constexpr bool check_launch_args() {
  static_assert(LaunchArgs<R>::kSlots >= 1 && LaunchArgs<R>::kSlots <= 256,
                "chunk_slot is a uint8");
  static_assert(sizeof(LaunchArgs<R>) <= kMaxKernelArgBytes,
                "a launch's metadata must fit the kernel-parameter space");
  static_assert(LaunchArgs8<R>::kSlots >= 1 && LaunchArgs8<R>::kSlots <= 256,
                "chunk_slot is a uint8");
  static_assert(sizeof(LaunchArgs8<R>) <= kMaxKernelArgBytes,
                "a launch's metadata must fit the kernel-parameter space");
  static_assert(sizeof(AdvanceArgs<R>) <= kMaxKernelArgBytes,
                "an advance launch's tensors must fit the kernel-parameter space");
  return true;
}

}  // namespace fusedopt::mta
