// The kernel arguments of the CUDA multi-tensor traversal: plain structs of
// raw pointers and numbers, derived from the rule (Note [the rule interface]
// in core/rule.h), shared by the kernels (csrc/cuda/kernels.cu), the binding
// that fills them (csrc/binding/cuda_work.h) and the CPU emulation of the
// traversal (csrc/testing/).
#pragma once

#include <cstddef>
#include <cstdint>

namespace fusedopt::mta {

// Elements per block: 64K, as torch's and apex's multi-tensor apply. A block
// of 512 threads moves 28 B x 64K = 1.8 MB per fp32 Adam chunk, so the
// per-block set-up (metadata reads, scalars) vanishes next to the element loop.
constexpr int64_t kChunkSize = 1 << 16;
// Threads per block: 512, as torch; with 4 fp32 elements per thread and
// iteration, a chunk is 32 iterations of the grid-stride loop.
constexpr int32_t kBlockSize = 512;

// The kernel-parameter space: 32,764 bytes since CUDA 12.1 on Volta and newer
// (CUDA C++ Programming Guide, "Function Parameters"; needs a driver >= 530,
// which every torch build that this one links requires). CMake defines
// FUSEDOPT_SMALL_KERNEL_ARGS for an older nvcc, which has the classic 4 KB.
#if defined(FUSEDOPT_SMALL_KERNEL_ARGS)
constexpr size_t kMaxKernelArgBytes = 4096;
#else
constexpr size_t kMaxKernelArgBytes = 32764;
#endif

// One tensor of a launch. Every buffer is dense with the param's strides, so
// element i of one is element i of the others.
template <class R>
struct Slot {
  void* param;             // fp32, bf16 or fp16 (the launch's dtype)
  void* grad;              // the param's dtype; written back only when unscaling
  float* state[R::kStates > 0 ? R::kStates : 1];  // null where the step uses no such state
  const float* step;       // the count in device memory, or null when the host owns it
  int64_t numel;           // 64-bit: tensors over 2^31 elements are real
  typename R::PerTensor scalars;  // computed on the host; read when !scalars_on_device
  float host_step;         // the host's count after this step, for a device lr with host counts
};

// The launch-wide fields of LaunchArgs, apart so that their size is known
// when the table sizes are derived from what is left.
template <class R>
struct LaunchHeader {
  typename R::Config config;  // for the scalars computed in the kernel
  typename R::Launch launch;
  uint32_t state_mask;        // the states this step loads and stores (core/rule.h)
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
};

// Slots and blocks per launch, derived from the rule's slot size and the
// kernel-parameter space, as ATen derives its depth table: slots take up to
// kSlotShare of the space (capped at 256, the uint8 block -> slot index), blocks
// (5 bytes each: a uint8 slot and an int32 chunk index) the rest. For Adam at
// 32 KB: 256 slots of 72 B and ~2,800 blocks, so 2000 x 4096 fp32 params take 8
// launches and GPT-2 small (148 tensors, 1,900 chunks) one.
constexpr size_t kSlotShareNumerator = 5, kSlotShareDenominator = 8;
constexpr size_t kMaxSlotsPerLaunch = 256;
constexpr size_t kBlockEntryBytes = sizeof(uint8_t) + sizeof(int32_t);

template <class R>
constexpr int32_t slots_per_launch() {
  const size_t share = (kMaxKernelArgBytes - sizeof(LaunchHeader<R>)) * kSlotShareNumerator /
                       kSlotShareDenominator / sizeof(Slot<R>);
  return static_cast<int32_t>(share < kMaxSlotsPerLaunch ? share : kMaxSlotsPerLaunch);
}

template <class R>
constexpr int32_t blocks_per_launch() {
  // 16 bytes of slack for the padding between the arrays.
  return static_cast<int32_t>((kMaxKernelArgBytes - sizeof(LaunchHeader<R>) -
                               slots_per_launch<R>() * sizeof(Slot<R>) - 16) /
                              kBlockEntryBytes);
}

template <class R>
struct LaunchArgs {
  static constexpr int32_t kSlots = slots_per_launch<R>();
  static constexpr int32_t kBlocks = blocks_per_launch<R>();
  LaunchHeader<R> header;
  Slot<R> slots[kSlots];
  // Block b processes chunk block_chunk[b] of slots[block_slot[b]] (core/launch_plan.h).
  int32_t block_chunk[kBlocks];
  uint8_t block_slot[kBlocks];
};

template <class R>
constexpr bool check_launch_args() {
  static_assert(LaunchArgs<R>::kSlots >= 1 && LaunchArgs<R>::kSlots <= 256,
                "block_slot is a uint8");
  static_assert(sizeof(LaunchArgs<R>) <= kMaxKernelArgBytes,
                "a launch's metadata must fit the kernel-parameter space");
  return true;
}

// Step counts in device memory are advanced after all of a call's element
// launches have read them (Note [step-count protocol], fusedopt/registry.py),
// by one more launch per kStepsPerLaunch counts, one thread each.
constexpr int32_t kStepsPerLaunch =
    static_cast<int32_t>((kMaxKernelArgBytes - 2 * sizeof(void*)) / sizeof(float*));

struct StepIncrementArgs {
  const float* found_inf;  // nonzero: counts stay unchanged (GradScaler skipped the step)
  int32_t n_steps;
  float* steps[kStepsPerLaunch];
};
static_assert(sizeof(StepIncrementArgs) <= kMaxKernelArgBytes,
              "the step list must fit the kernel-parameter space");

}  // namespace fusedopt::mta
