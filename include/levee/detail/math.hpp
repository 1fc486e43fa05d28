// levee/detail/math.hpp - small numeric helpers for hot paths.
#pragma once

#include <cmath>
#include <cstdint>

namespace levee::detail {

// exp(-x) for x >= 0. Latency EWMAs decay by exp(-dt / decay) with dt (time
// between samples) usually a tiny fraction of decay (microseconds against
// seconds), where a cubic Taylor polynomial is exact to double precision
// (truncation error below x^4 / 24 < 4.2e-14 for x < 2^-10) and about 20x
// cheaper than std::exp. Larger x goes to std::exp. NaN and negative x
// (never passed by levee) return 1 - x + ..., i.e. a value >= 1 for x <= 0.
[[nodiscard]] inline double exp_neg(double x) noexcept {
  if (x < 0x1.0p-10) return 1.0 - x * (1.0 - x * (0.5 - x * (1.0 / 6.0)));
  return std::exp(-x);
}

// The bits of x in reverse order (bit 0 becomes bit 63): k -> bit_reverse64(k)
// / 2^64 is the van der Corput sequence, whose every aligned block of 2^j
// consecutive values holds exactly one point in each interval [m/2^j, (m+1)/2^j).
[[nodiscard]] constexpr std::uint64_t bit_reverse64(std::uint64_t x) noexcept {
  x = ((x >> 1) & 0x5555555555555555ULL) | ((x & 0x5555555555555555ULL) << 1);
  x = ((x >> 2) & 0x3333333333333333ULL) | ((x & 0x3333333333333333ULL) << 2);
  x = ((x >> 4) & 0x0f0f0f0f0f0f0f0fULL) | ((x & 0x0f0f0f0f0f0f0f0fULL) << 4);
  x = ((x >> 8) & 0x00ff00ff00ff00ffULL) | ((x & 0x00ff00ff00ff00ffULL) << 8);
  x = ((x >> 16) & 0x0000ffff0000ffffULL) | ((x & 0x0000ffff0000ffffULL) << 16);
  return (x >> 32) | (x << 32);
}
static_assert(bit_reverse64(1) == 0x8000000000000000ULL && bit_reverse64(6) == 0x6000000000000000ULL &&
                  bit_reverse64(0x8000000000000001ULL) == 0x8000000000000001ULL,
              "bit_reverse64 mirrors the 64 bits");

}  // namespace levee::detail
