// Run-time choice of the CPU element loop's instruction set.
#include <cstdlib>
#include <cstring>

#include "adam_cpu.h"

namespace fusedopt::cpu {

// Defined by adam_cpu_loop.cpp, compiled once per ISA.
void adam_run_chunks_avx512(const AdamLaunch&, int64_t, int64_t);
void adam_run_chunks_avx2(const AdamLaunch&, int64_t, int64_t);
void adam_run_chunks_baseline(const AdamLaunch&, int64_t, int64_t);

namespace {

enum class Isa { kBaseline, kAvx2, kAvx512 };

// The best ISA this CPU runs, lowered by FUSEDOPT_CPU_ISA (never raised: asking
// for avx512 on a CPU without it would fault).
Isa detect_isa() {
  __builtin_cpu_init();
  Isa best = Isa::kBaseline;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    best = Isa::kAvx2;
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    best = Isa::kAvx512;
  }
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

void adam_run_chunks(const AdamLaunch& launch, int64_t chunk_begin, int64_t chunk_end) {
  switch (selected()) {
    case Isa::kAvx512:
      return adam_run_chunks_avx512(launch, chunk_begin, chunk_end);
    case Isa::kAvx2:
      return adam_run_chunks_avx2(launch, chunk_begin, chunk_end);
    case Isa::kBaseline:
      return adam_run_chunks_baseline(launch, chunk_begin, chunk_end);
  }
}

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
