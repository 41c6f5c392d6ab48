// Adamax (Kingma & Ba 2015, Algorithm 2: Adam with the infinity norm), in
// torch.optim.Adamax's form (`_single_tensor_adamax`), operation by operation
// (Note [the rule interface] in core/rule.h):
//   g  = maximize ? -g : g
//   g += wd * p                           (L2, torch's only mode)
//   p *= 1 - lr * wd                      (decoupled modes: fusedopt's)
//   m  = lerp(m, g, 1 - beta1)
//   u  = max(u * beta2, |g| + eps)        (torch.maximum: NaN from either side)
//   p += -lr / (1 - beta1^t) * m / u      (addcdiv on the CPU: (value * m) / u)
// Bytes per element (fp32 params and states): read p, g, m, u, write p, m, u: 28 B.
#pragma once

#include <cmath>

#include "fusedopt/rules/common.h"

namespace fusedopt {

struct Adamax {
  enum State : int { kExpAvg, kExpInf, kStates };
  static constexpr const char* kStateNames[] = {"exp_avg", "exp_inf"};
  static constexpr bool kHasStep = true;
  static constexpr uint32_t kStateSets[] = {0b11};

  enum Hyper : int {
    kBeta1, kBeta2, kEps, kWeightDecay, kWeightDecayMode, kLrMax, kMaximize, kHyperCount
  };
  static constexpr HyperArg kHyper[] = {
      {"beta1", HyperType::kFloat},           {"beta2", HyperType::kFloat},
      {"eps", HyperType::kFloat},             {"weight_decay", HyperType::kFloat},
      {"weight_decay_mode", HyperType::kInt}, {"lr_max", HyperType::kFloat},
      {"maximize", HyperType::kBool}};

  struct Config {
    double beta1, beta2, eps, weight_decay, lr_max;
    WeightDecayMode wd_mode;
    bool maximize;
  };

  static Config config(const double* h) {
    return {h[kBeta1], h[kBeta2], h[kEps], h[kWeightDecay], h[kLrMax],
            static_cast<WeightDecayMode>(static_cast<int32_t>(h[kWeightDecayMode])),
            h[kMaximize] != 0.0};
  }

  static void check(const double* h, HyperCheck& ck) {
    ck.require(h[kBeta1] >= 0.0 && h[kBeta1] < 1.0, "beta1 must be in [0, 1)", h[kBeta1]);
    ck.require(h[kBeta2] >= 0.0 && h[kBeta2] < 1.0, "beta2 must be in [0, 1)", h[kBeta2]);
    ck.require(h[kEps] >= 0.0, "eps must be >= 0", h[kEps]);
    check_weight_decay(h[kWeightDecay], h[kWeightDecayMode], h[kLrMax], ck);
  }

  static FUSEDOPT_HD_MEMBER bool state_used(int, const Config&) { return true; }

  // 1 - beta1 formed in double and rounded once, as torch passes it to `lerp_`.
  struct Launch {
    float one_minus_beta1, beta2, eps;
    float l2;         // wd for kL2, else 0
    float grad_sign;  // -1 with maximize, else 1: an exact multiply
  };

  static FUSEDOPT_HD_MEMBER Launch launch(const Config& c) {
    return {static_cast<float>(1.0 - c.beta1), static_cast<float>(c.beta2),
            static_cast<float>(c.eps), l2_coefficient(c.wd_mode, c.weight_decay),
            c.maximize ? -1.0f : 1.0f};
  }

  struct PerTensor {
    float neg_step_size;  // -lr / (1 - beta1^t): torch's `-clr`
    float param_decay;    // multiplier of p before the update
  };

  // `step` is the count after this step's increment (1 on the first step).
  static FUSEDOPT_HD_MEMBER PerTensor per_tensor(const Config& c, double lr, double step) {
    const double bias_correction = 1.0 - pow(c.beta1, step);
    return {static_cast<float>(-(lr / bias_correction)),
            param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max)};
  }

  template <class Used>
  static FUSEDOPT_HD_MEMBER void update(float& p, float g, float (&s)[kStates], Used,
                                        const Launch& h, const PerTensor& t) {
    g = g * h.grad_sign;
    if (h.l2 != 0.0f) g = g + h.l2 * p;
    p = p * t.param_decay;
    float& m = s[kExpAvg];
    float& u = s[kExpInf];
    m = lerp_like_torch(m, g, h.one_minus_beta1);
    u = max_propagate_nan(u * h.beta2, fabsf(g) + h.eps);
    p = p + t.neg_step_size * m / u;
  }
};

}  // namespace fusedopt
