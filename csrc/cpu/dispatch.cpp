// Run-time choice of the CPU element loops' instruction set. On x86-64
// (FUSEDOPT_X86_ISAS, defined by CMakeLists.txt where it builds the AVX-512
// and AVX2 loops) the best one this CPU runs; elsewhere (aarch64) the one
// baseline build, whose NEON is part of the architecture.
#include <cstdlib>
#include <cstring>

#include "fusedopt/mta/reduce.h"
#include "fusedopt/rules/registry.h"
#include "loop.h"
#include "norm.h"

#if defined(FUSEDOPT_X86_ISAS) && !(defined(__x86_64__) || defined(_M_X64))
#error "CMakeLists.txt built the x86 loops (FUSEDOPT_X86_ISAS) for a compiler that is not x86-64"
#endif

namespace fusedopt::cpu {
namespace {

enum class Isa { kBaseline, kAvx2, kAvx512 };

// The best ISA this CPU runs, lowered by FUSEDOPT_CPU_ISA (never raised: asking
// for avx512 on a CPU without it would fault).
Isa detect_isa() {
  Isa best = Isa::kBaseline;
#ifdef FUSEDOPT_X86_ISAS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    best = Isa::kAvx2;
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    best = Isa::kAvx512;
  }
#endif
  const char* forced = std::getenv("FUSEDOPT_CPU_ISA");
  if (forced == nullptr) return best;
  if (std::strcmp(forced, "baseline") == 0) return Isa::kBaseline;
  if (std::strcmp(forced, "avx2") == 0 && best != Isa::kBaseline) return Isa::kAvx2;
  return best;
}

// Read once, when fusedopt._C is imported (it reports the choice).
Isa selected() {
  static const Isa isa = detect_isa();
  return isa;
}

}  // namespace

template <class R>
void run_chunks(const Work<R>& work, int64_t chunk_begin, int64_t chunk_end) {
  switch (selected()) {
#ifdef FUSEDOPT_X86_ISAS
    case Isa::kAvx512:
      return avx512::run_chunks(work, chunk_begin, chunk_end);
    case Isa::kAvx2:
      return avx2::run_chunks(work, chunk_begin, chunk_end);
#endif
    default:
      return baseline::run_chunks(work, chunk_begin, chunk_end);
  }
}

#define FUSEDOPT_INSTANTIATE(Type, name) \
  template void run_chunks<Type>(const Work<Type>&, int64_t, int64_t);
FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_INSTANTIATE)
#undef FUSEDOPT_INSTANTIATE

template <norm::NormKind K>
float chunk_partial(const NormChunk& chunk) {
  switch (selected()) {
#ifdef FUSEDOPT_X86_ISAS
    case Isa::kAvx512:
      return avx512::chunk_partial<K>(chunk);
    case Isa::kAvx2:
      return avx2::chunk_partial<K>(chunk);
#endif
    default:
      return baseline::chunk_partial<K>(chunk);
  }
}
template float chunk_partial<norm::NormKind::kTwo>(const NormChunk&);
template float chunk_partial<norm::NormKind::kInf>(const NormChunk&);

// The finishing block's fold (mta/reduce.h), run by one thread after another.
template <norm::NormKind K>
float fold_partials(const float* partials, int64_t n_partials) {
  using N = norm::Norm<K>;
  float values[norm::kThreads];
  for (int32_t t = 0; t < norm::kThreads; ++t) {
    values[t] = mta::norm_finish_thread<K>(partials, static_cast<int32_t>(n_partials), t);
  }
  for (int32_t half = 1; half < norm::kThreads; half *= 2) {
    for (int32_t t = 0; t < norm::kThreads; t += 2 * half) N::tree_step(values, t, half);
  }
  return N::finish(values[0]);
}
template float fold_partials<norm::NormKind::kTwo>(const float*, int64_t);
template float fold_partials<norm::NormKind::kInf>(const float*, int64_t);

const char* selected_isa() {
  switch (selected()) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kBaseline:
      break;
  }
  return "baseline";
}

}  // namespace fusedopt::cpu
