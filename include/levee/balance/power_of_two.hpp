// levee/balance/power_of_two.hpp - power of d choices, weight-aware, distinct samples.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>

#include "random.hpp"
#include "strategy.hpp"

namespace levee {
namespace detail {

inline constexpr std::size_t max_choices = 16;

// Draws up to d *distinct* eligible candidates, each drawn with probability
// proportional to weight (alias table). Falls back to exact O(n) weighted
// draws (excluding those already chosen) after a bounded number of rejected
// draws, so k < d only when fewer than d backends are eligible. Returns k.
inline std::size_t sample_distinct(const backend_snapshot& s, const alias_table& t, pick_context& ctx,
                                   std::size_t d, std::array<std::size_t, max_choices>& out) {
  std::size_t k = 0;
  std::size_t attempts = 4 * d + 8;
  if (d == 2) {
    // The loop below for its first two draws, unrolled: the common case
    // (both eligible and distinct) runs with no inner loops.
    // Both draws from one 64-bit random number (alias_table::draw32).
    const std::uint64_t x = ctx.random()();
    const std::size_t a = t.draw32(static_cast<std::uint32_t>(x >> 32));
    --attempts;
    if (ctx.eligible(s, a)) {
      out[k++] = a;
      const std::size_t b = t.draw32(static_cast<std::uint32_t>(x));
      --attempts;
      if (b != a && ctx.eligible(s, b)) {
        out[k++] = b;
        return k;
      }
    }
  }
  auto chosen = [&](std::size_t i) {
    for (std::size_t j = 0; j < k; ++j)
      if (out[j] == i) return true;
    return false;
  };
  for (; k < d && attempts > 0; --attempts) {
    const std::size_t i = t.draw(ctx.random());
    if (chosen(i) || !ctx.eligible(s, i)) continue;
    out[k++] = i;
  }
  while (k < d) {
    std::optional<std::size_t> pick;
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
      if (chosen(i) || !ctx.eligible(s, i)) continue;
      total += s[i].weight;
      if (ctx.random().below(total) < s[i].weight) pick = i;
    }
    if (!pick) break;
    out[k++] = *pick;
  }
  return k;
}

// The fast path of d = 2 for an unrestricted pick on an all-open table
// (every backend eligible): two weighted draws from one 64-bit random number,
// the second redrawn while it repeats the first (so it is drawn from the
// weights without the first, as sample_distinct does). Returns false only if
// 8 redraws all repeated the first (one backend holds almost all the
// weight), leaving the pair to sample_distinct.
// The redraws are out of line: inlined, their loop keeps copies of the
// generator's state live across the whole pick (spilled to the stack).
[[gnu::noinline]] inline bool redraw_second(const alias_table& t, rng& r, std::size_t a, std::size_t& b) {
  for (int k = 0; k < 8; ++k) {
    b = t.draw(r);
    if (b != a) return true;
  }
  return false;
}
LEVEE_DETAIL_ALWAYS_INLINE inline bool sample_two_open(const alias_table& t, rng& r, std::size_t& a,
                                                       std::size_t& b) {
  const std::uint64_t x = r();
  a = t.draw32(static_cast<std::uint32_t>(x >> 32));
  b = t.draw32(static_cast<std::uint32_t>(x));
  if (a != b) [[likely]]
    return true;
  return redraw_second(t, r, a, b);
}

inline std::size_t check_choices(std::size_t d, const char* fn) {
  if (d == 0 || d > max_choices)
    throw std::invalid_argument(std::string(fn) + ": choices must be in [1, 16], got " + std::to_string(d));
  return d;
}

}  // namespace detail

// Power of d choices (default d = 2): draws d distinct eligible backends with
// probability proportional to weight and picks the one with the least
// in_flight / weight (NGINX "random two least_conn"); ties go to the first
// drawn. So idle backends share in proportion to weight, busy ones by relative
// load. With two backends and d = 2 the less loaded one is always chosen
// (sampling without replacement, unlike Envoy #20420). O(d) expected per pick.
// For d = 2 without restrictions (no tier, tried list or filter, and every
// backend healthy and uncapped, see pick_context::unrestricted) the pick is a
// straight line: one random number, two alias draws, two load reads and a
// branch-free comparison (a coin-flip branch there costs more than the rest).
class power_of_two {
 public:
  using table_type = detail::alias_table;

  explicit power_of_two(std::size_t choices = 2)
      : d_(detail::check_choices(choices, "levee::power_of_two")) {}

  [[nodiscard]] std::size_t choices() const noexcept { return d_; }
  [[nodiscard]] table_type build(const backend_snapshot& s) const { return table_type(s); }

  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s,
                                                                           const table_type& t,
                                                                           pick_context& ctx) {
    if (s.empty() || t.size() != s.size()) return std::nullopt;
    if (d_ == 2 && t.open() && ctx.unrestricted() && s.size() >= 2) [[likely]] {
      std::size_t a, b;
      if (detail::sample_two_open(t, ctx.random(), a, b)) [[likely]]
        return less_loaded(s, a, b);
    }
    return pick_general(s, t, ctx);
  }

 private:
  // Any d, restricted picks, skewed weights: out of line, so that pick()
  // stays small enough to inline.
  [[gnu::noinline]] std::optional<std::size_t> pick_general(const backend_snapshot& s, const table_type& t,
                                                            pick_context& ctx) {
    std::array<std::size_t, detail::max_choices> c;
    const std::size_t k = detail::sample_distinct(s, t, ctx, d_, c);
    if (k == 0) return std::nullopt;
    std::size_t best = c[0];
    for (std::size_t j = 1; j < k; ++j) best = less_loaded(s, best, c[j]);
    return best;
  }

  // b if its in_flight / weight is strictly below a's, else a (ties go to the
  // first drawn). load() < 2^32 and weights < 2^32: the cross products fit in
  // 64 bits. Loads change all the time, so the outcome is a coin flip to the
  // branch predictor: selected with a mask.
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] static std::size_t less_loaded(const backend_snapshot& s,
                                                                          std::size_t a,
                                                                          std::size_t b) noexcept {
    const backend_entry& ea = s[a];
    const backend_entry& eb = s[b];
    const auto la = static_cast<std::uint64_t>(ea.load->load());
    const auto lb = static_cast<std::uint64_t>(eb.load->load());
    return detail::select(lb * ea.weight < la * eb.weight, b, a);
  }

  std::size_t d_;
};

static_assert(strategy<power_of_two>, "power_of_two must satisfy levee::strategy");

}  // namespace levee
