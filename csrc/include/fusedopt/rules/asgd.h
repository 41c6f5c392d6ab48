// Averaged SGD (Polyak & Juditsky 1992; the step-size schedule of Bottou's
// SGD notes) in torch.optim.ASGD's form (torch/optim/asgd.py,
// `_single_tensor_asgd`). The step size eta and the averaging weight mu are
// per-tensor float32 states (Note [scalar states] in core/rule.h) that each
// step uses and then recomputes from its count t and the lr of this step:
//   g  = maximize ? -g : g
//   g += wd * p                             (L2, torch's only mode)
//   p *= 1 - lr * wd                        (decoupled modes)
//   p *= 1 - lambd * eta
//   p += -eta * g
//   ax = mu == 1 ? p : ax + (p - ax) * mu
//   eta <- lr / (1 + lambd * lr * t)^alpha,  mu <- 1 / max(1, t - t0)
// Bytes per element (fp32): read p, g, ax, write p, ax: 20 B.
#pragma once

#include <cmath>

#include "fusedopt/rules/common.h"

namespace fusedopt {

struct Asgd {
  enum State : int { kAx, kStates };
  static constexpr const char* kStateNames[] = {"ax"};
  static constexpr bool kHasStep = true;
  enum ScalarState : int { kEta, kMu };
  static constexpr const char* kScalarNames[] = {"eta", "mu"};
  static constexpr uint32_t kStateSets[] = {0b1};

  enum Hyper : int {
    kLambd, kAlpha, kT0, kWeightDecay, kWeightDecayMode, kLrMax, kMaximize, kHyperCount
  };
  static constexpr HyperArg kHyper[] = {
      {"lambd", HyperType::kFloat},        {"alpha", HyperType::kFloat},
      {"t0", HyperType::kFloat},           {"weight_decay", HyperType::kFloat},
      {"weight_decay_mode", HyperType::kInt}, {"lr_max", HyperType::kFloat},
      {"maximize", HyperType::kBool}};

  struct Config {
    double lambd, alpha, t0, weight_decay, lr_max;
    WeightDecayMode wd_mode;
    bool maximize;
  };

  static Config config(const double* h) {
    return {h[kLambd], h[kAlpha], h[kT0], h[kWeightDecay], h[kLrMax],
            static_cast<WeightDecayMode>(static_cast<int32_t>(h[kWeightDecayMode])),
            h[kMaximize] != 0.0};
  }

  // torch checks only lr and weight_decay; lambd, alpha and t0 are free.
  static void check(const double* h, HyperCheck& ck) {
    check_weight_decay(h[kWeightDecay], h[kWeightDecayMode], h[kLrMax], ck);
  }

  static FUSEDOPT_HD_MEMBER bool state_used(int, const Config&) { return true; }

  struct Launch {
    float l2;         // wd for kL2, else 0
    float grad_sign;  // -1 with maximize, else 1: an exact multiply
  };

  static FUSEDOPT_HD_MEMBER Launch launch(const Config& c) {
    return {l2_coefficient(c.wd_mode, c.weight_decay), c.maximize ? -1.0f : 1.0f};
  }

  struct PerTensor {
    float param_decay;  // 1 - lr * wd in the decoupled modes, else 1
    float eta_decay;    // 1 - lambd * eta
    float neg_eta;      // -eta
    float mu;           // the averaging weight
    float copy_param;   // 1 when mu == 1: torch copies p into ax instead of averaging
  };

  // `scalars` [eta, mu]: the values this step uses in, the next step's out.
  static FUSEDOPT_HD_MEMBER PerTensor per_tensor(const Config& c, double lr, double step,
                                                 float* scalars) {
    const double eta = static_cast<double>(scalars[kEta]);
    const float mu = scalars[kMu];
    scalars[kEta] = static_cast<float>(lr / pow(1.0 + c.lambd * lr * step, c.alpha));
    scalars[kMu] = static_cast<float>(1.0 / fmax(1.0, step - c.t0));
    return {param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max),
            static_cast<float>(1.0 - c.lambd * eta), static_cast<float>(-eta), mu,
            mu == 1.0f ? 1.0f : 0.0f};
  }

  template <class Used>
  static FUSEDOPT_HD_MEMBER void update(float& p, float g, float (&s)[kStates], Used,
                                        const Launch& h, const PerTensor& t) {
    g = g * h.grad_sign;
    if (h.l2 != 0.0f) g = g + h.l2 * p;
    p = p * t.param_decay;
    p = p * t.eta_decay;
    p = p + t.neg_eta * g;
    float& ax = s[kAx];
    ax = t.copy_param != 0.0f ? p : ax + (p - ax) * t.mu;
  }
};

}  // namespace fusedopt
