// levee/conformance.hpp - checks recorded admission times against the
// rate-limit envelope: in every CLOSED window [t, t + w], w >= 0,
//     admissions <= burst + floor(r * w)
// (the envelope levee::rate_limiter guarantees). Usable in your own tests and
// on logs of real systems. Exact: times are integer nanoseconds and the rate
// is levee::rate's exact fraction (128-bit arithmetic, no floating point).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <levee/rate_limiter.hpp>
#include <ranges>
#include <span>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace levee {

struct conformance_report {
  bool ok = true;
  // Number of admissions j (in time order, ties in any order) such that the
  // admissions i..j for some i < j do not fit the envelope of the window
  // [t_i, t_j]; 0 iff ok.
  std::size_t violations = 0;
  std::size_t admissions = 0;
  // The window with the largest excess (count - allowed); meaningful only if !ok.
  struct window {
    std::size_t first = 0;               // index of its first admission in time order
    std::size_t last = 0;                // index of its last admission in time order
    std::size_t count = 0;               // admissions in [start, end]
    std::uint64_t allowed = 0;           // burst + floor(r * (end - start))
    std::chrono::nanoseconds start{0};   // first admission, relative to the earliest admission
    std::chrono::nanoseconds length{0};  // end - start
  } worst;
  // Largest count - allowed over all windows (<= 0 when ok; exactly 0 is
  // reported for any non-empty input that never exceeds).
  std::int64_t max_excess = 0;
};

namespace detail {
// O(n) after sorting. Index i..j (times t_i <= t_j) holds j - i + 1 admissions
// in the window [t_i, t_j]; it violates iff j - i + 1 > b + floor((t_j-t_i)/T),
// i.e. iff (for j - i + 1 > b) t_j - t_i < (j - i + 1 - b) * T. With
// u_k = t_k * C - k * P (T = P / C) that is u_i - u_j > (b - 1) * P, so for
// each j only the maximal u_i over i <= j - b matters, and the same i also
// maximises the integer excess (excess = ceil of a value increasing in u_i).
inline conformance_report check_sorted_ns(const std::vector<std::int64_t>& t, rate r, std::uint64_t burst) {
  conformance_report rep;
  rep.admissions = t.size();
  if (t.empty()) return rep;
  const auto c = static_cast<int128>(r.count());
  const auto p = static_cast<int128>(r.period().count());
  const auto t0 = t.front();
  auto u = [&](std::size_t k) {
    return static_cast<int128>(static_cast<std::uint64_t>(t[k]) - static_cast<std::uint64_t>(t0)) * c -
           static_cast<int128>(k) * p;
  };
  const auto b = static_cast<std::size_t>(std::min<std::uint64_t>(burst, t.size() + 1));
  const int128 slack = static_cast<int128>(burst - 1) * p;
  std::size_t best_i = 0;
  int128 best_u = 0;
  bool have = false;
  rep.max_excess = 0;
  for (std::size_t j = b; j < t.size(); ++j) {
    const std::size_t cand = j - b;
    const int128 uc = u(cand);
    if (!have || uc > best_u) {
      best_u = uc;
      best_i = cand;
      have = true;
    }
    if (best_u - u(j) > slack) {
      ++rep.violations;
      const std::uint64_t w = static_cast<std::uint64_t>(t[j]) - static_cast<std::uint64_t>(t[best_i]);
      const auto allowed_rate =
          static_cast<uint128>(w) * r.count() / static_cast<std::uint64_t>(r.period().count());
      const std::uint64_t allowed = burst + static_cast<std::uint64_t>(allowed_rate);
      const std::size_t count = j - best_i + 1;
      const auto excess = static_cast<std::int64_t>(count) - static_cast<std::int64_t>(allowed);
      if (rep.ok || excess > rep.max_excess) {
        rep.ok = false;
        rep.max_excess = excess;
        rep.worst = {best_i,
                     j,
                     count,
                     allowed,
                     std::chrono::nanoseconds(static_cast<std::int64_t>(
                         static_cast<std::uint64_t>(t[best_i]) - static_cast<std::uint64_t>(t0))),
                     std::chrono::nanoseconds(static_cast<std::int64_t>(w))};
      }
    }
  }
  return rep;
}
}  // namespace detail

// Checks admission time points (std::chrono::time_point of any clock,
// including levee::manual_clock) against the envelope of rate r and burst b.
// The admissions need not be sorted: a sorted copy is checked. Indices in the
// report refer to that time order. burst == 0 throws std::invalid_argument.
// Cost: O(n log n) for the sort, O(n) for the check; allocates n int64s.
template <class TimePoint>
[[nodiscard]] conformance_report check_conformance(std::span<const TimePoint> admissions, rate r,
                                                   std::uint64_t burst) {
  if (burst == 0) detail::throw_invalid_u("levee::check_conformance: burst must be >= 1", 0);
  std::vector<std::int64_t> ns;
  ns.reserve(admissions.size());
  for (const TimePoint& tp : admissions)
    ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(tp.time_since_epoch()).count());
  std::sort(ns.begin(), ns.end());
  return detail::check_sorted_ns(ns, r, burst);
}

// Convenience overload for any contiguous range of time points (std::vector, std::array, ...).
template <std::ranges::contiguous_range R>
requires(!std::is_same_v<std::remove_cvref_t<R>, std::span<const std::ranges::range_value_t<R>>>)
    [[nodiscard]] conformance_report check_conformance(const R& admissions, rate r, std::uint64_t burst) {
  using tp = std::ranges::range_value_t<R>;
  return check_conformance<tp>(
      std::span<const tp>(std::ranges::data(admissions), std::ranges::size(admissions)), r, burst);
}

}  // namespace levee
