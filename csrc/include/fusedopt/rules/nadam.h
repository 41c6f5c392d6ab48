// NAdam (Dozat 2016, "Incorporating Nesterov Momentum into Adam") in
// torch.optim.NAdam's form (torch/optim/nadam.py, `_single_tensor_nadam`),
// with the momentum schedule mu_t = beta1 (1 - 0.5 * 0.96^(t * psi)) and its
// running product kept per tensor (Note [scalar states] in core/rule.h):
//   g  = maximize ? -g : g
//   g += wd * p                           (L2, torch's default)
//   p *= 1 - lr * wd                      (decoupled, decoupled_weight_decay=True)
//   m  = lerp(m, g, 1 - beta1)
//   v  = v * beta2 + (1 - beta2) * g * g
//   d  = sqrt(v / (1 - beta2^t)) + eps
//   p += -lr (1 - mu_t) / (1 - prod_{i<=t} mu_i) * g / d
//   p += -lr mu_{t+1} / (1 - prod_{i<=t+1} mu_i) * m / d
// mu_product is a float32 0-dim tensor in torch, multiplied in float32 at each
// step; per_tensor does the same, so the state dicts agree bit for bit.
// Bytes per element (fp32): read p, g, m, v, write p, m, v: 28 B.
#pragma once

#include <cmath>

#include "fusedopt/rules/common.h"

namespace fusedopt {

struct NAdam {
  enum State : int { kExpAvg, kExpAvgSq, kStates };
  static constexpr const char* kStateNames[] = {"exp_avg", "exp_avg_sq"};
  static constexpr bool kHasStep = true;
  enum ScalarState : int { kMuProduct };
  static constexpr const char* kScalarNames[] = {"mu_product"};
  static constexpr uint32_t kStateSets[] = {0b11};

  enum Hyper : int {
    kBeta1, kBeta2, kEps, kMomentumDecay, kWeightDecay, kWeightDecayMode, kLrMax, kMaximize,
    kHyperCount
  };
  static constexpr HyperArg kHyper[] = {
      {"beta1", HyperType::kFloat},          {"beta2", HyperType::kFloat},
      {"eps", HyperType::kFloat},            {"momentum_decay", HyperType::kFloat},
      {"weight_decay", HyperType::kFloat},   {"weight_decay_mode", HyperType::kInt},
      {"lr_max", HyperType::kFloat},         {"maximize", HyperType::kBool}};

  struct Config {
    double beta1, beta2, eps, momentum_decay, weight_decay, lr_max;
    WeightDecayMode wd_mode;
    bool maximize;
  };

  static Config config(const double* h) {
    return {h[kBeta1], h[kBeta2], h[kEps], h[kMomentumDecay], h[kWeightDecay], h[kLrMax],
            static_cast<WeightDecayMode>(static_cast<int32_t>(h[kWeightDecayMode])),
            h[kMaximize] != 0.0};
  }

  static void check(const double* h, HyperCheck& ck) {
    ck.require(h[kBeta1] >= 0.0 && h[kBeta1] < 1.0, "beta1 must be in [0, 1)", h[kBeta1]);
    ck.require(h[kBeta2] >= 0.0 && h[kBeta2] < 1.0, "beta2 must be in [0, 1)", h[kBeta2]);
    ck.require(h[kEps] >= 0.0, "eps must be >= 0", h[kEps]);
    ck.require(h[kMomentumDecay] >= 0.0, "momentum_decay must be >= 0", h[kMomentumDecay]);
    check_weight_decay(h[kWeightDecay], h[kWeightDecayMode], h[kLrMax], ck);
  }

  static FUSEDOPT_HD_MEMBER bool state_used(int, const Config&) { return true; }

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
    float bias_correction2;  // 1 - beta2^t
    float grad_coef;         // -lr (1 - mu_t) / (1 - mu_product_t)
    float exp_avg_coef;      // -lr mu_{t+1} / (1 - mu_product_t * mu_{t+1})
    float param_decay;       // multiplier of p before the update
  };

  // mu_t of the momentum schedule, in double as torch forms it.
  static FUSEDOPT_HD_MEMBER double momentum(const Config& c, double step) {
    return c.beta1 * (1.0 - 0.5 * pow(0.96, step * c.momentum_decay));
  }

  // `scalars[kMuProduct]`: the product before this step in, after it out.
  static FUSEDOPT_HD_MEMBER PerTensor per_tensor(const Config& c, double lr, double step,
                                                 float* scalars) {
    const double mu = momentum(c, step);
    const double mu_next = momentum(c, step + 1.0);
    // torch: `mu_product *= mu` on a float32 tensor, a float32 multiply.
    const float mu_product = scalars[kMuProduct] * static_cast<float>(mu);
    scalars[kMuProduct] = mu_product;
    const double mu_product_next = static_cast<double>(mu_product) * mu_next;
    return {static_cast<float>(1.0 - pow(c.beta2, step)),
            static_cast<float>(-lr * (1.0 - mu) / (1.0 - static_cast<double>(mu_product))),
            static_cast<float>(-lr * mu_next / (1.0 - mu_product_next)),
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
    const float denom = sqrtf(v / t.bias_correction2) + h.eps;
    p = p + t.grad_coef * g / denom;
    p = p + t.exp_avg_coef * m / denom;
  }
};

}  // namespace fusedopt
