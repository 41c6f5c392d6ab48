// The CUDA Adam kernels' memory traversal, written as host+device code that
// takes the block and thread indices as arguments: the kernels
// (csrc/cuda/adam_cuda.cu) call it with blockIdx.x / threadIdx.x, and the CPU
// emulation (fusedopt::_cuda_emulate_adam_step_ in csrc/ops.cpp) calls it in a
// loop over a small grid, so the index math and the vector/scalar path choice
// run on the CPU in tests. Threads never communicate (no shared memory, no
// barriers), so running them one after another is the same computation.
//
// The math is adam_update() from fusedopt/adam_rule.h; this file only moves
// bytes. Per element, fp32 params: read p, g, m, v (16 B), write p, m, v (12 B)
// = 28 B; amsgrad +8 B (read and write v_max); a GradScaler's unscaled grad
// stored back +4 B (+2 B for a 16-bit grad); bf16/fp16 params and grads move
// 2 B instead of 4 for each of p read, p written and g read: 22 B.
//
// `Observer` sees every access (its address and width) and every updated
// element; the kernels pass one that does nothing, the emulation one that
// checks alignment and counts touches.
#pragma once

#include <cstdint>

#include "fusedopt/adam_cuda_args.h"
#include "fusedopt/adam_rule.h"
#include "fusedopt/storage_types.h"

namespace fusedopt::cuda {

// One chunk's buffers, offset to the chunk's first element.
template <typename P>
struct ChunkBuffers {
  P* param;
  P* grad;
  float* exp_avg;
  float* exp_avg_sq;
  float* max_exp_avg_sq;  // null without amsgrad
};

FUSEDOPT_HD bool is_aligned16(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

// Elements per vector access: up to 16 bytes of T, at most the group size.
template <typename T, int N>
constexpr int kPackSize = 16 / static_cast<int>(sizeof(T)) < N ? 16 / static_cast<int>(sizeof(T)) : N;

// Loads elements [i, i + N) of `src` into fp32 registers: as packs of up to
// 16 bytes when kVector (the caller checked the alignment), else one element
// at a time.
template <bool kVector, int N, typename T, typename Observer>
FUSEDOPT_HD void load_floats(const T* src, int32_t i, float (&dst)[N], Observer& observer) {
  if constexpr (kVector) {
    constexpr int kPack = kPackSize<T, N>;
    static_assert(N % kPack == 0, "a vector group is whole packs of every buffer");
    const Pack<T, kPack>* packs = reinterpret_cast<const Pack<T, kPack>*>(src + i);
    for (int a = 0; a < N / kPack; ++a) {
      observer.access(packs + a, static_cast<int>(sizeof(Pack<T, kPack>)), true);
      const Pack<T, kPack> pack = packs[a];
      for (int j = 0; j < kPack; ++j) dst[a * kPack + j] = to_float(pack.v[j]);
    }
  } else {
    for (int j = 0; j < N; ++j) {
      observer.access(src + i + j, static_cast<int>(sizeof(T)), false);
      dst[j] = to_float(src[i + j]);
    }
  }
}

// Stores fp32 registers into elements [i, i + N) of `dst`, rounding once.
template <bool kVector, int N, typename T, typename Observer>
FUSEDOPT_HD void store_floats(T* dst, int32_t i, const float (&src)[N], Observer& observer) {
  if constexpr (kVector) {
    constexpr int kPack = kPackSize<T, N>;
    Pack<T, kPack>* packs = reinterpret_cast<Pack<T, kPack>*>(dst + i);
    for (int a = 0; a < N / kPack; ++a) {
      Pack<T, kPack> pack;
      for (int j = 0; j < kPack; ++j) from_float(src[a * kPack + j], pack.v[j]);
      observer.access(packs + a, static_cast<int>(sizeof(Pack<T, kPack>)), true);
      packs[a] = pack;
    }
  } else {
    for (int j = 0; j < N; ++j) {
      observer.access(dst + i + j, static_cast<int>(sizeof(T)), false);
      from_float(src[j], dst[i + j]);
    }
  }
}

// Elements [i, i + N) of one chunk: load, unscale, update, store.
template <bool kVector, int N, typename P, typename Observer>
FUSEDOPT_HD void adam_group(const ChunkBuffers<P>& b, int32_t i, const AdamHyper& hyper,
                            const AdamTensorScalars& scalars, const float* grad_scale,
                            Observer& observer) {
  float p[N], g[N], m[N], v[N], v_max[N];
  load_floats<kVector>(b.param, i, p, observer);
  load_floats<kVector>(b.grad, i, g, observer);
  load_floats<kVector>(b.exp_avg, i, m, observer);
  load_floats<kVector>(b.exp_avg_sq, i, v, observer);
  if (hyper.amsgrad) {
    load_floats<kVector>(b.max_exp_avg_sq, i, v_max, observer);
  } else {
    for (int j = 0; j < N; ++j) v_max[j] = 0.0f;
  }
  if (grad_scale != nullptr) {
    const float scale = *grad_scale;
    for (int j = 0; j < N; ++j) g[j] = g[j] / scale;
    store_floats<kVector>(b.grad, i, g, observer);
  }
  for (int j = 0; j < N; ++j) adam_update(p[j], g[j], m[j], v[j], v_max[j], hyper, scalars);
  store_floats<kVector>(b.param, i, p, observer);
  store_floats<kVector>(b.exp_avg, i, m, observer);
  store_floats<kVector>(b.exp_avg_sq, i, v, observer);
  if (hyper.amsgrad) store_floats<kVector>(b.max_exp_avg_sq, i, v_max, observer);
}

// A tensor's scalars from the lr and step count in device memory (capturable
// mode, a tensor lr): no host sync. Every thread computes them (two double
// pows per thread and chunk, next to 32 iterations of 16-byte loads).
FUSEDOPT_HD AdamTensorScalars scalars_in_kernel(const AdamLaunchArgs& args, const AdamSlot& slot) {
  const double lr = args.lr != nullptr ? static_cast<double>(*args.lr) : args.lr_value;
  // The count after this step's increment, which a later launch stores
  // (StepIncrementArgs): every block of the tensor must read the old count.
  const float step = slot.step != nullptr ? *slot.step + 1.0f : slot.host_step;
  return adam_tensor_scalars(args.config, lr, static_cast<double>(step));
}

// Thread `thread` of block `block` (of `n_threads`) of one launch of the Adam kernel.
template <typename P, typename Observer>
FUSEDOPT_HD void adam_thread(const AdamLaunchArgs& args, int32_t block, int32_t thread,
                             int32_t n_threads, Observer& observer) {
  // GradScaler found an inf or NaN: nothing is written, grads included, as in
  // torch's fused Adam.
  if (args.found_inf != nullptr && *args.found_inf != 0.0f) return;
  const int32_t slot_index = args.block_slot[block];
  const AdamSlot& slot = args.slots[slot_index];
  const int64_t chunk_start = static_cast<int64_t>(args.block_chunk[block]) * kChunkSize;
  const int64_t left = slot.numel - chunk_start;
  // Elements of this chunk: at most kChunkSize, so 32-bit from here on.
  const int32_t n = static_cast<int32_t>(left < kChunkSize ? left : kChunkSize);
  const AdamTensorScalars scalars =
      args.scalars_on_device ? scalars_in_kernel(args, slot) : slot.scalars;
  const ChunkBuffers<P> b{static_cast<P*>(slot.param) + chunk_start,
                          static_cast<P*>(slot.grad) + chunk_start,
                          slot.exp_avg + chunk_start, slot.exp_avg_sq + chunk_start,
                          args.hyper.amsgrad ? slot.max_exp_avg_sq + chunk_start : nullptr};
  // The vector path needs every buffer 16-byte aligned. A chunk starts a
  // multiple of 64K elements into its tensor, so this is the alignment of the
  // tensors' own data pointers; a view at an odd offset takes the scalar path.
  const bool aligned = is_aligned16(b.param) && is_aligned16(b.grad) &&
                       is_aligned16(b.exp_avg) && is_aligned16(b.exp_avg_sq) &&
                       (b.max_exp_avg_sq == nullptr || is_aligned16(b.max_exp_avg_sq));
  // Elements per vector group: one 16-byte pack of each fp32 state; 8 bytes
  // of a bf16/fp16 param or grad. (Groups of 8 gave 16-bit params 16-byte
  // packs too, but took 77-79 registers on sm_100/sm_120, and spilled when
  // capped at 64: see kMinBlocksPerSm in csrc/cuda/adam_cuda.cu.)
  constexpr int32_t kGroup = 4;
  const int32_t vector_end = aligned ? n - n % kGroup : 0;
  for (int32_t i = thread * kGroup; i < vector_end; i += n_threads * kGroup) {
    adam_group<true, kGroup>(b, i, args.hyper, scalars, args.grad_scale, observer);
    observer.updated(slot_index, chunk_start + i, kGroup);
  }
  for (int32_t i = vector_end + thread; i < n; i += n_threads) {
    adam_group<false, 1>(b, i, args.hyper, scalars, args.grad_scale, observer);
    observer.updated(slot_index, chunk_start + i, 1);
  }
}

// Thread `thread` of the step-increment launch.
FUSEDOPT_HD void increment_step_thread(const StepIncrementArgs& args, int32_t thread) {
  if (thread >= args.n_steps) return;
  if (args.found_inf != nullptr && *args.found_inf != 0.0f) return;
  *args.steps[thread] += 1.0f;
}

}  // namespace fusedopt::cuda
