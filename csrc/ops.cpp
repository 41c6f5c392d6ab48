// The one binding between torch and fusedopt's kernels: op schemas, argument
// checks, and dispatch to the CPU loops (and the CUDA kernels when built).
// It is the only translation unit that includes torch headers: they cost
// ~22 s of compile time per unit (../shared/MACHINE.md).
//
// Every check runs before anything is written, so an op that throws leaves
// params, grads, states and step counts exactly as they were.
#include <Python.h>

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

#include "cpu/adam_cpu.h"
#include "fusedopt/adam_rule.h"
#include "fusedopt/chunk_plan.h"

namespace fusedopt {
namespace {

using at::Tensor;
using at::TensorList;

// Elements per CPU chunk: 64K fp32 elements are 256 KB per stream, small enough
// to balance many threads over one large tensor and large enough that the
// per-chunk overhead vanishes next to the element loop.
constexpr int64_t kCpuChunkSize = 1 << 16;
// Fewer elements than this in a whole launch run on the calling thread: waking
// the pool costs more than the work.
constexpr int64_t kCpuMinParallelElements = 1 << 15;

const char* dtype_name(at::ScalarType t) { return c10::toString(t); }

// Checks that hold for every backend: list lengths, dtypes, shapes, layouts.
void check_adam_lists(TensorList params, TensorList grads, TensorList exp_avgs,
                      TensorList exp_avg_sqs, TensorList max_exp_avg_sqs, TensorList state_steps,
                      bool amsgrad, c10::DeviceType device_type) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                  state_steps.size() == n,
              "fusedopt: params, grads, exp_avgs, exp_avg_sqs and state_steps must have the same "
              "length, got ",
              n, ", ", grads.size(), ", ", exp_avgs.size(), ", ", exp_avg_sqs.size(), ", ",
              state_steps.size());
  TORCH_CHECK(max_exp_avg_sqs.size() == (amsgrad ? n : 0),
              "fusedopt: max_exp_avg_sqs must hold one tensor per param with amsgrad and none "
              "without, got ",
              max_exp_avg_sqs.size(), " for ", n, " params");
  TORCH_CHECK(n < static_cast<size_t>(INT32_MAX), "fusedopt: at most 2^31-1 tensors per call");
  if (n == 0) return;
  const at::ScalarType dtype = params[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "fusedopt: params must be float32, bfloat16 or float16, got ", dtype_name(dtype));
  const c10::Device device = params[0].device();
  TORCH_CHECK(device.type() == device_type, "fusedopt: this kernel takes ",
              c10::DeviceTypeName(device_type), " tensors, got params on ", device.str());
  for (size_t i = 0; i < n; ++i) {
    const Tensor& p = params[i];
    TORCH_CHECK(p.scalar_type() == dtype && p.device() == device,
                "fusedopt: all params of one call must share dtype and device; param ", i, " is ",
                dtype_name(p.scalar_type()), " on ", p.device().str(), ", param 0 is ",
                dtype_name(dtype), " on ", device.str());
    TORCH_CHECK(!p.is_complex(), "fusedopt: complex params are not supported (param ", i, ")");
    TORCH_CHECK(p.layout() == at::kStrided && grads[i].layout() == at::kStrided,
                "fusedopt: sparse params or grads are not supported (param ", i, ")");
    // Element i of every buffer must be element i of the others in memory, so a
    // flat loop over the storage is an elementwise op: dense (no gaps, no
    // overlap) and the same strides. Contiguous and channels_last qualify; a
    // strided slice does not.
    TORCH_CHECK(p.is_non_overlapping_and_dense(), "fusedopt: param ", i,
                " must be dense (contiguous or a permutation of it); got sizes ", p.sizes(),
                " strides ", p.strides(), ". Step it with a contiguous copy instead.");
    const Tensor* same_layout[] = {&grads[i], &exp_avgs[i], &exp_avg_sqs[i],
                                   amsgrad ? &max_exp_avg_sqs[i] : nullptr};
    const char* names[] = {"grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
    for (int k = 0; k < 4; ++k) {
      if (same_layout[k] == nullptr) continue;
      const Tensor& t = *same_layout[k];
      TORCH_CHECK(t.device() == device, "fusedopt: ", names[k], " ", i, " is on ",
                  t.device().str(), ", its param on ", device.str());
      TORCH_CHECK(t.sizes() == p.sizes() && t.strides() == p.strides(), "fusedopt: ", names[k],
                  " ", i, " must have its param's sizes and strides; got sizes ", t.sizes(),
                  " strides ", t.strides(), ", param sizes ", p.sizes(), " strides ", p.strides());
      const at::ScalarType want = k == 0 ? dtype : at::kFloat;
      TORCH_CHECK(t.scalar_type() == want, "fusedopt: ", names[k], " ", i, " must be ",
                  dtype_name(want), ", got ", dtype_name(t.scalar_type()));
    }
    TORCH_CHECK(state_steps[i].numel() == 1 && state_steps[i].scalar_type() == at::kFloat,
                "fusedopt: state_steps[", i, "] must be a one-element float32 tensor, got ",
                state_steps[i].numel(), " elements of ", dtype_name(state_steps[i].scalar_type()));
  }
}

void check_hyperparameters(double lr, double beta1, double beta2, double eps, double weight_decay,
                           int64_t weight_decay_mode, double lr_max) {
  TORCH_CHECK(std::isfinite(lr) && lr >= 0.0, "fusedopt: lr must be finite and >= 0, got ", lr);
  TORCH_CHECK(beta1 >= 0.0 && beta1 < 1.0, "fusedopt: beta1 must be in [0, 1), got ", beta1);
  TORCH_CHECK(beta2 >= 0.0 && beta2 < 1.0, "fusedopt: beta2 must be in [0, 1), got ", beta2);
  TORCH_CHECK(eps >= 0.0, "fusedopt: eps must be >= 0, got ", eps);
  TORCH_CHECK(weight_decay >= 0.0, "fusedopt: weight_decay must be >= 0, got ", weight_decay);
  TORCH_CHECK(weight_decay_mode >= 0 && weight_decay_mode <= 2,
              "fusedopt: weight_decay_mode must be 0 (L2), 1 (decoupled) or 2 (fully "
              "decoupled), got ",
              weight_decay_mode);
  TORCH_CHECK(weight_decay_mode != 2 || lr_max > 0.0,
              "fusedopt: fully decoupled weight decay needs lr_max > 0, got ", lr_max);
}

AdamConfig make_config(double beta1, double beta2, double eps, double weight_decay,
                       int64_t weight_decay_mode, double lr_max, bool amsgrad, bool maximize) {
  AdamConfig c;
  c.beta1 = beta1;
  c.beta2 = beta2;
  c.eps = eps;
  c.weight_decay = weight_decay;
  c.lr_max = lr_max;
  c.wd_mode = static_cast<WeightDecayMode>(weight_decay_mode);
  c.amsgrad = amsgrad;
  c.maximize = maximize;
  return c;
}

cpu::ParamDtype cpu_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16:
      return cpu::ParamDtype::kBFloat16;
    case at::kHalf:
      return cpu::ParamDtype::kFloat16;
    default:
      return cpu::ParamDtype::kFloat32;
  }
}

// A one-element CPU tensor's value as a double (grad_scale, found_inf, lr).
double cpu_scalar(const Tensor& t, const char* name) {
  TORCH_CHECK(t.numel() == 1 && t.device().is_cpu(), "fusedopt: ", name,
              " must be a one-element CPU tensor here, got ", t.numel(), " elements on ",
              t.device().str());
  return t.item<double>();
}

void adam_step_cpu(TensorList params, TensorList grads, TensorList exp_avgs,
                   TensorList exp_avg_sqs, TensorList max_exp_avg_sqs, TensorList state_steps,
                   double lr, double beta1, double beta2, double eps, double weight_decay,
                   int64_t weight_decay_mode, double lr_max, bool amsgrad, bool maximize,
                   const std::optional<Tensor>& grad_scale, const std::optional<Tensor>& found_inf) {
  check_hyperparameters(lr, beta1, beta2, eps, weight_decay, weight_decay_mode, lr_max);
  check_adam_lists(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad,
                   c10::DeviceType::CPU);
  for (size_t i = 0; i < state_steps.size(); ++i) {
    TORCH_CHECK(state_steps[i].device().is_cpu(), "fusedopt: state_steps[", i,
                "] must be on the CPU for CPU params, got ", state_steps[i].device().str());
  }
  double scale = 0.0;
  if (grad_scale.has_value()) {
    scale = cpu_scalar(*grad_scale, "grad_scale");
    TORCH_CHECK(scale != 0.0, "fusedopt: grad_scale must be nonzero");
  }
  // GradScaler found an inf or NaN: skip the step entirely, step counts included.
  if (found_inf.has_value() && cpu_scalar(*found_inf, "found_inf") != 0.0) return;
  if (params.empty()) return;

  const AdamConfig config =
      make_config(beta1, beta2, eps, weight_decay, weight_decay_mode, lr_max, amsgrad, maximize);
  std::vector<cpu::AdamTensor> tensors(params.size());
  std::vector<int64_t> numels(params.size());
  int64_t total = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    float* step = state_steps[i].data_ptr<float>();
    *step += 1.0f;
    tensors[i] = {params[i].data_ptr(),
                  grads[i].data_ptr(),
                  exp_avgs[i].data_ptr<float>(),
                  exp_avg_sqs[i].data_ptr<float>(),
                  amsgrad ? max_exp_avg_sqs[i].data_ptr<float>() : nullptr,
                  adam_tensor_scalars(config, lr, static_cast<double>(*step))};
    numels[i] = params[i].numel();
    total += numels[i];
  }
  const std::vector<Chunk> chunks =
      plan_chunks(numels.data(), static_cast<int32_t>(numels.size()), kCpuChunkSize);
  const cpu::AdamLaunch launch{tensors.data(), chunks.data(), adam_hyper(config),
                               cpu_dtype(params[0].scalar_type()), static_cast<float>(scale)};
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  if (total < kCpuMinParallelElements) {
    cpu::adam_run_chunks(launch, 0, n_chunks);
    return;
  }
  // One parallel region for the whole group: its chunks are split over the
  // threads in equal runs (torch's per-tensor regions are what caps its fused
  // CPU Adam at ~19% of bandwidth on many small tensors).
  at::parallel_for(0, n_chunks, 1, [&](int64_t begin, int64_t end) {
    cpu::adam_run_chunks(launch, begin, end);
  });
}

void adam_step_cpu_tensor_lr(TensorList params, TensorList grads, TensorList exp_avgs,
                             TensorList exp_avg_sqs, TensorList max_exp_avg_sqs,
                             TensorList state_steps, const Tensor& lr, double beta1, double beta2,
                             double eps, double weight_decay, int64_t weight_decay_mode,
                             double lr_max, bool amsgrad, bool maximize,
                             const std::optional<Tensor>& grad_scale,
                             const std::optional<Tensor>& found_inf) {
  adam_step_cpu(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
                cpu_scalar(lr, "lr"), beta1, beta2, eps, weight_decay, weight_decay_mode, lr_max,
                amsgrad, maximize, grad_scale, found_inf);
}

}  // namespace

// The argument list shared by both overloads after `lr`. weight_decay_mode
// takes WeightDecayMode's values (fusedopt/adam_rule.h). Steps are incremented
// by the op, after its checks, so that a refused call changes nothing.
#define FUSEDOPT_ADAM_ARGS_AFTER_LR                                                         \
  "float beta1, float beta2, float eps, float weight_decay, int weight_decay_mode, "        \
  "float lr_max, bool amsgrad, bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None" \
  ") -> ()"
#define FUSEDOPT_ADAM_LISTS                                                                  \
  "Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, " \
  "Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, *, "

TORCH_LIBRARY(fusedopt, m) {
  m.def("adam_step_(" FUSEDOPT_ADAM_LISTS "float lr, " FUSEDOPT_ADAM_ARGS_AFTER_LR);
  m.def("adam_step_.tensor_lr(" FUSEDOPT_ADAM_LISTS "Tensor lr, " FUSEDOPT_ADAM_ARGS_AFTER_LR);
}

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("adam_step_", &adam_step_cpu);
  m.impl("adam_step_.tensor_lr", &adam_step_cpu_tensor_lr);
}

}  // namespace fusedopt

// `import fusedopt._C` loads the library (which registers the ops above) and
// exposes what was built, for fusedopt.report().
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                   "fusedopt's compiled ops (registered under torch.ops.fusedopt)",
                                   -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef FUSEDOPT_WITH_CUDA
  PyModule_AddIntConstant(module, "cuda_built", 1);
  PyModule_AddStringConstant(module, "cuda_archs", FUSEDOPT_CUDA_ARCHS);
#else
  PyModule_AddIntConstant(module, "cuda_built", 0);
  PyModule_AddStringConstant(module, "cuda_archs", "");
#endif
  PyModule_AddStringConstant(module, "cpu_isa", fusedopt::cpu::selected_isa());
  return module;
}
