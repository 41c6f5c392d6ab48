// The CPU global-norm reduction's torch-free interface: the binding
// (csrc/binding/norm_op.h) cuts the tensors into the 64K chunks of Note [norm
// summation order] (core/norm.h), reduces each with chunk_partial on its
// threads, and folds the partials with fold_partials.
#pragma once

#include <cstdint>

#include "fusedopt/core/norm.h"
#include "fusedopt/core/storage.h"

namespace fusedopt::cpu {

// One chunk: n (<= 64K) elements of `dtype` from `data`.
struct NormChunk {
  const void* data;
  ParamDtype dtype;
  int64_t n;
};

// The chunk's partial, in the order of Note [norm summation order], with the
// loop of the best instruction set this CPU has (dispatch.cpp). Every ISA
// gives the same bits: the order is fixed, not the vector width.
template <norm::NormKind K>
float chunk_partial(const NormChunk& chunk);

// The norm of the partials (steps 3-4 of the order, then the finish).
template <norm::NormKind K>
float fold_partials(const float* partials, int64_t n_partials);

#define FUSEDOPT_DECLARE_NORM_ISA(isa)         \
  namespace isa {                              \
  template <norm::NormKind K>                  \
  float chunk_partial(const NormChunk& chunk); \
  }
FUSEDOPT_DECLARE_NORM_ISA(avx512)
FUSEDOPT_DECLARE_NORM_ISA(avx2)
FUSEDOPT_DECLARE_NORM_ISA(baseline)
#undef FUSEDOPT_DECLARE_NORM_ISA

}  // namespace fusedopt::cpu
