// Adadelta (Zeiler 2012, Algorithm 1) in torch.optim.Adadelta's form
// (torch/optim/adadelta.py, `_single_tensor_adadelta`), operation by operation:
//   g  = maximize ? -g : g
//   g += wd * p                                      (L2, torch's only mode)
//   p *= 1 - lr * wd                                 (decoupled; lr / lr_max: fully decoupled)
//   square_avg = square_avg * rho + (1 - rho) * g * g
//   delta      = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
//   acc_delta  = acc_delta * rho + (1 - rho) * delta * delta
//   p += -lr * delta
// The paper has no lr (its step is delta); torch's lr (default 1) scales it,
// so the decoupled modes' lr * wd is wd itself per step at the default.
// Note [the rule interface] in core/rule.h.
// Bytes per element (fp32): read p, g, square_avg, acc_delta, write p and the
// two states: 28 B.
#pragma once

#include <cmath>

#include "fusedopt/rules/common.h"

namespace fusedopt {

struct Adadelta {
  enum State : int { kSquareAvg, kAccDelta, kStates };
  static constexpr const char* kStateNames[] = {"square_avg", "acc_delta"};
  static constexpr bool kHasStep = true;  // torch keeps a count; the update does not read it
  static constexpr uint32_t kStateSets[] = {0b11};

  enum Hyper : int {
    kRho, kEps, kWeightDecay, kWeightDecayMode, kLrMax, kMaximize, kHyperCount
  };
  static constexpr HyperArg kHyper[] = {
      {"rho", HyperType::kFloat},             {"eps", HyperType::kFloat},
      {"weight_decay", HyperType::kFloat},    {"weight_decay_mode", HyperType::kInt},
      {"lr_max", HyperType::kFloat},          {"maximize", HyperType::kBool}};

  struct Config {
    double rho, eps, weight_decay, lr_max;
    WeightDecayMode wd_mode;
    bool maximize;
  };

  static Config config(const double* h) {
    return {h[kRho], h[kEps], h[kWeightDecay], h[kLrMax],
            static_cast<WeightDecayMode>(static_cast<int32_t>(h[kWeightDecayMode])),
            h[kMaximize] != 0.0};
  }

  static void check(const double* h, HyperCheck& ck) {
    ck.require(h[kRho] >= 0.0 && h[kRho] <= 1.0, "rho must be in [0, 1]", h[kRho]);
    ck.require(h[kEps] >= 0.0, "eps must be >= 0", h[kEps]);
    check_weight_decay(h[kWeightDecay], h[kWeightDecayMode], h[kLrMax], ck);
  }

  static FUSEDOPT_HD_MEMBER bool state_used(int, const Config&) { return true; }

  // 1 - rho is formed in double and rounded once, as torch passes `1 - rho`
  // as a Python float to `addcmul_`.
  struct Launch {
    float rho, one_minus_rho, eps;
    float l2;         // wd for kL2, else 0
    float grad_sign;  // -1 with maximize, else 1: an exact multiply
  };

  static FUSEDOPT_HD_MEMBER Launch launch(const Config& c) {
    return {static_cast<float>(c.rho), static_cast<float>(1.0 - c.rho),
            static_cast<float>(c.eps), l2_coefficient(c.wd_mode, c.weight_decay),
            c.maximize ? -1.0f : 1.0f};
  }

  struct PerTensor {
    float neg_lr;       // -lr
    float param_decay;  // multiplier of p before the update
  };

  static FUSEDOPT_HD_MEMBER PerTensor per_tensor(const Config& c, double lr, double) {
    return {static_cast<float>(-lr), param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max)};
  }

  template <class Used>
  static FUSEDOPT_HD_MEMBER void update(float& p, float g, float (&s)[kStates], Used,
                                        const Launch& h, const PerTensor& t) {
    g = g * h.grad_sign;
    if (h.l2 != 0.0f) g = g + h.l2 * p;
    p = p * t.param_decay;
    float& square_avg = s[kSquareAvg];
    float& acc_delta = s[kAccDelta];
    square_avg = square_avg * h.rho + h.one_minus_rho * g * g;
    const float rms_grad = sqrtf(square_avg + h.eps);
    const float delta = sqrtf(acc_delta + h.eps) / rms_grad * g;
    acc_delta = acc_delta * h.rho + h.one_minus_rho * delta * delta;
    p = p + t.neg_lr * delta;
  }
};

}  // namespace fusedopt
