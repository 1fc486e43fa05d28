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
inline std::size_t sample_distinct(const backend_snapshot& s, const alias_table& t, pick_context& ctx, std::size_t d,
                                   std::array<std::size_t, max_choices>& out) {
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
class power_of_two {
 public:
  using table_type = detail::alias_table;

  explicit power_of_two(std::size_t choices = 2) : d_(detail::check_choices(choices, "levee::power_of_two")) {}

  [[nodiscard]] std::size_t choices() const noexcept { return d_; }
  [[nodiscard]] table_type build(const backend_snapshot& s) const { return table_type(s); }

  [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s, const table_type& t, pick_context& ctx) {
    if (s.empty() || t.size() != s.size()) return std::nullopt;
    std::array<std::size_t, detail::max_choices> c;
    const std::size_t k = detail::sample_distinct(s, t, ctx, d_, c);
    if (k == 0) return std::nullopt;
    std::size_t best = c[0];
    // load() < 2^32 and weights < 2^32, so the cross products fit in 64 bits.
    auto best_load = static_cast<std::uint64_t>(s[best].load->load());
    for (std::size_t j = 1; j < k; ++j) {
      const auto l = static_cast<std::uint64_t>(s[c[j]].load->load());
      if (l * s[best].weight < best_load * s[c[j]].weight) best = c[j], best_load = l;
    }
    return best;
  }

 private:
  std::size_t d_;
};

static_assert(strategy<power_of_two>, "power_of_two must satisfy levee::strategy");

}  // namespace levee
