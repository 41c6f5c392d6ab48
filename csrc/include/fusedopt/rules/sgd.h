// SGD with momentum, dampening and Nesterov momentum, in torch.optim.SGD's
// form (`_single_tensor_sgd`), plus the decoupled weight-decay modes (SGDW).
// Note [the rule interface] in core/rule.h.
//   g  = maximize ? -g : g
//   g += wd * p                                   (L2, torch's only mode)
//   p *= 1 - lr * wd                              (decoupled)
//   b  = first_step ? g : momentum * b + (1 - dampening) * g     (momentum != 0)
//   g  = nesterov ? g + momentum * b : b                          (momentum != 0)
//   p += -lr * g
// The lr multiplies the buffer's output, as in torch; Loshchilov & Hutter's
// SGDW (Algorithm 1) puts it inside the buffer, which differs under a schedule.
// Bytes per element (fp32): read p, g, write p: 12 B; momentum reads and
// writes b: +8 B.
#pragma once

#include "fusedopt/rules/common.h"

namespace fusedopt {

struct Sgd {
  enum State : int { kMomentumBuffer, kStates };
  static constexpr const char* kStateNames[] = {"momentum_buffer"};
  static constexpr bool kHasStep = false;  // torch's SGD keeps no step count
  // Without momentum, with it.
  static constexpr uint32_t kStateSets[] = {0b0, 0b1};

  enum Hyper : int {
    kMomentum, kDampening, kWeightDecay, kWeightDecayMode, kLrMax, kNesterov, kMaximize,
    kFirstStep, kHyperCount
  };
  static constexpr HyperArg kHyper[] = {
      {"momentum", HyperType::kFloat},        {"dampening", HyperType::kFloat},
      {"weight_decay", HyperType::kFloat},    {"weight_decay_mode", HyperType::kInt},
      {"lr_max", HyperType::kFloat},          {"nesterov", HyperType::kBool},
      {"maximize", HyperType::kBool},         {"first_step", HyperType::kBool}};

  struct Config {
    double momentum, dampening, weight_decay, lr_max;
    WeightDecayMode wd_mode;
    bool nesterov, maximize, first_step;
  };

  static Config config(const double* h) {
    return {h[kMomentum], h[kDampening], h[kWeightDecay], h[kLrMax],
            static_cast<WeightDecayMode>(static_cast<int32_t>(h[kWeightDecayMode])),
            h[kNesterov] != 0.0, h[kMaximize] != 0.0, h[kFirstStep] != 0.0};
  }

  static void check(const double* h, HyperCheck& ck) {
    ck.require(h[kMomentum] >= 0.0, "momentum must be >= 0", h[kMomentum]);
    ck.require(h[kNesterov] == 0.0 || (h[kMomentum] > 0.0 && h[kDampening] == 0.0),
               "Nesterov momentum requires a momentum and zero dampening", h[kDampening]);
    check_weight_decay(h[kWeightDecay], h[kWeightDecayMode], h[kLrMax], ck);
  }

  static FUSEDOPT_HD_MEMBER bool state_used(int, const Config& c) { return c.momentum != 0.0; }

  struct Launch {
    float momentum;
    float one_minus_dampening;  // formed in double, as torch's `alpha=1 - dampening`
    float l2;                   // wd for kL2, else 0
    float grad_sign;            // -1 with maximize, else 1: an exact multiply
    float nesterov;             // 1 or 0: g + nesterov * momentum * b selects by arithmetic
    float first_step;           // 1 or 0, likewise
  };

  static FUSEDOPT_HD_MEMBER Launch launch(const Config& c) {
    return {static_cast<float>(c.momentum), static_cast<float>(1.0 - c.dampening),
            l2_coefficient(c.wd_mode, c.weight_decay), c.maximize ? -1.0f : 1.0f,
            c.nesterov ? 1.0f : 0.0f, c.first_step ? 1.0f : 0.0f};
  }

  struct PerTensor {
    float neg_lr;       // -lr
    float param_decay;  // multiplier of p before the update
  };

  static FUSEDOPT_HD_MEMBER PerTensor per_tensor(const Config& c, double lr, double) {
    return {static_cast<float>(-lr), param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max)};
  }

  template <class Used>
  static FUSEDOPT_HD_MEMBER void update(float& p, float g, float (&s)[kStates], Used used,
                                        const Launch& h, const PerTensor& t) {
    g = g * h.grad_sign;
    if (h.l2 != 0.0f) g = g + h.l2 * p;
    p = p * t.param_decay;
    if (used.has(kMomentumBuffer)) {
      float& b = s[kMomentumBuffer];
      b = h.first_step != 0.0f ? g : b * h.momentum + h.one_minus_dampening * g;
      g = h.nesterov != 0.0f ? g + h.momentum * b : b;
    }
    p = p + t.neg_lr * g;
  }
};

}  // namespace fusedopt
