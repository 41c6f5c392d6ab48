// Adagrad (Duchi, Hazan & Singer 2011) in torch.optim.Adagrad's form
// (torch/optim/adagrad.py, `_single_tensor_adagrad`), operation by operation:
//   g   = maximize ? -g : g
//   g  += wd * p                             (L2, torch's only mode)
//   p  *= 1 - clr * wd                       (decoupled; clr / lr_max: fully decoupled)
//   sum = sum + g * g
//   p  += -clr * g / (sqrt(sum) + eps),  clr = lr / (1 + (t - 1) * lr_decay)
// The decoupled modes decay by the lr this step applies (clr), lr_decay
// included: it is Adagrad's own schedule. `sum` starts at
// initial_accumulator_value (a state's initial value: fusedopt/optim/adagrad.py).
// Note [the rule interface] in core/rule.h.
// Bytes per element (fp32): read p, g, sum, write p, sum: 20 B.
#pragma once

#include <cmath>

#include "fusedopt/rules/common.h"

namespace fusedopt {

struct Adagrad {
  enum State : int { kSum, kStates };
  static constexpr const char* kStateNames[] = {"sum"};
  static constexpr bool kHasStep = true;
  static constexpr uint32_t kStateSets[] = {0b1};

  enum Hyper : int {
    kLrDecay, kEps, kWeightDecay, kWeightDecayMode, kLrMax, kMaximize, kHyperCount
  };
  static constexpr HyperArg kHyper[] = {
      {"lr_decay", HyperType::kFloat},        {"eps", HyperType::kFloat},
      {"weight_decay", HyperType::kFloat},    {"weight_decay_mode", HyperType::kInt},
      {"lr_max", HyperType::kFloat},          {"maximize", HyperType::kBool}};

  struct Config {
    double lr_decay, eps, weight_decay, lr_max;
    WeightDecayMode wd_mode;
    bool maximize;
  };

  static Config config(const double* h) {
    return {h[kLrDecay], h[kEps], h[kWeightDecay], h[kLrMax],
            static_cast<WeightDecayMode>(static_cast<int32_t>(h[kWeightDecayMode])),
            h[kMaximize] != 0.0};
  }

  static void check(const double* h, HyperCheck& ck) {
    ck.require(h[kLrDecay] >= 0.0, "lr_decay must be >= 0", h[kLrDecay]);
    ck.require(h[kEps] >= 0.0, "eps must be >= 0", h[kEps]);
    check_weight_decay(h[kWeightDecay], h[kWeightDecayMode], h[kLrMax], ck);
  }

  static FUSEDOPT_HD_MEMBER bool state_used(int, const Config&) { return true; }

  struct Launch {
    float eps;
    float l2;         // wd for kL2, else 0
    float grad_sign;  // -1 with maximize, else 1: an exact multiply
  };

  static FUSEDOPT_HD_MEMBER Launch launch(const Config& c) {
    return {static_cast<float>(c.eps), l2_coefficient(c.wd_mode, c.weight_decay),
            c.maximize ? -1.0f : 1.0f};
  }

  struct PerTensor {
    float neg_clr;      // -lr / (1 + (t - 1) * lr_decay), as torch's `value=-clr`
    float param_decay;  // multiplier of p before the update
  };

  // `step` is the count after this step's increment (1 on the first step).
  static FUSEDOPT_HD_MEMBER PerTensor per_tensor(const Config& c, double lr, double step) {
    const double clr = lr / (1.0 + (step - 1.0) * c.lr_decay);
    return {static_cast<float>(-clr), param_decay(c.wd_mode, c.weight_decay, clr, c.lr_max)};
  }

  template <class Used>
  static FUSEDOPT_HD_MEMBER void update(float& p, float g, float (&s)[kStates], Used,
                                        const Launch& h, const PerTensor& t) {
    g = g * h.grad_sign;
    if (h.l2 != 0.0f) g = g + h.l2 * p;
    p = p * t.param_decay;
    float& sum = s[kSum];
    sum = sum + g * g;
    const float denom = sqrtf(sum) + h.eps;
    p = p + t.neg_clr * g / denom;
  }
};

}  // namespace fusedopt
