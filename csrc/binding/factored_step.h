// The CPU side of a factored rule's op (cpu/factored.h; Note [reduction rules]
// in python/fusedopt/registry.py): checks, then the four passes, each one
// parallel region, then the step counts. Same schema as the op family
// (step_args.h); `states` is state-major over the states each param keeps
// (Note [param-shaped states] in python/fusedopt/registry.py): the row and
// column statistics for params of 2+ dims, the full statistic for the others,
// the momentum (when the config uses it) for all.
#pragma once

#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

#include "checks.h"
#include "cpu/factored.h"
#include "cpu/loop.h"

namespace fusedopt::binding {

// Below this many elements in a call, a pass runs on the calling thread (as
// cpu_step.h's kCpuMinParallelElements: waking the pool costs more).
constexpr int64_t kFactoredMinParallelElements = 1 << 15;

// Whether a param of `dim` dims keeps state k of a factored rule.
template <class R>
bool factored_keeps(int k, int64_t dim, const typename R::Config& c) {
  if (!R::state_used(k, c)) return false;
  if (k == cpu::kRowStat || k == cpu::kColStat) return dim >= 2;
  if (k == cpu::kFullStat) return dim < 2;
  return true;
}

// The shape of state k of a param of sizes `sizes`.
inline std::vector<int64_t> factored_state_shape(int k, c10::IntArrayRef sizes) {
  std::vector<int64_t> shape(sizes.begin(), sizes.end());
  if (k == cpu::kRowStat) shape[shape.size() - 1] = 1;
  if (k == cpu::kColStat) shape[shape.size() - 2] = 1;
  return shape;
}

// The machine epsilon of the params' dtype (torch.finfo(dtype).eps).
inline double dtype_eps(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16:
      return 0.0078125;  // 2^-7
    case at::kHalf:
      return 0.0009765625;  // 2^-10
    default:
      return 1.1920928955078125e-07;  // 2^-23
  }
}

// The four passes of one step, each one parallel region (or the calling
// thread, for a small call), with the passes of one instruction set.
template <class Step, class Config>
void run_factored(const Config& config, double lr, ParamDtype dtype, double scale, double eps,
                  std::vector<cpu::FactoredTensor>& tensors, bool parallel) {
  Step work(config, lr, dtype, static_cast<float>(scale), eps, std::move(tensors));
  const auto run = [parallel](int64_t count, const auto& body) {
    if (parallel) {
      at::parallel_for(0, count, 1, body);
    } else {
      body(0, count);
    }
  };
  run(work.items(), [&](int64_t b, int64_t e) { work.reduce_inputs(b, e); });
  run(work.tensors(), [&](int64_t b, int64_t e) { work.update_statistics(b, e); });
  run(work.items(), [&](int64_t b, int64_t e) { work.reduce_updates(b, e); });
  work.finish_updates(0, work.tensors());
  run(work.items(), [&](int64_t b, int64_t e) { work.apply(b, e); });
}

template <class R>
void factored_step_cpu(const char* rule, const StepArgs& a) {
  static_assert(static_cast<int>(R::kStates) == cpu::kFactoredStates,
                "a factored rule's states: cpu/factored.h");
  const double lr = a.lr_tensor.has_value() ? cpu_scalar(*a.lr_tensor, "lr") : a.lr;
  HyperCheck ck;
  R::check(a.hyper.data(), ck);
  check_hyper(rule, lr, ck);
  check_no_store(rule, a, "a factored rule's cpu step");
  const typename R::Config config = R::config(a.hyper.data());
  const size_t n = a.params.size();
  size_t want_states = 0;
  for (int k = 0; k < R::kStates; ++k) {
    for (size_t i = 0; i < n; ++i) want_states += factored_keeps<R>(k, a.params[i].dim(), config);
  }
  TORCH_CHECK(a.grads.size() == n && a.states.size() == want_states && a.steps.size() == n,
              "fusedopt: ", rule, ": for ", n, " params, want ", n, " grads, ", want_states,
              " states (state-major, each param's own) and ", n, " state_steps; got ",
              a.grads.size(), ", ", a.states.size(), " and ", a.steps.size());
  if (n == 0) return;
  const at::ScalarType dtype = a.params[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "fusedopt: params must be float32, bfloat16 or float16, got ", dtype);
  std::vector<cpu::FactoredTensor> tensors(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = a.params[i];
    const at::Tensor& g = a.grads[i];
    TORCH_CHECK(p.scalar_type() == dtype && p.device().is_cpu(),
                "fusedopt: all params of one call must be CPU tensors of one dtype; param ", i,
                " is ", p.scalar_type(), " on ", p.device().str());
    TORCH_CHECK(p.is_contiguous() && g.is_contiguous() && g.sizes() == p.sizes() &&
                    g.scalar_type() == dtype && g.device() == p.device(),
                "fusedopt: ", rule, ": param ", i, " and its grad must be contiguous ",
                "(its rows and columns are reduced) and alike in sizes, dtype and device; got ",
                "param ", p.sizes(), " strides ", p.strides(), ", grad ", g.sizes(), " strides ",
                g.strides(), " ", g.scalar_type());
    cpu::FactoredTensor& t = tensors[i];
    t.param = p.data_ptr();
    t.grad = g.data_ptr();
    t.factored = p.dim() >= 2;
    t.cols = t.factored ? p.size(-1) : p.numel();
    t.rows = t.factored ? p.size(-2) : 1;
    t.batch = t.factored ? p.numel() / std::max<int64_t>(t.rows * t.cols, 1) : 1;
    if (t.factored && t.rows * t.cols == 0) t.batch = 0;
  }
  // States, state-major: state k of each param that keeps one.
  size_t position = 0;
  for (int k = 0; k < R::kStates; ++k) {
    for (size_t i = 0; i < n; ++i) {
      const at::Tensor& p = a.params[i];
      tensors[i].state[k] = nullptr;
      if (!factored_keeps<R>(k, p.dim(), config)) continue;
      const at::Tensor& s = a.states[position++];
      const std::vector<int64_t> shape = factored_state_shape(k, p.sizes());
      TORCH_CHECK(s.scalar_type() == at::kFloat && s.device() == p.device() &&
                      s.sizes() == c10::IntArrayRef(shape) && s.is_contiguous(),
                  "fusedopt: ", rule, ": ", R::kStateNames[k], " ", i,
                  " must be a contiguous float32 tensor of sizes ", c10::IntArrayRef(shape),
                  " on ", p.device().str(), "; got ", s.scalar_type(), " of sizes ", s.sizes(),
                  " strides ", s.strides(), " on ", s.device().str());
      tensors[i].state[k] = static_cast<float*>(s.data_ptr());
    }
  }
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(a.steps[i].numel() == 1 && a.steps[i].scalar_type() == at::kFloat,
                "fusedopt: state_steps[", i, "] must be a one-element float32 tensor");
  }
  check_steps_on(a, c10::Device(c10::kCPU));
  const double scale = a.grad_scale.has_value() ? checked_grad_scale(*a.grad_scale) : 0.0;
  // GradScaler found an inf or NaN: skip the step entirely, step counts included.
  if (a.found_inf.has_value() && cpu_scalar(*a.found_inf, "found_inf") != 0.0) return;

  int64_t total = 0;
  std::vector<float*> steps(n);
  for (size_t i = 0; i < n; ++i) {
    steps[i] = static_cast<float*>(a.steps[i].data_ptr());
    // Note [step-count protocol]: the scalars of count + 1.
    tensors[i].step = static_cast<double>(*steps[i]) + 1.0;
    total += a.params[i].numel();
  }
  const ParamDtype pdtype = param_dtype(dtype);
  const double eps = dtype_eps(dtype);
  const bool parallel = total >= kFactoredMinParallelElements;
#ifdef FUSEDOPT_X86_ISAS
  const char* isa = cpu::selected_isa();
  if (std::strcmp(isa, "avx512") == 0) {
    run_factored<cpu::avx512::FactoredStep<R>>(config, lr, pdtype, scale, eps, tensors, parallel);
  } else if (std::strcmp(isa, "avx2") == 0) {
    run_factored<cpu::avx2::FactoredStep<R>>(config, lr, pdtype, scale, eps, tensors, parallel);
  } else {
    run_factored<cpu::baseline::FactoredStep<R>>(config, lr, pdtype, scale, eps, tensors,
                                                 parallel);
  }
#else
  run_factored<cpu::baseline::FactoredStep<R>>(config, lr, pdtype, scale, eps, tensors, parallel);
#endif
  for (float* step : steps) *step += 1.0f;
}

}  // namespace fusedopt::binding
