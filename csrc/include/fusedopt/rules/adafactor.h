// Adafactor (Shazeer & Stern 2018) in torch.optim.Adafactor's form
// (torch/optim/_adafactor.py, `_single_tensor_adafactor`), with transformers'
// options (fusedopt/optim/adafactor.py). Not elementwise: a reduction rule
// (Note [reduction rules] in python/fusedopt/registry.py). One step is four
// passes, the reductions being generic traversals (core/blocked_sums.h) and
// the math below the only place it is written:
//   (a) per row and per column sums of g^2 of a factored param ([..., m, n]),
//       and the sum of p^2 of every param (its RMS);
//   (b) per tensor: the row/column EMAs (row_var, col_var: m + n values) and
//       max(mean(row_var), eps1) per matrix;
//   (c) the sum of U^2, U = g / max(sqrt(V), eps1), for the RMS clip;
//   (d) the element pass: V again, U, the momentum, p.
//   g   = maximize ? -g : g;  t = step + 1;  w = t^beta2_decay (1 - beta2_t)
//   rho = min(lr, 1/sqrt(t))  (relative_step=False: lr; warmup_init: min(1e-6 t, 1/sqrt(t)))
//   alpha = max(eps2, RMS(p)) rho  (scale_parameter=False: rho)
//   R = lerp(R, mean_cols(g^2), w);  C = lerp(C, mean_rows(g^2), w)
//   V = R C / max(mean(R), eps1)  (factored)  |  V = lerp(V, g^2, w)  (vector)
//   U = g / sqrt(max(V, eps1^2));  s = alpha / max(1, RMS(U) / d)
//   m = beta1 m + (1 - beta1) s U  (first_moment)
//   p = p (1 - lr wd) - (first_moment ? m : s U)
// Bytes per element (fp32, factored, no momentum): (a) reads p, g; (c) reads
// g; (d) reads p, g, writes p: 24 B (row/column states are O(m + n)).
#pragma once

#include <cmath>

#include "fusedopt/rules/common.h"

namespace fusedopt {

struct Adafactor {
  enum State : int { kRowVar, kColVar, kVariance, kExpAvg, kStates };
  static constexpr const char* kStateNames[] = {"row_var", "col_var", "variance", "exp_avg"};
  static constexpr bool kHasStep = true;

  enum Hyper : int {
    kBeta2Decay, kEps1, kEps2, kD, kWeightDecay, kBeta1, kFirstMoment, kRelativeStep,
    kWarmupInit, kScaleParameter, kMaximize, kHyperCount
  };
  static constexpr HyperArg kHyper[] = {
      {"beta2_decay", HyperType::kFloat},    {"eps1", HyperType::kFloat},
      {"eps2", HyperType::kFloat},           {"d", HyperType::kFloat},
      {"weight_decay", HyperType::kFloat},   {"beta1", HyperType::kFloat},
      {"first_moment", HyperType::kBool},    {"relative_step", HyperType::kBool},
      {"warmup_init", HyperType::kBool},     {"scale_parameter", HyperType::kBool},
      {"maximize", HyperType::kBool}};

  // transformers' warm-up of the relative step: rho = min(1e-6 t, 1/sqrt(t)).
  static constexpr double kWarmupRate = 1e-6;

  struct Config {
    double beta2_decay, eps1, eps2, d, weight_decay, beta1;
    bool first_moment, relative_step, warmup_init, scale_parameter, maximize;
  };

  static Config config(const double* h) {
    return {h[kBeta2Decay],        h[kEps1],
            h[kEps2],              h[kD],
            h[kWeightDecay],       h[kBeta1],
            h[kFirstMoment] != 0.0, h[kRelativeStep] != 0.0,
            h[kWarmupInit] != 0.0, h[kScaleParameter] != 0.0,
            h[kMaximize] != 0.0};
  }

  // eps1 < 0 stands for torch's eps=(None, ...): the param dtype's epsilon.
  static void check(const double* h, HyperCheck& ck) {
    ck.require(h[kBeta2Decay] <= 0.0, "beta2_decay must be <= 0", h[kBeta2Decay]);
    ck.require(h[kEps2] >= 0.0, "eps2 must be >= 0", h[kEps2]);
    ck.require(h[kD] >= 1.0, "the clipping threshold d must be >= 1", h[kD]);
    ck.require(h[kWeightDecay] >= 0.0, "weight_decay must be >= 0", h[kWeightDecay]);
    ck.require(h[kFirstMoment] == 0.0 || (h[kBeta1] >= 0.0 && h[kBeta1] < 1.0),
               "beta1 must be in [0, 1)", h[kBeta1]);
    ck.require(h[kWarmupInit] == 0.0 || h[kRelativeStep] != 0.0,
               "warmup_init needs relative_step", h[kWarmupInit]);
  }

  // Every param keeps either the factored pair or `variance` (by its dims:
  // the traversal's choice), and exp_avg with first_moment.
  static bool state_used(int k, const Config& c) { return k != kExpAvg || c.first_moment; }

  // --- per tensor, in double, from fp64 lr and the count after this step,
  // as torch forms them from Python floats: on the host (cpu), or once per
  // tensor in the CUDA statistics kernel, which reads the count on the
  // device (mta/factored.h) --------------------------------------------------

  // 1 - beta2_t = t^beta2_decay: the weight of the new mean in the EMAs.
  static FUSEDOPT_HD_MEMBER double ema_weight(const Config& c, double step) {
    return std::pow(step, c.beta2_decay);
  }

  static FUSEDOPT_HD_MEMBER double relative_step_size(const Config& c, double lr, double step) {
    if (!c.relative_step) return lr;
    const double cap = c.warmup_init ? kWarmupRate * step : lr;
    return std::fmin(cap, 1.0 / std::sqrt(step));
  }

  // alpha = max(eps2, RMS(p)) rho; `param_sq` is the sum of p^2 before this step.
  static FUSEDOPT_HD_MEMBER double alpha(const Config& c, double lr, double step, double param_sq,
                                         double numel) {
    const double rho = relative_step_size(c, lr, step);
    if (!c.scale_parameter) return rho;
    return std::fmax(c.eps2, std::sqrt(param_sq) / std::sqrt(numel)) * rho;
  }

  // eps1 of a param whose dtype's machine epsilon is `dtype_eps`.
  static double eps1_of(const Config& c, double dtype_eps) {
    return c.eps1 < 0.0 ? dtype_eps : c.eps1;
  }

  // -1 with maximize, else 1: an exact multiply of g.
  static float grad_sign(const Config& c) { return c.maximize ? -1.0f : 1.0f; }

  // The fp32 constants of one tensor's passes (c) and (d).
  struct PerTensor {
    float ema_weight;   // 1 - beta2_t, for the vector EMA (lerp weight)
    float eps1_sq;      // eps1^2: the floor of V
    float param_decay;  // 1 - lr * wd
    float step_size;    // alpha / max(1, RMS(U) / d): filled after pass (c)
    float beta1, one_minus_beta1;
  };

  static FUSEDOPT_HD_MEMBER PerTensor per_tensor(const Config& c, double lr, double step,
                                                 double eps1) {
    const double decay = c.weight_decay != 0.0 ? 1.0 - lr * c.weight_decay : 1.0;
    return {static_cast<float>(ema_weight(c, step)), static_cast<float>(eps1 * eps1),
            static_cast<float>(decay), 0.0f, static_cast<float>(c.beta1),
            static_cast<float>(1.0 - c.beta1)};
  }

  // s = alpha / max(1, RMS(U) / d), from pass (c)'s sum of U^2.
  static FUSEDOPT_HD_MEMBER float step_size(const Config& c, double alpha, double update_sq,
                                            double numel) {
    const double rms = std::sqrt(update_sq) / (std::sqrt(numel) * c.d);
    return static_cast<float>(alpha / std::fmax(1.0, rms));
  }

  // --- pass (b): the row/column statistics, fp32 ---------------------------

  // R or C from the mean of g^2 over a row or column, as torch's lerp_.
  static FUSEDOPT_HD_MEMBER float ema(float old, float mean, float w) {
    return lerp_like_torch(old, mean, w);
  }

  // max(mean(R), eps1), NaN kept (torch's clamp_).
  static FUSEDOPT_HD_MEMBER float row_mean_floor(float mean_row, float eps1) {
    return mean_row < eps1 ? eps1 : mean_row;
  }

  // --- passes (c) and (d): one element, fp32 ------------------------------

  // V of a factored param: R_i C_j / max(mean(R), eps1) (torch's outer product, then div_).
  static FUSEDOPT_HD_MEMBER float factored_variance(float row, float col, float row_mean) {
    return row * col / row_mean;
  }

  // V of a vector: the EMA of g^2.
  static FUSEDOPT_HD_MEMBER float vector_variance(float variance, float g, float w) {
    return lerp_like_torch(variance, g * g, w);
  }

  // U = rsqrt(max(V, eps1^2)) g, as torch's clamp_, rsqrt_, mul_.
  static FUSEDOPT_HD_MEMBER float raw_update(float g, float v, float eps1_sq) {
    const float floored = v < eps1_sq ? eps1_sq : v;
    return (1.0f / sqrtf(floored)) * g;
  }

  // p after this step, from the decayed p, U and (first_moment) m in place.
  static FUSEDOPT_HD_MEMBER float apply(float p, float u, float* exp_avg, const PerTensor& t) {
    float step = t.step_size * u;
    if (exp_avg != nullptr) {
      *exp_avg = *exp_avg * t.beta1 + step * t.one_minus_beta1;
      step = *exp_avg;
    }
    return p * t.param_decay - step;
  }
};

}  // namespace fusedopt
