// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms",
// Algorithm 2), with fusedopt's weight-decay modes (decoupled by default, as
// in the paper). Note [the rule interface] in core/rule.h.
//   g  = maximize ? -g : g
//   g += wd * p                                   (L2)
//   p *= 1 - lr * wd                              (decoupled, the paper's)
//   c  = beta1 * m + (1 - beta1) * g
//   p += -lr * sign(c)                            (sign(0) = 0, as torch.sign)
//   m  = beta2 * m + (1 - beta2) * g
// The paper writes theta -= lr * (sign(c) + wd * theta); decaying p first and
// then stepping is the same update, in lucidrains' lion-pytorch order (the
// reference, fusedopt/reference/lion.py, compares the two).
// Note [Lion's sign of a sum]: only sign(c) is used, and an FMA contraction
// of c (which nvcc and Triton make unless told otherwise) could round c to
// the other side of 0 where |c| is an ulp, moving p by 2 lr away from torch's
// separately rounded mul and add. sign(fl(x + y)) = sign(x + y) (rounding
// keeps the sign, and a sum of floats that is subnormal is exact), so the
// rule compares the rounded products instead of adding them: nothing to
// contract. m and the L2 term are products then sums, kept apart on the
// device by mul_rn (common.h). Bytes per element (fp32): read p, g, m, write
// p, m: 20 B.
#pragma once

#include "fusedopt/rules/common.h"

namespace fusedopt {

struct Lion {
  enum State : int { kExpAvg, kStates };
  static constexpr const char* kStateNames[] = {"exp_avg"};
  static constexpr bool kHasStep = false;  // no formula reads a count
  static constexpr uint32_t kStateSets[] = {0b1};

  enum Hyper : int {
    kBeta1, kBeta2, kWeightDecay, kWeightDecayMode, kLrMax, kMaximize, kHyperCount
  };
  static constexpr HyperArg kHyper[] = {
      {"beta1", HyperType::kFloat},           {"beta2", HyperType::kFloat},
      {"weight_decay", HyperType::kFloat},    {"weight_decay_mode", HyperType::kInt},
      {"lr_max", HyperType::kFloat},          {"maximize", HyperType::kBool}};

  struct Config {
    double beta1, beta2, weight_decay, lr_max;
    WeightDecayMode wd_mode;
    bool maximize;
  };

  static Config config(const double* h) {
    return {h[kBeta1], h[kBeta2], h[kWeightDecay], h[kLrMax],
            static_cast<WeightDecayMode>(static_cast<int32_t>(h[kWeightDecayMode])),
            h[kMaximize] != 0.0};
  }

  static void check(const double* h, HyperCheck& ck) {
    ck.require(h[kBeta1] >= 0.0 && h[kBeta1] < 1.0, "beta1 must be in [0, 1)", h[kBeta1]);
    ck.require(h[kBeta2] >= 0.0 && h[kBeta2] < 1.0, "beta2 must be in [0, 1)", h[kBeta2]);
    check_weight_decay(h[kWeightDecay], h[kWeightDecayMode], h[kLrMax], ck);
  }

  static FUSEDOPT_HD_MEMBER bool state_used(int, const Config&) { return true; }

  // 1 - beta is formed in double and rounded once, as a Python float passed to torch.
  struct Launch {
    float beta1, one_minus_beta1, beta2, one_minus_beta2;
    float l2;         // wd for kL2, else 0
    float grad_sign;  // -1 with maximize, else 1: an exact multiply
  };

  static FUSEDOPT_HD_MEMBER Launch launch(const Config& c) {
    return {static_cast<float>(c.beta1), static_cast<float>(1.0 - c.beta1),
            static_cast<float>(c.beta2), static_cast<float>(1.0 - c.beta2),
            l2_coefficient(c.wd_mode, c.weight_decay), c.maximize ? -1.0f : 1.0f};
  }

  struct PerTensor {
    float neg_lr;       // -lr
    float param_decay;  // multiplier of p before the update
  };

  static FUSEDOPT_HD_MEMBER PerTensor per_tensor(const Config& c, double lr, double) {
    return {static_cast<float>(-lr), param_decay(c.wd_mode, c.weight_decay, lr, c.lr_max)};
  }

  // torch.sign(x + y) of the fp32 sum, without forming it (Note [Lion's sign
  // of a sum]); NaN gives 0, as torch.sign(NaN) does, and so does inf + -inf.
  static FUSEDOPT_HD_MEMBER float sign_of_sum(float x, float y) {
    return x > -y ? 1.0f : (x < -y ? -1.0f : 0.0f);
  }

  template <class Used>
  static FUSEDOPT_HD_MEMBER void update(float& p, float g, float (&s)[kStates], Used,
                                        const Launch& h, const PerTensor& t) {
    g = g * h.grad_sign;
    if (h.l2 != 0.0f) g = g + mul_rn(h.l2, p);
    p = p * t.param_decay;
    float& m = s[kExpAvg];
    // c = beta1 * m + (1 - beta1) * g
    const float sign_c = sign_of_sum(h.beta1 * m, h.one_minus_beta1 * g);
    p = p + t.neg_lr * sign_c;
    m = mul_rn(h.beta2, m) + mul_rn(h.one_minus_beta2, g);
  }
};

}  // namespace fusedopt
