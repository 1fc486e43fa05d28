// levee/balance/random.hpp - uniform random and weighted random (alias table).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "strategy.hpp"

namespace levee {
namespace detail {

// Walker/Vose alias table over the snapshot's weights: O(n) to build, O(1)
// per draw (one multiply, one 8-byte load, one compare and a branch-free
// select). Memory: 8 bytes per backend.
class alias_table {
 public:
  alias_table() = default;
  explicit alias_table(const backend_snapshot& s) : open_(all_open(s)) {
    const std::size_t n = s.size();
    if (n == 0) return;
    cols_.resize(n);
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
      cols_[l] = {to_threshold(p[l]), g};
      p[g] = (p[g] + p[l]) - 1.0;
      if (p[g] < 1.0) {
        large.pop_back();
        small.push_back(g);
      }
    }
    // Full columns alias themselves, so the coin (whatever the threshold)
    // returns the column: the threshold fits 32 bits with no "always" value.
    for (std::uint32_t i : large) cols_[i] = {0, i};
    for (std::uint32_t i : small) cols_[i] = {0, i};  // rounding leftovers
  }

  [[nodiscard]] std::size_t size() const noexcept { return cols_.size(); }
  // detail::all_open of the snapshot the table was built from.
  [[nodiscard]] bool open() const noexcept { return open_; }

  // One 64-bit draw: the column from its high bits (multiply-shift; bias
  // below n / 2^64), the coin from its low 32 bits (resolution 2^-32).
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::size_t draw(rng& r) const noexcept {
    const std::uint64_t x = r();
    return pick_in(static_cast<std::size_t>(mul_high64(x, cols_.size())), static_cast<std::uint32_t>(x));
  }

  // A draw from 32 random bits: the column from the high half of u x n, the
  // coin from its low half (uniform to within n / 2^32). Two of these share
  // one 64-bit random number.
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::size_t draw32(std::uint32_t u) const noexcept {
    const std::uint64_t m = std::uint64_t{u} * cols_.size();
    return pick_in(static_cast<std::size_t>(m >> 32), static_cast<std::uint32_t>(m));
  }

 private:
  struct column {
    std::uint32_t threshold;  // keep the column when coin < threshold (scaled by 2^32)
    std::uint32_t alias;      // otherwise this backend
  };
  static_assert(sizeof(column) == 8, "levee: an alias column is one 8-byte load");

  // The coin is random, so the choice goes through a mask (detail::select),
  // never a branch that would be mispredicted half the time.
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::size_t pick_in(std::size_t i,
                                                               std::uint32_t coin) const noexcept {
    const column c = cols_[i];
    return select(coin < c.threshold, i, c.alias);
  }

  static std::uint32_t to_threshold(double p) noexcept {
    if (p <= 0) return 0;
    const double scaled = p * 4294967296.0;
    return scaled >= 4294967295.0 ? 0xffffffffU : static_cast<std::uint32_t>(scaled);
  }
  std::vector<column> cols_;
  bool open_ = true;
};

// Draws up to `tries` times from `draw`, returning the first eligible index;
// falls back to an O(n) weighted scan so that nullopt means "none eligible".
template <class Draw>
[[nodiscard]] std::optional<std::size_t> draw_eligible(const backend_snapshot& s, pick_context& ctx,
                                                       Draw&& draw, int tries = 8) {
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
  static constexpr bool reads_load = false;
  using table_type = no_table;
  [[nodiscard]] table_type build(const backend_snapshot&) const noexcept { return {}; }
  // First draw inline (see round_robin::pick), the rest out of line.
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s,
                                                                           const table_type&,
                                                                           pick_context& ctx) {
    if (s.empty()) return std::nullopt;
    const auto i = static_cast<std::size_t>(ctx.random().below(s.size()));
    if (ctx.eligible(s, i)) [[likely]]
      return i;
    return pick_rest(s, ctx);
  }

 private:
  [[gnu::noinline]] static std::optional<std::size_t> pick_rest(const backend_snapshot& s,
                                                                pick_context& ctx) {
    for (int t = 1; t < 8; ++t) {
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
// (alias table built per snapshot, 8 bytes per backend); an unrestricted pick
// on an all-open snapshot is one random number and one table load.
class weighted_random {
 public:
  static constexpr bool reads_load = false;
  using table_type = detail::alias_table;
  [[nodiscard]] table_type build(const backend_snapshot& s) const { return table_type(s); }
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s,
                                                                           const table_type& t,
                                                                           pick_context& ctx) {
    if (s.empty() || t.size() != s.size()) return std::nullopt;
    if (t.open() && ctx.unrestricted()) [[likely]]
      return t.draw(ctx.random());  // every backend eligible
    return detail::draw_eligible(s, ctx, [&] { return t.draw(ctx.random()); });
  }
};

static_assert(strategy<random>, "random must satisfy levee::strategy");
static_assert(strategy<weighted_random>, "weighted_random must satisfy levee::strategy");

}  // namespace levee
