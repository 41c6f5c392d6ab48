// What every update rule declares, and the host-side helpers the binding uses
// to turn an op's arguments into a rule's Config. Torch-free: compiled by g++
// (CPU loops, binding) and nvcc (CUDA kernels).
//
// Note [the rule interface]: a rule is a struct (rules/<name>.h) with
//   kStates, kStateNames        its states, in the kernels' order (torch's keys)
//   kHasStep                    whether each param keeps a float32 step count
//   kHyper, Config, config()    the op's hyperparameters after lr (schema order),
//                               the struct the user gave, and its filling
//   check(Config, HyperCheck&)  range checks, with messages naming the constraint
//   state_used(k, Config)       which states a step with this Config touches
//   kStateSets                  the state masks the CPU loops are compiled for
//   Launch, launch(Config)      the fp32 per-launch constants of the element loop
//   PerTensor, per_tensor(Config, lr, step)
//                               the per-tensor scalars, computed once per tensor
//                               and step (host, or device with device counts)
//                               from fp64 lr and step (the count after this step)
//   update<Used>(p, g, s, used, Launch, PerTensor)
//                               one element, all fp32 in registers
// and, only where the rule keeps per-tensor scalars besides the step count
// (Note [scalar states]):
//   kScalarNames                their state keys (NAdam's mu_product)
//   per_tensor(Config, lr, step, float* scalars)
//                               in place of the three-argument form
// and nothing else. Loads, stores, dtype conversions, GradScaler's unscale and
// the chunk loops belong to the traversals (csrc/cpu, mta/), which take the
// rule as a template parameter; check_rule<R>() below asserts the shape.
// Storage dtypes other than fp32 for states (bf16, int8 blockwise) and
// reduction passes (Adafactor's row/column sums, a global norm) are traversal
// policies too: the rule only ever sees fp32 values and per-tensor scalars.
#pragma once

#include <cstdint>
#include <iterator>
#include <type_traits>

#include "fusedopt/core/macros.h"

namespace fusedopt {

// The schema type of one hyperparameter. The binding reads every one as a
// double (ints and bools are exact in a double) and hands the rule an array.
enum class HyperType { kFloat, kInt, kBool };

struct HyperArg {
  const char* name;
  HyperType type;
};

// Collects the first failed range check of a Config; the binding turns it
// into an error that names the rule, the constraint and the value.
struct HyperCheck {
  const char* failure = nullptr;  // e.g. "beta1 must be in [0, 1)"
  double value = 0.0;

  void require(bool ok, const char* constraint, double got) {
    if (!ok && failure == nullptr) {
      failure = constraint;
      value = got;
    }
  }
};

// The states a traversal loads and stores, as a bit mask over the rule's
// states. The CPU loops instantiate one loop per mask in R::kStateSets, so
// there `has` is a compile-time constant and unused branches vanish; the CUDA
// kernels use RuntimeStates, a uniform branch that costs nothing in a
// memory-bound loop.
template <uint32_t kMask>
struct FixedStates {
  static constexpr bool has(int k) { return (kMask >> k) & 1u; }
};
struct RuntimeStates {
  uint32_t mask;
  FUSEDOPT_HD_MEMBER bool has(int k) const { return (mask >> k) & 1u; }
};

template <class R>
uint32_t state_mask(const typename R::Config& c) {
  uint32_t mask = 0;
  for (int k = 0; k < R::kStates; ++k) {
    if (R::state_used(k, c)) mask |= 1u << k;
  }
  return mask;
}

// The most state streams a CPU loop takes as separate __restrict__ pointers
// (csrc/cpu/loop.cpp); raise it with that loop's signature.
constexpr int kMaxStates = 4;

// Note [scalar states]: a few rules keep per-tensor float32 scalars in torch's
// state dict besides `step` (NAdam's mu_product, ASGD's eta and mu), each a
// recurrence torch evaluates on 0-dim float32 tensors. Such a rule declares
// kScalarNames and per_tensor(Config, lr, step, float* scalars), which reads
// the values before this step from `scalars` and writes the values after it
// back (in float32, as torch rounds them). The op takes them in `state_steps`
// after the counts, scalar-major: [step of every param, then kScalarNames[0] of
// every param, ...], all on one device, the counts'. They advance with the
// counts (Note [step-count protocol] in fusedopt/registry.py), never before
// the element pass has succeeded:
//   - counts on the CPU: the host computes each tensor's PerTensor and new
//     values once, and stores the values after the launches (the CPU op,
//     CudaWork::advance_host_scalars in binding/cuda_work.h, the Triton
//     launcher). The new values need lr, so a device lr is refused there:
//     reading it would sync.
//   - counts on the device (the GPU backends' layout, capturable): the values
//     live beside the counts. The element kernels read the old values and
//     compute the PerTensor from them (scalars_in_kernel in mta/traversal.h;
//     the Triton prologue's per_tensor_device), dropping the new values; the
//     last launch computes per_tensor at the same count, lr and old values
//     once more and stores the new values and the count, unless found_inf
//     (Note [the advance launch] in mta/args.h; _advance_counts_kernel in
//     kernels/mta.py). Both paths evaluate the same double expressions and
//     round to float32 the same way, so the values agree bit for bit on one
//     compiler (tests/test_cuda_emulation.py).
template <class R, class = void>
struct ScalarStateCount {
  static constexpr int value = 0;
};
template <class R>
struct ScalarStateCount<R, std::void_t<decltype(R::kScalarNames)>> {
  static constexpr int value = sizeof(R::kScalarNames) / sizeof(R::kScalarNames[0]);
};
template <class R>
constexpr int kScalarStates = ScalarStateCount<R>::value;

// The lists of `state_steps` a rule's op takes per param: the count and the
// scalar states.
template <class R>
constexpr int kScalarLists = R::kHasStep ? 1 + kScalarStates<R> : 0;

// R::per_tensor in either form; `scalars` (kScalarStates<R> values) is
// updated in place, and may be null for a rule without scalar states.
template <class R>
FUSEDOPT_HD typename R::PerTensor per_tensor_of(const typename R::Config& c, double lr,
                                                double step, float* scalars) {
  if constexpr (kScalarStates<R> > 0) {
    return R::per_tensor(c, lr, step, scalars);
  } else {
    return R::per_tensor(c, lr, step);
  }
}

template <class R>
constexpr bool check_rule() {
  static_assert(R::kStates >= 0 && R::kStates <= kMaxStates, "see kMaxStates");
  static_assert(std::size(R::kStateNames) == static_cast<size_t>(R::kStates) || R::kStates == 0,
                "one name per state");
  static_assert(std::is_trivially_copyable_v<typename R::Launch>, "Launch travels in kernel args");
  static_assert(std::is_trivially_copyable_v<typename R::PerTensor>,
                "PerTensor travels in kernel args");
  static_assert(std::size(R::kStateSets) >= 1, "at least one state set");
  static_assert(kScalarStates<R> == 0 || R::kHasStep, "scalar states come with a step count");
  return true;
}

}  // namespace fusedopt
