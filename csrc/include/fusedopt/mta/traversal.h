// The CUDA multi-tensor traversal, for any rule (Note [the rule interface] in
// core/rule.h), written as host+device code that takes the block and thread
// indices and the grid's size as arguments: the kernels (csrc/cuda/kernels.cu)
// call it with blockIdx.x / gridDim.x / threadIdx.x, and the CPU emulation
// (csrc/testing/) calls it in a loop over a small grid, so the index math, the
// grid's share-out of the chunks and the vector/scalar path choice run on the
// CPU in tests. Threads never communicate (no shared memory,
// no barriers), so running them one after another is the same computation,
// but for 8-bit blockwise states: Note [8-bit blocks on the GPU] below.
//
// The math is R::update; this file only moves bytes. Per element: read p, g
// and each used state, write p and each used state; a GradScaler's unscaled
// grad is stored back too. Bytes: 4 per fp32 access, 2 per bf16/fp16 p or g
// and per bf16 state, 1 per 8-bit code (+ 8 per state and block of kBlock8
// elements: its absmax read and written).
//
// `Observer` sees every access (its address and width) and every updated
// element; the kernels pass one that does nothing, the emulation one that
// checks alignment and counts touches.
#pragma once

#include <cstdint>
#include <type_traits>

#include "fusedopt/core/blockwise8.h"
#include "fusedopt/core/master.h"
#include "fusedopt/core/rule.h"
#include "fusedopt/core/storage.h"
#include "fusedopt/mta/args.h"

namespace fusedopt::mta {

FUSEDOPT_HD bool is_aligned16(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

// Elements per vector access: up to 16 bytes of T, at most the group size.
template <typename T, int N>
constexpr int kPackSize =
    16 / static_cast<int>(sizeof(T)) < N ? 16 / static_cast<int>(sizeof(T)) : N;

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

// Where the N elements of a group lie in its chunk. Contiguous: [first,
// first + N), moved as packs of up to 16 bytes (the caller checked the
// alignment of every buffer). Strided: first + r * stride for r < N, those
// below `end`, one element per access (tails, unaligned views).
template <int N>
struct Contiguous {
  int32_t first;
};

template <int N>
struct Strided {
  int32_t first, stride, end;
  FUSEDOPT_HD_MEMBER int32_t index(int r) const { return first + r * stride; }
  FUSEDOPT_HD_MEMBER bool has(int r) const { return index(r) < end; }
};

// Loads a group of `src` into fp32 registers.
template <int N, typename T, typename Observer>
FUSEDOPT_HD void load_floats(const T* src, const Contiguous<N>& at, float (&dst)[N],
                             Observer& observer) {
  constexpr int kPack = kPackSize<T, N>;
  static_assert(N % kPack == 0, "a vector group is whole packs of every buffer");
  const Pack<T, kPack>* packs = reinterpret_cast<const Pack<T, kPack>*>(src + at.first);
  assume_global(packs);
  for (int a = 0; a < N / kPack; ++a) {
    observer.access(packs + a, static_cast<int>(sizeof(Pack<T, kPack>)), true);
    const Pack<T, kPack> pack = packs[a];
    for (int j = 0; j < kPack; ++j) dst[a * kPack + j] = to_float(pack.v[j]);
  }
}

// The N loads are independent and all issued before the update needs any of
// them (torch's ILP loop in MultiTensorApply.cuh): N elements in flight per
// thread and stream, where one at a time left the scalar path at a quarter of
// the vector path's bytes in flight. In the SASS of all four archs, every
// kernel issues 4 x (2 + states) element loads before its first store (12 for
// SGD, 20 for Adam). Missing elements read as 0, and their results are never
// stored.
template <int N, typename T, typename Observer>
FUSEDOPT_HD void load_floats(const T* src, const Strided<N>& at, float (&dst)[N],
                             Observer& observer) {
  assume_global(src);
  for (int r = 0; r < N; ++r) {
    dst[r] = 0.0f;
    if (at.has(r)) {
      observer.access(src + at.index(r), static_cast<int>(sizeof(T)), false);
      dst[r] = to_float(src[at.index(r)]);
    }
  }
}

// Stores fp32 registers into a group of `dst`, rounding once.
template <int N, typename T, typename Observer>
FUSEDOPT_HD void store_floats(T* dst, const Contiguous<N>& at, const float (&src)[N],
                              Observer& observer) {
  constexpr int kPack = kPackSize<T, N>;
  Pack<T, kPack>* packs = reinterpret_cast<Pack<T, kPack>*>(dst + at.first);
  assume_global(packs);
  for (int a = 0; a < N / kPack; ++a) {
    Pack<T, kPack> pack;
    for (int j = 0; j < kPack; ++j) from_float(src[a * kPack + j], pack.v[j]);
    observer.access(packs + a, static_cast<int>(sizeof(Pack<T, kPack>)), true);
    packs[a] = pack;
  }
}

template <int N, typename T, typename Observer>
FUSEDOPT_HD void store_floats(T* dst, const Strided<N>& at, const float (&src)[N],
                              Observer& observer) {
  assume_global(dst);
  for (int r = 0; r < N; ++r) {
    if (!at.has(r)) continue;
    observer.access(dst + at.index(r), static_cast<int>(sizeof(T)), false);
    from_float(src[r], dst[at.index(r)]);
  }
}

// Stores values already in T (a master-weight store's rounded params) into a
// group of `dst`, as they are.
template <int N, typename T, typename Observer>
FUSEDOPT_HD void store_values(T* dst, const Contiguous<N>& at, const T (&src)[N],
                              Observer& observer) {
  constexpr int kPack = kPackSize<T, N>;
  Pack<T, kPack>* packs = reinterpret_cast<Pack<T, kPack>*>(dst + at.first);
  assume_global(packs);
  for (int a = 0; a < N / kPack; ++a) {
    Pack<T, kPack> pack;
    for (int j = 0; j < kPack; ++j) pack.v[j] = src[a * kPack + j];
    observer.access(packs + a, static_cast<int>(sizeof(Pack<T, kPack>)), true);
    packs[a] = pack;
  }
}

template <int N, typename T, typename Observer>
FUSEDOPT_HD void store_values(T* dst, const Strided<N>& at, const T (&src)[N],
                              Observer& observer) {
  assume_global(dst);
  for (int r = 0; r < N; ++r) {
    if (!at.has(r)) continue;
    observer.access(dst + at.index(r), static_cast<int>(sizeof(T)), false);
    dst[at.index(r)] = src[r];
  }
}

// Element r of a group: its index in the chunk.
template <int N>
FUSEDOPT_HD int32_t index_in_chunk(const Contiguous<N>& at, int r) {
  return at.first + r;
}
template <int N>
FUSEDOPT_HD int32_t index_in_chunk(const Strided<N>& at, int r) {
  return at.index(r);
}

// Tells the observer which elements of the chunk starting at `chunk_start` a
// group updated.
template <int N, typename Observer>
FUSEDOPT_HD void report_updated(Observer& observer, int32_t slot, int64_t chunk_start,
                                const Contiguous<N>& at) {
  observer.updated(slot, chunk_start + at.first, N);
}

template <int N, typename Observer>
FUSEDOPT_HD void report_updated(Observer& observer, int32_t slot, int64_t chunk_start,
                                const Strided<N>& at) {
  for (int r = 0; r < N; ++r) {
    if (at.has(r)) observer.updated(slot, chunk_start + at.index(r), 1);
  }
}

// One chunk's master-weight store (Note [master weights] in core/master.h),
// read once per chunk; the policy is the kernel's (chunk_thread).
template <typename P>
struct ChunkStore {
  float* master;  // kMasterWeights, offset to the chunk
  P* comp;        // kKahanSum, offset to the chunk
  // kStochasticRounding: Philox's key and counter words 2 and 3 (the count
  // after this step: Note [store arguments] in binding/checks.h), and the
  // chunk's first element's index in the param (words 0 and 1 add the
  // element's index in the chunk).
  uint64_t seed;
  uint32_t rounding_step, tag;
  int64_t first;
};

// One chunk's buffers, offset to the chunk's first element. S: the states'
// storage, fp32 or bf16 (Note [state dtypes] in core/storage.h), loaded into
// and stored from fp32 registers as P is.
template <class R, typename P, typename S>
struct ChunkBuffers {
  P* param;
  P* grad;
  S* state[R::kStates > 0 ? R::kStates : 1];  // null where unused
  ChunkStore<P> store;
};

// Stores a group's new p under policy kStore, as cpu/loop.cpp's run_stored
// does, bit for bit. Kahan's old p and compensation are loaded here, after
// the update, not kept from before it: the update already fills the 64
// registers of kMinBlocksPerSm (Adam's 16-bit kernels), and 8 more values
// live across it spilled (sm_90: 24-32 B of stack); the old p is read again
// from the param, which nothing has written yet.
template <StorePolicy kStore, int N, typename P, typename Group, typename Observer>
FUSEDOPT_HD void store_param(P* param, const ChunkStore<P>& st, const Group& at,
                             const float (&p)[N], Observer& observer) {
  if constexpr (kStore == StorePolicy::kKahanSum) {
    float old[N], comp[N];
    load_floats(param, at, old, observer);
    load_floats(st.comp, at, comp, observer);
    P rounded[N];
    for (int j = 0; j < N; ++j) {
      const float u = comp[j] + (p[j] - old[j]);
      from_float(old[j] + u, rounded[j]);
      comp[j] = u - (to_float(rounded[j]) - old[j]);
    }
    store_values(param, at, rounded, observer);
    store_floats(st.comp, at, comp, observer);
  } else if constexpr (kStore == StorePolicy::kStochasticRounding) {
    Bf16 rounded[N];
    for (int j = 0; j < N; ++j) {
      const uint64_t index = static_cast<uint64_t>(st.first + index_in_chunk(at, j));
      rounded[j] =
          stochastic_round_bf16(p[j], rounding_bits(st.seed, st.rounding_step, st.tag, index));
    }
    store_values(param, at, rounded, observer);
  } else {
    if constexpr (kStore == StorePolicy::kMasterWeights) store_floats(st.master, at, p, observer);
    store_floats(param, at, p, observer);
  }
}

// GradScaler's scale, read once per thread and launch: when `on`, grads are
// divided by `scale` and stored back.
struct Unscale {
  bool on;
  float scale;
};

// One group of N elements of a chunk: load, unscale, update, store (the
// param under policy kStore: Note [master weights] in core/master.h).
template <class R, int N, StorePolicy kStore, typename P, typename S, typename Group,
          typename Observer>
FUSEDOPT_HD void element_group(const ChunkBuffers<R, P, S>& b, const Group& at,
                               const LaunchHeader<R>& h, const Unscale& unscale,
                               const typename R::PerTensor& scalars, Observer& observer) {
  const RuntimeStates used{h.state_mask};
  float p[N], g[N];
  float s[N][R::kStates > 0 ? R::kStates : 1];
  if constexpr (kStore == StorePolicy::kMasterWeights) {
    load_floats(b.store.master, at, p, observer);
  } else {
    load_floats(b.param, at, p, observer);
  }
  load_floats(b.grad, at, g, observer);
  for (int k = 0; k < R::kStates; ++k) {
    float column[N] = {};
    if (used.has(k)) load_floats(b.state[k], at, column, observer);
    for (int j = 0; j < N; ++j) s[j][k] = column[j];
  }
  if (unscale.on) {
    for (int j = 0; j < N; ++j) g[j] = g[j] / unscale.scale;
    store_floats(b.grad, at, g, observer);
  }
  for (int j = 0; j < N; ++j) R::update(p[j], g[j], s[j], used, h.launch, scalars);
  if constexpr (kStore == StorePolicy::kNone) {
    store_param<kStore>(b.param, b.store, at, p, observer);
  }
  for (int k = 0; k < R::kStates; ++k) {
    if (!used.has(k)) continue;
    float column[N];
    for (int j = 0; j < N; ++j) column[j] = s[j][k];
    store_floats(b.state[k], at, column, observer);
  }
  // A policy's store comes after the states': its loads (Kahan) and Philox
  // rounds then hold no state in registers. Before them, Adam's, RAdam's and
  // RMSprop's 16-bit Kahan and stochastic-rounding kernels spilled 8-12 B on
  // sm_90.
  if constexpr (kStore != StorePolicy::kNone) {
    store_param<kStore>(b.param, b.store, at, p, observer);
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
  // Note [scalar states]: the values before this step, in device memory
  // beside the count (prepare_cuda refuses a device lr with host counts for
  // such a rule). per_tensor_of writes the values after it into this copy,
  // which is dropped: the advance launch stores them (Note [the advance
  // launch] in mta/args.h), so every block reads the same old values.
  constexpr int kS = kScalarStates<R>;
  float values[kS > 0 ? kS : 1] = {};
  if constexpr (kS > 0) {
    for (int j = 0; j < kS; ++j) values[j] = *slot.scalar_state[j];
  }
  return per_tensor_of<R>(h.config, lr, static_cast<double>(step), values);
}

// A chunk's store under policy kStore (ChunkStore), from its slot.
template <class R, typename P, StorePolicy kStore>
FUSEDOPT_HD ChunkStore<P> chunk_store(const LaunchHeader<R>& h, const Slot<R>& slot,
                                      int64_t chunk_start) {
  ChunkStore<P> st{nullptr, nullptr, h.rounding_seed, 0, slot.tag, chunk_start};
  if constexpr (kStore == StorePolicy::kMasterWeights) {
    st.master = static_cast<float*>(slot.store) + chunk_start;
  } else if constexpr (kStore == StorePolicy::kKahanSum) {
    st.comp = static_cast<P*>(slot.store) + chunk_start;
  } else if constexpr (kStore == StorePolicy::kStochasticRounding) {
    // Note [store arguments] (binding/checks.h): the count after this step;
    // every chunk reads the old count, which a launch after the element
    // launches advances.
    st.rounding_step = static_cast<uint32_t>(*static_cast<const float*>(slot.store)) + 1u;
  }
  return st;
}

// Elements per vector group: one 16-byte pack of each fp32 stream; 8 bytes of
// a bf16/fp16 param or grad. (Groups of 8 gave 16-bit params 16-byte packs
// too, but took 77-79 registers on sm_100/sm_120 for Adam, and spilled when
// capped at 64: see kMinBlocksPerSm in mta/args.h.)
constexpr int32_t kGroup = 4;
// Elements per scalar group, the loads each thread keeps in flight per stream
// on the scalar path: 4, torch's kILP, as many as a vector group holds, so the
// scalar path fits the same registers.
constexpr int32_t kIlp = 4;

// Elements per scalar group of a policy kernel: its scalar path (per-element
// addresses and bounds, plus Kahan's two loads or Philox's rounds after the
// update) spilled 4-12 B at 4 in Adam's, RAdam's and RMSprop's 16-bit kernels
// on sm_90 (at the 64 registers of kMinBlocksPerSm); at 2, none. The scalar
// path runs only in tails and unaligned views. (RMSprop's master and Kahan
// kernels still spill 8-16 B on sm_100, in the vector loop: KNOWN_SPILLS in
// tests/test_cuda_sass.py.)
constexpr int32_t kStoreIlp = 2;

// Thread `thread` (of `n_threads`) of a block on table entry `entry` of a
// launch whose bf16/fp16 params are stored under policy kStore (kNone for
// fp32 params). One kernel per policy: with the four stores' loops in one
// kernel, ptxas spilled 8-20 B in Adam's and RMSprop's 16-bit kernels on
// sm_90 (at the 64 registers of kMinBlocksPerSm), with any one of them none;
// and the policy-free kernels stay as they were.
template <class R, typename P, typename S, StorePolicy kStore, typename Observer>
FUSEDOPT_HD void chunk_thread(const LaunchArgs<R>& args, int32_t entry, int32_t thread,
                              int32_t n_threads, const Unscale& unscale, Observer& observer) {
  const LaunchHeader<R>& h = args.header;
  const int32_t slot_index = args.chunk_slot[entry];
  const Slot<R>& slot = args.slots[slot_index];
  const int64_t chunk_start = static_cast<int64_t>(args.chunk_index[entry]) * kChunkSize;
  const int64_t left = slot.numel - chunk_start;
  // Elements of this chunk: at most kChunkSize, so 32-bit from here on.
  const int32_t n = static_cast<int32_t>(left < kChunkSize ? left : kChunkSize);
  const typename R::PerTensor scalars =
      h.scalars_on_device ? scalars_in_kernel(h, slot) : slot.scalars;
  ChunkBuffers<R, P, S> b{static_cast<P*>(slot.param) + chunk_start,
                          static_cast<P*>(slot.grad) + chunk_start,
                          {},
                          chunk_store<R, P, kStore>(h, slot, chunk_start)};
  // The vector path needs every buffer 16-byte aligned. A chunk starts a
  // multiple of 64K elements into its tensor, so this is the alignment of the
  // tensors' own data pointers; a view at an odd offset takes the scalar path.
  bool aligned = is_aligned16(b.param) && is_aligned16(b.grad);
  for (int k = 0; k < R::kStates; ++k) {
    b.state[k] = slot.state[k] != nullptr ? static_cast<S*>(slot.state[k]) + chunk_start : nullptr;
    aligned = aligned && (b.state[k] == nullptr || is_aligned16(b.state[k]));
  }
  aligned = aligned && (b.store.master == nullptr || is_aligned16(b.store.master)) &&
            (b.store.comp == nullptr || is_aligned16(b.store.comp));
  const int32_t vector_end = aligned ? n - n % kGroup : 0;
  for (int32_t i = thread * kGroup; i < vector_end; i += n_threads * kGroup) {
    const Contiguous<kGroup> at{i};
    element_group<R, kGroup, kStore>(b, at, h, unscale, scalars, observer);
    report_updated(observer, slot_index, chunk_start, at);
  }
  constexpr int32_t kTail = kStore == StorePolicy::kNone ? kIlp : kStoreIlp;
  for (int32_t i = vector_end + thread; i < n; i += n_threads * kTail) {
    const Strided<kTail> at{i, n_threads, n};
    element_group<R, kTail, kStore>(b, at, h, unscale, scalars, observer);
    report_updated(observer, slot_index, chunk_start, at);
  }
}

// What a launch's threads read once, for all of their chunks: GradScaler's
// tensors, and the chunks to step. An inf or NaN found: nothing is read or
// written, grads included, as in torch's fused optimizers. found_inf is folded
// into the loop bound, not an early `return`: in the SASS (nvcc 13,
// sm_80/sm_90/sm_100) the fold issues the found_inf and grad_scale loads back
// to back and waits once, where the `return` waited for found_inf before
// issuing the grad_scale load. Either way the first element loads wait for
// found_inf (a skipped step reads nothing), once per launch now rather than
// once per chunk.
struct LaunchGate {
  Unscale unscale;
  int32_t n_chunks;  // 0 when found_inf is set
};

template <class R>
FUSEDOPT_HD LaunchGate launch_gate(const LaunchHeader<R>& h) {
  const bool found_inf = h.found_inf != nullptr && *h.found_inf != 0.0f;
  const Unscale unscale{h.grad_scale != nullptr, h.grad_scale != nullptr ? *h.grad_scale : 1.0f};
  return {unscale, found_inf ? 0 : h.n_chunks};
}

// Thread `thread` (of `n_threads`) of block `block` (of `n_blocks`) of one
// launch: a persistent grid (grid_blocks in mta/launches.h) whose block b
// takes the table's entries b, b + n_blocks, ... With n_blocks = n_chunks it
// is one block per chunk.
template <class R, typename P, typename S, StorePolicy kStore, typename Observer>
FUSEDOPT_HD void element_thread(const LaunchArgs<R>& args, int32_t block, int32_t n_blocks,
                                int32_t thread, int32_t n_threads, Observer& observer) {
  const LaunchGate gate = launch_gate(args.header);
  for (int32_t entry = block; entry < gate.n_chunks; entry += n_blocks) {
    chunk_thread<R, P, S, kStore>(args, entry, thread, n_threads, gate.unscale, observer);
  }
}

// Note [8-bit blocks on the GPU]: with 8-bit blockwise states (core/
// blockwise8.h) a block's codes can be written only once its new absmax is
// known, the max over all kBlock8 of its stepped elements. One warp steps one
// block: each of its 32 lanes holds kLane8 = 8 consecutive elements in
// registers (one 16-byte pack of a 16-bit param or grad, two of an fp32 one, an
// 8-byte pack of codes), steps them, and the warp's max of their magnitude bits
// (core/blockwise8.h: NaN-propagating, the CPU's integer max) comes from
// __reduce_max_sync; then each lane encodes and stores its 8 codes, lane 0 the
// absmax. Warps never wait for each other: a warp's lanes meet only in that max
// (the kernel's one barrier is before the first chunk, once its code tables are
// in shared memory). Its launches take Slot8s (mta/args.h) and run one block
// per SM (kMinBlocksPerSm8). The traversal is written for kLanes consecutive
// lanes of one warp per call: a kernel thread is kLanes = 1 (the max over its
// lanes is its own, then the warp's); the CPU emulation runs a whole warp per
// call, kLanes = 32, where the max over its lanes is the warp's. A chunk
// (kChunkSize, a multiple of kBlock8) holds whole blocks, so a block never
// straddles chunks, nor a warp's block two chunks.
constexpr int32_t kWarpSize = 32;
constexpr int32_t kLane8 = kBlock8 / kWarpSize;
static_assert(kLane8 * kWarpSize == kBlock8, "a warp's lanes hold a block exactly");
static_assert(kChunkSize % kBlock8 == 0, "8-bit state blocks never straddle chunks");
static_assert(kBlockSize % kWarpSize == 0, "a block of threads is whole warps");

// Unrolls a loop over a rule's states in the kernels: without it nvcc 13 kept
// the 8-bit path's loops over states rolled, and its per-state arrays (the
// chunk's stream addresses, the lanes' stepped values) in local memory, a
// 176 B stack frame for Adam on sm_90 even with 128 registers free.
#if defined(__CUDA_ARCH__)
#define FUSEDOPT_UNROLL _Pragma("unroll")
#else
#define FUSEDOPT_UNROLL
#endif

// The four code tables (core/blockwise8.h). The kernels pass copies in shared
// memory: a warp's 32 lanes index them by data, and __constant__ memory
// serializes distinct addresses within a warp (CUDA C++ Programming Guide,
// "Constant Memory"); the emulation passes the host tables.
struct Codec8Tables {
  const float* signed_map;
  const float* unsigned_map;
  const float* signed_midpoints;
  const float* unsigned_midpoints;
};

// One chunk's buffers with 8-bit states, offset to the chunk's first element.
template <class R, typename P>
struct ChunkBuffers8 {
  P* param;
  P* grad;
  uint8_t* codes[R::kStates > 0 ? R::kStates : 1];  // null where unused
  float* absmax[R::kStates > 0 ? R::kStates : 1];   // the chunk's first block's
};

// A lane's codes: one 8-byte pack on the vector path, else one byte at a time.
template <int N, typename Observer>
FUSEDOPT_HD void load_codes(const uint8_t* src, const Contiguous<N>& at, uint8_t (&dst)[N],
                            Observer& observer) {
  const Pack<uint8_t, N>* pack = reinterpret_cast<const Pack<uint8_t, N>*>(src + at.first);
  assume_global(pack);
  observer.access(pack, static_cast<int>(sizeof(Pack<uint8_t, N>)), true);
  const Pack<uint8_t, N> codes = *pack;
  for (int j = 0; j < N; ++j) dst[j] = codes.v[j];
}

template <int N, typename Observer>
FUSEDOPT_HD void load_codes(const uint8_t* src, const Strided<N>& at, uint8_t (&dst)[N],
                            Observer& observer) {
  assume_global(src);
  for (int r = 0; r < N; ++r) {
    dst[r] = 0;
    if (at.has(r)) {
      observer.access(src + at.index(r), 1, false);
      dst[r] = src[at.index(r)];
    }
  }
}

template <int N, typename Observer>
FUSEDOPT_HD void store_codes(uint8_t* dst, const Contiguous<N>& at, const uint8_t (&src)[N],
                             Observer& observer) {
  Pack<uint8_t, N>* pack = reinterpret_cast<Pack<uint8_t, N>*>(dst + at.first);
  assume_global(pack);
  Pack<uint8_t, N> codes;
  for (int j = 0; j < N; ++j) codes.v[j] = src[j];
  observer.access(pack, static_cast<int>(sizeof(Pack<uint8_t, N>)), true);
  *pack = codes;
}

template <int N, typename Observer>
FUSEDOPT_HD void store_codes(uint8_t* dst, const Strided<N>& at, const uint8_t (&src)[N],
                             Observer& observer) {
  assume_global(dst);
  for (int r = 0; r < N; ++r) {
    if (!at.has(r)) continue;
    observer.access(dst + at.index(r), 1, false);
    dst[at.index(r)] = src[r];
  }
}

// The states of one lane's kLane8 elements, in fp32 registers.
template <class R>
using LaneStates8 = float[kLane8][R::kStates > 0 ? R::kStates : 1];

// One lane's kLane8 elements of block `block8` of the chunk, `count` of them
// inside it: decode, unscale, update, store p (and the unscaled g); s keeps
// the stepped states for the encoding, bits the largest magnitude of each
// state's `count` elements.
template <class R, typename P, typename Group, typename Observer>
FUSEDOPT_HD void lane8_step(const ChunkBuffers8<R, P>& b, const Group& at, int32_t count,
                            int32_t block8, const LaunchHeader<R>& h, const Codec8Tables& tables,
                            const Unscale& unscale, const typename R::PerTensor& scalars,
                            LaneStates8<R>& s, uint32_t (&bits)[R::kStates > 0 ? R::kStates : 1],
                            Observer& observer) {
  const RuntimeStates used{h.state_mask};
  float p[kLane8], g[kLane8];
  load_floats(b.param, at, p, observer);
  load_floats(b.grad, at, g, observer);
  FUSEDOPT_UNROLL
  for (int k = 0; k < R::kStates; ++k) {
    bits[k] = 0;
    for (int j = 0; j < kLane8; ++j) s[j][k] = 0.0f;
    if (!used.has(k)) continue;
    uint8_t codes[kLane8];
    load_codes(b.codes[k], at, codes, observer);
    assume_global(b.absmax[k]);
    observer.access(b.absmax[k] + block8, static_cast<int>(sizeof(float)), false);
    const float scale = b.absmax[k][block8];
    const float* map = (h.signed_mask >> k) & 1u ? tables.signed_map : tables.unsigned_map;
    for (int j = 0; j < kLane8; ++j) s[j][k] = map[codes[j]] * scale;
  }
  if (unscale.on) {
    for (int j = 0; j < kLane8; ++j) g[j] = g[j] / unscale.scale;
    store_floats(b.grad, at, g, observer);
  }
  for (int j = 0; j < kLane8; ++j) R::update(p[j], g[j], s[j], used, h.launch, scalars);
  store_floats(b.param, at, p, observer);
  FUSEDOPT_UNROLL
  for (int k = 0; k < R::kStates; ++k) {
    if (!used.has(k)) continue;
    for (int j = 0; j < kLane8; ++j) {
      const uint32_t magnitude = magnitude_bits(s[j][k]);
      bits[k] = j < count && magnitude > bits[k] ? magnitude : bits[k];
    }
  }
}

// One lane's codes of its kLane8 stepped elements, given the block's absmax.
template <class R, typename P, typename Group, typename Observer>
FUSEDOPT_HD void lane8_encode(const ChunkBuffers8<R, P>& b, const Group& at,
                              const LaunchHeader<R>& h, const Codec8Tables& tables,
                              const LaneStates8<R>& s,
                              const float (&absmax)[R::kStates > 0 ? R::kStates : 1],
                              Observer& observer) {
  const RuntimeStates used{h.state_mask};
  FUSEDOPT_UNROLL
  for (int k = 0; k < R::kStates; ++k) {
    if (!used.has(k)) continue;
    const float divisor = encode_divisor(absmax[k]);
    uint8_t codes[kLane8];
    if ((h.signed_mask >> k) & 1u) {
      for (int j = 0; j < kLane8; ++j) {
        codes[j] = static_cast<uint8_t>(
            encode_code8_fast<true>(s[j][k] / divisor, tables.signed_midpoints));
      }
    } else {
      for (int j = 0; j < kLane8; ++j) {
        codes[j] = static_cast<uint8_t>(
            encode_code8_fast<false>(s[j][k] / divisor, tables.unsigned_midpoints));
      }
    }
    store_codes(b.codes[k], at, codes, observer);
  }
}

// A block's absmax per state from its lanes' magnitude bits: the max over
// this call's kLanes lanes, then (in a kernel, kLanes = 1) over the warp's.
template <int kLanes, int kS>
FUSEDOPT_HD void block_absmax(const uint32_t (&bits)[kLanes][kS], float (&absmax)[kS]) {
  FUSEDOPT_UNROLL
  for (int k = 0; k < kS; ++k) {
    uint32_t most = 0;
    for (int l = 0; l < kLanes; ++l) most = bits[l][k] > most ? bits[l][k] : most;
#if defined(__CUDA_ARCH__)
    most = __reduce_max_sync(0xFFFFFFFFu, most);
#endif
    absmax[k] = absmax_of_bits(most);
  }
}

// Lanes [thread, thread + kLanes) of one warp (of `n_threads` threads, whole
// warps) on table entry `entry`: Note [8-bit blocks on the GPU]. The warp
// steps blocks warp, warp + n_warps, ... of the chunk; every lane of a warp
// runs the same blocks, so all 32 reach each warp max.
template <class R, typename P, int kLanes, typename Observer>
FUSEDOPT_HD void chunk_lanes8(const LaunchArgs8<R>& args, int32_t entry, int32_t thread,
                              int32_t n_threads, const Unscale& unscale, const Codec8Tables& tables,
                              Observer& observer) {
  constexpr int kS = R::kStates > 0 ? R::kStates : 1;
  const LaunchHeader<R>& h = args.header;
  const int32_t slot_index = args.chunk_slot[entry];
  const Slot8<R>& slot = args.slots[slot_index];
  const int64_t chunk_start = static_cast<int64_t>(args.chunk_index[entry]) * kChunkSize;
  const int64_t left = slot.numel - chunk_start;
  const int32_t n = static_cast<int32_t>(left < kChunkSize ? left : kChunkSize);
  const typename R::PerTensor scalars =
      h.scalars_on_device ? scalars_in_kernel<R>(h, slot) : slot.scalars;
  ChunkBuffers8<R, P> b{
      static_cast<P*>(slot.param) + chunk_start, static_cast<P*>(slot.grad) + chunk_start, {}, {}};
  // As chunk_thread: the vector path needs every buffer 16-byte aligned (a
  // lane's 8 codes are an 8-byte pack; 16 keeps one rule for all streams).
  bool aligned = is_aligned16(b.param) && is_aligned16(b.grad);
  FUSEDOPT_UNROLL
  for (int k = 0; k < R::kStates; ++k) {
    if (slot.state[k] == nullptr) continue;
    b.codes[k] = static_cast<uint8_t*>(slot.state[k]) + chunk_start;
    b.absmax[k] = slot.absmax[k] + chunk_start / kBlock8;
    aligned = aligned && is_aligned16(b.codes[k]);
  }
  const int32_t warp = thread / kWarpSize;
  const int32_t n_warps = n_threads / kWarpSize;
  const int32_t first_lane = thread % kWarpSize;
  const int32_t n_blocks8 = (n + kBlock8 - 1) / kBlock8;
  for (int32_t block8 = warp; block8 < n_blocks8; block8 += n_warps) {
    float s[kLanes][kLane8][kS];
    uint32_t bits[kLanes][kS];
    for (int l = 0; l < kLanes; ++l) {
      const int32_t first = block8 * kBlock8 + (first_lane + l) * kLane8;
      const int32_t rest = n - first;
      const int32_t count = rest < 0 ? 0 : (rest < kLane8 ? rest : kLane8);
      if (aligned && count == kLane8) {
        lane8_step(b, Contiguous<kLane8>{first}, count, block8, h, tables, unscale, scalars, s[l],
                   bits[l], observer);
      } else {
        lane8_step(b, Strided<kLane8>{first, 1, n}, count, block8, h, tables, unscale, scalars,
                   s[l], bits[l], observer);
      }
    }
    float absmax[kS];
    block_absmax<kLanes, kS>(bits, absmax);
    for (int l = 0; l < kLanes; ++l) {
      const int32_t first = block8 * kBlock8 + (first_lane + l) * kLane8;
      if (aligned && first + kLane8 <= n) {
        const Contiguous<kLane8> at{first};
        lane8_encode(b, at, h, tables, s[l], absmax, observer);
        report_updated(observer, slot_index, chunk_start, at);
      } else {
        const Strided<kLane8> at{first, 1, n};
        lane8_encode(b, at, h, tables, s[l], absmax, observer);
        report_updated(observer, slot_index, chunk_start, at);
      }
      if (first_lane + l != 0) continue;
      // Every lane read the old absmax before the warp max.
      const RuntimeStates used{h.state_mask};
      FUSEDOPT_UNROLL
      for (int k = 0; k < R::kStates; ++k) {
        if (!used.has(k)) continue;
        observer.access(b.absmax[k] + block8, static_cast<int>(sizeof(float)), false);
        b.absmax[k][block8] = absmax[k];
      }
    }
  }
}

// element_thread with 8-bit blockwise states, for lanes [thread, thread +
// kLanes) of one warp of block `block`.
template <class R, typename P, int kLanes, typename Observer>
FUSEDOPT_HD void element_lanes8(const LaunchArgs8<R>& args, int32_t block, int32_t n_blocks,
                                int32_t thread, int32_t n_threads, const Codec8Tables& tables,
                                Observer& observer) {
  const LaunchGate gate = launch_gate(args.header);
  for (int32_t entry = block; entry < gate.n_chunks; entry += n_blocks) {
    chunk_lanes8<R, P, kLanes>(args, entry, thread, n_threads, gate.unscale, tables, observer);
  }
}

// Thread `thread` of block `block` of the advance launch of a rule without
// scalar states (Note [the advance launch] in mta/args.h): one count.
FUSEDOPT_HD void advance_thread(const StepIncrementArgs& args, int32_t block, int32_t thread) {
  const int32_t i = block * kBlockSize + thread;
  if (i >= args.n_steps) return;
  if (args.found_inf != nullptr && *args.found_inf != 0.0f) return;
  *args.steps[i] += 1.0f;
}

// The same for a rule with scalar states: one tensor's scalar states after
// this step, computed as the host path computes them (per_tensor_of at the
// count after this step, in double, rounded to float32 by the rule), then its count.
template <class R>
FUSEDOPT_HD void advance_thread(const ScalarAdvanceArgs<R>& args, int32_t block, int32_t thread) {
  const ScalarAdvanceHeader<R>& h = args.header;
  const int32_t i = block * kBlockSize + thread;
  if (i >= h.n_steps) return;
  if (h.found_inf != nullptr && *h.found_inf != 0.0f) return;
  const ScalarAdvanceEntry<R>& entry = args.entries[i];
  const double lr = h.lr != nullptr ? static_cast<double>(*h.lr) : h.lr_value;
  const float step = *entry.step + 1.0f;
  float values[kScalarStates<R>];
  for (int j = 0; j < kScalarStates<R>; ++j) values[j] = *entry.scalar_state[j];
  per_tensor_of<R>(h.config, lr, static_cast<double>(step), values);
  for (int j = 0; j < kScalarStates<R>; ++j) *entry.scalar_state[j] = values[j];
  *entry.step = step;
}

}  // namespace fusedopt::mta
