// levee/balance/random.hpp - uniform random and weighted random (alias table).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "strategy.hpp"

namespace levee {
namespace detail {

// Walker/Vose alias table over the snapshot's weights: O(n) to build, O(1)
// per draw (one bounded integer, one 53-bit comparison).
class alias_table {
 public:
  alias_table() = default;
  explicit alias_table(const backend_snapshot& s) {
    const std::size_t n = s.size();
    if (n == 0) return;
    threshold_.resize(n);
    alias_.resize(n);
    std::vector<double> p(n);
    const double total = static_cast<double>(s.total_weight());
    std::vector<std::uint32_t> small, large;
    for (std::size_t i = 0; i < n; ++i) {
      p[i] = static_cast<double>(s[i].weight) * static_cast<double>(n) / total;
      (p[i] < 1.0 ? small : large).push_back(static_cast<std::uint32_t>(i));
    }
    while (!small.empty() && !large.empty()) {
      const std::uint32_t l = small.back();
      small.pop_back();
      const std::uint32_t g = large.back();
      threshold_[l] = to_threshold(p[l]);
      alias_[l] = g;
      p[g] = (p[g] + p[l]) - 1.0;
      if (p[g] < 1.0) {
        large.pop_back();
        small.push_back(g);
      }
    }
    for (std::uint32_t i : large) threshold_[i] = full, alias_[i] = i;
    for (std::uint32_t i : small) threshold_[i] = full, alias_[i] = i;  // rounding leftovers
  }

  [[nodiscard]] std::size_t size() const noexcept { return alias_.size(); }

  // One 64-bit draw: the column from its high bits (multiply-shift; bias
  // below n / 2^64), the coin from its low 32 bits (resolution 2^-32).
  [[nodiscard]] std::size_t draw(rng& r) const noexcept {
    const std::uint64_t x = r();
    const auto i = static_cast<std::size_t>(mul_high64(x, alias_.size()));
    // Both loads unconditionally, then a select: the coin flip is random, so
    // a branch here would be mispredicted half the time.
    const std::size_t other = alias_[i];
    const bool keep = (x & 0xffffffffULL) < threshold_[i];
    return keep ? i : other;
  }

  // A draw from 32 random bits: the column from the high half of u x n, the
  // coin from its low half (uniform to within n / 2^32). Two of these share
  // one 64-bit random number.
  [[nodiscard]] std::size_t draw32(std::uint32_t u) const noexcept {
    const std::uint64_t m = std::uint64_t{u} * alias_.size();
    const auto i = static_cast<std::size_t>(m >> 32);
    const std::size_t other = alias_[i];
    const bool keep = (m & 0xffffffffULL) < threshold_[i];
    return keep ? i : other;
  }

 private:
  static constexpr std::uint64_t full = std::uint64_t{1} << 32;
  static std::uint64_t to_threshold(double p) noexcept {
    if (p <= 0) return 0;
    if (p >= 1) return full;
    return static_cast<std::uint64_t>(p * static_cast<double>(full));
  }
  std::vector<std::uint64_t> threshold_;
  std::vector<std::uint32_t> alias_;
};

// Draws up to `tries` times from `draw`, returning the first eligible index;
// falls back to an O(n) weighted scan so that nullopt means "none eligible".
template <class Draw>
[[nodiscard]] std::optional<std::size_t> draw_eligible(const backend_snapshot& s, pick_context& ctx, Draw&& draw, int tries = 8) {
  for (int t = 0; t < tries; ++t) {
    const std::size_t i = draw();
    if (ctx.eligible(s, i)) return i;
  }
  return scan_weighted_random(s, ctx);
}

}  // namespace detail

// Uniformly random backend, weights ignored. O(1) expected.
class random {
 public:
  using table_type = no_table;
  [[nodiscard]] table_type build(const backend_snapshot&) const noexcept { return {}; }
  [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s, const table_type&, pick_context& ctx) {
    if (s.empty()) return std::nullopt;
    for (int t = 0; t < 8; ++t) {
      const auto i = static_cast<std::size_t>(ctx.random().below(s.size()));
      if (ctx.eligible(s, i)) return i;
    }
    // Unweighted fallback: uniform among the eligible.
    std::optional<std::size_t> best;
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < s.size(); ++i)
      if (ctx.eligible(s, i) && ctx.random().below(++seen) == 0) best = i;
    return best;
  }
};

// Random backend with probability weight / total weight. O(1) expected
// (alias table built per snapshot).
class weighted_random {
 public:
  using table_type = detail::alias_table;
  [[nodiscard]] table_type build(const backend_snapshot& s) const { return table_type(s); }
  [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s, const table_type& t, pick_context& ctx) {
    if (s.empty() || t.size() != s.size()) return std::nullopt;
    return detail::draw_eligible(s, ctx, [&] { return t.draw(ctx.random()); });
  }
};

static_assert(strategy<random>, "random must satisfy levee::strategy");
static_assert(strategy<weighted_random>, "weighted_random must satisfy levee::strategy");

}  // namespace levee
