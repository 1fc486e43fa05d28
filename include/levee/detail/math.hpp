// levee/detail/math.hpp - small numeric helpers for hot paths.
#pragma once

#include <cmath>

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

}  // namespace levee::detail
