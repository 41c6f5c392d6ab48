// The kernel arguments of the CUDA Adam kernels: plain structs of raw pointers
// and numbers, shared by the kernels (csrc/cuda/adam_cuda.cu), the binding that
// fills them (csrc/ops.cpp) and the CPU emulation of the traversal.
#pragma once

#include <cstdint>

#include "fusedopt/adam_rule.h"

namespace fusedopt::cuda {

// Elements per block: 64K, as torch's and apex's multi-tensor apply. A block
// of 512 threads moves 28 B x 64K = 1.8 MB per fp32 chunk, so the per-block
// set-up (metadata reads, scalars) vanishes next to the element loop.
constexpr int64_t kChunkSize = 1 << 16;
// Threads per block: 512, as torch; with 4 fp32 elements per thread and
// iteration, a chunk is 32 iterations of the grid-stride loop.
constexpr int32_t kBlockSize = 512;
// Kernel arguments are limited to 4 KB on every driver and GPU this library
// targets (32 KB needs CUDA >= 12.1 AND a driver >= 530; we do not assume it).
constexpr int32_t kMaxKernelArgBytes = 4096;
// Slots and blocks per launch: chosen so that AdamLaunchArgs fills the 4 KB
// (static_assert below). 320 blocks is torch's and apex's value: 2.4 blocks
// per H100 SM, 20M elements (0.6 GB of fp32 AdamW traffic) per launch, so a
// ~5 us launch costs ~3% of a full launch's time.
constexpr int32_t kMaxSlots = 32;
constexpr int32_t kMaxBlocks = 320;
// Step counts one step-increment launch takes (one thread each): 500 pointers
// of 8 B and the header stay within the 4 KB argument limit.
constexpr int32_t kMaxStepsPerLaunch = 500;

// One tensor of a launch. Every buffer is dense with the param's strides, so
// element i of one is element i of the others.
struct AdamSlot {
  void* param;            // fp32, bf16 or fp16 (the launch's dtype)
  void* grad;             // the param's dtype; written back only when unscaling
  float* exp_avg;
  float* exp_avg_sq;
  float* max_exp_avg_sq;  // null without amsgrad
  const float* step;      // the step count in device memory, or null when the host owns it
  int64_t numel;          // 64-bit: tensors over 2^31 elements are real
  AdamTensorScalars scalars;  // computed on the host; read when !scalars_on_device
  float host_step;        // the host's count after this step, for a device lr with host steps
};

struct AdamLaunchArgs {
  AdamSlot slots[kMaxSlots];
  // Block b processes chunk block_chunk[b] of slots[block_slot[b]]
  // (fusedopt/launch_plan.h); uint8 because kMaxSlots <= 256.
  uint8_t block_slot[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
  AdamConfig config;  // for the scalars computed in the kernel
  AdamHyper hyper;
  // lr: read from device memory when non-null (capturable, a tensor lr), else lr_value.
  const float* lr;
  double lr_value;
  // GradScaler: grads are divided by *grad_scale and stored back; null without
  // a scaler. A nonzero *found_inf skips the whole step; null when the host
  // already checked it (host-owned step counts need that answer on the host).
  const float* grad_scale;
  const float* found_inf;
  // True when the kernel computes each tensor's AdamTensorScalars itself: the
  // step counts or lr live on the device, and reading them on the host would
  // sync (and break CUDA graph capture).
  bool scalars_on_device;
};
static_assert(kMaxSlots <= 256, "block_slot is a uint8");
static_assert(sizeof(AdamLaunchArgs) <= kMaxKernelArgBytes,
              "the Adam metadata must stay under the 4 KB kernel-argument limit");

// Step counts in device memory are incremented after all of a call's Adam
// launches have read them, by one more launch per kMaxStepsPerLaunch counts.
struct StepIncrementArgs {
  float* steps[kMaxStepsPerLaunch];
  const float* found_inf;  // nonzero: counts stay unchanged (GradScaler skipped the step)
  int32_t n_steps;
};
static_assert(kMaxStepsPerLaunch <= kBlockSize, "one thread per step count, in one block");
static_assert(sizeof(StepIncrementArgs) <= kMaxKernelArgBytes,
              "the step list must stay under the 4 KB kernel-argument limit");

}  // namespace fusedopt::cuda
