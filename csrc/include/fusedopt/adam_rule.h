// The Adam family's update rule: the one source of truth for its math.
//
// Everything here is fp32 in registers. Loading a parameter, gradient or state
// from its storage dtype (fp32, bf16, fp16, and later int8 blockwise) and
// storing it back is the traversal's job (csrc/cpu, csrc/cuda), never the
// rule's: see Note [state dtypes are a traversal policy].
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
//
// Note [state dtypes are a traversal policy]: the rule takes and returns fp32
// values, so a traversal that keeps m and v in bf16, or dequantizes an int8
// block into registers first, calls the same rule. Reductions that some rules
// need (Adafactor's row/column means, a global gradient norm for clipping) are
// a separate pass that produces per-tensor scalars; they enter the rule through
// AdamTensorScalars-like structs, never through the element loop.
#pragma once

#include <cmath>
#include <cstdint>

#include "fusedopt/macros.h"

namespace fusedopt {

// How weight decay enters the update. Values are part of the op schema
// (`weight_decay_mode`), so they never change meaning.
enum class WeightDecayMode : int32_t {
  kL2 = 0,               // g += wd * p (torch.optim.Adam)
  kDecoupled = 1,        // p *= 1 - lr * wd (torch.optim.AdamW, Loshchilov & Hutter)
  kFullyDecoupled = 2,   // p *= 1 - wd * lr / lr_max (decay independent of the lr scale)
};

// Hyperparameters of one group, as the user gave them (double, like the Python
// floats that torch computes its scalars from).
struct AdamConfig {
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  double lr_max;  // only read by kFullyDecoupled
  WeightDecayMode wd_mode;
  bool amsgrad;
  bool maximize;
};

// The per-launch constants of the element loop, derived once from AdamConfig.
// Differences like 1 - beta1 are formed in double and rounded once, as torch
// does when it passes `1 - beta1` as a Python float to `lerp_`.
struct AdamHyper {
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float eps;
  float l2;         // wd for kL2, else 0
  float grad_sign;  // -1 with maximize, else 1: an exact multiply. (A select on a
                    // bool here kept gcc from vectorizing the bf16/fp16 CPU loops.)
  bool amsgrad;
};

// The per-tensor constants: they depend on the tensor's own step count (which
// may differ between tensors after a partial load) and on lr (a host float or,
// in capturable mode, a value read on the device).
struct AdamTensorScalars {
  float neg_step_size;          // -lr / (1 - beta1^t)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  float param_decay;            // multiplier of p before the update; 1 without decoupled decay
};

FUSEDOPT_HD AdamHyper adam_hyper(const AdamConfig& c) {
  AdamHyper h;
  h.one_minus_beta1 = static_cast<float>(1.0 - c.beta1);
  h.beta2 = static_cast<float>(c.beta2);
  h.one_minus_beta2 = static_cast<float>(1.0 - c.beta2);
  h.eps = static_cast<float>(c.eps);
  h.l2 = c.wd_mode == WeightDecayMode::kL2 ? static_cast<float>(c.weight_decay) : 0.0f;
  h.grad_sign = c.maximize ? -1.0f : 1.0f;
  h.amsgrad = c.amsgrad;
  return h;
}

// `step` is the count after this step's increment (1 on the first step).
FUSEDOPT_HD AdamTensorScalars adam_tensor_scalars(const AdamConfig& c, double lr, double step) {
  const double bias_correction1 = 1.0 - pow(c.beta1, step);
  const double bias_correction2 = 1.0 - pow(c.beta2, step);
  double decay = 1.0;
  if (c.wd_mode == WeightDecayMode::kDecoupled) decay = 1.0 - lr * c.weight_decay;
  if (c.wd_mode == WeightDecayMode::kFullyDecoupled) decay = 1.0 - c.weight_decay * lr / c.lr_max;
  AdamTensorScalars s;
  s.neg_step_size = static_cast<float>(-(lr / bias_correction1));
  s.bias_correction2_sqrt = static_cast<float>(sqrt(bias_correction2));
  s.param_decay = static_cast<float>(decay);
  return s;
}

// torch's lerp for a weight below 0.5 (aten/src/ATen/native/Lerp.h): start +
// w * (end - start). Adam's weight 1 - beta1 is below 0.5 for every beta1 in use;
// the other branch keeps the result exact at w = 1.
FUSEDOPT_HD float lerp_like_torch(float start, float end, float w) {
  return w < 0.5f ? start + w * (end - start) : end - (end - start) * (1.0f - w);
}

// max that propagates NaN from either side, like torch.maximum.
FUSEDOPT_HD float max_propagate_nan(float a, float b) {
  return (a != a || a > b) ? a : b;
}

// One element of Adam/AdamW. `v_max` is read and written only with amsgrad.
// The traversal applies GradScaler's unscale (g / scale) before calling.
FUSEDOPT_HD void adam_update(float& p, float g, float& m, float& v, float& v_max,
                             const AdamHyper& h, const AdamTensorScalars& s) {
  g = g * h.grad_sign;
  if (h.l2 != 0.0f) g = g + h.l2 * p;
  p = p * s.param_decay;
  m = lerp_like_torch(m, g, h.one_minus_beta1);
  v = v * h.beta2 + h.one_minus_beta2 * g * g;
  float v_hat = v;
  if (h.amsgrad) {
    v_max = max_propagate_nan(v_max, v);
    v_hat = v_max;
  }
  const float denom = sqrtf(v_hat) / s.bias_correction2_sqrt + h.eps;
  p = p + s.neg_step_size * m / denom;
}

}  // namespace fusedopt
