// levee/balance/weighted_round_robin.hpp - weighted round robin: NGINX's
// smooth sequence for small weight sums, a low-discrepancy spread for any
// other weights.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

#include "../detail/math.hpp"
#include "strategy.hpp"

namespace levee {

// Weighted round robin. Shares follow the weights exactly for every weight
// vector the backend set accepts (any uint32 weights, any number of
// backends), and a build() costs at most O(n + max_build_steps).
//
// Sequence mode (the common case): when the reduced weight sum P (the total
// weight divided by the weights' gcd) is at most max_period and P * n is at
// most max_build_steps, build() precomputes NGINX's smooth weighted round
// robin (commit 52327e06) over one period: per step every backend gains its
// weight, the largest current value wins and pays back the total. {5,1,1}
// gives a a b a c a a, never a burst; every period holds exactly w_i / gcd
// picks of backend i. pick() is a per-thread cursor step
// (detail::striped_cursor) and one table read: O(1) when the backend is
// eligible.
//
// Spread mode (any other weights, e.g. a total weight above max_period or
// tens of thousands of backends): the k-th pick of a thread takes the point
// u = bit-reversed k in [0, 1) (the van der Corput sequence) and returns the
// backend whose cumulative-weight interval contains u * W (inverse CDF on a
// prefix-sum array, found through a guide table: O(1) expected, O(log n)
// worst). Over every aligned block of 2^j consecutive picks, backend i gets
// floor or ceil of 2^j * w_i / W picks, so shares converge to the weights at
// rate O(log N / N) whatever the weights; consecutive points fall in
// opposite halves, quarters, ... of [0, 1), so no backend is picked in a
// burst (a backend of share p gets gaps of about 1/p picks). build() is O(n).
//
// Each thread walks the sequence on its own. Ineligible backends are skipped
// by moving on along the sequence, so the eligible backends keep their
// relative shares. Each instance starts at a random point of the sequence
// unless built with from_start() (NGINX's behaviour, used by the
// golden-sequence tests).
class weighted_round_robin {
 public:
  static constexpr bool reads_load = false;
  // The longest precomputed period (sequence mode).
  static constexpr std::uint64_t max_period = 65536;
  // The largest P * n computed by build() in sequence mode.
  static constexpr std::uint64_t max_build_steps = std::uint64_t{1} << 22;

  struct table_type {
    std::vector<std::uint32_t> sequence;  // sequence mode: one period of picks
    // spread mode (sequence empty): prefix[i] = weight of backends 0..i-1,
    // prefix[n] = W; guide[j] = the backend containing floor(j * W / G)
    std::vector<std::uint64_t> prefix;
    std::vector<std::uint32_t> guide;
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
    std::uint64_t g = 0;
    for (std::size_t i = 0; i < n; ++i) g = std::gcd(g, std::uint64_t{s[i].weight});
    const std::uint64_t period = s.total_weight() / g;
    if (period <= max_period && period * n <= max_build_steps) {
      build_sequence(s, g, period, t);
    } else {
      build_spread(s, t);
    }
    return t;
  }

  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s,
                                                                           const table_type& t,
                                                                           pick_context& ctx) {
    const std::size_t period = t.sequence.size();
    if (period == 0 || s.empty()) [[unlikely]]
      return pick_spread(s, t, ctx);
    // An ineligible entry is consumed like any other, so the eligible
    // backends keep their relative shares (as when NGINX skips a peer).
    // First probe inline (see round_robin::pick), the rest out of line.
    const std::size_t i = t.sequence[cursor_.next(period)];
    if (ctx.eligible(s, i)) [[likely]]
      return i;
    return pick_rest(s, t, ctx);
  }

 private:
  static void build_sequence(const backend_snapshot& s, std::uint64_t g, std::uint64_t period,
                             table_type& t) {
    const std::size_t n = s.size();
    std::vector<std::int64_t> w(n);
    for (std::size_t i = 0; i < n; ++i) w[i] = static_cast<std::int64_t>(s[i].weight / g);
    std::vector<std::int64_t> current(n, 0);
    t.sequence.reserve(static_cast<std::size_t>(period));
    const auto itotal = static_cast<std::int64_t>(period);
    for (std::uint64_t step = 0; step < period; ++step) {
      std::size_t best = 0;
      for (std::size_t i = 0; i < n; ++i) {
        current[i] += w[i];
        if (current[i] > current[best]) best = i;
      }
      current[best] -= itotal;
      t.sequence.push_back(static_cast<std::uint32_t>(best));
    }
  }

  static void build_spread(const backend_snapshot& s, table_type& t) {
    const std::size_t n = s.size();
    t.prefix.resize(n + 1);
    t.prefix[0] = 0;
    for (std::size_t i = 0; i < n; ++i) t.prefix[i + 1] = t.prefix[i] + s[i].weight;
    const std::uint64_t total = t.prefix[n];
    const std::size_t buckets = n;  // one bucket per backend on average
    t.guide.resize(buckets + 1);
    std::size_t i = 0;
    for (std::size_t j = 0; j <= buckets; ++j) {
      // floor(j * W / G) without overflow: W < 2^64 and j <= G
      const std::uint64_t v = j == buckets ? total : scaled_floor(total, j, buckets);
      while (i + 1 < n && t.prefix[i + 1] <= v) ++i;
      t.guide[j] = static_cast<std::uint32_t>(i);
    }
  }

  // floor(a * b / c) for b < c, in 128-bit arithmetic.
  [[nodiscard]] static std::uint64_t scaled_floor(std::uint64_t a, std::uint64_t b,
                                                  std::uint64_t c) noexcept {
    __extension__ using u128 = unsigned __int128;
    return static_cast<std::uint64_t>(static_cast<u128>(a) * b / c);
  }

  // The backend of the spread sequence at position k (see the class comment).
  [[nodiscard]] static std::size_t spread_at(const table_type& t, std::uint64_t k) noexcept {
    const std::uint64_t u = detail::bit_reverse64(k);
    const std::uint64_t target = detail::mul_high64(u, t.prefix.back());  // in [0, W)
    const std::size_t j = static_cast<std::size_t>(detail::mul_high64(u, t.guide.size() - 1));
    // u * W lies in bucket j, so its backend is in [guide[j], guide[j + 1]]
    const auto first = t.prefix.begin() + static_cast<std::ptrdiff_t>(t.guide[j]) + 1;
    const auto last = t.prefix.begin() + static_cast<std::ptrdiff_t>(t.guide[j + 1]) + 1;
    return static_cast<std::size_t>(std::upper_bound(first, last, target) - t.prefix.begin()) - 1;
  }

  [[gnu::noinline]] std::optional<std::size_t> pick_spread(const backend_snapshot& s, const table_type& t,
                                                           pick_context& ctx) {
    if (t.prefix.size() < 2 || s.empty()) return std::nullopt;
    const std::size_t probes = 2 * s.size() + 8;
    for (std::size_t k = 0; k < probes; ++k) {
      const std::size_t i = spread_at(t, cursor_.next(std::numeric_limits<std::size_t>::max()));
      if (ctx.eligible(s, i)) return i;
    }
    return detail::scan_weighted_random(s, ctx);
  }

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
