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
// deterministic (Note [deterministic blocked reductions] in reduce.h).
#pragma once

#include <cstdint>
#include <vector>

#include "fusedopt/core/storage.h"
#include "reduce.h"

namespace fusedopt::cpu {

// The states of a factored rule, in its kStateNames order.
enum FactoredState : int { kRowStat, kColStat, kFullStat, kMomentum, kFactoredStates };

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

template <class R>
class FactoredStep {
 public:
  // `grad_scale` 0: no GradScaler. `dtype_eps`: the machine epsilon of the
  // params' dtype (the rule's default eps1).
  FactoredStep(const typename R::Config& config, double lr, ParamDtype dtype, float grad_scale,
               double dtype_eps, std::vector<FactoredTensor> tensors);

  int64_t items() const { return static_cast<int64_t>(items_.size()); }
  int64_t tensors() const { return static_cast<int64_t>(tensors_.size()); }

  void reduce_inputs(int64_t item_begin, int64_t item_end);
  void update_statistics(int64_t tensor_begin, int64_t tensor_end);
  void reduce_updates(int64_t item_begin, int64_t item_end);
  void finish_updates(int64_t tensor_begin, int64_t tensor_end);
  void apply(int64_t item_begin, int64_t item_end);

 private:
  template <typename P>
  void reduce_inputs_item(const ReduceItem& item, int64_t index);
  template <typename P>
  void reduce_updates_item(const ReduceItem& item, int64_t index);
  template <typename P>
  void apply_item(const ReduceItem& item);

  typename R::Config config_;
  double lr_;
  ParamDtype dtype_;
  float grad_scale_;
  float grad_sign_;
  double eps1_;
  std::vector<FactoredTensor> tensors_;
  std::vector<ReduceItem> items_;
  std::vector<int64_t> first_item_;     // per tensor, its first item (items_ order)
  std::vector<int64_t> row_offset_;     // per tensor, into row_sums_ (batch * rows)
  std::vector<int64_t> col_offset_;     // per item, into col_partials_ (cols)
  std::vector<int64_t> batch_offset_;   // per tensor, into row_floor_ (batch)
  std::vector<double> row_sums_, col_partials_, param_sq_, update_sq_;  // the last two per item
  std::vector<float> row_floor_;        // max(mean(row statistic), eps1) per matrix
  std::vector<typename R::PerTensor> scalars_;
  std::vector<double> scale_;           // per tensor, the rule's step scale before the clip
};

}  // namespace fusedopt::cpu
