// Deterministic blocked reductions over row-major matrices, for the CPU
// passes of reduction rules (Note [reduction rules] in
// python/fusedopt/registry.py). Torch-free; the rule never appears here: a
// caller's `fill` produces the fp32 values of one row segment (loads, dtype
// conversion and the rule's math), and these functions only add them up.
//
// Note [deterministic blocked reductions]: a tensor is cut into items of whole
// rows (a matrix) or runs of elements (a vector) whose size depends on the
// tensor's shape only, never on the number of threads. Each item sums into its
// own partials, in double, with kLanes independent accumulators that are
// combined in a fixed order; the partials of a tensor are then added in item
// order. So every sum is the same bits whatever the threads, and the lanes let
// gcc vectorize the loop (it may not reorder one double accumulator).
#pragma once

#include <cstdint>
#include <vector>

namespace fusedopt::cpu {

// Elements per item: 64K, the chunk of the elementwise loops (binding/cpu_step.h,
// kCpuChunkSize): enough work per item that the per-item overhead vanishes,
// small enough to balance the threads over one large tensor.
constexpr int64_t kReduceItemElements = 1 << 16;

// Accumulators per row sum: 8 doubles, one AVX-512 register (two AVX2 ones).
constexpr int kLanes = 8;

// One item: rows [row0, row0 + rows) of matrix `batch` of tensor `tensor`
// (each row `cols` elements), or, for a vector, one row of `cols` elements
// starting at element `start`. `start` is the item's first element, flat.
struct ReduceItem {
  int32_t tensor;
  int64_t batch, row0, rows, cols, start;
};

// Appends the items of one tensor: `batch` matrices of rows x cols
// (vector = false), or a flat run of `cols` elements (vector = true, batch and
// rows 1). Whole rows per item; a row longer than an item is one item.
inline void plan_items(int32_t tensor, int64_t batch, int64_t rows, int64_t cols, bool vector,
                       std::vector<ReduceItem>& items) {
  if (batch * rows * cols == 0) return;
  if (vector) {
    for (int64_t start = 0; start < cols; start += kReduceItemElements) {
      const int64_t size = cols - start < kReduceItemElements ? cols - start : kReduceItemElements;
      items.push_back({tensor, 0, 0, 1, size, start});
    }
    return;
  }
  const int64_t rows_per_item = cols >= kReduceItemElements ? 1 : kReduceItemElements / cols;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t r = 0; r < rows; r += rows_per_item) {
      const int64_t n = rows - r < rows_per_item ? rows - r : rows_per_item;
      items.push_back({tensor, b, r, n, cols, (b * rows + r) * cols});
    }
  }
}

// The sum of x[0..n) in double, in kLanes lanes combined in a fixed order.
inline double lane_sum(const float* __restrict__ x, int64_t n) {
  double acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(x[j + l]);
  }
  for (int64_t l = 0; j < n; ++j, ++l) acc[l] += static_cast<double>(x[j]);
  double sum = 0.0;
  for (int l = 0; l < kLanes; ++l) sum += acc[l];
  return sum;
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
