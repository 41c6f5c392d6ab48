// Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019): the one source
// of truth for their math (Note [the rule interface] in core/rule.h).
//
// The rule follows torch.optim.Adam's single-tensor path operation by
// operation (torch/optim/adam.py, `_single_tensor_adam`), so that the fp32
// results agree with torch to rounding:
//   g  = maximize ? -g : g
//   g += wd * p                           (L2, Adam)
//   p *= 1 - lr * wd                      (decoupled, AdamW)
//   m  = lerp(m, g, 1 - beta1)
//   v  = v * beta2 + (1 - beta2) * g * g
//   v' = amsgrad ? (v_max = max(v_max, v)) : v
//   p += -step_size * m / (sqrt(v') / sqrt(1 - beta2^t) + eps),
//   step_size = lr / (1 - beta1^t)
// Bytes per element (fp32 params and states): read p, g, m, v, write p, m, v:
// 28 B; amsgrad +8 B.
#pragma once

#include <cmath>

#include "fusedopt/rules/common.h"

namespace fusedopt {

struct Adam {
  enum State : int { kExpAvg, kExpAvgSq, kMaxExpAvgSq, kStates };
  static constexpr const char* kStateNames[] = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  static constexpr bool kHasStep = true;
  // Without amsgrad, with it.
  static constexpr uint32_t kStateSets[] = {0b011, 0b111};

  enum Hyper : int {
    kBeta1, kBeta2, kEps, kWeightDecay, kWeightDecayMode, kLrMax, kAmsgrad, kMaximize, kHyperCount
  };
  static constexpr HyperArg kHyper[] = {
      {"beta1", HyperType::kFloat},          {"beta2", HyperType::kFloat},
      {"eps", HyperType::kFloat},            {"weight_decay", HyperType::kFloat},
      {"weight_decay_mode", HyperType::kInt}, {"lr_max", HyperType::kFloat},
      {"amsgrad", HyperType::kBool},         {"maximize", HyperType::kBool}};

  struct Config {
    double beta1, beta2, eps, weight_decay, lr_max;
    WeightDecayMode wd_mode;
    bool amsgrad, maximize;
  };

  static Config config(const double* h) {
    return {h[kBeta1], h[kBeta2], h[kEps], h[kWeightDecay], h[kLrMax],
            static_cast<WeightDecayMode>(static_cast<int32_t>(h[kWeightDecayMode])),
            h[kAmsgrad] != 0.0, h[kMaximize] != 0.0};
  }

  static void check(const double* h, HyperCheck& ck) {
    ck.require(h[kBeta1] >= 0.0 && h[kBeta1] < 1.0, "beta1 must be in [0, 1)", h[kBeta1]);
    ck.require(h[kBeta2] >= 0.0 && h[kBeta2] < 1.0, "beta2 must be in [0, 1)", h[kBeta2]);
    ck.require(h[kEps] >= 0.0, "eps must be >= 0", h[kEps]);
    check_weight_decay(h[kWeightDecay], h[kWeightDecayMode], h[kLrMax], ck);
  }

  static FUSEDOPT_HD_MEMBER bool state_used(int k, const Config& c) {
    return k != kMaxExpAvgSq || c.amsgrad;
  }

  // Differences like 1 - beta1 are formed in double and rounded once, as torch
  // does when it passes `1 - beta1` as a Python float to `lerp_`.
  struct Launch {
    float one_minus_beta1, beta2, one_minus_beta2, eps;
    float l2;         // wd for kL2, else 0
    float grad_sign;  // -1 with maximize, else 1: an exact multiply. (A select on a
                      // bool here kept gcc from vectorizing the bf16/fp16 CPU loops.)
  };

  static FUSEDOPT_HD_MEMBER Launch launch(const Config& c) {
    return {static_cast<float>(1.0 - c.beta1), static_cast<float>(c.beta2),
            static_cast<float>(1.0 - c.beta2), static_cast<float>(c.eps),
            l2_coefficient(c.wd_mode, c.weight_decay), c.maximize ? -1.0f : 1.0f};
  }

  struct PerTensor {
    float neg_step_size;          // -lr / (1 - beta1^t)
    float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
    float param_decay;            // multiplier of p before the update
  };

  // `step` is the count after this step's increment (1 on the first step).
  static FUSEDOPT_HD_MEMBER PerTensor per_tensor(const Config& c, double lr, double step) {
    const double bias_correction1 = 1.0 - pow(c.beta1, step);
    const double bias_correction2 = 1.0 - pow(c.beta2, step);
    return {static_cast<float>(-(lr / bias_correction1)),
            static_cast<float>(sqrt(bias_correction2)),
            param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max)};
  }

  template <class Used>
  static FUSEDOPT_HD_MEMBER void update(float& p, float g, float (&s)[kStates], Used used,
                                        const Launch& h, const PerTensor& t) {
    g = g * h.grad_sign;
    if (h.l2 != 0.0f) g = g + h.l2 * p;
    p = p * t.param_decay;
    float& m = s[kExpAvg];
    float& v = s[kExpAvgSq];
    m = lerp_like_torch(m, g, h.one_minus_beta1);
    v = v * h.beta2 + h.one_minus_beta2 * g * g;
    float v_hat = v;
    if (used.has(kMaxExpAvgSq)) {
      s[kMaxExpAvgSq] = max_propagate_nan(s[kMaxExpAvgSq], v);
      v_hat = s[kMaxExpAvgSq];
    }
    const float denom = sqrtf(v_hat) / t.bias_correction2_sqrt + h.eps;
    p = p + t.neg_step_size * m / denom;
  }
};

}  // namespace fusedopt
