// Philox4x32-10 (Salmon, Moraes, Dror, Shaw 2011, "Parallel random numbers:
// as easy as 1, 2, 3"; Random123's philox4x32 with 10 rounds), framework-free
// for g++ and nvcc alike: a counter-based generator, so any element's bits
// are a pure function of (counter, key) and every backend, whatever its
// chunking or thread count, draws the same bits for the same element.
// Checked against Random123's published known answers
// (tests/test_master_weights.py, through the CPU backend's stochastic rounding
// and the Python twin fusedopt.reference.master.philox4x32_10).
#pragma once

#include <cstdint>

#include "fusedopt/core/macros.h"

namespace fusedopt {

// Random123's multipliers (philox.h: PHILOX_M4x32_0/1) and Weyl key
// increments (the golden ratio and sqrt(3) - 1, as 32-bit fractions).
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
// The round count of Philox4x32-10: Random123's default, the smallest with a
// safety margin over the 7 that pass BigCrush.
constexpr int kPhiloxRounds = 10;

struct Philox4 {
  uint32_t v[4];
};

// One Philox4x32-10 block: the 4 words of counter `c` under key (k0, k1).
FUSEDOPT_HD Philox4 philox4x32_10(Philox4 c, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < kPhiloxRounds; ++r) {
    if (r > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    // The 64-bit products (nvcc emits IMAD.WIDE.U32 / __umulhi for these).
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c.v[0];
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c.v[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c = Philox4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
  }
  return c;
}

}  // namespace fusedopt
