// The CUDA passes of a factored rule (Note [reduction rules] in
// python/fusedopt/registry.py), as host+device code, torch-free, as the element
// traversal (mta/traversal.h): the binding (csrc/binding/factored_step.h)
// validates the tensors and fills the slots, plan_factored cuts them into the
// CPU's items, and cuda::launch_factored (csrc/cuda/factored.h) queues five
// kernels on one stream, each over every param of the call (one launch
// per pass per call, whatever the number of params):
//   (a) reduce_inputs   one block per item: row and column sums of g^2, sum of p^2
//   (b) statistics      one block per param: the statistics' EMAs and the
//                       per-tensor scalars, from the count read on the device
//   (c) reduce_updates  one block per item: the sum of U^2 (the RMS clip)
//   (d) finish          one thread per param: the clip's step size; the count + 1
//   (e) apply           one block per item: the element pass
// The math is the rule's (rules/<name>.h, the CPU's functions), the sums'
// order Note [deterministic blocked reductions] (core/blocked_sums.h), which
// csrc/cpu/factored.cpp follows too: the same bits as the cpu backend, with
// no atomics, whatever the grid. The block bodies below take the block as a
// policy (`each` runs a phase on every thread, then a barrier), so the CPU
// emulation (csrc/testing/emulation.cpp) runs them thread by thread.
//
// Bytes per element as the CPU passes (fp32 param, factored, no momentum):
// (a) reads p and g, (c) g, (e) p and g and writes p: 24 B, plus 8 B per row,
// column, item and param of double partials. A row's lanes are kLanes
// threads that read 8 consecutive elements (one 32-byte sector per row) per
// step. First version, compiled and emulated, never run on a GPU: the serial
// folds of thread 0 (a row's lanes, the rows of an item, the row statistic's
// mean) and a vector item's 8 active threads are where a GPU would wait.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fusedopt/core/blocked_sums.h"
#include "fusedopt/core/macros.h"
#include "fusedopt/core/storage.h"

namespace fusedopt::mta {

// Threads per block of every factored kernel: kRowsPerRound rows of kLanes
// threads each in the row sums. 256 = 8 warps: enough loads in flight per
// block for the element pass, and 32 rows per barrier in the sums.
constexpr int32_t kFactoredThreads = 256;
constexpr int32_t kRowsPerRound = kFactoredThreads / kLanes;
static_assert(kFactoredThreads % kLanes == 0, "whole rows of lanes per block");

// Elements of one param: fewer than 2^31, so that an item's element index
// (at most max(kReduceItemElements, cols)) is an int32 in the element pass.
constexpr int64_t kFactoredMaxNumel = int64_t{1} << 31;

// One param: `batch` row-major matrices of rows x cols (factored), or a vector
// of cols elements (batch = rows = 1). Dense and contiguous, on the device.
struct FactoredSlot {
  void* param;
  void* grad;                     // written only when unscaling (GradScaler)
  float* state[kFactoredStates];  // null where the param keeps no such state
  float* step;                    // its count, read by (b) and advanced by (d)
  int64_t batch, rows, cols;
  int64_t first_item, end_item;  // its items, [first, end) of the call's table
  int64_t row_offset;            // into row_sums (batch * rows of them)
  int64_t batch_offset;          // into row_floor (batch of them)
  bool factored;
};

// Everything the kernels read, by value: the tables and the partials live in
// one device buffer (FactoredLayout), the rest are scalars or device scalars.
template <class R>
struct FactoredArgs {
  typename R::Config config;
  const FactoredSlot* slots;
  const ReduceItem* items;
  const int64_t* col_offset;  // per item, into col_partials (its cols)
  int64_t n_slots, n_items;
  double* row_sums;                // per factored row, sum of g^2 (a)
  double* col_partials;            // per item and column, the item's sum of g^2 (a)
  double* param_sq;                // per item, sum of p^2 (a)
  double* update_sq;               // per item, sum of U^2 (c)
  double* scale;                   // per param, the step scale before the clip (b)
  typename R::PerTensor* scalars;  // per param (b), step_size filled by (d)
  float* row_floor;                // per matrix, max(mean(row statistic), eps1) (b)
  const float* lr;                 // lr on the device, or null for lr_value
  double lr_value;
  const float* grad_scale;  // null without a GradScaler
  const float* found_inf;   // null without a GradScaler: nonzero skips the step
  double eps1;              // the rule's eps1 for the params' dtype
  float grad_sign;
};

// The items and offsets of a call, as the CPU's FactoredStep plans them.
struct FactoredPlan {
  std::vector<FactoredSlot> slots;
  std::vector<ReduceItem> items;
  std::vector<int64_t> col_offset;
  int64_t rows = 0, cols = 0, batches = 0;
};

inline FactoredPlan plan_factored(std::vector<FactoredSlot> slots) {
  FactoredPlan plan;
  for (size_t i = 0; i < slots.size(); ++i) {
    FactoredSlot& t = slots[i];
    t.first_item = static_cast<int64_t>(plan.items.size());
    t.row_offset = plan.rows;
    t.batch_offset = plan.batches;
    plan_items(static_cast<int32_t>(i), t.batch, t.rows, t.cols, !t.factored, plan.items);
    t.end_item = static_cast<int64_t>(plan.items.size());
    if (t.factored) {
      plan.rows += t.batch * t.rows;
      plan.batches += t.batch;
    }
  }
  for (const ReduceItem& item : plan.items) {
    plan.col_offset.push_back(plan.cols);
    if (slots[item.tensor].factored) plan.cols += item.cols;
  }
  plan.slots = std::move(slots);
  return plan;
}

// Byte offsets in the call's one device buffer: the tables first (copied from
// the host), then the partials (written by the kernels). Every part starts on
// 8 bytes (doubles, pointers).
struct FactoredLayout {
  size_t slots, items, col_offset, tables_end;
  size_t row_sums, col_partials, param_sq, update_sq, scale, scalars, row_floor, total;
};

template <class R>
FactoredLayout factored_layout(const FactoredPlan& plan) {
  const auto rounded = [](size_t bytes) { return (bytes + 7) / 8 * 8; };
  FactoredLayout l{};
  size_t at = 0;
  const auto take = [&](size_t& field, size_t bytes) {
    field = at;
    at += rounded(bytes);
  };
  const size_t n_items = plan.items.size(), n_slots = plan.slots.size();
  take(l.slots, n_slots * sizeof(FactoredSlot));
  take(l.items, n_items * sizeof(ReduceItem));
  take(l.col_offset, n_items * sizeof(int64_t));
  l.tables_end = at;
  take(l.row_sums, static_cast<size_t>(plan.rows) * sizeof(double));
  take(l.col_partials, static_cast<size_t>(plan.cols) * sizeof(double));
  take(l.param_sq, n_items * sizeof(double));
  take(l.update_sq, n_items * sizeof(double));
  take(l.scale, n_slots * sizeof(double));
  take(l.scalars, n_slots * sizeof(typename R::PerTensor));
  take(l.row_floor, static_cast<size_t>(plan.batches) * sizeof(float));
  l.total = at;
  return l;
}

// The tables, written at the front of `host` (tables_end bytes).
inline void write_factored_tables(const FactoredPlan& plan, const FactoredLayout& l, char* host) {
  std::memcpy(host + l.slots, plan.slots.data(), plan.slots.size() * sizeof(FactoredSlot));
  std::memcpy(host + l.items, plan.items.data(), plan.items.size() * sizeof(ReduceItem));
  std::memcpy(host + l.col_offset, plan.col_offset.data(),
              plan.col_offset.size() * sizeof(int64_t));
}

// The kernels' pointers into the buffer at `base` (device memory; host memory
// in the emulation).
template <class R>
void bind_factored_buffer(const FactoredPlan& plan, const FactoredLayout& l, char* base,
                          FactoredArgs<R>& a) {
  a.slots = reinterpret_cast<const FactoredSlot*>(base + l.slots);
  a.items = reinterpret_cast<const ReduceItem*>(base + l.items);
  a.col_offset = reinterpret_cast<const int64_t*>(base + l.col_offset);
  a.n_slots = static_cast<int64_t>(plan.slots.size());
  a.n_items = static_cast<int64_t>(plan.items.size());
  a.row_sums = reinterpret_cast<double*>(base + l.row_sums);
  a.col_partials = reinterpret_cast<double*>(base + l.col_partials);
  a.param_sq = reinterpret_cast<double*>(base + l.param_sq);
  a.update_sq = reinterpret_cast<double*>(base + l.update_sq);
  a.scale = reinterpret_cast<double*>(base + l.scale);
  a.scalars = reinterpret_cast<typename R::PerTensor*>(base + l.scalars);
  a.row_floor = reinterpret_cast<float*>(base + l.row_floor);
}

// --- the block bodies --------------------------------------------------------
// `block.each(f)` runs f(thread) for every thread of the block, then a
// barrier; `block.lanes` is kFactoredThreads doubles the block shares. A
// value that only thread 0 keeps across phases (a fold's running sum) is a
// local that each thread holds on a GPU and the emulation holds once.

// Whether GradScaler found an inf or NaN: every kernel then returns at once,
// and nothing (the counts included) changes.
template <class R>
FUSEDOPT_HD bool factored_skip(const FactoredArgs<R>& a) {
  return a.found_inf != nullptr && *a.found_inf != 0.0f;
}

// GradScaler's scale, 0 without one (the CPU passes' convention).
template <class R>
FUSEDOPT_HD float factored_grad_scale(const FactoredArgs<R>& a) {
  return a.grad_scale != nullptr ? *a.grad_scale : 0.0f;
}

// One lane of row r: its elements j = lane, lane + kLanes, ... in order from 0.
template <class Fill>
FUSEDOPT_HD double row_lane(const Fill& fill, int64_t r, int64_t cols, int32_t lane) {
  double acc = 0.0;
  // Not unrolled: unrolled, ptxas moved the accumulator into a register that
  // the slow-path call of the division or square root in `fill` clobbers,
  // and spilled it (8 B of stack, a local store and load per element, in
  // reduce_updates on sm_80 and sm_120 with nvcc 13.0).
#pragma unroll 1
  for (int64_t j = lane; j < cols; j += kLanes) acc += static_cast<double>(fill(r, j));
  return acc;
}

// The sums of fill(r, j) over one item's rows: row_out[r] (null: not wanted)
// and *whole_out, the rows' sums in order (null: not wanted).
template <class Block, class Fill>
FUSEDOPT_HD void item_row_sums(Block& block, const ReduceItem& item, const Fill& fill,
                               double* row_out, double* whole_out) {
  double whole = 0.0;  // thread 0's
  for (int64_t base = 0; base < item.rows; base += kRowsPerRound) {
    block.each([&](int32_t thread) {
      const int64_t r = base + thread / kLanes;
      block.lanes[thread] = r < item.rows ? row_lane(fill, r, item.cols, thread % kLanes) : 0.0;
    });
    block.each([&](int32_t thread) {
      if (thread != 0) return;
      const int64_t left = item.rows - base;
      const int64_t n = left < kRowsPerRound ? left : kRowsPerRound;
      for (int64_t i = 0; i < n; ++i) {
        const double row = fold_lanes(block.lanes + i * kLanes);
        if (row_out != nullptr) row_out[base + i] = row;
        whole += row;
      }
      if (whole_out != nullptr && base + n == item.rows) *whole_out = whole;
    });
  }
}

// The item's partial sum of each column j: its rows in order from 0.
template <class Block, class Fill>
FUSEDOPT_HD void item_column_sums(Block& block, const ReduceItem& item, const Fill& fill,
                                  double* col_out) {
  block.each([&](int32_t thread) {
    for (int64_t j = thread; j < item.cols; j += kFactoredThreads) {
      double acc = 0.0;
      for (int64_t r = 0; r < item.rows; ++r) acc += static_cast<double>(fill(r, j));
      col_out[j] = acc;
    }
  });
}

// (a) item k: sum of p^2 of every param; row and column sums of the
// (unscaled) g^2 of a factored one.
template <class R, typename P, class Block>
FUSEDOPT_HD void reduce_inputs_item(const FactoredArgs<R>& a, int64_t k, Block& block) {
  const ReduceItem item = a.items[k];
  const FactoredSlot& t = a.slots[item.tensor];
  const P* param = static_cast<const P*>(t.param) + item.start;
  const P* grad = static_cast<const P*>(t.grad) + item.start;
  const int64_t cols = item.cols;
  const auto param_sq = [&](int64_t r, int64_t j) {
    const float p = to_float(param[r * cols + j]);
    return p * p;
  };
  item_row_sums(block, item, param_sq, nullptr, a.param_sq + k);
  if (!t.factored) return;
  const float scale = factored_grad_scale(a);
  const auto grad_sq = [&](int64_t r, int64_t j) {
    float g = to_float(grad[r * cols + j]);
    if (scale != 0.0f) g = g / scale;
    return g * g;
  };
  item_row_sums(block, item, grad_sq, a.row_sums + t.row_offset + item.batch * t.rows + item.row0,
                nullptr);
  item_column_sums(block, item, grad_sq, a.col_partials + a.col_offset[k]);
}

// (b) param i: its per-tensor scalars from its count on the device, and
// for a factored param the row and column EMAs and each matrix's floor.
template <class R, class Block>
FUSEDOPT_HD void statistics_slot(const FactoredArgs<R>& a, int64_t i, Block& block) {
  const FactoredSlot& t = a.slots[i];
  const int64_t numel = t.batch * t.rows * t.cols;
  if (numel == 0) return;
  block.each([&](int32_t thread) {
    if (thread != 0) return;
    double param_sq = 0.0;
    for (int64_t k = t.first_item; k < t.end_item; ++k) param_sq += a.param_sq[k];
    // Note [step-count protocol]: the scalars of count + 1.
    const double step = static_cast<double>(*t.step) + 1.0;
    const double lr = a.lr != nullptr ? static_cast<double>(*a.lr) : a.lr_value;
    a.scalars[i] = R::per_tensor(a.config, lr, step, a.eps1);
    a.scale[i] = R::alpha(a.config, lr, step, param_sq, static_cast<double>(numel));
  });
  if (!t.factored) return;
  const float w = a.scalars[i].ema_weight;
  const double* row_sums = a.row_sums + t.row_offset;
  float* row_stat = t.state[kRowStat];
  float* col_stat = t.state[kColStat];
  int64_t batch_begin = t.first_item;  // the items of matrix b, in item order
  for (int64_t b = 0; b < t.batch; ++b) {
    int64_t batch_end = batch_begin;
    while (batch_end < t.end_item && a.items[batch_end].batch == b) ++batch_end;
    block.each([&](int32_t thread) {
      for (int64_t j = thread; j < t.cols; j += kFactoredThreads) {
        double col = 0.0;
        for (int64_t k = batch_begin; k < batch_end; ++k)
          col += a.col_partials[a.col_offset[k] + j];
        float& s = col_stat[b * t.cols + j];
        s = R::ema(s, static_cast<float>(col / t.rows), w);
      }
      for (int64_t r = thread; r < t.rows; r += kFactoredThreads) {
        float& s = row_stat[b * t.rows + r];
        s = R::ema(s, static_cast<float>(row_sums[b * t.rows + r] / t.cols), w);
      }
    });
    block.each([&](int32_t thread) {
      if (thread != 0) return;
      double row_stat_sum = 0.0;
      for (int64_t r = 0; r < t.rows; ++r) row_stat_sum += row_stat[b * t.rows + r];
      a.row_floor[t.batch_offset + b] =
          R::row_mean_floor(static_cast<float>(row_stat_sum / t.rows), static_cast<float>(a.eps1));
    });
    batch_begin = batch_end;
  }
}

// (c) item k: the sum of U^2, from the statistics (b) wrote.
template <class R, typename P, class Block>
FUSEDOPT_HD void reduce_updates_item(const FactoredArgs<R>& a, int64_t k, Block& block) {
  const ReduceItem item = a.items[k];
  const FactoredSlot& t = a.slots[item.tensor];
  const typename R::PerTensor s = a.scalars[item.tensor];
  const P* grad = static_cast<const P*>(t.grad) + item.start;
  const int64_t cols = item.cols;
  const float scale = factored_grad_scale(a);
  if (t.factored) {
    const float* row_stat = t.state[kRowStat] + item.batch * t.rows + item.row0;
    const float* col_stat = t.state[kColStat] + item.batch * t.cols;
    const float floor = a.row_floor[t.batch_offset + item.batch];
    const auto update_sq = [&](int64_t r, int64_t j) {
      float g = to_float(grad[r * cols + j]);
      if (scale != 0.0f) g = g / scale;
      const float v = R::factored_variance(row_stat[r], col_stat[j], floor);
      const float u = R::raw_update(g, v, s.eps1_sq);
      return u * u;
    };
    item_row_sums(block, item, update_sq, nullptr, a.update_sq + k);
    return;
  }
  const float* full = t.state[kFullStat] + item.start;
  const auto update_sq = [&](int64_t, int64_t j) {
    float g = to_float(grad[j]);
    if (scale != 0.0f) g = g / scale;
    const float v = R::vector_variance(full[j], g, s.ema_weight);
    const float u = R::raw_update(g, v, s.eps1_sq);
    return u * u;
  };
  item_row_sums(block, item, update_sq, nullptr, a.update_sq + k);
}

// (d) param i, one thread: the clip's step size; then its count + 1 (every
// param, an empty one too, as the cpu backend).
template <class R>
FUSEDOPT_HD void finish_slot(const FactoredArgs<R>& a, int64_t i) {
  const FactoredSlot& t = a.slots[i];
  const int64_t numel = t.batch * t.rows * t.cols;
  if (numel != 0) {
    double update_sq = 0.0;
    for (int64_t k = t.first_item; k < t.end_item; ++k) update_sq += a.update_sq[k];
    a.scalars[i].step_size =
        R::step_size(a.config, a.scale[i], update_sq, static_cast<double>(numel));
  }
  *t.step += 1.0f;
}

// (e) item k: the element pass, flat over the item's elements.
template <class R, typename P, class Block>
FUSEDOPT_HD void apply_item(const FactoredArgs<R>& a, int64_t k, Block& block) {
  const ReduceItem item = a.items[k];
  const FactoredSlot& t = a.slots[item.tensor];
  const typename R::PerTensor s = a.scalars[item.tensor];
  const float scale = factored_grad_scale(a);
  P* param = static_cast<P*>(t.param) + item.start;
  P* grad = static_cast<P*>(t.grad) + item.start;
  float* momentum = t.state[kMomentum] != nullptr ? t.state[kMomentum] + item.start : nullptr;
  // int32: an item holds at most max(kReduceItemElements, cols) < 2^31 elements.
  const int32_t cols = static_cast<int32_t>(item.cols);
  const int32_t n = static_cast<int32_t>(item.rows * item.cols);
  const float* row_stat =
      t.factored ? t.state[kRowStat] + item.batch * t.rows + item.row0 : nullptr;
  const float* col_stat = t.factored ? t.state[kColStat] + item.batch * t.cols : nullptr;
  float* full = t.factored ? nullptr : t.state[kFullStat] + item.start;
  const float floor = t.factored ? a.row_floor[t.batch_offset + item.batch] : 0.0f;
  // g of element e, unscaled (and stored back unscaled) under a GradScaler.
  const auto load_grad = [&](int32_t e) {
    float g = to_float(grad[e]);
    if (scale != 0.0f) {
      g = g / scale;
      from_float(g, grad[e]);
    }
    return g;
  };
  // U, the momentum and p of element e, from its g and V.
  const auto update = [&](int32_t e, float g, float v) {
    const float u = R::raw_update(g * a.grad_sign, v, s.eps1_sq);
    float p;
    if (momentum != nullptr) {
      float m = momentum[e];
      p = R::apply(to_float(param[e]), u, &m, s);
      momentum[e] = m;
    } else {
      p = R::apply(to_float(param[e]), u, nullptr, s);
    }
    from_float(p, param[e]);
  };
  // One loop per kind of V, so that neither holds the other's pointers.
  block.each([&](int32_t thread) {
    if (full == nullptr) {
      for (int32_t e = thread; e < n; e += kFactoredThreads) {
        const float g = load_grad(e);
        const int32_t r = e / cols;
        update(e, g, R::factored_variance(row_stat[r], col_stat[e - r * cols], floor));
      }
    } else {
      for (int32_t e = thread; e < n; e += kFactoredThreads) {
        const float g = load_grad(e);
        const float v = R::vector_variance(full[e], g, s.ema_weight);
        full[e] = v;
        update(e, g, v);
      }
    }
  });
}

}  // namespace fusedopt::mta
