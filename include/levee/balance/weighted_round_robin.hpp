// levee/balance/weighted_round_robin.hpp - smooth weighted round robin (NGINX).
#pragma once

#include <atomic>
#include <cstdint>
#include <numeric>
#include <optional>
#include <vector>

#include "strategy.hpp"

namespace levee {

// NGINX's smooth weighted round robin (commit 52327e06): per step every
// backend gains its weight, the largest current value wins and pays back the
// total. {5,1,1} gives a a b a c a a, never a burst. The whole period (total
// weight after dividing by the gcd, scaled down to at most 65536 picks if
// larger) is computed in build(), so pick() is a per-thread cursor step
// (detail::striped_cursor) and one table read: O(1) when the backend is
// eligible. Each thread walks the sequence on its own. Ineligible backends are
// skipped by moving on along the sequence. Build: O(period x n).
// Each instance starts at a random point of the period unless built with
// from_start() (NGINX's behaviour, used by the golden-sequence tests).
class weighted_round_robin {
 public:
  static constexpr bool reads_load = false;
  static constexpr std::uint64_t max_period = 65536;

  struct table_type {
    std::vector<std::uint32_t> sequence;
  };

  weighted_round_robin() : weighted_round_robin(detail::fresh_seed()) {}
  explicit weighted_round_robin(std::uint64_t seed) noexcept : cursor_(detail::hash64(seed, 0x77727272)) {}
  [[nodiscard]] static weighted_round_robin from_start() noexcept {
    weighted_round_robin w(0);
    w.cursor_.reset(0);
    return w;
  }

  [[nodiscard]] table_type build(const backend_snapshot& s) const {
    table_type t;
    const std::size_t n = s.size();
    if (n == 0) return t;
    std::vector<std::uint64_t> w(n);
    std::uint64_t g = 0;
    for (std::size_t i = 0; i < n; ++i) g = std::gcd(g, std::uint64_t{s[i].weight});
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < n; ++i) total += w[i] = s[i].weight / g;
    if (total > max_period && total > n) {
      const std::uint64_t cap = std::max<std::uint64_t>(max_period, n);
      total = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const auto scaled =
            static_cast<std::uint64_t>(static_cast<double>(s[i].weight) * static_cast<double>(cap) /
                                       static_cast<double>(s.total_weight()));
        total += w[i] = std::max<std::uint64_t>(1, scaled);
      }
    }
    std::vector<std::int64_t> current(n, 0);
    t.sequence.reserve(static_cast<std::size_t>(total));
    const auto itotal = static_cast<std::int64_t>(total);
    for (std::uint64_t step = 0; step < total; ++step) {
      std::size_t best = 0;
      for (std::size_t i = 0; i < n; ++i) {
        current[i] += static_cast<std::int64_t>(w[i]);
        if (current[i] > current[best]) best = i;
      }
      current[best] -= itotal;
      t.sequence.push_back(static_cast<std::uint32_t>(best));
    }
    return t;
  }

  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s,
                                                                           const table_type& t,
                                                                           pick_context& ctx) {
    const std::size_t period = t.sequence.size();
    if (period == 0 || s.empty()) return std::nullopt;
    // An ineligible entry is consumed like any other, so the eligible
    // backends keep their relative shares (as when NGINX skips a peer).
    // First probe inline (see round_robin::pick), the rest out of line.
    const std::size_t i = t.sequence[cursor_.next(period)];
    if (ctx.eligible(s, i)) [[likely]]
      return i;
    return pick_rest(s, t, ctx);
  }

 private:
  [[gnu::noinline]] std::optional<std::size_t> pick_rest(const backend_snapshot& s, const table_type& t,
                                                         pick_context& ctx) {
    const std::size_t period = t.sequence.size();
    const std::size_t probes = std::min<std::size_t>(period, 2 * s.size() + 8);
    for (std::size_t k = 1; k < probes; ++k) {
      const std::size_t i = t.sequence[cursor_.next(period)];
      if (ctx.eligible(s, i)) return i;
    }
    return detail::scan_weighted_random(s, ctx);
  }

  detail::striped_cursor cursor_;
};

static_assert(strategy<weighted_round_robin>, "weighted_round_robin must satisfy levee::strategy");

}  // namespace levee
