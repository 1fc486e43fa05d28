// levee/balance/failover.hpp - failover tiers as a decorator over any strategy.
#pragma once

#include <algorithm>
#include <optional>
#include <vector>

#include "strategy.hpp"

namespace levee {

// Tries tier 0 (backend_options::tier), then tier 1, and so on: a backup tier
// receives nothing while any backend of a lower tier is eligible, and
// everything when none is. With a single tier it costs one branch. Inside each
// tier S chooses as usual; a health decorator nested inside declines a tier
// with no healthy backend. If every tier declines, a second pass runs with
// pick_context::last_resort set, where health may panic even over a tier with
// no healthy backend (lowest tier first).
template <strategy S>
class failover {
 public:
  static constexpr bool needs_total_load = strategy_traits<S>::needs_total_load;
  static constexpr std::size_t filter_depth = strategy_traits<S>::filter_depth;
  static constexpr bool reads_load = strategy_traits<S>::reads_load;

  struct table_type {
    typename S::table_type inner;
    std::vector<std::uint32_t> tiers;  // distinct tiers, ascending
  };

  explicit failover(S inner = S{}) : inner_(std::move(inner)) {}

  [[nodiscard]] S& inner() noexcept { return inner_; }

  template <class T = S>
  requires requires(const T& t) { t.latency_decay(); }
  [[nodiscard]] std::chrono::nanoseconds latency_decay() const { return inner_.latency_decay(); }

  [[nodiscard]] table_type build(const backend_snapshot& s) const {
    table_type t{inner_.build(s), {}};
    for (const auto& e : s) t.tiers.push_back(e.tier);
    std::sort(t.tiers.begin(), t.tiers.end());
    t.tiers.erase(std::unique(t.tiers.begin(), t.tiers.end()), t.tiers.end());
    return t;
  }

  // The common case (one tier) is a tail call; the tier walk is out of line
  // so that the fast path never copies the result through the stack.
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s,
                                                                           const table_type& t,
                                                                           pick_context& ctx) {
    if (t.tiers.size() <= 1 || ctx.tier) [[likely]]
      return inner_.pick(s, t.inner, ctx);
    return pick_tiers(s, t, ctx);
  }

 private:
  [[gnu::noinline]] std::optional<std::size_t> pick_tiers(const backend_snapshot& s, const table_type& t,
                                                          pick_context& ctx) {
    std::optional<std::size_t> r;
    const bool saved = ctx.last_resort;
    for (int pass = 0; pass < 2 && !r; ++pass) {
      ctx.last_resort = pass == 1;
      for (std::uint32_t tier : t.tiers) {
        ctx.tier = tier;
        r = inner_.pick(s, t.inner, ctx);
        if (r) break;
      }
    }
    ctx.tier.reset();
    ctx.last_resort = saved;
    return r;
  }

  S inner_;
};

}  // namespace levee
