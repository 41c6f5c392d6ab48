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
// and three conventions other sources use, each a per-launch or per-tensor
// scalar so that the element loop stays one branch-free form
// (Note [Adam conventions]).
// Bytes per element (fp32 params and states, any convention): read p, g, m,
// v, write p, m, v: 28 B; amsgrad +8 B.
#pragma once

#include <cmath>

#include "fusedopt/rules/common.h"

namespace fusedopt {

// Note [Adam conventions]: where eps and the bias corrections enter. Values
// are part of the op schema (`eps_mode`) and of fusedopt.reference.adam.EpsMode.
//   kTorch: p += -lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)   torch.optim.Adam
//   kHat:   p += -(lr*sqrt(bc2)/bc1) * m / (sqrt(v) + eps)  Kingma & Ba 2015,
//           Section 2's "more efficient" order; TF/Keras' "epsilon hat";
//           transformers.AdamW (v4.x)
//   kRoot:  p += -lr/bc1 * m / sqrt(v/bc2 + eps)           eps under the root:
//           optax.scale_by_adam(eps=0, eps_root=eps)
// with bc1 = 1 - beta1^t and bc2 = 1 - beta2^t, or both 1 when
// correct_bias is false (BERT's and transformers.AdamW's correct_bias=False).
// The element loop computes one form for all three,
//   denom = sqrt(v / bias_correction2 + eps_root) / bias_correction2_sqrt + eps,
// where per_tensor() and launch() set the unused terms to 1 and 0: dividing by
// 1 and adding 0 are exact, so each mode rounds as its source's formula does.
// decay_after moves the decoupled decay after the update, onto the updated p,
// as transformers.AdamW does (p.add_(p, alpha=-lr * wd)); torch's AdamW
// multiplies p by 1 - lr * wd before it. The two differ by O(lr^2 * wd).
enum class EpsMode : int32_t { kTorch = 0, kHat = 1, kRoot = 2 };

struct Adam {
  enum State : int { kExpAvg, kExpAvgSq, kMaxExpAvgSq, kStates };
  static constexpr const char* kStateNames[] = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  static constexpr bool kHasStep = true;
  // Without amsgrad, with it.
  static constexpr uint32_t kStateSets[] = {0b011, 0b111};

  enum Hyper : int {
    kBeta1, kBeta2, kEps, kWeightDecay, kWeightDecayMode, kLrMax, kDecayAfter, kEpsMode,
    kCorrectBias, kAmsgrad, kMaximize, kHyperCount
  };
  static constexpr HyperArg kHyper[] = {
      {"beta1", HyperType::kFloat},           {"beta2", HyperType::kFloat},
      {"eps", HyperType::kFloat},             {"weight_decay", HyperType::kFloat},
      {"weight_decay_mode", HyperType::kInt}, {"lr_max", HyperType::kFloat},
      {"decay_after", HyperType::kBool},      {"eps_mode", HyperType::kInt},
      {"correct_bias", HyperType::kBool},     {"amsgrad", HyperType::kBool},
      {"maximize", HyperType::kBool}};

  struct Config {
    double beta1, beta2, eps, weight_decay, lr_max;
    WeightDecayMode wd_mode;
    EpsMode eps_mode;
    bool decay_after, correct_bias, amsgrad, maximize;
  };

  static Config config(const double* h) {
    return {h[kBeta1],
            h[kBeta2],
            h[kEps],
            h[kWeightDecay],
            h[kLrMax],
            static_cast<WeightDecayMode>(static_cast<int32_t>(h[kWeightDecayMode])),
            static_cast<EpsMode>(static_cast<int32_t>(h[kEpsMode])),
            h[kDecayAfter] != 0.0,
            h[kCorrectBias] != 0.0,
            h[kAmsgrad] != 0.0,
            h[kMaximize] != 0.0};
  }

  static void check(const double* h, HyperCheck& ck) {
    ck.require(h[kBeta1] >= 0.0 && h[kBeta1] < 1.0, "beta1 must be in [0, 1)", h[kBeta1]);
    ck.require(h[kBeta2] >= 0.0 && h[kBeta2] < 1.0, "beta2 must be in [0, 1)", h[kBeta2]);
    ck.require(h[kEps] >= 0.0, "eps must be >= 0", h[kEps]);
    ck.require(h[kEpsMode] == 0.0 || h[kEpsMode] == 1.0 || h[kEpsMode] == 2.0,
               "eps_mode must be 0 (torch), 1 (hat) or 2 (root)", h[kEpsMode]);
    check_weight_decay(h[kWeightDecay], h[kWeightDecayMode], h[kLrMax], ck);
  }

  static FUSEDOPT_HD_MEMBER bool state_used(int k, const Config& c) {
    return k != kMaxExpAvgSq || c.amsgrad;
  }

  // Differences like 1 - beta1 are formed in double and rounded once, as torch
  // does when it passes `1 - beta1` as a Python float to `lerp_`.
  struct Launch {
    float one_minus_beta1, beta2, one_minus_beta2;
    float eps;          // added to the denominator; 0 with kRoot
    float eps_root;     // added under the square root: eps with kRoot, else 0
    float l2;           // wd for kL2, else 0
    float grad_sign;    // -1 with maximize, else 1: an exact multiply. (A select on a
                        // bool here kept gcc from vectorizing the bf16/fp16 CPU loops.)
    float decay_after;  // 1 when the decay applies to the updated p, else 0
  };

  static FUSEDOPT_HD_MEMBER Launch launch(const Config& c) {
    const bool root = c.eps_mode == EpsMode::kRoot;
    return {static_cast<float>(1.0 - c.beta1),
            static_cast<float>(c.beta2),
            static_cast<float>(1.0 - c.beta2),
            root ? 0.0f : static_cast<float>(c.eps),
            root ? static_cast<float>(c.eps) : 0.0f,
            l2_coefficient(c.wd_mode, c.weight_decay),
            c.maximize ? -1.0f : 1.0f,
            c.decay_after ? 1.0f : 0.0f};
  }

  // Note [Adam conventions]: the bias-correction terms a mode does not use are 1.
  struct PerTensor {
    float neg_step_size;          // -lr / (1 - beta1^t); kHat: times sqrt(1 - beta2^t)
    float bias_correction2;       // kRoot: 1 - beta2^t, divides v under the root
    float bias_correction2_sqrt;  // kTorch: sqrt(1 - beta2^t), divides sqrt(v)
    float param_decay;            // the multiplier of p before the update (1 - lr * wd), or
                                  // with decay_after the c of p += c * p after it (-lr * wd)
  };

  // `step` is the count after this step's increment (1 on the first step).
  static FUSEDOPT_HD_MEMBER PerTensor per_tensor(const Config& c, double lr, double step) {
    const double bias_correction1 = c.correct_bias ? 1.0 - pow(c.beta1, step) : 1.0;
    const double bias_correction2 = c.correct_bias ? 1.0 - pow(c.beta2, step) : 1.0;
    const double bias_correction2_sqrt = sqrt(bias_correction2);
    // As transformers.AdamW forms it from Python floats: lr * sqrt(bc2) / bc1.
    const double step_size = c.eps_mode == EpsMode::kHat
                                 ? lr * bias_correction2_sqrt / bias_correction1
                                 : lr / bias_correction1;
    return {static_cast<float>(-step_size),
            c.eps_mode == EpsMode::kRoot ? static_cast<float>(bias_correction2) : 1.0f,
            c.eps_mode == EpsMode::kTorch ? static_cast<float>(bias_correction2_sqrt) : 1.0f,
            decay(c, lr)};
  }

  // param_decay: common.h's multiplier, or HF's -lr * wd (the decay rate of
  // the decoupled modes, negated) kept in full: 1 - lr * wd rounded to fp32
  // would move it by up to 3e-8 / (lr * wd) of itself, the same way every step.
  static FUSEDOPT_HD_MEMBER float decay(const Config& c, double lr) {
    if (!c.decay_after) return param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max);
    double rate = 0.0;
    if (c.wd_mode == WeightDecayMode::kDecoupled) rate = lr * c.weight_decay;
    if (c.wd_mode == WeightDecayMode::kFullyDecoupled) rate = c.weight_decay * lr / c.lr_max;
    return static_cast<float>(-rate);
  }

  template <class Used>
  static FUSEDOPT_HD_MEMBER void update(float& p, float g, float (&s)[kStates], Used used,
                                        const Launch& h, const PerTensor& t) {
    g = g * h.grad_sign;
    if (h.l2 != 0.0f) g = g + h.l2 * p;
    if (h.decay_after == 0.0f) p = p * t.param_decay;  // decoupled decay, torch's order
    float& m = s[kExpAvg];
    float& v = s[kExpAvgSq];
    m = lerp_like_torch(m, g, h.one_minus_beta1);
    v = v * h.beta2 + h.one_minus_beta2 * g * g;
    float v_hat = v;
    if (used.has(kMaxExpAvgSq)) {
      s[kMaxExpAvgSq] = max_propagate_nan(s[kMaxExpAvgSq], v);
      v_hat = s[kMaxExpAvgSq];
    }
    // Note [Adam conventions]: one form for every eps_mode.
    const float denom =
        sqrtf(v_hat / t.bias_correction2 + h.eps_root) / t.bias_correction2_sqrt + h.eps;
    p = p + t.neg_step_size * m / denom;
    // Or HF's order: p += c * p after the update, c = 0 without decay_after;
    // skipped at c = 0 as HF skips wd = 0 (0 * inf would turn an inf p into
    // NaN). One condition on one product: `decay_after && c != 0` kept gcc from
    // vectorizing the loops (tests/test_cpu_vectorized.py).
    const float after = h.decay_after * t.param_decay;
    if (after != 0.0f) p = p + after * p;
  }
};

}  // namespace fusedopt
