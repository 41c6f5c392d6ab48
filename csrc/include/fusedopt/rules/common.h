// Pieces of math that several rules share: weight-decay modes, torch's lerp,
// NaN-propagating max, torch's sign, an uncontracted product. fp32 in
// registers, like the rules themselves.
#pragma once

#include <cmath>
#include <cstdint>

#include "fusedopt/core/macros.h"
#include "fusedopt/core/rule.h"

namespace fusedopt {

// How weight decay enters the update. Values are part of the op schemas
// (`weight_decay_mode`) and of fusedopt.reference.WeightDecayMode, so they
// never change meaning.
enum class WeightDecayMode : int32_t {
  kL2 = 0,              // g += wd * p (torch.optim.Adam, torch.optim.SGD)
  kDecoupled = 1,       // p *= 1 - lr * wd (torch.optim.AdamW; Loshchilov & Hutter)
  kFullyDecoupled = 2,  // p *= 1 - wd * lr / lr_max (decay independent of the lr scale)
};

// The checks every rule with a weight-decay mode makes.
inline void check_weight_decay(double weight_decay, double mode, double lr_max, HyperCheck& ck) {
  ck.require(weight_decay >= 0.0, "weight_decay must be >= 0", weight_decay);
  ck.require(mode == 0.0 || mode == 1.0 || mode == 2.0,
             "weight_decay_mode must be 0 (L2), 1 (decoupled) or 2 (fully decoupled)", mode);
  ck.require(mode != 2.0 || lr_max > 0.0, "fully decoupled weight decay needs lr_max > 0",
             lr_max);
}

// The wd that is added to the gradient (L2), 0 in the decoupled modes.
FUSEDOPT_HD float l2_coefficient(WeightDecayMode mode, double weight_decay) {
  return mode == WeightDecayMode::kL2 ? static_cast<float>(weight_decay) : 0.0f;
}

// The multiplier of p before the update: 1 - lr * wd (decoupled), 1 - wd * lr
// / lr_max (fully decoupled), 1 for L2. In double, rounded once, as torch
// forms `1 - lr * weight_decay` from Python floats.
FUSEDOPT_HD float param_decay(WeightDecayMode mode, double weight_decay, double lr, double lr_max) {
  double decay = 1.0;
  if (mode == WeightDecayMode::kDecoupled) decay = 1.0 - lr * weight_decay;
  if (mode == WeightDecayMode::kFullyDecoupled) decay = 1.0 - weight_decay * lr / lr_max;
  return static_cast<float>(decay);
}

// torch's lerp for a weight below 0.5 (aten/src/ATen/native/Lerp.h): start +
// w * (end - start); the other branch keeps the result exact at w = 1.
FUSEDOPT_HD float lerp_like_torch(float start, float end, float w) {
  return w < 0.5f ? start + w * (end - start) : end - (end - start) * (1.0f - w);
}

// max that propagates NaN from either side, like torch.maximum.
FUSEDOPT_HD float max_propagate_nan(float a, float b) { return (a != a || a > b) ? a : b; }

// torch.sign on floats: (0 < x) - (x < 0), so sign(+-0) = 0 and sign(NaN) = 0
// (aten/src/ATen/native/cpu/UnaryOpsKernel.cpp, sign_kernel; measured on torch
// 2.14: torch.sign(nan) is 0).
FUSEDOPT_HD float sign_like_torch(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }

// a * b rounded to fp32 on its own, never contracted with a following add
// into an FMA, as torch's separate mul and add round it: for a state whose
// later use is a sign (Note [Lion's sign of a sum] in rules/lion.h), one ulp
// can flip a step. Every build turns contraction off (Note [bit-identical
// backends] in kernels/mta.py); __fmul_rn keeps this one product exact even
// in a build that turns it back on, since here one ulp decides a sign.
FUSEDOPT_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

}  // namespace fusedopt
