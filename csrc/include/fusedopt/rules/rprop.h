// Rprop (Riedmiller & Braun 1993, "A Direct Adaptive Method for Faster
// Backpropagation Learning: The RPROP Algorithm"), in torch.optim.Rprop's form
// (`_single_tensor_rprop`), operation by operation. Note [the rule interface]
// in core/rule.h.
//   g  = maximize ? -g : g
//   s  = sign(g * prev)                       (torch.sign: sign(NaN) = 0)
//   f  = s > 0 ? etaplus : s < 0 ? etaminus : 1
//   step_size = clamp(step_size * f, step_size_min, step_size_max)
//   g  = f == etaminus ? 0 : g                (the sign flipped: no move this step)
//   p += -sign(g) * step_size
//   prev = g
// Each element's step size starts at the group's lr when the state is made
// (torch's full_like(grad, lr)); the lr takes no part in a step, so a
// scheduler does not change Rprop's steps, as in torch. No weight decay, as
// in torch. Bytes per element (fp32): read p, g, prev, step_size, write p,
// prev, step_size: 28 B.
#pragma once

#include "fusedopt/rules/common.h"

namespace fusedopt {

struct Rprop {
  enum State : int { kPrev, kStepSize, kStates };
  static constexpr const char* kStateNames[] = {"prev", "step_size"};
  static constexpr bool kHasStep = true;  // torch keeps a count; no formula reads it
  static constexpr uint32_t kStateSets[] = {0b11};

  enum Hyper : int { kEtaminus, kEtaplus, kStepSizeMin, kStepSizeMax, kMaximize, kHyperCount };
  static constexpr HyperArg kHyper[] = {
      {"etaminus", HyperType::kFloat},      {"etaplus", HyperType::kFloat},
      {"step_size_min", HyperType::kFloat}, {"step_size_max", HyperType::kFloat},
      {"maximize", HyperType::kBool}};

  struct Config {
    double etaminus, etaplus, step_size_min, step_size_max;
    bool maximize;
  };

  static Config config(const double* h) {
    return {h[kEtaminus], h[kEtaplus], h[kStepSizeMin], h[kStepSizeMax], h[kMaximize] != 0.0};
  }

  // torch checks the etas when the optimizer is made and the step sizes never
  // (a clamp with min > max gives max, as torch.clamp does).
  static void check(const double* h, HyperCheck& ck) {
    ck.require(h[kEtaminus] > 0.0 && h[kEtaminus] < 1.0, "etaminus must be in (0, 1)",
               h[kEtaminus]);
    ck.require(h[kEtaplus] > 1.0, "etaplus must be > 1", h[kEtaplus]);
  }

  static FUSEDOPT_HD_MEMBER bool state_used(int, const Config&) { return true; }

  // fp32, as torch's `sign[sign.gt(0)] = etaplus` and `clamp_(min, max)` store
  // and compare them in the states' dtype.
  struct Launch {
    float etaminus, etaplus, step_size_min, step_size_max;
    float grad_sign;  // -1 with maximize, else 1: an exact multiply
  };

  static FUSEDOPT_HD_MEMBER Launch launch(const Config& c) {
    return {static_cast<float>(c.etaminus), static_cast<float>(c.etaplus),
            static_cast<float>(c.step_size_min), static_cast<float>(c.step_size_max),
            c.maximize ? -1.0f : 1.0f};
  }

  // Nothing depends on the lr or the count.
  struct PerTensor {};

  static FUSEDOPT_HD_MEMBER PerTensor per_tensor(const Config&, double, double) { return {}; }

  // torch.clamp: NaN stays NaN (both compares are false), and min > max gives max.
  static FUSEDOPT_HD_MEMBER float clamp_like_torch(float x, float lo, float hi) {
    x = x < lo ? lo : x;
    return x > hi ? hi : x;
  }

  template <class Used>
  static FUSEDOPT_HD_MEMBER void update(float& p, float g, float (&s)[kStates], Used,
                                        const Launch& h, const PerTensor&) {
    g = g * h.grad_sign;
    float& prev = s[kPrev];
    float& step_size = s[kStepSize];
    const float sign = sign_like_torch(g * prev);
    const float factor = sign > 0.0f ? h.etaplus : (sign < 0.0f ? h.etaminus : 1.0f);
    step_size = clamp_like_torch(step_size * factor, h.step_size_min, h.step_size_max);
    g = factor == h.etaminus ? 0.0f : g;
    p = p + -sign_like_torch(g) * step_size;
    prev = g;
  }
};

}  // namespace fusedopt
