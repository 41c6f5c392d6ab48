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

// Note [master weights] in core/master.h, as the op receives a policy: one
// trailing run of n tensors after the rule's states (their storage's count,
// `rule_states`), which keeps the op schemas as they are: each param's master
// (float32) or Kahan compensation (the param's dtype), or for stochastic
// rounding an int64 [seed's bits, rounding step, tag]. `rule_args` gets `a`
// without that run. Checks the run (and that the params are bf16/fp16 and the
// states not 8-bit); kNone when there is no run.
StorePolicy split_store(const char* rule, const StepArgs& a, size_t rule_states,
                        StateDtype state_dtype, StepArgs& rule_args);

// All step counts one-element float32 tensors on `device`.
void check_steps_on(const StepArgs& a, c10::Device device);

ParamDtype param_dtype(at::ScalarType t);

}  // namespace fusedopt::binding
