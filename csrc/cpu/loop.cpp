// The CPU element loop of every rule. CMake compiles this file once per
// instruction set (FUSEDOPT_ISA = avx512, avx2, baseline) with that ISA's
// flags, and dispatch.cpp picks one at run time: a wheel never assumes the
// build machine's CPU (-march=native is banned).
//
// The loop is written for the compiler's auto-vectorizer: unit stride, no
// aliasing between the streams, no loop-carried dependence, and the only
// switches that change memory traffic (param dtype, the state set, unscale)
// lifted into template parameters so the inner loop carries no data-dependent
// memory access. The one exception is the 8-bit block codec on AVX-512
// (encode_block8, decode_block8): intrinsics, because gcc turns its table
// lookups into scalar loads. Bytes per element: read p, g and each used
// state, write p and each used state (4 B per fp32 access, 2 B per bf16/fp16
// p, g or state, 1 B per 8-bit state code); +4 B (+2 B) when a GradScaler's
// unscaled grad is stored back. Adam fp32: 28 B; bf16 states: 20 B; 8-bit
// states: 18 B.
//
// Software prefetching (4 KB ahead, across tensor boundaries) was tried and
// measured for Adam: no change on 2000 x 16 KB tensors nor on one 32 MB
// tensor, so the loop leaves it to the hardware.
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "fusedopt/core/blockwise8.h"
#include "fusedopt/rules/registry.h"
#include "loop.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must name the instruction set this translation unit is built for"
#endif

namespace fusedopt::cpu::FUSEDOPT_ISA {
namespace {

// One chunk's elements, in a function of its own whose __restrict__
// parameters tell gcc that the streams never overlap, so the vector loop
// needs no run-time overlap check. gcc ignores __restrict__ on array elements
// and struct members, hence one parameter per state stream (up to
// kMaxStates, core/rule.h). S is the states' storage (fp32 or bf16: Note
// [state dtypes] in core/storage.h), converted at load and store as P is. To
// check that a change keeps the loops vectorized: -fopt-info-vec, or
// -fdump-tree-vect-details for the reasons.
template <class R, typename P, typename S, uint32_t kMask, bool kUnscale>
__attribute__((noinline)) void run_elements(P* __restrict__ param, P* __restrict__ grad,
                                            S* __restrict__ s0, S* __restrict__ s1,
                                            S* __restrict__ s2, S* __restrict__ s3, int64_t n,
                                            const typename R::Launch launch,
                                            const typename R::PerTensor scalars,
                                            const float grad_scale) {
  static_assert(kMaxStates == 4, "one __restrict__ parameter per state stream");
  S* const streams[kMaxStates] = {s0, s1, s2, s3};
  constexpr FixedStates<kMask> used;
  for (int64_t i = 0; i < n; ++i) {
    float p = to_float(param[i]);
    float g = to_float(grad[i]);
    if (kUnscale) {
      g = g / grad_scale;
      from_float(g, grad[i]);
    }
    float s[R::kStates > 0 ? R::kStates : 1] = {};
    for (int k = 0; k < R::kStates; ++k) {
      if (used.has(k)) s[k] = to_float(streams[k][i]);
    }
    R::update(p, g, s, used, launch, scalars);
    from_float(p, param[i]);
    for (int k = 0; k < R::kStates; ++k) {
      if (used.has(k)) from_float(s[k], streams[k][i]);
    }
  }
}

#if defined(__AVX512F__)
// A block's codes, 16 lanes of encode_code8_keyed (Note [keyed encoder] in
// core/blockwise8.h): one gather from the L1-resident key table per 16
// elements, where encode_code8_fast needs two, and gcc, tuned for no CPU in
// particular, emulates each gather with 16 scalar loads. Measured on 1M
// normal floats in 256-element blocks, AVX-512 flags, best of 7 on the loaded
// 2-core EPYC: signed map 1.76 -> 0.44 ns per element, unsigned 2.90 -> 0.40;
// of those 0.4 ns, ~0.3 are the gather (the loop without it: 0.11). The
// last block of a tensor may be short: masked lanes. Magnitudes' bits are
// below 2^31, so signed compares order them.
template <bool kSigned>
__attribute__((noinline)) void encode_block8(const float* __restrict__ values,
                                             uint8_t* __restrict__ out, float divisor,
                                             int32_t len) {
  constexpr int32_t kLanes = 16;
  constexpr int32_t shift = kKeyShift8<kSigned>;
  const uint32_t* const entries = code8_keys<kSigned>().entry;
  const __m512 divisors = _mm512_set1_ps(divisor);
  const __m512i magnitude_bits = _mm512_set1_epi32(static_cast<int32_t>(kMagnitudeBits));
  const __m512i infinity = _mm512_set1_epi32(static_cast<int32_t>(kInfinityBits));
  const __m512i lowest = _mm512_set1_epi32(static_cast<int32_t>(kKeyLowBits8));
  const __m512i highest = _mm512_set1_epi32(static_cast<int32_t>(kKeyHighBits8));
  const __m512i first_key = _mm512_set1_epi32(static_cast<int32_t>(kKeyLowBits8 >> shift));
  const __m512i low_bits = _mm512_set1_epi32((1 << shift) - 1);
  const __m512i one = _mm512_set1_epi32(1);
  for (int32_t j = 0; j < len; j += kLanes) {
    const __mmask16 lanes =
        len - j >= kLanes ? 0xFFFF : static_cast<__mmask16>((1u << (len - j)) - 1u);
    const __m512 x = _mm512_div_ps(_mm512_maskz_loadu_ps(lanes, values + j), divisors);
    const __m512i bits = _mm512_castps_si512(x);
    const __mmask16 negative = _mm512_movepi32_mask(bits);
    __m512i magnitude = _mm512_and_si512(bits, magnitude_bits);
    const __mmask16 nan = _mm512_cmpgt_epi32_mask(magnitude, infinity);
    magnitude = _mm512_min_epi32(_mm512_max_epi32(magnitude, lowest), highest);
    __m512i index = _mm512_sub_epi32(_mm512_srli_epi32(magnitude, shift), first_key);
    if (kSigned) {
      index = _mm512_add_epi32(index, index);
      index = _mm512_mask_add_epi32(index, negative, index, one);
    }
    const __m512i entry = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), lanes, index, entries,
                                                      sizeof(uint32_t));
    const __m512i inside = _mm512_or_si512(_mm512_andnot_si512(low_bits, magnitude),
                                           _mm512_and_si512(entry, low_bits));
    const __mmask16 past = kSigned ? _mm512_mask_cmplt_epi32_mask(negative, magnitude, inside) |
                                         _mm512_mask_cmpgt_epi32_mask(~negative, magnitude, inside)
                                   : _mm512_cmpgt_epi32_mask(magnitude, inside);
    const __m512i below = _mm512_srli_epi32(entry, shift);
    const __m512i code = _mm512_mask_add_epi32(below, past, below, one);
    const __mmask16 zero = kSigned ? nan : static_cast<__mmask16>(nan | negative);
    _mm512_mask_cvtepi32_storeu_epi8(out + j, lanes, _mm512_maskz_mov_epi32(~zero, code));
  }
}

// A block's values, map[code] * scale: the 256-entry map in 16 registers,
// eight two-register permutes (vpermi2ps: 32 entries each) and a select on the
// code's bits 5, 6 and 7. gcc emulates the table gather with 16 scalar loads,
// and a gather instruction is slower still (measured on 1M elements, the
// loaded 2-core EPYC: gcc 0.21, vgatherdps 0.35, permutes 0.12 ns per element;
// the whole 8-bit AdamW step on 256K elements, one thread, in cache: 1.72 ->
// 1.53 ns per element).
__attribute__((noinline)) void decode_block8(const uint8_t* __restrict__ in,
                                             float* __restrict__ out, const float* __restrict__ map,
                                             float scale, int32_t len) {
  constexpr int32_t kLanes = 16;
  constexpr int32_t kRegisters = kCodes8 / kLanes;
  __m512 table[kRegisters];
  for (int32_t r = 0; r < kRegisters; ++r) table[r] = _mm512_loadu_ps(map + r * kLanes);
  const __m512 scales = _mm512_set1_ps(scale);
  const __m512i bit5 = _mm512_set1_epi32(32), bit6 = _mm512_set1_epi32(64),
                bit7 = _mm512_set1_epi32(128);
  for (int32_t j = 0; j < len; j += kLanes) {
    const __mmask16 lanes =
        len - j >= kLanes ? 0xFFFF : static_cast<__mmask16>((1u << (len - j)) - 1u);
    const __m512i code = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(lanes, in + j));
    __m512 of32[kRegisters / 2];
    for (int32_t q = 0; q < kRegisters / 2; ++q) {
      of32[q] = _mm512_permutex2var_ps(table[2 * q], code, table[2 * q + 1]);
    }
    const __mmask16 high5 = _mm512_test_epi32_mask(code, bit5);
    const __mmask16 high6 = _mm512_test_epi32_mask(code, bit6);
    const __mmask16 high7 = _mm512_test_epi32_mask(code, bit7);
    const __m512 of64_0 = _mm512_mask_blend_ps(high5, of32[0], of32[1]);
    const __m512 of64_1 = _mm512_mask_blend_ps(high5, of32[2], of32[3]);
    const __m512 of64_2 = _mm512_mask_blend_ps(high5, of32[4], of32[5]);
    const __m512 of64_3 = _mm512_mask_blend_ps(high5, of32[6], of32[7]);
    const __m512 of128_0 = _mm512_mask_blend_ps(high6, of64_0, of64_1);
    const __m512 of128_1 = _mm512_mask_blend_ps(high6, of64_2, of64_3);
    const __m512 value = _mm512_mask_blend_ps(high7, of128_0, of128_1);
    _mm512_mask_storeu_ps(out + j, lanes, _mm512_mul_ps(value, scales));
  }
}
#else
// A block's values, map[code] * scale: inlined into run_blocks8, where gcc
// vectorizes it (tests/test_cpu_vectorized.py).
inline void decode_block8(const uint8_t* __restrict__ in, float* __restrict__ out,
                          const float* __restrict__ map, float scale, int32_t len) {
  for (int32_t j = 0; j < len; ++j) out[j] = map[in[j]] * scale;
}
// A block's codes (core/blockwise8.h, encode_code8_fast: two gathers per
// element). A function of its own per map: inlined into run_blocks8, where
// the table is one of two, gcc left the loop scalar ("latch block not empty").
template <bool kSigned>
__attribute__((noinline)) void encode_block8(const float* __restrict__ values,
                                             uint8_t* __restrict__ out, float divisor,
                                             int32_t len) {
  const float* __restrict__ midpoints = kSigned ? kSignedMidpoints : kUnsignedMidpoints;
  for (int32_t j = 0; j < len; ++j) {
    out[j] = static_cast<uint8_t>(encode_code8_fast<kSigned>(values[j] / divisor, midpoints));
  }
}
#endif

// The 8-bit blockwise states of one block (core/blockwise8.h), decoded into
// fp32 in `values`, state-major: a state's block is a SIMD-friendly unit of
// kBlock8 floats, 4 KB for four states, on the stack.
struct Block8 {
  float values[kMaxStates][kBlock8];
};

// One chunk of bf16/fp16 params under a master-weight policy (Note [master
// weights] in core/master.h), `first` its first element's index in the
// param. Apart from run_elements so that the policy-free loop stays as it was;
// the policy is a template parameter so that each loop is branch-free for the
// vectorizer, with one __restrict__ pointer per stream: a runtime switch per
// element on one untyped store pointer kept gcc's loop scalar, 4-8x slower
// (AdamW, 4M bf16 params, 2 shared threads, median of 15 steps: plain 16 ms;
// master 65 -> 16, Kahan 112 -> 16, stochastic rounding 128 -> 24 ms).
template <class R, typename P, typename S, uint32_t kMask, StorePolicy kStore>
__attribute__((noinline)) void run_stored(P* __restrict__ param, P* __restrict__ grad,
                                          S* const* streams, float* __restrict__ master,
                                          P* __restrict__ comp, int64_t first, int64_t n,
                                          const Work<R>& work, const Tensor<R>& t) {
  constexpr FixedStates<kMask> used;
  for (int64_t i = 0; i < n; ++i) {
    const float old = kStore == StorePolicy::kMasterWeights ? master[i] : to_float(param[i]);
    float p = old;
    float g = to_float(grad[i]);
    if (work.grad_scale != 0.0f) {
      g = g / work.grad_scale;
      from_float(g, grad[i]);
    }
    float s[R::kStates > 0 ? R::kStates : 1] = {};
    for (int k = 0; k < R::kStates; ++k) {
      if (used.has(k)) s[k] = to_float(streams[k][i]);
    }
    R::update(p, g, s, used, work.launch, t.scalars);
    for (int k = 0; k < R::kStates; ++k) {
      if (used.has(k)) from_float(s[k], streams[k][i]);
    }
    if constexpr (kStore == StorePolicy::kMasterWeights) {
      master[i] = p;
      from_float(p, param[i]);
    } else if constexpr (kStore == StorePolicy::kKahanSum) {
      const float u = to_float(comp[i]) + (p - old);
      P rounded;
      from_float(old + u, rounded);
      param[i] = rounded;
      from_float(u - (to_float(rounded) - old), comp[i]);
    } else {
      // kStochasticRounding: the binding takes it for bf16 params only.
      const uint32_t bits =
          rounding_bits(work.seed, t.rounding_step, t.tag, static_cast<uint64_t>(first + i));
      const Bf16 rounded = stochastic_round_bf16(p, bits);
      std::memcpy(&param[i], &rounded, sizeof(rounded));
    }
  }
}

// Where param t's store (master or compensation) holds element `start`; null
// for stochastic rounding, which keeps none.
template <class R, typename P>
void* store_at(const Work<R>& work, const Tensor<R>& t, int64_t start) {
  if (t.store == nullptr) return nullptr;
  const size_t width = work.store == StorePolicy::kMasterWeights ? sizeof(float) : sizeof(P);
  return static_cast<char*>(t.store) + start * width;
}

// run_stored with the call's policy (kNone never comes here).
template <class R, typename P, typename S, uint32_t kMask>
void run_policy(P* param, P* grad, S* const* streams, void* store, int64_t first, int64_t n,
                const Work<R>& work, const Tensor<R>& t) {
  // One __restrict__ pointer per stream, as run_elements (the master's
  // loop stayed scalar with both views of one untyped pointer).
  float* const master = static_cast<float*>(store);
  P* const comp = static_cast<P*>(store);
  switch (work.store) {
    case StorePolicy::kMasterWeights:
      return run_stored<R, P, S, kMask, StorePolicy::kMasterWeights>(
          param, grad, streams, master, nullptr, first, n, work, t);
    case StorePolicy::kKahanSum:
      return run_stored<R, P, S, kMask, StorePolicy::kKahanSum>(param, grad, streams, nullptr, comp,
                                                                first, n, work, t);
    default:
      return run_stored<R, P, S, kMask, StorePolicy::kStochasticRounding>(
          param, grad, streams, nullptr, nullptr, first, n, work, t);
  }
}

// One chunk with 8-bit blockwise states: per block of kBlock8 elements, decode
// each state, step the elements in fp32 (the run_elements loop over the
// decoded block), then the block's new absmax (the reduction the encoding
// needs before any code is stored) and its codes. Bytes per element: p and g
// as run_elements, 1 read + 1 written per state, + 8 B per state and block
// (absmax read and written): Adam fp32, 18 B + 16/256 B. Under a
// master-weight policy the block steps through run_policy (its decoded states
// are the policy loop's fp32 streams); `start` is the chunk's first element.
template <class R, typename P, uint32_t kMask, bool kUnscale>
__attribute__((noinline)) void run_blocks8(P* __restrict__ param, P* __restrict__ grad,
                                           uint8_t* const* codes, float* const* absmax,
                                           int64_t start, int64_t n, const Work<R>& work,
                                           const Tensor<R>& t) {
  const uint32_t signed_mask = work.signed_mask;
  constexpr FixedStates<kMask> used;
  Block8 block;
  for (int64_t first = 0, b = 0; first < n; first += kBlock8, ++b) {
    const int32_t len = static_cast<int32_t>(n - first < kBlock8 ? n - first : kBlock8);
    for (int k = 0; k < R::kStates; ++k) {
      if (!used.has(k)) continue;
      const float* map = (signed_mask >> k) & 1u ? kSignedMap : kUnsignedMap;
      decode_block8(codes[k] + first, block.values[k], map, absmax[k][b], len);
    }
    bool stepped = false;
    if constexpr (!std::is_same_v<P, float>) {
      if (work.store != StorePolicy::kNone) {
        float* streams[kMaxStates] = {block.values[0], block.values[1], block.values[2],
                                      block.values[3]};
        run_policy<R, P, float, kMask>(param + first, grad + first, streams,
                                       store_at<R, P>(work, t, start + first), start + first, len,
                                       work, t);
        stepped = true;
      }
    }
    if (!stepped) {
      run_elements<R, P, float, kMask, kUnscale>(
          param + first, grad + first, block.values[0], block.values[1], block.values[2],
          block.values[3], len, work.launch, t.scalars, work.grad_scale);
    }
    for (int k = 0; k < R::kStates; ++k) {
      if (!used.has(k)) continue;
      const float* __restrict__ values = block.values[k];
      uint32_t bits = 0;
      for (int32_t j = 0; j < len; ++j) {
        const uint32_t magnitude = magnitude_bits(values[j]);
        bits = magnitude > bits ? magnitude : bits;
      }
      const float amax = absmax_of_bits(bits);
      absmax[k][b] = amax;
      const float divisor = encode_divisor(amax);
      if ((signed_mask >> k) & 1u) {
        encode_block8<true>(values, codes[k] + first, divisor, len);
      } else {
        encode_block8<false>(values, codes[k] + first, divisor, len);
      }
    }
  }
}

template <class R, typename P, uint32_t kMask, bool kUnscale>
void run_work(const Work<R>& work, int64_t chunk_begin, int64_t chunk_end) {
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const Chunk chunk = work.chunks[c];
    const Tensor<R>& t = work.tensors[chunk.tensor];
    P* const param = static_cast<P*>(t.param) + chunk.start;
    P* const grad = static_cast<P*>(t.grad) + chunk.start;
    if (work.state_dtype == StateDtype::kInt8Blockwise) {
      // Chunks start at multiples of kBlock8 (kCpuChunkSize in binding/cpu_step.h).
      uint8_t* codes[kMaxStates] = {};
      float* absmax[kMaxStates] = {};
      for (int k = 0; k < R::kStates; ++k) {
        if (!((kMask >> k) & 1u)) continue;
        codes[k] = static_cast<uint8_t*>(t.state[k]) + chunk.start;
        absmax[k] = t.absmax[k] + chunk.start / kBlock8;
      }
      run_blocks8<R, P, kMask, kUnscale>(param, grad, codes, absmax, chunk.start, chunk.size,
                                         work, t);
      continue;
    }
    if constexpr (!std::is_same_v<P, float>) {
      if (work.store != StorePolicy::kNone) {
        void* const at = store_at<R, P>(work, t, chunk.start);
        if (work.state_dtype == StateDtype::kBFloat16) {
          Bf16* streams[kMaxStates] = {};
          for (int k = 0; k < R::kStates; ++k) {
            if ((kMask >> k) & 1u) streams[k] = static_cast<Bf16*>(t.state[k]) + chunk.start;
          }
          run_policy<R, P, Bf16, kMask>(param, grad, streams, at, chunk.start, chunk.size, work, t);
        } else {
          float* streams[kMaxStates] = {};
          for (int k = 0; k < R::kStates; ++k) {
            if ((kMask >> k) & 1u) streams[k] = static_cast<float*>(t.state[k]) + chunk.start;
          }
          run_policy<R, P, float, kMask>(param, grad, streams, at, chunk.start, chunk.size, work,
                                         t);
        }
        continue;
      }
    }
    if (work.state_dtype == StateDtype::kBFloat16) {
      Bf16* streams[kMaxStates] = {};
      for (int k = 0; k < R::kStates; ++k) {
        if ((kMask >> k) & 1u) streams[k] = static_cast<Bf16*>(t.state[k]) + chunk.start;
      }
      run_elements<R, P, Bf16, kMask, kUnscale>(param, grad, streams[0], streams[1], streams[2],
                                                streams[3], chunk.size, work.launch, t.scalars,
                                                work.grad_scale);
      continue;
    }
    float* streams[kMaxStates] = {};
    for (int k = 0; k < R::kStates; ++k) {
      if ((kMask >> k) & 1u) streams[k] = static_cast<float*>(t.state[k]) + chunk.start;
    }
    run_elements<R, P, float, kMask, kUnscale>(param, grad, streams[0], streams[1], streams[2],
                                               streams[3], chunk.size, work.launch, t.scalars,
                                               work.grad_scale);
  }
}

// The one switch helper of the CPU loops: calls run_work with the state set
// R::kStateSets[I] that equals `mask` (the binding only passes masks that
// state_used() produces, and check_state_sets keeps those in the list).
template <class R, typename P, bool kUnscale, size_t... I>
void run_for_mask(const Work<R>& work, int64_t begin, int64_t end, std::index_sequence<I...>) {
  ((work.state_mask == R::kStateSets[I] ? run_work<R, P, R::kStateSets[I], kUnscale>(work, begin, end)
                                        : void()),
   ...);
}

template <class R, typename P>
void run_for_dtype(const Work<R>& work, int64_t begin, int64_t end) {
  constexpr auto sets = std::make_index_sequence<std::size(R::kStateSets)>();
  if (work.grad_scale != 0.0f) {
    run_for_mask<R, P, true>(work, begin, end, sets);
  } else {
    run_for_mask<R, P, false>(work, begin, end, sets);
  }
}

}  // namespace

template <class R>
void run_chunks(const Work<R>& work, int64_t chunk_begin, int64_t chunk_end) {
  switch (work.dtype) {
    case ParamDtype::kFloat32:
      return run_for_dtype<R, float>(work, chunk_begin, chunk_end);
    case ParamDtype::kBFloat16:
      return run_for_dtype<R, Bf16>(work, chunk_begin, chunk_end);
    case ParamDtype::kFloat16:
      return run_for_dtype<R, Fp16>(work, chunk_begin, chunk_end);
  }
}

#define FUSEDOPT_INSTANTIATE(Type, name) \
  template void run_chunks<Type>(const Work<Type>&, int64_t, int64_t);
FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_INSTANTIATE)
#undef FUSEDOPT_INSTANTIATE

}  // namespace fusedopt::cpu::FUSEDOPT_ISA
