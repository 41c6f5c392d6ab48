// FactoredStep<R> in namespace fusedopt::cpu::FUSEDOPT_FACTORED_ISA: included
// by factored.h once per instruction set (no include guard, on purpose).
namespace fusedopt::cpu::FUSEDOPT_FACTORED_ISA {

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

}  // namespace fusedopt::cpu::FUSEDOPT_FACTORED_ISA
