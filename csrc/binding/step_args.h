// One call of an op of the family fusedopt::<rule>_step_, unpacked from the
// dispatcher's stack, and the schema it was unpacked by. Every rule's op has
// the same shape (Note [one op family]):
//   <rule>_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] states,
//                Tensor(d!)[] state_steps, *, float lr, <R::kHyper...>,
//                Tensor? grad_scale=None, Tensor? found_inf=None,
//                int store_policy=0, Tensor(e!)[]? store=None, int[] store_tags=[],
//                int rounding_seed=0) -> ()
// with a `.tensor_lr` overload taking `Tensor lr`. `states` is state-major
// (Note [state-major lists] in python/fusedopt/registry.py); `state_steps` is
// empty for a rule without step counts. The last four are a call's
// master-weight policy (Note [master weights] in core/master.h; Note [store
// arguments] in checks.h).
//
// Note [one op family]: the schemas are generated from the rule (its kHyper),
// so one boxed kernel per device serves every rule: it reads the
// hyperparameters as doubles in schema order and hands them to R::config.
#pragma once

#include <ATen/core/stack.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

#include "fusedopt/core/master.h"
#include "fusedopt/core/rule.h"

namespace fusedopt::binding {

// A Tensor[] argument, read in place on the dispatcher's stack: no copy and no
// refcount traffic per tensor (copying the lists cost ~0.3 us per tensor, most
// of it in releasing the copies' Python references; measured with 2000 params).
class TensorListView {
 public:
  TensorListView() = default;
  explicit TensorListView(c10::ArrayRef<c10::IValue> items) : items_(items) {}
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  const at::Tensor& operator[](size_t i) const { return items_[i].toTensor(); }

 private:
  c10::ArrayRef<c10::IValue> items_;
};

// Valid while the call's inputs stay on the stack.
struct StepArgs {
  TensorListView params, grads, states, steps;
  double lr = 0.0;                       // the float overload's lr
  std::optional<at::Tensor> lr_tensor;   // the tensor_lr overload's lr
  std::vector<double> hyper;             // R::kHyper's values, in order
  std::optional<at::Tensor> grad_scale, found_inf;
  StorePolicy store_policy = StorePolicy::kNone;  // Note [store arguments] in checks.h
  TensorListView store;
  c10::ArrayRef<c10::IValue> store_tags;  // ints, read in place as the lists are
  int64_t rounding_seed = 0;              // the seed's 64 bits as a signed int64
};

// Inputs of a step op before any extra arguments (the test-only ops add some).
constexpr size_t kListArgs = 4;  // params, grads, states, state_steps
constexpr size_t kScalerArgs = 2;  // grad_scale, found_inf
constexpr size_t kStoreArgs = 4;   // store_policy, store, store_tags, rounding_seed

template <class R>
constexpr size_t step_arg_count() {
  return kListArgs + 1 + std::size(R::kHyper) + kScalerArgs + kStoreArgs;
}

// The step op's arguments, `extra` inputs before the stack's end; they stay
// on the stack, and must until the step is done (the lists are views).
template <class R>
StepArgs peek_step_args(const torch::jit::Stack& stack, size_t extra) {
  const size_t n = step_arg_count<R>();
  auto args = torch::jit::last(stack, n + extra);
  StepArgs a;
  a.params = TensorListView(args[0].toListRef());
  a.grads = TensorListView(args[1].toListRef());
  a.states = TensorListView(args[2].toListRef());
  a.steps = TensorListView(args[3].toListRef());
  if (args[4].isTensor()) {
    a.lr_tensor = args[4].toTensor();
  } else {
    a.lr = args[4].toDouble();
  }
  for (size_t i = 0; i < std::size(R::kHyper); ++i) {
    const c10::IValue& v = args[5 + i];
    a.hyper.push_back(v.isBool() ? static_cast<double>(v.toBool())
                      : v.isInt() ? static_cast<double>(v.toInt())
                                  : v.toDouble());
  }
  const size_t scaler = 5 + std::size(R::kHyper);
  if (!args[scaler].isNone()) a.grad_scale = args[scaler].toTensor();
  if (!args[scaler + 1].isNone()) a.found_inf = args[scaler + 1].toTensor();
  const size_t store = scaler + kScalerArgs;
  a.store_policy = static_cast<StorePolicy>(args[store].toInt());
  // (A Tensor[] argument cannot default to []: None stands for no tensors.)
  if (!args[store + 1].isNone()) a.store = TensorListView(args[store + 1].toListRef());
  a.store_tags = args[store + 2].toListRef();
  a.rounding_seed = args[store + 3].toInt();
  return a;
}

// The schema of the op `name` (e.g. "adam_step_.tensor_lr") whose lr has
// type `lr_type` ("float" or "Tensor"), with `extra` appended after
// rounding_seed and `returns` as its result.
template <class R>
std::string step_schema(const std::string& name, const char* lr_type,
                        const std::string& extra = "", const std::string& returns = "()") {
  std::string s = name +
                  "(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] states, "
                  "Tensor(d!)[] state_steps, *, " +
                  lr_type + " lr";
  for (const HyperArg& arg : R::kHyper) {
    const char* type = arg.type == HyperType::kFloat ? "float"
                       : arg.type == HyperType::kInt ? "int"
                                                      : "bool";
    s += std::string(", ") + type + " " + arg.name;
  }
  return s +
         ", Tensor? grad_scale=None, Tensor? found_inf=None, int store_policy=0, "
         "Tensor(e!)[]? store=None, int[] store_tags=[], int rounding_seed=0" +
         extra + ") -> " + returns;
}

}  // namespace fusedopt::binding
