// Master-weight store policies of bf16/fp16 params, framework-free for g++
// and nvcc. The plain-PyTorch definition, which every backend is tested
// against bit for bit, is fusedopt.reference.master.
//
// Note [master weights]: a rule steps an fp32 p and never sees a policy (Note
// [the rule interface] in core/rule.h); the traversal picks where p comes from
// and how the new p is stored, one policy per call (a param group's key):
//   - kNone: p = param; param = RNE(p').
//   - kMasterWeights: p = master (an fp32 state); master = p'; param = RNE(p').
//   - kKahanSum: p = param, c a compensation in the param's dtype;
//     u = c + (p' - p); param = RNE(p + u); c = RNE(u - (param - p)).
//   - kStochasticRounding (bf16): param = p' rounded down or up to a bf16
//     neighbour, up with probability (the bits below bf16's last) / 2^16:
//     16 bits of Philox4x32-10 (core/philox.h) keyed on the seed, with counter
//     (element index low, high, the param's rounding step, the param's tag).
// Bytes per element on top of the rule's (bf16/fp16 params): master +6 B (the
// fp32 master read instead of the 2 B param, and written), Kahan +4 B (a
// bf16/fp16 compensation read and written), stochastic rounding none (10
// Philox rounds of compute instead).
#pragma once

#include <cstdint>

#include "fusedopt/core/philox.h"
#include "fusedopt/core/storage.h"

namespace fusedopt {

enum class StorePolicy : int32_t {
  kNone = 0,
  kMasterWeights = 1,
  kKahanSum = 2,
  kStochasticRounding = 3
};

// The 16 random bits of element `index` of a param at rounding step `count`
// with tag `tag` (its position in the optimizer), under `seed`.
FUSEDOPT_HD uint32_t rounding_bits(uint64_t seed, uint32_t count, uint32_t tag, uint64_t index) {
  const Philox4 counter{{static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), count,
                         tag}};
  return philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32))
             .v[0] >>
         16;
}

// x rounded to bf16 stochastically by 16 random bits: the carry of bits + x's
// low half decides up or down, so E[result] = x between two finite
// neighbours. A NaN stays a quiet NaN; past bf16's largest finite value the
// carry may give inf (torchao does the same).
FUSEDOPT_HD Bf16 stochastic_round_bf16(float x, uint32_t bits) {
  const uint32_t raw = float_to_bits(x);
  const bool is_nan = (raw & 0x7FFFFFFFu) > 0x7F800000u;
  return Bf16{static_cast<uint16_t>(is_nan ? (raw >> 16) | 0x40u : (raw + bits) >> 16)};
}

}  // namespace fusedopt
