// RMSprop (Hinton, Neural Networks for ML, lecture 6e; the centered form from
// Graves 2013, arXiv:1308.0850) in two conventions that are switches of this
// one rule (Note [the rule interface] in core/rule.h):
//   - torch.optim.RMSprop, operation by operation (torch/optim/rmsprop.py,
//     `_single_tensor_rmsprop`);
//   - TensorFlow 1's RMSProp as timm reproduces it (timm/optim/rmsprop_tf.py,
//     RMSpropTF, timm 1.0.29): eps inside the square root (`eps_in_sqrt`), the
//     averages updated in TF's order (`tf_ema_order`), the lr inside the
//     momentum buffer (`lr_in_momentum`), square_avg starting at 1 (the
//     optimizer creates the states; the rule never sees a first step).
//   g  = maximize ? -g : g
//   g += wd * p                                   (L2)
//   p *= 1 - lr * wd                              (decoupled)
//   v  = v * alpha + (1 - alpha) * g * g          (torch)
//   v  = v + (1 - alpha) * (g * g - v)            (tf_ema_order)
//   a  = lerp(a, g, 1 - alpha)                    (centered; torch)
//   a  = a + (1 - alpha) * (g - a)                (centered; tf_ema_order)
//   d  = sqrt(v - a * a) + eps                    (a = 0 unless centered)
//   d  = sqrt(v - a * a + eps)                    (eps_in_sqrt)
//   b  = momentum * b + g / d,       p += -lr * b (momentum > 0)
//   b  = momentum * b + lr * g / d,  p += -b      (momentum > 0, lr_in_momentum)
//   p += -lr * g / d                              (momentum == 0)
// The two momentum forms differ only under a changing lr: TF's buffer keeps
// the lr of each past step, torch's applies today's lr to the whole buffer.
// Bytes per element (fp32 params and states): read p, g, v, write p, v: 20 B;
// momentum +8 B; centered +8 B.
#pragma once

#include <cmath>

#include "fusedopt/rules/common.h"

namespace fusedopt {

struct Rmsprop {
  enum State : int { kSquareAvg, kMomentumBuffer, kGradAvg, kStates };
  static constexpr const char* kStateNames[] = {"square_avg", "momentum_buffer", "grad_avg"};
  static constexpr bool kHasStep = true;  // torch and timm keep a count; the math never reads it
  // square_avg always; momentum_buffer with momentum > 0; grad_avg when centered.
  static constexpr uint32_t kStateSets[] = {0b001, 0b011, 0b101, 0b111};

  enum Hyper : int {
    kAlpha, kEps, kWeightDecay, kWeightDecayMode, kLrMax, kMomentum, kCentered, kMaximize,
    kEpsInSqrt, kTfEmaOrder, kLrInMomentum, kHyperCount
  };
  static constexpr HyperArg kHyper[] = {
      {"alpha", HyperType::kFloat},          {"eps", HyperType::kFloat},
      {"weight_decay", HyperType::kFloat},   {"weight_decay_mode", HyperType::kInt},
      {"lr_max", HyperType::kFloat},         {"momentum", HyperType::kFloat},
      {"centered", HyperType::kBool},        {"maximize", HyperType::kBool},
      {"eps_in_sqrt", HyperType::kBool},     {"tf_ema_order", HyperType::kBool},
      {"lr_in_momentum", HyperType::kBool}};

  struct Config {
    double alpha, eps, weight_decay, lr_max, momentum;
    WeightDecayMode wd_mode;
    bool centered, maximize, eps_in_sqrt, tf_ema_order, lr_in_momentum;
  };

  static Config config(const double* h) {
    return {h[kAlpha],
            h[kEps],
            h[kWeightDecay],
            h[kLrMax],
            h[kMomentum],
            static_cast<WeightDecayMode>(static_cast<int32_t>(h[kWeightDecayMode])),
            h[kCentered] != 0.0,
            h[kMaximize] != 0.0,
            h[kEpsInSqrt] != 0.0,
            h[kTfEmaOrder] != 0.0,
            h[kLrInMomentum] != 0.0};
  }

  static void check(const double* h, HyperCheck& ck) {
    ck.require(h[kAlpha] >= 0.0, "alpha must be >= 0", h[kAlpha]);
    ck.require(h[kEps] >= 0.0, "eps must be >= 0", h[kEps]);
    ck.require(h[kMomentum] >= 0.0, "momentum must be >= 0", h[kMomentum]);
    check_weight_decay(h[kWeightDecay], h[kWeightDecayMode], h[kLrMax], ck);
  }

  static FUSEDOPT_HD_MEMBER bool state_used(int k, const Config& c) {
    if (k == kMomentumBuffer) return c.momentum > 0.0;
    if (k == kGradAvg) return c.centered;
    return true;
  }

  // 1 - alpha is formed in double and rounded once, as torch and timm pass it
  // as a Python float. The switches are floats so that the update selects by
  // ternaries on floats, which gcc vectorizes (a bool member kept it from
  // vectorizing the bf16/fp16 loops: adam.h's grad_sign).
  struct Launch {
    float alpha, one_minus_alpha, momentum;
    float eps_in_sqrt;   // eps under the root (eps_in_sqrt), else 0: x + 0 is exact
    float eps_outside;   // eps after the root (torch), else 0
    float l2;            // wd for kL2, else 0
    float grad_sign;     // -1 with maximize, else 1: an exact multiply
    float tf_ema_order;  // 1 or 0
    // 1 where grad_avg's update is a + w * (g - a): TF's order, and torch's lerp
    // (lerp_like_torch) for w = 1 - alpha < 0.5; else torch's other form. One
    // select on a float: nesting lerp_like_torch's select in the tf_ema_order one
    // kept gcc from vectorizing the bf16/fp16 centered loops.
    float ema_from_start;
  };

  static FUSEDOPT_HD_MEMBER Launch launch(const Config& c) {
    const float eps = static_cast<float>(c.eps);
    return {static_cast<float>(c.alpha),
            static_cast<float>(1.0 - c.alpha),
            static_cast<float>(c.momentum),
            c.eps_in_sqrt ? eps : 0.0f,
            c.eps_in_sqrt ? 0.0f : eps,
            l2_coefficient(c.wd_mode, c.weight_decay),
            c.maximize ? -1.0f : 1.0f,
            c.tf_ema_order ? 1.0f : 0.0f,
            c.tf_ema_order || static_cast<float>(1.0 - c.alpha) < 0.5f ? 1.0f : 0.0f};
  }

  // b = momentum * b + buffer_scale * g / d; p += param_scale * b. Scales of
  // 1 and -1 are exact multiplies, so each form keeps its source's roundings.
  struct PerTensor {
    float neg_lr;        // -lr (without momentum)
    float buffer_scale;  // lr with lr_in_momentum, else 1
    float param_scale;   // -1 with lr_in_momentum, else -lr
    float param_decay;   // multiplier of p before the update
  };

  static FUSEDOPT_HD_MEMBER PerTensor per_tensor(const Config& c, double lr, double) {
    return {static_cast<float>(-lr), static_cast<float>(c.lr_in_momentum ? lr : 1.0),
            static_cast<float>(c.lr_in_momentum ? -1.0 : -lr),
            param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max)};
  }

  template <class Used>
  static FUSEDOPT_HD_MEMBER void update(float& p, float g, float (&s)[kStates], Used used,
                                        const Launch& h, const PerTensor& t) {
    g = g * h.grad_sign;
    if (h.l2 != 0.0f) g = g + h.l2 * p;
    p = p * t.param_decay;
    float& v = s[kSquareAvg];
    const bool tf = h.tf_ema_order != 0.0f;
    v = tf ? v + h.one_minus_alpha * (g * g - v) : v * h.alpha + h.one_minus_alpha * g * g;
    float v_tilde = v;
    if (used.has(kGradAvg)) {
      float& a = s[kGradAvg];
      const float w = h.one_minus_alpha;
      a = h.ema_from_start != 0.0f ? a + w * (g - a) : g - (g - a) * (1.0f - w);
      v_tilde = v - a * a;
    }
    const float d = sqrtf(v_tilde + h.eps_in_sqrt) + h.eps_outside;
    if (used.has(kMomentumBuffer)) {
      float& b = s[kMomentumBuffer];
      b = b * h.momentum + t.buffer_scale * g / d;
      p = p + t.param_scale * b;
    } else {
      p = p + t.neg_lr * g / d;
    }
  }
};

}  // namespace fusedopt
