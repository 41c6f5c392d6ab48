// The CPU passes of a rule with factored second moments (Note [reduction
// rules] in python/fusedopt/registry.py), torch-free: the binding
// (csrc/binding/factored_step.h) validates the tensors, fills the tensors'
// descriptions and runs each pass over the threads; the math is the rule's
// (rules/<name>.h), the sums are reduce.h's. A factored rule's states are, in
// this order: the row statistic ([..., m, 1] of a param of 2+ dims), the
// column statistic ([..., 1, n]), the full statistic (a vector's, its shape)
// and an optional momentum (every param's shape). One step:
//   (a) reduce_inputs      per row and column sums of g^2, sum of p^2
//   (b) update_statistics  per tensor: the statistics' EMAs, per-tensor scalars
//   (c) reduce_updates     the sum of U^2 (the RMS clip)
//   (d) apply              the element pass
// (a) and (c) run over items, (b) over tensors, (d) over items; every sum is
// deterministic (Note [deterministic blocked reductions] in
// fusedopt/core/blocked_sums.h).
#pragma once

#include <cstdint>
#include <vector>

#include "fusedopt/core/storage.h"
#include "reduce.h"

namespace fusedopt::cpu {

// The states of a factored rule (fusedopt/core/blocked_sums.h).
using ::fusedopt::FactoredState;
using ::fusedopt::kColStat;
using ::fusedopt::kFactoredStates;
using ::fusedopt::kFullStat;
using ::fusedopt::kMomentum;
using ::fusedopt::kRowStat;

// One param: `batch` row-major matrices of rows x cols (factored), or a vector
// of cols elements (batch = rows = 1). Dense and contiguous.
struct FactoredTensor {
  void* param;
  void* grad;  // written only when unscaling (GradScaler)
  int64_t batch, rows, cols;
  bool factored;
  float* state[kFactoredStates];  // null where the param keeps no such state
  double step;                    // the count after this step (1 on the first)
};

}  // namespace fusedopt::cpu

// The passes, compiled once per instruction set into namespaces avx512, avx2
// and baseline (factored.cpp, built with each ISA's flags as loop.cpp); the
// binding runs the one cpu::selected_isa() names. Every ISA computes the same
// bits: the sums' order is fixed by reduce.h's lanes, not by the vector width,
// and nothing is contracted.
#define FUSEDOPT_FACTORED_ISA avx512
#include "factored_step_class.h"
#undef FUSEDOPT_FACTORED_ISA
#define FUSEDOPT_FACTORED_ISA avx2
#include "factored_step_class.h"
#undef FUSEDOPT_FACTORED_ISA
#define FUSEDOPT_FACTORED_ISA baseline
#include "factored_step_class.h"
#undef FUSEDOPT_FACTORED_ISA
