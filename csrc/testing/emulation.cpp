// fusedopt._testing: test-only ops that drive the CUDA traversal's host code
// and kernel bodies on the CPU, for every rule. Built into a module of its own
// that only the tests import (FUSEDOPT_TESTING in CMakeLists.txt), so the
// production library carries none of it.
//
//   fusedopt_testing::launch_plan(str rule, int[] numels) -> int[]
//       the launches the CUDA op makes for tensors of these numels, flat:
//       [chunk_size, slots per launch, chunks per launch, n_launches, then per
//       launch: n_slots, its tensor indices, n_chunks, then (slot, chunk) per
//       entry of its chunk table]
//   fusedopt_testing::<rule>_emulate_step_(<the step op's arguments>,
//       bool steps_in_kernel=False, bool lr_in_kernel=False, int threads_per_block=512,
//       int? max_grid_blocks=None) -> int[]
//       the CUDA op's argument filling (binding/cuda_work.h) and its kernels'
//       traversal (mta/traversal.h) on CPU tensors, by a host loop over the
//       grid: each launch runs grid_blocks(n_chunks, max_grid_blocks) blocks
//       (mta/launches.h; the CUDA op's cap is kMinBlocksPerSm x the SMs, None
//       here: one block per chunk; with 8-bit blockwise states each block
//       runs a warp of 32 lanes at a time, so threads_per_block is whole
//       warps); returns [launches, chunks, grid blocks,
//       vector accesses, scalar accesses, misaligned accesses, out-of-range
//       updates, elements never updated, elements updated more than once,
//       advance launches (Note [the advance launch] in mta/args.h)]
//   fusedopt_testing::grad_norm_emulate(Tensor[] tensors, float norm_type,
//       int? max_grid_blocks=None) -> (Tensor, int[])
//       the CUDA grad_norm op's arguments (binding/norm_op.h) and its kernels'
//       body (mta/reduce.h) on CPU tensors: each launch's blocks (one per
//       chunk, or a persistent grid of max_grid_blocks) run their 512 threads
//       one after another, then the shared-memory tree level by level, then
//       the finishing block; returns the norm and [launches, chunks, grid
//       blocks, vector accesses, scalar accesses, misaligned accesses]
//   fusedopt_testing::<rule>_emulate_factored_step_(<the step op's arguments>)
//       -> int[]
//       a reduction rule's CUDA passes (mta/factored.h) on CPU tensors: the
//       op's checks and plan (binding/factored_step.h), then each kernel's
//       grid-stride loop, each block's 256 threads one after another per
//       phase, as its barriers separate them; lr as a float32 tensor, read as
//       the kernels read a device lr; returns [items, params]
#include <Python.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "binding/cuda_work.h"
#include "binding/factored_step.h"
#include "binding/norm_op.h"
#include "fusedopt/core/blockwise8.h"
#include "fusedopt/mta/factored.h"
#include "fusedopt/mta/traversal.h"
#include "fusedopt/rules/reduction_registry.h"
#include "fusedopt/rules/registry.h"

namespace fusedopt::testing {
namespace {

using binding::StepArgs;

template <class R>
std::vector<int64_t> launch_plan_of(const std::vector<int64_t>& numels) {
  for (size_t i = 0; i < numels.size(); ++i) {
    TORCH_CHECK(numels[i] >= 0 && numels[i] < mta::kMaxNumel, "fusedopt: numel ", i, " is ",
                numels[i], "; want 0 <= numel < ", mta::kMaxNumel);
  }
  const std::vector<LaunchPlan> plans =
      plan_launches(numels.data(), static_cast<int32_t>(numels.size()), mta::kChunkSize,
                    mta::LaunchArgs<R>::kSlots, mta::LaunchArgs<R>::kChunks);
  std::vector<int64_t> out = {mta::kChunkSize, mta::LaunchArgs<R>::kSlots,
                              mta::LaunchArgs<R>::kChunks, static_cast<int64_t>(plans.size())};
  for (const LaunchPlan& plan : plans) {
    out.push_back(static_cast<int64_t>(plan.tensors.size()));
    out.insert(out.end(), plan.tensors.begin(), plan.tensors.end());
    out.push_back(static_cast<int64_t>(plan.chunk_slot.size()));
    for (size_t e = 0; e < plan.chunk_slot.size(); ++e) {
      out.push_back(plan.chunk_slot[e]);
      out.push_back(plan.chunk_index[e]);
    }
  }
  return out;
}

std::vector<int64_t> launch_plan(const std::string& rule, at::IntArrayRef numels) {
  const std::vector<int64_t> list(numels.begin(), numels.end());
#define FUSEDOPT_PLAN(Type, name) \
  if (rule == #name) return launch_plan_of<Type>(list);
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_PLAN)
#undef FUSEDOPT_PLAN
  TORCH_CHECK(false, "fusedopt: no rule named ", rule);
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

// The tag of 8-bit blockwise states for emulate_launches: its blocks run a
// warp (32 lanes) per call of the traversal, so that each block's absmax is
// the max over the warp's lanes, as __reduce_max_sync makes it in a kernel
// (Note [8-bit blocks on the GPU] in mta/traversal.h), with the host's code tables.
struct Blockwise8 {};

template <class R, typename P, typename S, StorePolicy kStore>
void emulate_block(const mta::LaunchArgs<R>& args, int32_t block, int32_t n_blocks,
                   int32_t threads_per_block, EmulationObserver& observer) {
  for (int32_t thread = 0; thread < threads_per_block; ++thread) {
    mta::element_thread<R, P, S, kStore>(args, block, n_blocks, thread, threads_per_block,
                                         observer);
  }
}

// The same with 8-bit blockwise states (S is Blockwise8, and kStore kNone:
// the op refuses a policy with 8-bit states; both taken so that
// emulate_launches calls both alike).
template <class R, typename P, typename S, StorePolicy kStore>
void emulate_block(const mta::LaunchArgs8<R>& args, int32_t block, int32_t n_blocks,
                   int32_t threads_per_block, EmulationObserver& observer) {
  const mta::Codec8Tables tables{kSignedMap, kUnsignedMap, kSignedMidpoints, kUnsignedMidpoints};
  for (int32_t warp = 0; warp < threads_per_block; warp += mta::kWarpSize) {
    mta::element_lanes8<R, P, mta::kWarpSize>(args, block, n_blocks, warp, threads_per_block,
                                              tables, observer);
  }
}

// The launches of `work` that states stored as S take.
template <typename S, class R>
const auto& launches_of(const binding::CudaWork<R>& work) {
  if constexpr (std::is_same_v<S, Blockwise8>) {
    return work.launches8;
  } else {
    return work.launches;
  }
}

// Runs every launch of `work` over a grid of grid_blocks(n_chunks,
// max_grid_blocks) blocks of `threads_per_block` threads; returns the blocks run.
template <class R, typename P, typename S, StorePolicy kStore>
int64_t emulate_launches(const binding::CudaWork<R>& work, int32_t threads_per_block,
                         int32_t max_grid_blocks, EmulationObserver& observer) {
  int64_t blocks_run = 0;
  for (const auto& launch : launches_of<S>(work)) {
    observer.slot_tensors = &launch.tensors;
    const int32_t n_blocks = mta::grid_blocks(launch.args.header.n_chunks, max_grid_blocks);
    for (int32_t block = 0; block < n_blocks; ++block) {
      emulate_block<R, P, S, kStore>(launch.args, block, n_blocks, threads_per_block, observer);
    }
    blocks_run += n_blocks;
  }
  for (const mta::AdvanceArgs<R>& args : work.advances) {
    for (int32_t block = 0; block < mta::advance_blocks(args); ++block) {
      for (int32_t thread = 0; thread < mta::kBlockSize; ++thread) {
        mta::advance_thread(args, block, thread);
      }
    }
  }
  for (const mta::StepIncrementArgs& args : work.store_advances) {
    for (int32_t block = 0; block < mta::advance_blocks(args); ++block) {
      for (int32_t thread = 0; thread < mta::kBlockSize; ++thread) {
        mta::advance_thread(args, block, thread);
      }
    }
  }
  // The host's counts advance once the launches are queued, as in the CUDA op.
  work.advance_host_scalars();
  return blocks_run;
}

// emulate_launches of a 16-bit param dtype P with the kernel of the call's
// policy, as cuda::launch_elements picks it.
template <class R, typename P, typename S>
int64_t emulate_policy(StorePolicy store, const binding::CudaWork<R>& work, int32_t threads,
                       int32_t grid_cap, EmulationObserver& observer) {
  if (store == StorePolicy::kMasterWeights) {
    return emulate_launches<R, P, S, StorePolicy::kMasterWeights>(work, threads, grid_cap,
                                                                  observer);
  }
  if (store == StorePolicy::kKahanSum) {
    return emulate_launches<R, P, S, StorePolicy::kKahanSum>(work, threads, grid_cap, observer);
  }
  if constexpr (std::is_same_v<P, Bf16>) {
    if (store == StorePolicy::kStochasticRounding) {
      return emulate_launches<R, P, S, StorePolicy::kStochasticRounding>(work, threads, grid_cap,
                                                                         observer);
    }
  }
  return emulate_launches<R, P, S, StorePolicy::kNone>(work, threads, grid_cap, observer);
}

// emulate_launches for the call's param dtype and policy, with states stored as S.
template <class R, typename S>
int64_t emulate_for_dtype(const StepArgs& a, StorePolicy store, const binding::CudaWork<R>& work,
                          int32_t threads, int32_t grid_cap, EmulationObserver& observer) {
  switch (binding::param_dtype(a.params[0].scalar_type())) {
    case ParamDtype::kBFloat16:
      return emulate_policy<R, Bf16, S>(store, work, threads, grid_cap, observer);
    case ParamDtype::kFloat16:
      return emulate_policy<R, Fp16, S>(store, work, threads, grid_cap, observer);
    case ParamDtype::kFloat32:
      break;
  }
  return emulate_launches<R, float, S, StorePolicy::kNone>(work, threads, grid_cap, observer);
}

// steps_in_kernel, lr_in_kernel, threads_per_block, max_grid_blocks
constexpr size_t kEmulationExtraArgs = 4;

template <class R, const char* kName>
void emulate_step(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  const StepArgs a = binding::peek_step_args<R>(*stack, kEmulationExtraArgs);
  auto extra = torch::jit::last(*stack, kEmulationExtraArgs);
  const bool steps_in_kernel = extra[0].toBool();
  const bool lr_in_kernel = extra[1].toBool();
  const int64_t threads_per_block = extra[2].toInt();
  const std::optional<int64_t> max_grid_blocks = extra[3].toOptional<int64_t>();

  TORCH_CHECK(a.lr_tensor.has_value() && a.lr_tensor->scalar_type() == at::kFloat,
              "fusedopt: the emulation takes lr as a float32 tensor");
  const double lr = binding::cpu_scalar(*a.lr_tensor, "lr");
  HyperCheck ck;
  R::check(a.hyper.data(), ck);
  binding::check_hyper(kName, lr, ck);
  const typename R::Config config = R::config(a.hyper.data());
  const uint32_t mask = state_mask<R>(config);
  const StateDtype state_dtype = binding::state_dtype_of(a);
  const StorePolicy store = binding::check_store(kName, a);
  TORCH_CHECK(store == StorePolicy::kNone || state_dtype != StateDtype::kInt8Blockwise,
              "fusedopt: the CUDA traversal has no master-weight store with 8-bit states");
  binding::check_lists(kName, a, binding::used_state_names<R>(mask), kScalarLists<R>,
                       c10::DeviceType::CPU, state_dtype);
  TORCH_CHECK(threads_per_block >= 1 && threads_per_block <= mta::kBlockSize,
              "fusedopt: threads_per_block must be in [1, ", mta::kBlockSize, "]");
  TORCH_CHECK(state_dtype != StateDtype::kInt8Blockwise || threads_per_block % mta::kWarpSize == 0,
              "fusedopt: with 8-bit blockwise states threads_per_block must be a multiple of ",
              mta::kWarpSize, " (a warp steps each block), got ", threads_per_block);
  TORCH_CHECK(
      !max_grid_blocks.has_value() || (*max_grid_blocks >= 1 && *max_grid_blocks <= INT32_MAX),
      "fusedopt: max_grid_blocks must be None or in [1, 2^31)");
  for (const std::optional<at::Tensor>& t : {a.grad_scale, a.found_inf}) {
    TORCH_CHECK(!t.has_value() ||
                    (t->numel() == 1 && t->scalar_type() == at::kFloat && t->device().is_cpu()),
                "fusedopt: grad_scale and found_inf must be one-element float32 CPU tensors");
  }
  EmulationObserver observer;
  for (size_t i = 0; i < a.params.size(); ++i)
    observer.updates.emplace_back(a.params[i].numel(), 0);
  const float* found_inf = a.found_inf.has_value() ? a.found_inf->data_ptr<float>() : nullptr;
  // With host-owned counts the host reads found_inf before anything else, as
  // the CUDA op does.
  const bool device_reads_found_inf = steps_in_kernel || !R::kHasStep;
  const bool host_skip = !device_reads_found_inf && found_inf != nullptr && *found_inf != 0.0f;
  binding::CudaWork<R> work;
  int64_t blocks_run = 0;
  if (!host_skip && !a.params.empty()) {
    const binding::CudaScalarSources sources{
        steps_in_kernel, lr_in_kernel ? a.lr_tensor->data_ptr<float>() : nullptr, lr,
        a.grad_scale.has_value() ? a.grad_scale->data_ptr<float>() : nullptr,
        device_reads_found_inf ? found_inf : nullptr};
    work = binding::prepare_cuda<R>(a, config, mask, sources, store);
    const int32_t threads = static_cast<int32_t>(threads_per_block);
    const int32_t grid_cap = static_cast<int32_t>(max_grid_blocks.value_or(INT32_MAX));
    switch (state_dtype) {
      case StateDtype::kBFloat16:
        blocks_run = emulate_for_dtype<R, Bf16>(a, store, work, threads, grid_cap, observer);
        break;
      case StateDtype::kInt8Blockwise:
        blocks_run = emulate_for_dtype<R, Blockwise8>(a, store, work, threads, grid_cap, observer);
        break;
      case StateDtype::kFloat32:
        blocks_run = emulate_for_dtype<R, float>(a, store, work, threads, grid_cap, observer);
        break;
    }
  }
  int64_t chunks = 0, never = 0, more = 0;
  for (const mta::Launch<R>& launch : work.launches) chunks += launch.args.header.n_chunks;
  for (const auto& launch : work.launches8) chunks += launch.args.header.n_chunks;
  for (const std::vector<uint8_t>& counts : observer.updates) {
    for (uint8_t c : counts) {
      never += c == 0;
      more += c > 1;
    }
  }
  const size_t launches = work.launches.size() + work.launches8.size();
  const std::vector<int64_t> stats = {static_cast<int64_t>(launches),
                                      chunks,
                                      blocks_run,
                                      observer.vector_accesses,
                                      observer.scalar_accesses,
                                      observer.misaligned_accesses,
                                      observer.out_of_range_updates,
                                      never,
                                      more,
                                      static_cast<int64_t>(work.advances.size())};
  torch::jit::drop(*stack, binding::step_arg_count<R>() + kEmulationExtraArgs);
  torch::jit::push(*stack, c10::IValue(stats));
}

// The tree of a block (Note [norm summation order] in core/norm.h), level by
// level as the kernel's barriers separate them.
template <norm::NormKind K>
float emulate_tree(float (&values)[norm::kThreads]) {
  for (int32_t half = 1; half < norm::kThreads; half *= 2) {
    for (int32_t t = 0; t < norm::kThreads; ++t) norm::Norm<K>::tree_step(values, t, half);
  }
  return values[0];
}

template <norm::NormKind K>
float emulate_norm(const mta::NormWork& work, const float* partials, int32_t grid_cap,
                   EmulationObserver& observer, int64_t& blocks_run) {
  float values[norm::kThreads];
  for (const mta::NormLaunchArgs& args : work.launches) {
    const int32_t n_blocks = mta::grid_blocks(args.header.n_chunks, grid_cap);
    for (int32_t block = 0; block < n_blocks; ++block) {
      for (int32_t entry = block; entry < args.header.n_chunks; entry += n_blocks) {
        for (int32_t t = 0; t < norm::kThreads; ++t) {
          values[t] = mta::norm_entry_thread<K>(args, entry, t, observer);
        }
        args.header.partials[entry] = emulate_tree<K>(values);
      }
    }
    blocks_run += n_blocks;
  }
  for (int32_t t = 0; t < norm::kThreads; ++t) {
    values[t] = mta::norm_finish_thread<K>(partials, work.n_chunks, t);
  }
  return norm::Norm<K>::finish(emulate_tree<K>(values));
}

std::tuple<at::Tensor, std::vector<int64_t>> grad_norm_emulate(
    at::TensorList tensors, double norm_type, std::optional<int64_t> max_grid_blocks) {
  const norm::NormKind kind = binding::norm_kind(norm_type);
  binding::check_norm_tensors(tensors, c10::DeviceType::CPU);
  TORCH_CHECK(
      !max_grid_blocks.has_value() || (*max_grid_blocks >= 1 && *max_grid_blocks <= INT32_MAX),
      "fusedopt: max_grid_blocks must be None or in [1, 2^31)");
  const int64_t n_chunks = binding::norm_chunk_count(tensors);
  at::Tensor partials = at::empty({n_chunks > 0 ? n_chunks : 1}, at::kFloat);
  const mta::NormWork work = binding::prepare_cuda_norm(tensors, partials.data_ptr<float>());
  EmulationObserver observer;
  int64_t blocks_run = 0;
  const int32_t grid_cap = static_cast<int32_t>(max_grid_blocks.value_or(INT32_MAX));
  const float value = kind == norm::NormKind::kTwo
                          ? emulate_norm<norm::NormKind::kTwo>(work, partials.data_ptr<float>(),
                                                               grid_cap, observer, blocks_run)
                          : emulate_norm<norm::NormKind::kInf>(work, partials.data_ptr<float>(),
                                                               grid_cap, observer, blocks_run);
  at::Tensor out = at::empty({}, at::kFloat);
  *out.data_ptr<float>() = value;
  return {out,
          {static_cast<int64_t>(work.launches.size()), work.n_chunks, blocks_run,
           observer.vector_accesses, observer.scalar_accesses, observer.misaligned_accesses}};
}

// A block of the factored kernels on the CPU (mta/factored.h): a phase runs
// thread 0, 1, ... in turn, which the barrier after it allows.
struct HostBlock {
  double lanes[mta::kFactoredThreads];
  template <class F>
  void each(F&& f) {
    for (int32_t thread = 0; thread < mta::kFactoredThreads; ++thread) f(thread);
  }
};

// The five kernels of a factored step, in launch order, each a loop over its
// grid's units (items or params) as one block at a time.
template <class R, typename P>
void emulate_factored_kernels(const mta::FactoredArgs<R>& args) {
  HostBlock block;
  const auto items = [&](auto&& body) {
    if (mta::factored_skip(args)) return;
    for (int64_t k = 0; k < args.n_items; ++k) body(k);
  };
  items([&](int64_t k) { mta::reduce_inputs_item<R, P>(args, k, block); });
  if (!mta::factored_skip(args)) {
    for (int64_t i = 0; i < args.n_slots; ++i) mta::statistics_slot<R>(args, i, block);
  }
  items([&](int64_t k) { mta::reduce_updates_item<R, P>(args, k, block); });
  if (!mta::factored_skip(args)) {
    for (int64_t i = 0; i < args.n_slots; ++i) mta::finish_slot<R>(args, i);
  }
  items([&](int64_t k) { mta::apply_item<R, P>(args, k, block); });
}

template <class R, const char* kName>
void emulate_factored_step(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  const StepArgs a = binding::peek_step_args<R>(*stack, 0);
  TORCH_CHECK(a.lr_tensor.has_value() && a.lr_tensor->scalar_type() == at::kFloat &&
                  a.lr_tensor->numel() == 1 && a.lr_tensor->device().is_cpu(),
              "fusedopt: the emulation takes lr as a one-element float32 CPU tensor");
  const double lr = binding::cpu_scalar(*a.lr_tensor, "lr");
  HyperCheck ck;
  R::check(a.hyper.data(), ck);
  binding::check_hyper(kName, lr, ck);
  const typename R::Config config = R::config(a.hyper.data());
  const std::vector<cpu::FactoredTensor> tensors =
      binding::checked_factored_tensors<R>(kName, a, config, c10::DeviceType::CPU);
  std::vector<int64_t> stats = {0, static_cast<int64_t>(tensors.size())};
  if (!tensors.empty()) {
    binding::check_steps_on(a, c10::Device(c10::kCPU));
    for (const std::optional<at::Tensor>& t : {a.grad_scale, a.found_inf}) {
      TORCH_CHECK(!t.has_value() ||
                      (t->numel() == 1 && t->scalar_type() == at::kFloat && t->device().is_cpu()),
                  "fusedopt: grad_scale and found_inf must be one-element float32 CPU tensors");
    }
    binding::FactoredCudaWork<R> work = binding::prepare_factored_cuda<R>(
        a, config, tensors, a.lr_tensor->data_ptr<float>(), lr,
        a.grad_scale.has_value() ? a.grad_scale->data_ptr<float>() : nullptr,
        a.found_inf.has_value() ? a.found_inf->data_ptr<float>() : nullptr);
    // The device buffer, here in doubles: 8-byte aligned as the layout wants.
    std::vector<double> buffer((work.layout.total + sizeof(double) - 1) / sizeof(double));
    char* base = reinterpret_cast<char*>(buffer.data());
    mta::write_factored_tables(work.plan, work.layout, base);
    mta::bind_factored_buffer(work.plan, work.layout, base, work.args);
    switch (binding::param_dtype(a.params[0].scalar_type())) {
      case ParamDtype::kFloat32:
        emulate_factored_kernels<R, float>(work.args);
        break;
      case ParamDtype::kBFloat16:
        emulate_factored_kernels<R, Bf16>(work.args);
        break;
      case ParamDtype::kFloat16:
        emulate_factored_kernels<R, Fp16>(work.args);
        break;
    }
    stats[0] = work.args.n_items;
  }
  torch::jit::drop(*stack, binding::step_arg_count<R>());
  torch::jit::push(*stack, c10::IValue(stats));
}

#define FUSEDOPT_RULE_NAME(Type, name) constexpr char k##Type##Name[] = #name;
FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_RULE_NAME)
FUSEDOPT_FOR_EACH_REDUCTION_RULE(FUSEDOPT_RULE_NAME)
#undef FUSEDOPT_RULE_NAME

}  // namespace

TORCH_LIBRARY(fusedopt_testing, m) {
  m.def("launch_plan(str rule, int[] numels) -> int[]");
  m.def(
      "grad_norm_emulate(Tensor[] tensors, float norm_type, int? max_grid_blocks=None) -> "
      "(Tensor, int[])");
#define FUSEDOPT_DEF(Type, name)                                                             \
  m.def(binding::step_schema<Type>(#name "_emulate_step_", "Tensor",                         \
                                   ", bool steps_in_kernel=False, bool lr_in_kernel=False, " \
                                   "int threads_per_block=512, int? max_grid_blocks=None",   \
                                   "int[]")                                                  \
            .c_str());
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_DEF)
#undef FUSEDOPT_DEF
#define FUSEDOPT_DEF_FACTORED(Type, name) \
  m.def(binding::step_schema<Type>(#name "_emulate_factored_step_", "Tensor", "", "int[]").c_str());
  FUSEDOPT_FOR_EACH_REDUCTION_RULE(FUSEDOPT_DEF_FACTORED)
#undef FUSEDOPT_DEF_FACTORED
}

// launch_plan takes no tensor: the backend-select key reaches it.
TORCH_LIBRARY_IMPL(fusedopt_testing, CompositeExplicitAutograd, m) {
  m.impl("launch_plan", &launch_plan);
}

TORCH_LIBRARY_IMPL(fusedopt_testing, CPU, m) {
#define FUSEDOPT_IMPL(Type, name) \
  m.impl(#name "_emulate_step_",  \
         torch::CppFunction::makeFromBoxedFunction<&emulate_step<Type, k##Type##Name>>());
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_IMPL)
#undef FUSEDOPT_IMPL
#define FUSEDOPT_IMPL_FACTORED(Type, name) \
  m.impl(                                  \
      #name "_emulate_factored_step_",     \
      torch::CppFunction::makeFromBoxedFunction<&emulate_factored_step<Type, k##Type##Name>>());
  FUSEDOPT_FOR_EACH_REDUCTION_RULE(FUSEDOPT_IMPL_FACTORED)
#undef FUSEDOPT_IMPL_FACTORED
  m.impl("grad_norm_emulate", &grad_norm_emulate);
}

}  // namespace fusedopt::testing

PyMODINIT_FUNC PyInit__testing(void) {
  static PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_testing",
      "fusedopt's test-only ops (registered under torch.ops.fusedopt_testing)", -1, nullptr};
  return PyModule_Create(&module_def);
}
