// The one summation order of the reduction rules' passes (Note [reduction
// rules] in python/fusedopt/registry.py), framework-free, shared by the CPU
// loops (csrc/cpu/reduce.h) and the CUDA kernels (csrc/cuda/factored.h), so
// that both compute the same bits.
//
// Note [deterministic blocked reductions]: a tensor is cut into items of whole
// rows (a matrix) or runs of elements (a vector) whose size depends on the
// tensor's shape only, never on the number of threads or blocks. In an item,
// in double:
//   - a row's sum: element j goes to lane j % kLanes; each lane adds its
//     elements in increasing j from 0; the lanes are then added in lane order
//     from 0 (fold_lanes);
//   - the item's whole sum: its rows' sums added in row order from 0;
//   - a column's partial: the item's rows added in row order from 0.
// A tensor's sums are then its items' partials added in item order from 0. So
// every sum is the same bits whatever the threads, the ISA or the GPU, and
// the lanes let gcc vectorize the CPU loop (it may not reorder one double
// accumulator) and give a CUDA block kLanes threads per row.
#pragma once

#include <cstdint>
#include <vector>

#include "fusedopt/core/macros.h"

namespace fusedopt {

// The states of a factored rule, in its kStateNames order: the row statistic
// ([..., m, 1] of a param of 2+ dims), the column statistic ([..., 1, n]),
// the full statistic (a vector's, its shape) and an optional momentum.
enum FactoredState : int { kRowStat, kColStat, kFullStat, kMomentum, kFactoredStates };

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

// A row's sum from its kLanes lanes, added in lane order from 0.
FUSEDOPT_HD double fold_lanes(const double* lanes) {
  double sum = 0.0;
  for (int l = 0; l < kLanes; ++l) sum += lanes[l];
  return sum;
}

}  // namespace fusedopt
