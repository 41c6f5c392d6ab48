// The one binding between torch and fusedopt's kernels: op schemas, argument
// checks, and dispatch to the CPU loops (and the CUDA kernels when built).
// It is the only translation unit that includes torch headers: they cost
// ~22 s of compile time per unit (measured with torch 2.14).
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
#include "fusedopt/adam_cuda_launches.h"
#include "fusedopt/adam_cuda_traversal.h"
#include "fusedopt/adam_rule.h"
#include "fusedopt/chunk_plan.h"

#ifdef FUSEDOPT_WITH_CUDA
// Not ATen/cuda/CUDAContext.h: it needs cusparse.h, which the toolkit may lack.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/adam_cuda.h"
#endif

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

// Same sizes, and the same strides on every dim longer than 1: a size-1 dim's
// stride never moves an element, and autograd does not keep it equal (a
// channels_last (64, 32, 1, 1) weight's grad may come contiguous), so two such
// dense tensors still lay their elements out in the same order.
bool same_layout(const Tensor& a, const Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

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
    // overlap) and the same layout. Contiguous and channels_last qualify; a
    // strided slice does not.
    TORCH_CHECK(p.is_non_overlapping_and_dense(), "fusedopt: param ", i,
                " must be dense (contiguous or a permutation of it); got sizes ", p.sizes(),
                " strides ", p.strides(), ". Step it with a contiguous copy instead.");
    // The grad first (it has the param's dtype), then the fp32 states.
    constexpr int kGradIdx = 0;
    constexpr int kBuffers = 4;
    const Tensor* buffers[kBuffers] = {&grads[i], &exp_avgs[i], &exp_avg_sqs[i],
                                       amsgrad ? &max_exp_avg_sqs[i] : nullptr};
    const char* names[kBuffers] = {"grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
    for (int k = 0; k < kBuffers; ++k) {
      if (buffers[k] == nullptr) continue;
      const Tensor& t = *buffers[k];
      TORCH_CHECK(t.device() == device, "fusedopt: ", names[k], " ", i, " is on ",
                  t.device().str(), ", its param on ", device.str());
      TORCH_CHECK(same_layout(t, p), "fusedopt: ", names[k], " ", i,
                  " must have its param's sizes and strides; got sizes ", t.sizes(), " strides ",
                  t.strides(), ", param sizes ", p.sizes(), " strides ", p.strides());
      const at::ScalarType want = k == kGradIdx ? dtype : at::kFloat;
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
  TORCH_CHECK(weight_decay_mode >= static_cast<int64_t>(WeightDecayMode::kL2) &&
                  weight_decay_mode <= static_cast<int64_t>(WeightDecayMode::kFullyDecoupled),
              "fusedopt: weight_decay_mode must be 0 (L2), 1 (decoupled) or 2 (fully "
              "decoupled), got ",
              weight_decay_mode);
  TORCH_CHECK(weight_decay_mode != static_cast<int64_t>(WeightDecayMode::kFullyDecoupled) ||
                  lr_max > 0.0,
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
    // The loops take the scale as a float, 0 meaning "no scaler": it must stay
    // a finite nonzero float.
    TORCH_CHECK(std::isfinite(scale) && static_cast<float>(scale) != 0.0f &&
                    std::isfinite(static_cast<float>(scale)),
                "fusedopt: grad_scale must be a finite, nonzero float32 value, got ", scale);
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
                               param_dtype(params[0].scalar_type()), static_cast<float>(scale)};
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  if (total < kCpuMinParallelElements) {
    cpu::adam_run_chunks(launch, 0, n_chunks);
    return;
  }
  // One parallel region for the whole group: its chunks are split over the
  // threads in equal runs (torch's per-tensor regions are what caps its fused
  // CPU Adam at ~20-25% of bandwidth on 2000 small tensors: see README, Benchmarks).
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

// --- CUDA kernels: argument filling shared by the op and its CPU emulation ---

// Where the CUDA kernels read a call's step counts, lr and found_inf.
struct CudaScalarSources {
  // Step counts in the kernels' memory: the kernels compute the scalars and a
  // last launch increments the counts (capturable, or fused state loaded onto
  // the device). Else the host increments them and computes the scalars.
  bool steps_in_kernel;
  const float* lr;         // lr in the kernels' memory, or null for the host value
  double lr_value;
  const float* grad_scale;  // null without a GradScaler
  const float* found_inf;   // read by the kernels; null when the host checked it
};

struct CudaAdamWork {
  std::vector<cuda::AdamLaunch> launches;
  std::vector<cuda::StepIncrementArgs> step_increments;  // empty unless steps_in_kernel
};

// Fills every launch's kernel arguments from checked tensors. With host-owned
// step counts it increments them here, after every check.
CudaAdamWork prepare_cuda_adam(TensorList params, TensorList grads, TensorList exp_avgs,
                               TensorList exp_avg_sqs, TensorList max_exp_avg_sqs,
                               TensorList state_steps, const CudaScalarSources& sources,
                               const AdamConfig& config) {
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(params[i].numel() < cuda::kMaxNumel, "fusedopt: param ", i, " has ",
                params[i].numel(), " elements; the CUDA kernels take fewer than ",
                cuda::kMaxNumel, " (2^31 chunks of ", cuda::kChunkSize, ")");
  }
  cuda::AdamLaunchArgs common{};
  common.config = config;
  common.hyper = adam_hyper(config);
  common.lr = sources.lr;
  common.lr_value = sources.lr_value;
  common.grad_scale = sources.grad_scale;
  common.found_inf = sources.found_inf;
  common.scalars_on_device = sources.steps_in_kernel || sources.lr != nullptr;
  std::vector<cuda::AdamSlot> slots(params.size());
  std::vector<float*> device_steps;
  for (size_t i = 0; i < params.size(); ++i) {
    cuda::AdamSlot& slot = slots[i];
    slot.param = params[i].data_ptr();
    slot.grad = grads[i].data_ptr();
    slot.exp_avg = exp_avgs[i].data_ptr<float>();
    slot.exp_avg_sq = exp_avg_sqs[i].data_ptr<float>();
    slot.max_exp_avg_sq = config.amsgrad ? max_exp_avg_sqs[i].data_ptr<float>() : nullptr;
    slot.numel = params[i].numel();
    float* step = state_steps[i].data_ptr<float>();
    if (sources.steps_in_kernel) {
      slot.step = step;
      device_steps.push_back(step);
      continue;
    }
    *step += 1.0f;
    slot.host_step = *step;
    if (!common.scalars_on_device) {
      slot.scalars = adam_tensor_scalars(config, sources.lr_value, static_cast<double>(*step));
    }
  }
  return {cuda::build_adam_launches(slots, common),
          cuda::build_step_increments(device_steps, sources.found_inf)};
}

// fusedopt::_cuda_launch_plan (test only): the launches the CUDA op would make
// for tensors of these numels, flat: [chunk_size, max_slots, max_blocks,
// n_launches, then per launch: n_slots, its tensor indices, n_blocks, then
// (slot, chunk) per block].
std::vector<int64_t> cuda_launch_plan(at::IntArrayRef numels) {
  for (size_t i = 0; i < numels.size(); ++i) {
    TORCH_CHECK(numels[i] >= 0 && numels[i] < cuda::kMaxNumel, "fusedopt: numel ", i, " is ",
                numels[i], "; want 0 <= numel < ", cuda::kMaxNumel);
  }
  const std::vector<LaunchPlan> plans =
      plan_launches(numels.data(), static_cast<int32_t>(numels.size()), cuda::kChunkSize,
                    cuda::kMaxSlots, cuda::kMaxBlocks);
  std::vector<int64_t> out = {cuda::kChunkSize, cuda::kMaxSlots, cuda::kMaxBlocks,
                              static_cast<int64_t>(plans.size())};
  for (const LaunchPlan& plan : plans) {
    out.push_back(static_cast<int64_t>(plan.tensors.size()));
    out.insert(out.end(), plan.tensors.begin(), plan.tensors.end());
    out.push_back(static_cast<int64_t>(plan.block_slot.size()));
    for (size_t b = 0; b < plan.block_slot.size(); ++b) {
      out.push_back(plan.block_slot[b]);
      out.push_back(plan.block_chunk[b]);
    }
  }
  return out;
}

// What the emulation saw: every access's width and alignment, and how often
// each element of each tensor was updated.
struct EmulationObserver {
  const std::vector<int32_t>* slot_tensors = nullptr;  // the current launch's slots
  std::vector<std::vector<uint8_t>> updates;           // per tensor, per element (saturating)
  int64_t vector_accesses = 0;
  int64_t scalar_accesses = 0;
  int64_t misaligned_accesses = 0;
  int64_t out_of_range_updates = 0;

  void access(const void* ptr, int bytes, bool vector) {
    (vector ? vector_accesses : scalar_accesses) += 1;
    if (reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(bytes) != 0) {
      misaligned_accesses += 1;
    }
  }
  void updated(int32_t slot, int64_t first, int32_t count) {
    std::vector<uint8_t>& counts = updates[(*slot_tensors)[slot]];
    for (int64_t e = first; e < first + count; ++e) {
      if (e < 0 || e >= static_cast<int64_t>(counts.size())) {
        out_of_range_updates += 1;
      } else if (counts[e] < 2) {
        counts[e] += 1;
      }
    }
  }
};

template <typename P>
void emulate_launches(const CudaAdamWork& work, int64_t threads_per_block,
                      EmulationObserver& observer) {
  for (const cuda::AdamLaunch& launch : work.launches) {
    observer.slot_tensors = &launch.tensors;
    for (int32_t block = 0; block < launch.n_blocks; ++block) {
      for (int32_t thread = 0; thread < threads_per_block; ++thread) {
        cuda::adam_thread<P>(launch.args, block, thread, static_cast<int32_t>(threads_per_block),
                             observer);
      }
    }
  }
  for (const cuda::StepIncrementArgs& args : work.step_increments) {
    for (int32_t thread = 0; thread < cuda::kMaxStepsPerLaunch; ++thread) {
      cuda::increment_step_thread(args, thread);
    }
  }
}

// fusedopt::_cuda_emulate_adam_step_ (test only): the CUDA op's argument
// filling and its kernels' traversal, run on CPU tensors by a host loop over
// the grid. `steps_in_kernel` / `lr_in_kernel` take the capturable paths
// (the traversal reads the step counts, lr and found_inf from memory).
// Returns [launches, blocks, vector accesses, scalar accesses, misaligned
// accesses, out-of-range updates, elements never updated, elements updated
// more than once].
std::vector<int64_t> cuda_emulate_adam_step(
    TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
    TensorList max_exp_avg_sqs, TensorList state_steps, const Tensor& lr, double beta1,
    double beta2, double eps, double weight_decay, int64_t weight_decay_mode, double lr_max,
    bool amsgrad, bool maximize, const std::optional<Tensor>& grad_scale,
    const std::optional<Tensor>& found_inf, bool steps_in_kernel, bool lr_in_kernel,
    int64_t threads_per_block) {
  check_hyperparameters(cpu_scalar(lr, "lr"), beta1, beta2, eps, weight_decay, weight_decay_mode,
                        lr_max);
  check_adam_lists(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad,
                   c10::DeviceType::CPU);
  TORCH_CHECK(threads_per_block >= 1 && threads_per_block <= cuda::kBlockSize,
              "fusedopt: threads_per_block must be in [1, ", cuda::kBlockSize, "]");
  TORCH_CHECK(lr.scalar_type() == at::kFloat, "fusedopt: lr must be float32 here");
  for (const std::optional<Tensor>& t : {grad_scale, found_inf}) {
    TORCH_CHECK(!t.has_value() || (t->numel() == 1 && t->scalar_type() == at::kFloat &&
                                   t->device().is_cpu()),
                "fusedopt: grad_scale and found_inf must be one-element float32 CPU tensors");
  }
  EmulationObserver observer;
  for (const Tensor& p : params) observer.updates.emplace_back(p.numel(), 0);
  const float* found_inf_ptr = found_inf.has_value() ? found_inf->data_ptr<float>() : nullptr;
  // The host path reads found_inf before anything else, as the CUDA op does.
  const bool host_skip = !steps_in_kernel && found_inf_ptr != nullptr && *found_inf_ptr != 0.0f;
  CudaAdamWork work;
  if (!host_skip) {
    const CudaScalarSources sources{steps_in_kernel,
                                    lr_in_kernel ? lr.data_ptr<float>() : nullptr,
                                    cpu_scalar(lr, "lr"),
                                    grad_scale.has_value() ? grad_scale->data_ptr<float>() : nullptr,
                                    steps_in_kernel ? found_inf_ptr : nullptr};
    work = prepare_cuda_adam(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, sources,
        make_config(beta1, beta2, eps, weight_decay, weight_decay_mode, lr_max, amsgrad, maximize));
    switch (params[0].scalar_type()) {
      case at::kBFloat16:
        emulate_launches<Bf16>(work, threads_per_block, observer);
        break;
      case at::kHalf:
        emulate_launches<Fp16>(work, threads_per_block, observer);
        break;
      default:
        emulate_launches<float>(work, threads_per_block, observer);
    }
  }
  int64_t blocks = 0, never = 0, more = 0;
  for (const cuda::AdamLaunch& launch : work.launches) blocks += launch.n_blocks;
  for (const std::vector<uint8_t>& counts : observer.updates) {
    for (uint8_t c : counts) {
      never += c == 0;
      more += c > 1;
    }
  }
  return {static_cast<int64_t>(work.launches.size()), blocks, observer.vector_accesses,
          observer.scalar_accesses, observer.misaligned_accesses, observer.out_of_range_updates,
          never, more};
}

#ifdef FUSEDOPT_WITH_CUDA

// grad_scale, found_inf and a device lr: read by the kernels, so they must
// live on the params' device (GradScaler keeps them there).
const float* device_scalar_ptr(const Tensor& t, const char* name, c10::Device device) {
  TORCH_CHECK(t.numel() == 1 && t.scalar_type() == at::kFloat && t.device() == device,
              "fusedopt: ", name, " must be a one-element float32 tensor on ", device.str(),
              " (the params' device), got ", t.numel(), " elements of ",
              dtype_name(t.scalar_type()), " on ", t.device().str());
  return t.data_ptr<float>();
}

void adam_step_cuda_impl(TensorList params, TensorList grads, TensorList exp_avgs,
                         TensorList exp_avg_sqs, TensorList max_exp_avg_sqs,
                         TensorList state_steps, double lr, const std::optional<Tensor>& lr_tensor,
                         double beta1, double beta2, double eps, double weight_decay,
                         int64_t weight_decay_mode, double lr_max, bool amsgrad, bool maximize,
                         const std::optional<Tensor>& grad_scale,
                         const std::optional<Tensor>& found_inf) {
  check_adam_lists(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad,
                   c10::DeviceType::CUDA);
  const bool lr_on_device = lr_tensor.has_value() && !lr_tensor->device().is_cpu();
  if (lr_tensor.has_value() && !lr_on_device) lr = cpu_scalar(*lr_tensor, "lr");
  // A device lr is not range-checked: reading it would sync the host.
  check_hyperparameters(lr_on_device ? 0.0 : lr, beta1, beta2, eps, weight_decay,
                        weight_decay_mode, lr_max);
  if (params.empty()) return;
  const c10::Device device = params[0].device();
  const bool steps_on_device = state_steps[0].device() == device;
  for (size_t i = 0; i < state_steps.size(); ++i) {
    TORCH_CHECK(state_steps[i].device() == (steps_on_device ? device : c10::Device(c10::kCPU)),
                "fusedopt: state_steps must all be on the CPU or all on the params' device ",
                device.str(), "; state_steps[0] is on ", state_steps[0].device().str(),
                ", state_steps[", i, "] on ", state_steps[i].device().str());
  }
  CudaScalarSources sources{steps_on_device, nullptr, lr, nullptr, nullptr};
  if (lr_on_device) sources.lr = device_scalar_ptr(*lr_tensor, "lr", device);
  if (grad_scale.has_value()) sources.grad_scale = device_scalar_ptr(*grad_scale, "grad_scale", device);
  if (found_inf.has_value()) {
    const float* found_inf_ptr = device_scalar_ptr(*found_inf, "found_inf", device);
    if (steps_on_device) {
      sources.found_inf = found_inf_ptr;
    } else if (found_inf->item<float>() != 0.0f) {
      // Step counts on the CPU need the answer on the host: one sync, as in
      // GradScaler's own non-fused path. Capturable mode never takes it.
      return;
    }
  }
  const CudaAdamWork work = prepare_cuda_adam(
      params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, sources,
      make_config(beta1, beta2, eps, weight_decay, weight_decay_mode, lr_max, amsgrad, maximize));
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  const ParamDtype dtype = param_dtype(params[0].scalar_type());
  for (const cuda::AdamLaunch& launch : work.launches) {
    C10_CUDA_CHECK(cuda::launch_adam(launch.args, launch.n_blocks, dtype, stream));
  }
  for (const cuda::StepIncrementArgs& args : work.step_increments) {
    C10_CUDA_CHECK(cuda::launch_step_increment(args, stream));
  }
}

void adam_step_cuda(TensorList params, TensorList grads, TensorList exp_avgs,
                    TensorList exp_avg_sqs, TensorList max_exp_avg_sqs, TensorList state_steps,
                    double lr, double beta1, double beta2, double eps, double weight_decay,
                    int64_t weight_decay_mode, double lr_max, bool amsgrad, bool maximize,
                    const std::optional<Tensor>& grad_scale,
                    const std::optional<Tensor>& found_inf) {
  adam_step_cuda_impl(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr,
                      std::nullopt, beta1, beta2, eps, weight_decay, weight_decay_mode, lr_max,
                      amsgrad, maximize, grad_scale, found_inf);
}

void adam_step_cuda_tensor_lr(TensorList params, TensorList grads, TensorList exp_avgs,
                              TensorList exp_avg_sqs, TensorList max_exp_avg_sqs,
                              TensorList state_steps, const Tensor& lr, double beta1,
                              double beta2, double eps, double weight_decay,
                              int64_t weight_decay_mode, double lr_max, bool amsgrad,
                              bool maximize, const std::optional<Tensor>& grad_scale,
                              const std::optional<Tensor>& found_inf) {
  adam_step_cuda_impl(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, 0.0,
                      lr, beta1, beta2, eps, weight_decay, weight_decay_mode, lr_max, amsgrad,
                      maximize, grad_scale, found_inf);
}
#endif  // FUSEDOPT_WITH_CUDA

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
  // Test-only: the CUDA kernels' launch plan and their traversal emulated on
  // CPU tensors (tests/test_cuda_*.py); neither needs a GPU.
  m.def("_cuda_launch_plan(int[] numels) -> int[]");
  m.def("_cuda_emulate_adam_step_(" FUSEDOPT_ADAM_LISTS
        "Tensor lr, float beta1, float beta2, float eps, float weight_decay, "
        "int weight_decay_mode, float lr_max, bool amsgrad, bool maximize, "
        "Tensor? grad_scale=None, Tensor? found_inf=None, bool steps_in_kernel=False, "
        "bool lr_in_kernel=False, int threads_per_block=512) -> int[]");
}

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("adam_step_", &adam_step_cpu);
  m.impl("adam_step_.tensor_lr", &adam_step_cpu_tensor_lr);
  m.impl("_cuda_emulate_adam_step_", &cuda_emulate_adam_step);
}

// Test-only ops that take no tensor: the backend-select key reaches them.
TORCH_LIBRARY_IMPL(fusedopt, CompositeExplicitAutograd, m) {
  m.impl("_cuda_launch_plan", &cuda_launch_plan);
}

#ifdef FUSEDOPT_WITH_CUDA
TORCH_LIBRARY_IMPL(fusedopt, CUDA, m) {
  m.impl("adam_step_", &adam_step_cuda);
  m.impl("adam_step_.tensor_lr", &adam_step_cuda_tensor_lr);
}
#endif

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
