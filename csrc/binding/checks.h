// The binding's argument checks, shared by every rule and device: they run
// before anything is written, so an op that throws leaves params, grads,
// states and step counts exactly as they were.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "fusedopt/core/master.h"
#include "fusedopt/core/rule.h"
#include "fusedopt/core/storage.h"
#include "step_args.h"

namespace fusedopt::binding {

// The names of the states a call uses, in the rule's order.
template <class R>
std::vector<const char*> used_state_names(uint32_t mask) {
  std::vector<const char*> names;
  for (int k = 0; k < R::kStates; ++k) {
    if ((mask >> k) & 1u) names.push_back(R::kStateNames[k]);
  }
  return names;
}

// The storage of a call's states (Note [state dtypes] in core/storage.h), read
// from the first state tensor: float32, bfloat16, or int8/uint8 codes (8-bit
// blockwise, whose `states` list holds the codes of each used state, then each
// one's absmax, both state-major). check_lists checks that the rest agree.
StateDtype state_dtype_of(const StepArgs& a);

// Bit k set when the rule's state k (of `n_states`; `mask`: those the call
// uses) has int8 8-bit codes (the signed map).
uint32_t signed_code_mask(const StepArgs& a, uint32_t mask, int n_states);

// List lengths, dtypes, devices, shapes and layouts of a call's tensors;
// `scalar_lists` is kScalarLists<R> (core/rule.h).
void check_lists(const char* rule, const StepArgs& a, const std::vector<const char*>& state_names,
                 int scalar_lists, c10::DeviceType device_type,
                 StateDtype state_dtype = StateDtype::kFloat32);

// lr (finite, >= 0) and the rule's own checks; throws naming the constraint.
void check_hyper(const char* rule, double lr, const HyperCheck& ck);

// grad_scale's value, checked: a nonzero float32, inf and NaN included (the
// loops use 0 for "no scaler").
double checked_grad_scale(const at::Tensor& grad_scale);

// A one-element CPU tensor's value as a double (grad_scale, found_inf, lr).
double cpu_scalar(const at::Tensor& t, const char* name);

// A call's lr and the rule's config, checked (check_hyper): `lr` the float
// overload's, or a tensor lr's value read on the host; with `device_lr` a
// tensor lr on a GPU stays there (lr_on_device, lr 0) and is not
// range-checked, as reading it would sync the host.
template <class R>
struct CheckedHyper {
  double lr;
  bool lr_on_device;
  typename R::Config config;
};

template <class R>
CheckedHyper<R> checked_hyper(const char* rule, const StepArgs& a, bool device_lr) {
  const bool lr_on_device =
      device_lr && a.lr_tensor.has_value() && !a.lr_tensor->device().is_cpu();
  const double lr =
      a.lr_tensor.has_value() && !lr_on_device ? cpu_scalar(*a.lr_tensor, "lr") : a.lr;
  HyperCheck ck;
  R::check(a.hyper.data(), ck);
  check_hyper(rule, lr_on_device ? 0.0 : lr, ck);
  return {lr, lr_on_device, R::config(a.hyper.data())};
}

// Note [store arguments]: how the op receives a master-weight policy (Note
// [master weights] in core/master.h), in four named arguments after found_inf:
// `store_policy` (a StorePolicy), and per param in `store` its master
// (float32) or Kahan compensation (the param's dtype), both in the param's
// shape and layout, or for stochastic rounding its rounding_step: a
// one-element float32 count on the param's device that the op advances
// after the loops as it does state_steps (Philox's counter takes count + 1).
// On a GPU the kernels read it in memory and a launch after the element
// launches advances it (unless found_inf): no host sync, capturable, as the
// device step counts; `store_tags` the params' tags and `rounding_seed` the
// seed's 64 bits, for stochastic rounding only. Checks them, and that the
// params are bf16/fp16 (bf16 for stochastic rounding); the policy.
StorePolicy check_store(const char* rule, const StepArgs& a);

// A backend (or rule) whose store has no policies yet: refuses any.
void check_no_store(const char* rule, const StepArgs& a, const char* what);

// All step counts one-element float32 tensors on `device`.
void check_steps_on(const StepArgs& a, c10::Device device);

ParamDtype param_dtype(at::ScalarType t);

}  // namespace fusedopt::binding
