#include "checks.h"

#include <cmath>

#include "fusedopt/core/blockwise8.h"

namespace fusedopt::binding {
namespace {

const char* dtype_name(at::ScalarType t) { return c10::toString(t); }

// Same sizes, and the same strides on every dim longer than 1: a size-1 dim's
// stride never moves an element, and autograd does not keep it equal (a
// channels_last (64, 32, 1, 1) weight's grad may come contiguous), so two such
// dense tensors still lay their elements out in the same order.
bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

void check_buffer(const at::Tensor& t, const at::Tensor& p, const char* name, size_t i,
                  at::ScalarType want, at::ScalarType or_else = at::ScalarType::Undefined) {
  TORCH_CHECK(t.device() == p.device(), "fusedopt: ", name, " ", i, " is on ", t.device().str(),
              ", its param on ", p.device().str());
  TORCH_CHECK(t.layout() == at::kStrided, "fusedopt: sparse ", name, " ", i,
              " is not supported");
  TORCH_CHECK(same_layout(t, p), "fusedopt: ", name, " ", i,
              " must have its param's sizes and strides; got sizes ", t.sizes(), " strides ",
              t.strides(), ", param sizes ", p.sizes(), " strides ", p.strides());
  TORCH_CHECK(t.scalar_type() == want || t.scalar_type() == or_else, "fusedopt: ", name, " ", i,
              " must be ", dtype_name(want),
              or_else == at::ScalarType::Undefined ? "" : " or ",
              or_else == at::ScalarType::Undefined ? "" : dtype_name(or_else), ", got ",
              dtype_name(t.scalar_type()));
}

// An 8-bit state's absmax: float32, one per block of its param's elements.
void check_absmax(const at::Tensor& t, const at::Tensor& p, const char* name, size_t i) {
  const int64_t blocks = (p.numel() + kBlock8 - 1) / kBlock8;
  TORCH_CHECK(t.device() == p.device() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                  t.numel() == blocks,
              "fusedopt: the absmax of ", name, " ", i, " must be a contiguous float32 tensor of ",
              blocks, " elements (one per ", kBlock8, " of its param's) on ", p.device().str(),
              ", got ", t.numel(), " elements of ", dtype_name(t.scalar_type()), " on ",
              t.device().str());
}

}  // namespace

StateDtype state_dtype_of(const StepArgs& a) {
  if (a.states.empty()) return StateDtype::kFloat32;
  switch (a.states[0].scalar_type()) {
    case at::kBFloat16:
      return StateDtype::kBFloat16;
    case at::kChar:
    case at::kByte:
      return StateDtype::kInt8Blockwise;
    default:
      return StateDtype::kFloat32;
  }
}

uint32_t signed_code_mask(const StepArgs& a, uint32_t mask, int n_states) {
  const size_t n = a.params.size();
  uint32_t signed_mask = 0;
  for (int k = 0, used = 0; k < n_states && n > 0; ++k) {
    if (!((mask >> k) & 1u)) continue;
    if (a.states[used++ * n].scalar_type() == at::kChar) signed_mask |= 1u << k;
  }
  return signed_mask;
}

StorePolicy check_store(const char* rule, const StepArgs& a) {
  const StorePolicy policy = a.store_policy;
  const size_t n = a.params.size();
  TORCH_CHECK(policy >= StorePolicy::kNone && policy <= StorePolicy::kStochasticRounding,
              "fusedopt: ", rule, ": store_policy must be 0 to 3 (core/master.h), got ",
              static_cast<int>(policy));
  if (policy == StorePolicy::kNone) {
    TORCH_CHECK(a.store.empty() && a.store_tags.empty(), "fusedopt: ", rule,
                ": store and store_tags are for a store_policy; got ", a.store.size(), " and ",
                a.store_tags.size(), " with none");
    return policy;
  }
  const bool rounding = policy == StorePolicy::kStochasticRounding;
  TORCH_CHECK(a.store.size() == n && a.store_tags.size() == (rounding ? n : 0), "fusedopt: ",
              rule, ": for ", n, " params, want ", n, " store tensors and ", rounding ? n : 0,
              " store_tags; got ", a.store.size(), " and ", a.store_tags.size());
  if (n == 0) return policy;
  const at::ScalarType dtype = a.params[0].scalar_type();
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kHalf, "fusedopt: ", rule,
              ": a master-weight policy applies to bfloat16 and float16 params, got ", dtype);
  TORCH_CHECK(!rounding || dtype == at::kBFloat16, "fusedopt: ", rule,
              ": stochastic rounding applies to bfloat16 params, got ", dtype);
  const at::ScalarType want = policy == StorePolicy::kKahanSum ? dtype : at::kFloat;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = a.params[i];
    const at::Tensor& t = a.store[i];
    if (rounding) {
      TORCH_CHECK(t.scalar_type() == want && t.numel() == 1 && t.device() == p.device(),
                  "fusedopt: ", rule, ": store tensor ", i,
                  " must be a one-element float32 rounding_step count on ", p.device(),
                  " (its param's device), got ", t.numel(), " elements of ", t.scalar_type(),
                  " on ", t.device());
      continue;
    }
    TORCH_CHECK(t.scalar_type() == want && t.device() == p.device(), "fusedopt: ", rule,
                ": store tensor ", i, " must be ", want, " on ", p.device(), ", got ",
                t.scalar_type(), " on ", t.device());
    TORCH_CHECK(t.sizes() == p.sizes() && same_layout(t, p), "fusedopt: ", rule,
                ": store tensor ", i, " must have its param's shape ", p.sizes(), " and strides ",
                p.strides(), ", got ", t.sizes(), " and ", t.strides());
  }
  return policy;
}

void check_no_store(const char* rule, const StepArgs& a, const char* what) {
  TORCH_CHECK(a.store_policy == StorePolicy::kNone, "fusedopt: ", rule, ": ", what,
              " has no master-weight store yet (store_policy ", static_cast<int>(a.store_policy),
              ")");
}

void check_lists(const char* rule, const StepArgs& a, const std::vector<const char*>& state_names,
                 int scalar_lists, c10::DeviceType device_type, StateDtype state_dtype) {
  const size_t n = a.params.size();
  const bool blockwise = state_dtype == StateDtype::kInt8Blockwise;
  // 8-bit states: codes, then absmax, per used state.
  const size_t want_states = n * state_names.size() * (blockwise ? 2 : 1);
  const size_t want_steps = n * static_cast<size_t>(scalar_lists);
  TORCH_CHECK(a.grads.size() == n && a.states.size() == want_states &&
                  a.steps.size() == want_steps,
              "fusedopt: ", rule, ": for ", n, " params, want ", n, " grads, ", want_states,
              " states (", state_names.size(), " per param, state-major) and ", want_steps,
              " state_steps (", scalar_lists, " per param: count and scalar states); got ", a.grads.size(), ", ", a.states.size(), " and ",
              a.steps.size());
  TORCH_CHECK(n < static_cast<size_t>(INT32_MAX), "fusedopt: at most 2^31-1 tensors per call");
  if (n == 0) return;
  const at::ScalarType dtype = a.params[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "fusedopt: params must be float32, bfloat16 or float16, got ", dtype_name(dtype));
  const c10::Device device = a.params[0].device();
  TORCH_CHECK(device.type() == device_type, "fusedopt: this kernel takes ",
              c10::DeviceTypeName(device_type), " tensors, got params on ", device.str());
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = a.params[i];
    TORCH_CHECK(p.scalar_type() == dtype && p.device() == device,
                "fusedopt: all params of one call must share dtype and device; param ", i, " is ",
                dtype_name(p.scalar_type()), " on ", p.device().str(), ", param 0 is ",
                dtype_name(dtype), " on ", device.str());
    TORCH_CHECK(p.layout() == at::kStrided, "fusedopt: sparse param ", i, " is not supported");
    // Element i of every buffer must be element i of the others in memory, so a
    // flat loop over the storage is an elementwise op: dense (no gaps, no
    // overlap) and the same layout. Contiguous and channels_last qualify; a
    // strided slice does not.
    TORCH_CHECK(p.is_non_overlapping_and_dense(), "fusedopt: param ", i,
                " must be dense (contiguous or a permutation of it); got sizes ", p.sizes(),
                " strides ", p.strides(), ". Step it with a contiguous copy instead.");
    check_buffer(a.grads[i], p, "grad", i, dtype);
    const size_t used = state_names.size();
    for (size_t k = 0; k < used; ++k) {
      const at::Tensor& state = a.states[k * n + i];
      switch (state_dtype) {
        case StateDtype::kFloat32:
          check_buffer(state, p, state_names[k], i, at::kFloat);
          break;
        case StateDtype::kBFloat16:
          check_buffer(state, p, state_names[k], i, at::kBFloat16);
          break;
        case StateDtype::kInt8Blockwise:
          // One map per state and call: the first param's code dtype.
          check_buffer(state, p, state_names[k], i, a.states[k * n].scalar_type());
          check_buffer(state, p, state_names[k], i, at::kChar, at::kByte);
          check_absmax(a.states[(used + k) * n + i], p, state_names[k], i);
          break;
      }
    }
  }
  for (size_t i = 0; i < a.steps.size(); ++i) {
    TORCH_CHECK(a.steps[i].numel() == 1 && a.steps[i].scalar_type() == at::kFloat,
                "fusedopt: state_steps[", i, "] must be a one-element float32 tensor, got ",
                a.steps[i].numel(), " elements of ", dtype_name(a.steps[i].scalar_type()));
  }
}

void check_hyper(const char* rule, double lr, const HyperCheck& ck) {
  TORCH_CHECK(std::isfinite(lr) && lr >= 0.0, "fusedopt: ", rule,
              ": lr must be finite and >= 0, got ", lr);
  TORCH_CHECK(ck.failure == nullptr, "fusedopt: ", rule, ": ", ck.failure, ", got ", ck.value);
}

double cpu_scalar(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.numel() == 1 && t.device().is_cpu(), "fusedopt: ", name,
              " must be a one-element CPU tensor here, got ", t.numel(), " elements on ",
              t.device().str());
  return t.item<double>();
}

double checked_grad_scale(const at::Tensor& grad_scale) {
  const double scale = cpu_scalar(grad_scale, "grad_scale");
  // Nonzero, as the loops read 0 as "no scaler". An inf or NaN scale is
  // allowed: max_grad_norm folds the clip coefficient into it (grad_scale /
  // coef, python/fusedopt/optim/base.py), and a non-finite norm makes the
  // coefficient 0 or NaN, so that every grad becomes 0 or NaN, as torch's
  // clip_grad_norm_ makes them.
  TORCH_CHECK(static_cast<float>(scale) != 0.0f,
              "fusedopt: grad_scale must be a nonzero float32 value, got ", scale);
  return scale;
}

void check_steps_on(const StepArgs& a, c10::Device device) {
  for (size_t i = 0; i < a.steps.size(); ++i) {
    TORCH_CHECK(a.steps[i].device() == device, "fusedopt: state_steps[", i, "] must be on ",
                device.str(), ", got ", a.steps[i].device().str());
  }
}

ParamDtype param_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16:
      return ParamDtype::kBFloat16;
    case at::kHalf:
      return ParamDtype::kFloat16;
    default:
      return ParamDtype::kFloat32;
  }
}

}  // namespace fusedopt::binding
