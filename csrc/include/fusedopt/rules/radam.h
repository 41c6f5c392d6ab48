// RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and
// Beyond", Algorithm 2), in torch.optim.RAdam's form (`_single_tensor_radam`),
// operation by operation (Note [the rule interface] in core/rule.h):
//   g  = maximize ? -g : g
//   g += wd * p                           (L2, torch's default)
//   p *= 1 - lr * wd                      (decoupled: decoupled_weight_decay, RAdamW)
//   m  = lerp(m, g, 1 - beta1)
//   v  = v * beta2 + (1 - beta2) * g * g
//   rho_inf = 2 / (1 - beta2) - 1,  rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
//   rho_t > 5: p -= lr * m / (1 - beta1^t) * sqrt(1 - beta2^t) / (sqrt(v) + eps) * r_t,
//              r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
//   else:      p -= lr * m / (1 - beta1^t)  (momentum SGD while v's variance is intractable)
// rho_t is a function of t alone, so the switch is a per-tensor scalar: `rect`
// is r_t, or 0 for the un-rectified step, and the element loop selects on it.
// One deviation from torch's roundings: lr / (1 - beta1^t) is one scalar
// (torch rounds m / (1 - beta1^t), then multiplies by lr): at most an ulp of
// the update, and the Triton frame's per-tensor table has 4 columns.
// Bytes per element (fp32 params and states): read p, g, m, v, write p, m, v: 28 B.
#pragma once

#include <cmath>

#include "fusedopt/rules/common.h"

namespace fusedopt {

struct Radam {
  enum State : int { kExpAvg, kExpAvgSq, kStates };
  static constexpr const char* kStateNames[] = {"exp_avg", "exp_avg_sq"};
  static constexpr bool kHasStep = true;
  static constexpr uint32_t kStateSets[] = {0b11};

  // The rectified step once the SMA length passes it: torch's `rho_t > 5.0`
  // (the paper's Algorithm 2 says > 4; the authors' code, like torch, uses 5).
  static constexpr double kRhoThreshold = 5.0;

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

  // 1 - beta1 and 1 - beta2 formed in double and rounded once, as torch passes
  // them as Python floats.
  struct Launch {
    float one_minus_beta1, beta2, one_minus_beta2, eps;
    float l2;         // wd for kL2, else 0
    float grad_sign;  // -1 with maximize, else 1: an exact multiply
  };

  static FUSEDOPT_HD_MEMBER Launch launch(const Config& c) {
    return {static_cast<float>(1.0 - c.beta1), static_cast<float>(c.beta2),
            static_cast<float>(1.0 - c.beta2), static_cast<float>(c.eps),
            l2_coefficient(c.wd_mode, c.weight_decay), c.maximize ? -1.0f : 1.0f};
  }

  struct PerTensor {
    float neg_step_size;          // -lr / (1 - beta1^t)
    float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
    float rect;                   // r_t when rho_t > kRhoThreshold, else 0 (un-rectified)
    float param_decay;            // multiplier of p before the update
  };

  // `step` is the count after this step's increment (1 on the first step).
  // rho_t in torch's order: rho_inf - ((2 t) beta2^t) / (1 - beta2^t).
  static FUSEDOPT_HD_MEMBER PerTensor per_tensor(const Config& c, double lr, double step) {
    const double bias_correction1 = 1.0 - pow(c.beta1, step);
    const double bias_correction2 = 1.0 - pow(c.beta2, step);
    const double rho_inf = 2.0 / (1.0 - c.beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * step * pow(c.beta2, step) / bias_correction2;
    // rho_inf > rho_t > 5 here, so no factor is 0 or negative.
    const double rect = rho_t > kRhoThreshold ? sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                                                     ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                                              : 0.0;
    return {static_cast<float>(-(lr / bias_correction1)),
            static_cast<float>(sqrt(bias_correction2)), static_cast<float>(rect),
            param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max)};
  }

  template <class Used>
  static FUSEDOPT_HD_MEMBER void update(float& p, float g, float (&s)[kStates], Used,
                                        const Launch& h, const PerTensor& t) {
    g = g * h.grad_sign;
    if (h.l2 != 0.0f) g = g + h.l2 * p;
    p = p * t.param_decay;
    float& m = s[kExpAvg];
    float& v = s[kExpAvgSq];
    m = lerp_like_torch(m, g, h.one_minus_beta1);
    v = v * h.beta2 + h.one_minus_beta2 * g * g;
    const float step = m * t.neg_step_size;
    // torch's `sqrt(1 - beta2^t) / (sqrt(v) + eps)`: a float over a tensor is
    // Tensor.__rtruediv__, reciprocal() times the float.
    const float adaptive = (1.0f / (sqrtf(v) + h.eps)) * t.bias_correction2_sqrt;
    // A select on a per-tensor float, not a branch: the loop stays vectorized.
    p = p + (t.rect != 0.0f ? step * adaptive * t.rect : step);
  }
};

}  // namespace fusedopt
