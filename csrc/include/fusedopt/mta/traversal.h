// The CUDA multi-tensor traversal, for any rule (Note [the rule interface] in
// core/rule.h), written as host+device code that takes the block and thread
// indices as arguments: the kernels (csrc/cuda/kernels.cu) call it with
// blockIdx.x / threadIdx.x, and the CPU emulation (csrc/testing/) calls it in
// a loop over a small grid, so the index math and the vector/scalar path
// choice run on the CPU in tests. Threads never communicate (no shared memory,
// no barriers), so running them one after another is the same computation.
//
// The math is R::update; this file only moves bytes. Per element: read p, g
// and each used state, write p and each used state; a GradScaler's unscaled
// grad is stored back too. Bytes: 4 per fp32 access, 2 per bf16/fp16 p or g.
//
// `Observer` sees every access (its address and width) and every updated
// element; the kernels pass one that does nothing, the emulation one that
// checks alignment and counts touches.
#pragma once

#include <cstdint>

#include "fusedopt/core/rule.h"
#include "fusedopt/core/storage.h"
#include "fusedopt/mta/args.h"

namespace fusedopt::mta {

FUSEDOPT_HD bool is_aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Elements per vector access: up to 16 bytes of T, at most the group size.
template <typename T, int N>
constexpr int kPackSize = 16 / static_cast<int>(sizeof(T)) < N ? 16 / static_cast<int>(sizeof(T)) : N;

// Every buffer is global memory: without saying so at each access (once where
// the pointer is made was not enough), nvcc 13 for sm_80/sm_90 left some
// streams on generic LD/ST instead of LDG/STG (seen in the SASS: Adam's third
// state, NAdam's second, Adadelta's first, RAdam's and Adamax's second);
// sm_100/sm_120 were fine.
FUSEDOPT_HD void assume_global(const void* p) {
#if defined(__CUDA_ARCH__)
  __builtin_assume(__isGlobal(p));
#else
  (void)p;
#endif
}

// Loads elements [i, i + N) of `src` into fp32 registers: as packs of up to
// 16 bytes when kVector (the caller checked the alignment), else one element
// at a time.
template <bool kVector, int N, typename T, typename Observer>
FUSEDOPT_HD void load_floats(const T* src, int32_t i, float (&dst)[N], Observer& observer) {
  if constexpr (kVector) {
    constexpr int kPack = kPackSize<T, N>;
    static_assert(N % kPack == 0, "a vector group is whole packs of every buffer");
    const Pack<T, kPack>* packs = reinterpret_cast<const Pack<T, kPack>*>(src + i);
    assume_global(packs);
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
    assume_global(packs);
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

// One chunk's buffers, offset to the chunk's first element.
template <class R, typename P>
struct ChunkBuffers {
  P* param;
  P* grad;
  float* state[R::kStates > 0 ? R::kStates : 1];  // null where unused
};

// Elements [i, i + N) of one chunk: load, unscale, update, store.
template <class R, bool kVector, int N, typename P, typename Observer>
FUSEDOPT_HD void element_group(const ChunkBuffers<R, P>& b, int32_t i, const LaunchHeader<R>& h,
                               const typename R::PerTensor& scalars, Observer& observer) {
  const RuntimeStates used{h.state_mask};
  float p[N], g[N];
  float s[N][R::kStates > 0 ? R::kStates : 1];
  load_floats<kVector>(b.param, i, p, observer);
  load_floats<kVector>(b.grad, i, g, observer);
  for (int k = 0; k < R::kStates; ++k) {
    float column[N] = {};
    if (used.has(k)) load_floats<kVector>(b.state[k], i, column, observer);
    for (int j = 0; j < N; ++j) s[j][k] = column[j];
  }
  if (h.grad_scale != nullptr) {
    const float scale = *h.grad_scale;
    for (int j = 0; j < N; ++j) g[j] = g[j] / scale;
    store_floats<kVector>(b.grad, i, g, observer);
  }
  for (int j = 0; j < N; ++j) R::update(p[j], g[j], s[j], used, h.launch, scalars);
  store_floats<kVector>(b.param, i, p, observer);
  for (int k = 0; k < R::kStates; ++k) {
    if (!used.has(k)) continue;
    float column[N];
    for (int j = 0; j < N; ++j) column[j] = s[j][k];
    store_floats<kVector>(b.state[k], i, column, observer);
  }
}

// A tensor's scalars from the lr and step count in device memory (capturable
// mode, a tensor lr): no host sync. Every thread computes them once per chunk
// (a few double operations next to 32 iterations of 16-byte loads), before
// the element loops, which hold no FP64 (tests/test_cuda_sass.py). CUDA's
// double pow is not the host's: Note [bit-identical backends] in
// kernels/mta.py bounds the difference (one fp32 ulp, rarely).
template <class R>
FUSEDOPT_HD typename R::PerTensor scalars_in_kernel(const LaunchHeader<R>& h, const Slot<R>& slot) {
  const double lr = h.lr != nullptr ? static_cast<double>(*h.lr) : h.lr_value;
  // The count after this step's increment, which a later launch stores (Note
  // [step-count protocol]): every block of the tensor reads the old count.
  const float step = slot.step != nullptr ? *slot.step + 1.0f : slot.host_step;
  // Rules with scalar states never get here: the ops refuse device-side
  // scalars for them (Note [scalar states]).
  float no_scalar_states[kScalarStates<R> > 0 ? kScalarStates<R> : 1] = {};
  return per_tensor_of<R>(h.config, lr, static_cast<double>(step), no_scalar_states);
}

// Thread `thread` of block `block` (of `n_threads`) of one launch.
template <class R, typename P, typename Observer>
FUSEDOPT_HD void element_thread(const LaunchArgs<R>& args, int32_t block, int32_t thread,
                                int32_t n_threads, Observer& observer) {
  const LaunchHeader<R>& h = args.header;
  // GradScaler found an inf or NaN: nothing is written, grads included, as in
  // torch's fused optimizers.
  if (h.found_inf != nullptr && *h.found_inf != 0.0f) return;
  const int32_t slot_index = args.block_slot[block];
  const Slot<R>& slot = args.slots[slot_index];
  const int64_t chunk_start = static_cast<int64_t>(args.block_chunk[block]) * kChunkSize;
  const int64_t left = slot.numel - chunk_start;
  // Elements of this chunk: at most kChunkSize, so 32-bit from here on.
  const int32_t n = static_cast<int32_t>(left < kChunkSize ? left : kChunkSize);
  const typename R::PerTensor scalars = h.scalars_on_device ? scalars_in_kernel(h, slot) : slot.scalars;
  ChunkBuffers<R, P> b{static_cast<P*>(slot.param) + chunk_start,
                       static_cast<P*>(slot.grad) + chunk_start,
                       {}};
  // The vector path needs every buffer 16-byte aligned. A chunk starts a
  // multiple of 64K elements into its tensor, so this is the alignment of the
  // tensors' own data pointers; a view at an odd offset takes the scalar path.
  bool aligned = is_aligned16(b.param) && is_aligned16(b.grad);
  for (int k = 0; k < R::kStates; ++k) {
    b.state[k] = slot.state[k] != nullptr ? slot.state[k] + chunk_start : nullptr;
    aligned = aligned && (b.state[k] == nullptr || is_aligned16(b.state[k]));
  }
  // Elements per vector group: one 16-byte pack of each fp32 stream; 8 bytes
  // of a bf16/fp16 param or grad. (Groups of 8 gave 16-bit params 16-byte
  // packs too, but took 77-79 registers on sm_100/sm_120 for Adam, and spilled
  // when capped at 64: see kMinBlocksPerSm in csrc/cuda/kernels.cu.)
  constexpr int32_t kGroup = 4;
  const int32_t vector_end = aligned ? n - n % kGroup : 0;
  for (int32_t i = thread * kGroup; i < vector_end; i += n_threads * kGroup) {
    element_group<R, true, kGroup>(b, i, h, scalars, observer);
    observer.updated(slot_index, chunk_start + i, kGroup);
  }
  for (int32_t i = vector_end + thread; i < n; i += n_threads) {
    element_group<R, false, 1>(b, i, h, scalars, observer);
    observer.updated(slot_index, chunk_start + i, 1);
  }
}

// Thread `thread` of block `block` of the step-increment launch.
FUSEDOPT_HD void increment_step_thread(const StepIncrementArgs& args, int32_t block,
                                       int32_t thread) {
  const int32_t i = block * kBlockSize + thread;
  if (i >= args.n_steps) return;
  if (args.found_inf != nullptr && *args.found_inf != 0.0f) return;
  *args.steps[i] += 1.0f;
}

}  // namespace fusedopt::mta
