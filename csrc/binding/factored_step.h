// Both sides of a factored rule's op (Note [reduction rules] in
// python/fusedopt/registry.py), with one set of checks: on the CPU
// (cpu/factored.h) the four passes, each one parallel region, then the step
// counts; on CUDA (mta/factored.h, cuda/factored.h) five kernels on torch's
// current stream, which read and advance the counts on the device. Same schema as the op family
// (step_args.h); `states` is state-major over the states each param keeps
// (Note [param-shaped states] in python/fusedopt/registry.py): the row and
// column statistics for params of 2+ dims, the full statistic for the others,
// the momentum (when the config uses it) for all.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <cstring>
#include <vector>

#include "checks.h"
#include "cpu/factored.h"
#include "cpu/loop.h"
#include "fusedopt/mta/factored.h"
#ifdef FUSEDOPT_WITH_CUDA
#include "cuda/factored.h"
#include "cuda_step.h"
#endif

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

// The checks both devices make, then each param's description (its count
// still to be filled): `device_type` is where the params must live, all on
// one device.
template <class R>
std::vector<cpu::FactoredTensor> checked_factored_tensors(const char* rule, const StepArgs& a,
                                                          const typename R::Config& config,
                                                          c10::DeviceType device_type) {
  static_assert(static_cast<int>(R::kStates) == cpu::kFactoredStates,
                "a factored rule's states: core/blocked_sums.h");
  check_no_store(rule, a, "a factored rule's step");
  const size_t n = a.params.size();
  size_t want_states = 0;
  for (int k = 0; k < R::kStates; ++k) {
    for (size_t i = 0; i < n; ++i) want_states += factored_keeps<R>(k, a.params[i].dim(), config);
  }
  TORCH_CHECK(a.grads.size() == n && a.states.size() == want_states && a.steps.size() == n,
              "fusedopt: ", rule, ": for ", n, " params, want ", n, " grads, ", want_states,
              " states (state-major, each param's own) and ", n, " state_steps; got ",
              a.grads.size(), ", ", a.states.size(), " and ", a.steps.size());
  if (n == 0) return {};
  const at::ScalarType dtype = a.params[0].scalar_type();
  const c10::Device device = a.params[0].device();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "fusedopt: params must be float32, bfloat16 or float16, got ", dtype);
  std::vector<cpu::FactoredTensor> tensors(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = a.params[i];
    const at::Tensor& g = a.grads[i];
    TORCH_CHECK(
        p.scalar_type() == dtype && p.device().type() == device_type && p.device() == device,
        "fusedopt: all params of one call must be ", c10::DeviceTypeName(device_type),
        " tensors of one dtype on one device; param ", i, " is ", p.scalar_type(), " on ",
        p.device().str(), ", param 0 ", dtype, " on ", device.str());
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
  return tensors;
}

template <class R>
void factored_step_cpu(const char* rule, const StepArgs& a) {
  const auto [lr, lr_on_device, config] = checked_hyper<R>(rule, a, false);
  std::vector<cpu::FactoredTensor> tensors =
      checked_factored_tensors<R>(rule, a, config, c10::DeviceType::CPU);
  const size_t n = tensors.size();
  if (n == 0) return;
  const at::ScalarType dtype = a.params[0].scalar_type();
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

// The CUDA passes' plan and arguments for checked tensors (the counts read
// where a.steps hold them), shared by the CUDA op and its CPU emulation
// (csrc/testing/emulation.cpp); the caller binds the buffer's pointers
// (mta::bind_factored_buffer).
template <class R>
struct FactoredCudaWork {
  mta::FactoredPlan plan;
  mta::FactoredLayout layout;
  mta::FactoredArgs<R> args;
};

template <class R>
FactoredCudaWork<R> prepare_factored_cuda(const StepArgs& a, const typename R::Config& config,
                                          const std::vector<cpu::FactoredTensor>& tensors,
                                          const float* lr, double lr_value, const float* grad_scale,
                                          const float* found_inf) {
  std::vector<mta::FactoredSlot> slots(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(a.params[i].numel() < mta::kFactoredMaxNumel, "fusedopt: param ", i, " has ",
                a.params[i].numel(), " elements; the CUDA passes take fewer than ",
                mta::kFactoredMaxNumel, " (int32 element indices within an item)");
    const cpu::FactoredTensor& t = tensors[i];
    mta::FactoredSlot& slot = slots[i];
    slot.param = t.param;
    slot.grad = t.grad;
    for (int k = 0; k < kFactoredStates; ++k) slot.state[k] = t.state[k];
    slot.step = a.steps[i].data_ptr<float>();
    slot.batch = t.batch;
    slot.rows = t.rows;
    slot.cols = t.cols;
    slot.factored = t.factored;
  }
  FactoredCudaWork<R> work;
  work.plan = mta::plan_factored(std::move(slots));
  work.layout = mta::factored_layout<R>(work.plan);
  mta::FactoredArgs<R>& args = work.args;
  args.config = config;
  args.lr = lr;
  args.lr_value = lr_value;
  args.grad_scale = grad_scale;
  args.found_inf = found_inf;
  args.eps1 = R::eps1_of(config, dtype_eps(a.params[0].scalar_type()));
  args.grad_sign = R::grad_sign(config);
  return work;
}

#ifdef FUSEDOPT_WITH_CUDA
template <class R>
void factored_step_cuda(const char* rule, const StepArgs& a) {
  const auto [lr, lr_on_device, config] = checked_hyper<R>(rule, a, true);
  const std::vector<cpu::FactoredTensor> tensors =
      checked_factored_tensors<R>(rule, a, config, c10::DeviceType::CUDA);
  if (tensors.empty()) return;
  const c10::Device device = a.params[0].device();
  // The kernels read the counts and advance them (no host sync, capturable):
  // they live on the params' device, as the cuda backend keeps them.
  check_steps_on(a, device);
  const float* lr_ptr = lr_on_device ? device_scalar_ptr(*a.lr_tensor, "lr", device) : nullptr;
  const float* grad_scale =
      a.grad_scale.has_value() ? device_scalar_ptr(*a.grad_scale, "grad_scale", device) : nullptr;
  const float* found_inf =
      a.found_inf.has_value() ? device_scalar_ptr(*a.found_inf, "found_inf", device) : nullptr;
  FactoredCudaWork<R> work =
      prepare_factored_cuda<R>(a, config, tensors, lr_ptr, lr, grad_scale, found_inf);
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  // The tables reach the device by a copy from pinned host memory, which a
  // CUDA graph would replay from a host block the allocator has reused since.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  TORCH_CHECK(capture == cudaStreamCaptureStatusNone, "fusedopt: ", rule,
              ": the CUDA step copies its tables from host memory at each call, so it cannot be "
              "captured in a CUDA graph; step outside the capture");
  // One device buffer (tables, then partials) from torch's caching allocator,
  // its tables copied from pinned memory on the stream: no host sync, and the
  // caching host allocator keeps the pinned block until the copy is done.
  const int64_t tables = static_cast<int64_t>(work.layout.tables_end);
  at::Tensor host = at::empty({tables}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  mta::write_factored_tables(work.plan, work.layout, static_cast<char*>(host.data_ptr()));
  at::Tensor buffer = at::empty({static_cast<int64_t>(work.layout.total)},
                                at::TensorOptions().dtype(at::kByte).device(device));
  buffer.narrow(0, 0, tables).copy_(host, /*non_blocking=*/true);
  mta::bind_factored_buffer(work.plan, work.layout, static_cast<char*>(buffer.data_ptr()),
                            work.args);
  C10_CUDA_CHECK(cuda::launch_factored<R>(work.args, resident_blocks(device.index()),
                                          param_dtype(a.params[0].scalar_type()), stream));
}
#endif

}  // namespace fusedopt::binding
