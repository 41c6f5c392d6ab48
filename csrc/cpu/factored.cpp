// The CPU passes of the factored rules (factored.h), instantiated once per
// rule of FUSEDOPT_FOR_EACH_REDUCTION_RULE. CMake compiles this file once per
// instruction set (FUSEDOPT_ISA), with the element loops' flags
// (-ffp-contract=off: no contraction, as every backend). The passes are bound
// by the divisions and square roots of (c) and (d) more than by memory: one
// thread, 12 GPT-2-sized tensors (11.8M params): 52 ms baseline, 30 ms AVX2,
// 21 ms AVX-512 per step.
//
// Bytes per element of one step (fp32 param, no momentum): (a) reads p and g,
// (c) reads g, (d) reads p and g and writes p: 24 B; the statistics are
// O(rows + cols) per matrix. A vector adds its statistic's read in (c) and
// read+write in (d) (12 B); the momentum adds a read+write in (d) (8 B).
#include "factored.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "fusedopt/rules/reduction_registry.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must name the instruction set this translation unit is built for"
#endif

namespace fusedopt::cpu::FUSEDOPT_ISA {
namespace {

// The row buffer of reduce_item, one per thread, reused across items.
float* scratch(int64_t n) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

}  // namespace

template <class R>
FactoredStep<R>::FactoredStep(const typename R::Config& config, double lr, ParamDtype dtype,
                              float grad_scale, double dtype_eps,
                              std::vector<FactoredTensor> tensors)
    : config_(config),
      lr_(lr),
      dtype_(dtype),
      grad_scale_(grad_scale),
      grad_sign_(R::grad_sign(config)),
      eps1_(R::eps1_of(config, dtype_eps)),
      tensors_(std::move(tensors)) {
  const size_t n = tensors_.size();
  first_item_.resize(n + 1);
  row_offset_.resize(n);
  batch_offset_.resize(n);
  int64_t rows = 0, batches = 0, cols = 0;
  for (size_t i = 0; i < n; ++i) {
    const FactoredTensor& t = tensors_[i];
    first_item_[i] = items();
    row_offset_[i] = rows;
    batch_offset_[i] = batches;
    plan_items(static_cast<int32_t>(i), t.batch, t.rows, t.cols, !t.factored, items_);
    if (t.factored) {
      rows += t.batch * t.rows;
      batches += t.batch;
    }
  }
  first_item_[n] = items();
  col_offset_.resize(items_.size());
  for (size_t k = 0; k < items_.size(); ++k) {
    col_offset_[k] = cols;
    if (tensors_[items_[k].tensor].factored) cols += items_[k].cols;
  }
  row_sums_.assign(rows, 0.0);
  col_partials_.assign(cols, 0.0);
  param_sq_.assign(items_.size(), 0.0);
  update_sq_.assign(items_.size(), 0.0);
  row_floor_.assign(batches, 0.0f);
  scalars_.resize(n);
  scale_.assign(n, 0.0);
}

template <class R>
template <typename P>
void FactoredStep<R>::reduce_inputs_item(const ReduceItem& item, int64_t index) {
  const FactoredTensor& t = tensors_[item.tensor];
  const P* param = static_cast<const P*>(t.param) + item.start;
  const P* grad = static_cast<const P*>(t.grad) + item.start;
  const int64_t cols = item.cols;
  float* buffer = scratch(cols);
  param_sq_[index] = reduce_item(
      item,
      [&](int64_t r, float* out) {
        for (int64_t j = 0; j < cols; ++j) {
          const float p = to_float(param[r * cols + j]);
          out[j] = p * p;
        }
      },
      buffer, nullptr, nullptr);
  if (!t.factored) return;
  const float scale = grad_scale_;
  reduce_item(
      item,
      [&](int64_t r, float* out) {
        for (int64_t j = 0; j < cols; ++j) {
          float g = to_float(grad[r * cols + j]);
          if (scale != 0.0f) g = g / scale;
          out[j] = g * g;
        }
      },
      buffer, row_sums_.data() + row_offset_[item.tensor] + item.batch * t.rows + item.row0,
      col_partials_.data() + col_offset_[index]);
}

template <class R>
void FactoredStep<R>::reduce_inputs(int64_t item_begin, int64_t item_end) {
  for (int64_t k = item_begin; k < item_end; ++k) {
    switch (dtype_) {
      case ParamDtype::kFloat32:
        reduce_inputs_item<float>(items_[k], k);
        break;
      case ParamDtype::kBFloat16:
        reduce_inputs_item<Bf16>(items_[k], k);
        break;
      case ParamDtype::kFloat16:
        reduce_inputs_item<Fp16>(items_[k], k);
        break;
    }
  }
}

template <class R>
void FactoredStep<R>::update_statistics(int64_t tensor_begin, int64_t tensor_end) {
  for (int64_t i = tensor_begin; i < tensor_end; ++i) {
    const FactoredTensor& t = tensors_[i];
    const int64_t numel = t.batch * t.rows * t.cols;
    if (numel == 0) continue;
    double param_sq = 0.0;
    for (int64_t k = first_item_[i]; k < first_item_[i + 1]; ++k) param_sq += param_sq_[k];
    scalars_[i] = R::per_tensor(config_, lr_, t.step, eps1_);
    scale_[i] = R::alpha(config_, lr_, t.step, param_sq, static_cast<double>(numel));
    if (!t.factored) continue;
    const float w = scalars_[i].ema_weight;
    const double* rows = row_sums_.data() + row_offset_[i];
    float* row_stat = t.state[kRowStat];
    float* col_stat = t.state[kColStat];
    std::vector<double> cols(t.cols);
    for (int64_t b = 0; b < t.batch; ++b) {
      // The column sums of matrix b: its items' partials, in item order.
      std::fill(cols.begin(), cols.end(), 0.0);
      for (int64_t k = first_item_[i]; k < first_item_[i + 1]; ++k) {
        if (items_[k].batch != b) continue;
        const double* partial = col_partials_.data() + col_offset_[k];
        for (int64_t j = 0; j < t.cols; ++j) cols[j] += partial[j];
      }
      double row_stat_sum = 0.0;
      for (int64_t r = 0; r < t.rows; ++r) {
        float& s = row_stat[b * t.rows + r];
        s = R::ema(s, static_cast<float>(rows[b * t.rows + r] / t.cols), w);
        row_stat_sum += s;
      }
      for (int64_t j = 0; j < t.cols; ++j) {
        float& s = col_stat[b * t.cols + j];
        s = R::ema(s, static_cast<float>(cols[j] / t.rows), w);
      }
      row_floor_[batch_offset_[i] + b] = R::row_mean_floor(
          static_cast<float>(row_stat_sum / t.rows), static_cast<float>(eps1_));
    }
  }
}

template <class R>
template <typename P>
void FactoredStep<R>::reduce_updates_item(const ReduceItem& item, int64_t index) {
  const FactoredTensor& t = tensors_[item.tensor];
  const typename R::PerTensor& s = scalars_[item.tensor];
  const P* grad = static_cast<const P*>(t.grad) + item.start;
  const int64_t cols = item.cols;
  const float scale = grad_scale_;
  if (t.factored) {
    const float* row_stat = t.state[kRowStat] + item.batch * t.rows + item.row0;
    const float* col_stat = t.state[kColStat] + item.batch * t.cols;
    const float floor = row_floor_[batch_offset_[item.tensor] + item.batch];
    update_sq_[index] = reduce_item(
        item,
        [&](int64_t r, float* out) {
          for (int64_t j = 0; j < cols; ++j) {
            float g = to_float(grad[r * cols + j]);
            if (scale != 0.0f) g = g / scale;
            const float v = R::factored_variance(row_stat[r], col_stat[j], floor);
            const float u = R::raw_update(g, v, s.eps1_sq);
            out[j] = u * u;
          }
        },
        scratch(cols), nullptr, nullptr);
    return;
  }
  const float* full = t.state[kFullStat] + item.start;
  update_sq_[index] = reduce_item(
      item,
      [&](int64_t, float* out) {
        for (int64_t j = 0; j < cols; ++j) {
          float g = to_float(grad[j]);
          if (scale != 0.0f) g = g / scale;
          const float v = R::vector_variance(full[j], g, s.ema_weight);
          const float u = R::raw_update(g, v, s.eps1_sq);
          out[j] = u * u;
        }
      },
      scratch(cols), nullptr, nullptr);
}

template <class R>
void FactoredStep<R>::reduce_updates(int64_t item_begin, int64_t item_end) {
  for (int64_t k = item_begin; k < item_end; ++k) {
    switch (dtype_) {
      case ParamDtype::kFloat32:
        reduce_updates_item<float>(items_[k], k);
        break;
      case ParamDtype::kBFloat16:
        reduce_updates_item<Bf16>(items_[k], k);
        break;
      case ParamDtype::kFloat16:
        reduce_updates_item<Fp16>(items_[k], k);
        break;
    }
  }
}

template <class R>
void FactoredStep<R>::finish_updates(int64_t tensor_begin, int64_t tensor_end) {
  for (int64_t i = tensor_begin; i < tensor_end; ++i) {
    const FactoredTensor& t = tensors_[i];
    const int64_t numel = t.batch * t.rows * t.cols;
    if (numel == 0) continue;
    double update_sq = 0.0;
    for (int64_t k = first_item_[i]; k < first_item_[i + 1]; ++k) update_sq += update_sq_[k];
    scalars_[i].step_size =
        R::step_size(config_, scale_[i], update_sq, static_cast<double>(numel));
  }
}

// One row of the element pass, in a function of its own whose __restrict__
// parameters and compile-time switches (unscale, vector statistic, momentum)
// leave gcc a loop without control flow to vectorize (as loop.cpp's
// run_elements). `col` and `row`/`floor` serve a factored row, `full` a vector.
template <class R, typename P, bool kUnscale, bool kFull, bool kMomentum>
__attribute__((noinline)) void apply_row(P* __restrict__ param, P* __restrict__ grad,
                                         float* __restrict__ full, float* __restrict__ momentum,
                                         const float* __restrict__ col, float row, float floor,
                                         int64_t n, float scale, float sign,
                                         const typename R::PerTensor s) {
  for (int64_t j = 0; j < n; ++j) {
    float g = to_float(grad[j]);
    if constexpr (kUnscale) {
      g = g / scale;
      from_float(g, grad[j]);
    }
    float v;
    if constexpr (kFull) {
      v = R::vector_variance(full[j], g, s.ema_weight);
      full[j] = v;
    } else {
      v = R::factored_variance(row, col[j], floor);
    }
    const float u = R::raw_update(g * sign, v, s.eps1_sq);
    float p;
    if constexpr (kMomentum) {
      float m = momentum[j];
      p = R::apply(to_float(param[j]), u, &m, s);
      momentum[j] = m;
    } else {
      p = R::apply(to_float(param[j]), u, nullptr, s);
    }
    from_float(p, param[j]);
  }
}

template <class R, typename P, bool kUnscale, bool kFull>
void apply_row_for(bool with_momentum, P* param, P* grad, float* full, float* momentum,
                   const float* col, float row, float floor, int64_t n, float scale, float sign,
                   const typename R::PerTensor& s) {
  if (with_momentum) {
    apply_row<R, P, kUnscale, kFull, true>(param, grad, full, momentum, col, row, floor, n,
                                           scale, sign, s);
  } else {
    apply_row<R, P, kUnscale, kFull, false>(param, grad, full, momentum, col, row, floor, n,
                                            scale, sign, s);
  }
}

template <class R>
template <typename P>
void FactoredStep<R>::apply_item(const ReduceItem& item) {
  const FactoredTensor& t = tensors_[item.tensor];
  const typename R::PerTensor& s = scalars_[item.tensor];
  const bool unscale = grad_scale_ != 0.0f;
  const bool with_momentum = t.state[kMomentum] != nullptr;
  const int64_t cols = item.cols;
  for (int64_t r = 0; r < item.rows; ++r) {
    const int64_t start = item.start + r * cols;
    P* param = static_cast<P*>(t.param) + start;
    P* grad = static_cast<P*>(t.grad) + start;
    float* momentum = with_momentum ? t.state[kMomentum] + start : nullptr;
    if (t.factored) {
      const float* col = t.state[kColStat] + item.batch * t.cols;
      const float row = t.state[kRowStat][item.batch * t.rows + item.row0 + r];
      const float floor = row_floor_[batch_offset_[item.tensor] + item.batch];
      (unscale ? apply_row_for<R, P, true, false> : apply_row_for<R, P, false, false>)(
          with_momentum, param, grad, nullptr, momentum, col, row, floor, cols, grad_scale_,
          grad_sign_, s);
    } else {
      float* full = t.state[kFullStat] + start;
      (unscale ? apply_row_for<R, P, true, true> : apply_row_for<R, P, false, true>)(
          with_momentum, param, grad, full, momentum, nullptr, 0.0f, 0.0f, cols, grad_scale_,
          grad_sign_, s);
    }
  }
}

template <class R>
void FactoredStep<R>::apply(int64_t item_begin, int64_t item_end) {
  for (int64_t k = item_begin; k < item_end; ++k) {
    switch (dtype_) {
      case ParamDtype::kFloat32:
        apply_item<float>(items_[k]);
        break;
      case ParamDtype::kBFloat16:
        apply_item<Bf16>(items_[k]);
        break;
      case ParamDtype::kFloat16:
        apply_item<Fp16>(items_[k]);
        break;
    }
  }
}

#define FUSEDOPT_INSTANTIATE(Type, name) template class FactoredStep<Type>;
FUSEDOPT_FOR_EACH_REDUCTION_RULE(FUSEDOPT_INSTANTIATE)
#undef FUSEDOPT_INSTANTIATE

}  // namespace fusedopt::cpu::FUSEDOPT_ISA
