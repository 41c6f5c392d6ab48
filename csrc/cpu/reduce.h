// Deterministic blocked reductions over row-major matrices, for the CPU
// passes of reduction rules (Note [reduction rules] in
// python/fusedopt/registry.py). Torch-free; the rule never appears here: a
// caller's `fill` produces the fp32 values of one row segment (loads, dtype
// conversion and the rule's math), and these functions only add them up, in
// the order of Note [deterministic blocked reductions]
// (fusedopt/core/blocked_sums.h), which the CUDA kernels follow too.
#pragma once

#include <cstdint>
#include <vector>

#include "fusedopt/core/blocked_sums.h"

namespace fusedopt::cpu {

using ::fusedopt::kLanes;
using ::fusedopt::kReduceItemElements;
using ::fusedopt::plan_items;
using ::fusedopt::ReduceItem;

// The sum of x[0..n) in double, in kLanes lanes combined in a fixed order.
inline double lane_sum(const float* __restrict__ x, int64_t n) {
  double acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(x[j + l]);
  }
  for (int64_t l = 0; j < n; ++j, ++l) acc[l] += static_cast<double>(x[j]);
  return fold_lanes(acc);
}

// col[j] += x[j] for j < n.
inline void add_columns(const float* __restrict__ x, double* __restrict__ col, int64_t n) {
  for (int64_t j = 0; j < n; ++j) col[j] += static_cast<double>(x[j]);
}

// Sums over one item of the values fill(row, out) writes for each of its rows
// (row: the row's index within the item; out: item.cols floats of `scratch`):
//   row_sums[r]  the sum of row r (null: not wanted)
//   col_sums[j]  the item's partial sum of column j (null: not wanted)
// and returns the item's whole sum (the row sums added in order).
template <class Fill>
double reduce_item(const ReduceItem& item, Fill&& fill, float* scratch, double* row_sums,
                   double* col_sums) {
  double whole = 0.0;
  for (int64_t r = 0; r < item.rows; ++r) {
    fill(r, scratch);
    const double row = lane_sum(scratch, item.cols);
    if (row_sums != nullptr) row_sums[r] = row;
    if (col_sums != nullptr) add_columns(scratch, col_sums, item.cols);
    whole += row;
  }
  return whole;
}

}  // namespace fusedopt::cpu
