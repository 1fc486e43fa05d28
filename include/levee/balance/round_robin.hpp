// levee/balance/round_robin.hpp - plain round robin with a random start.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>

#include "strategy.hpp"

namespace levee {

// Cycles through the backends in id order, ignoring weights. Each instance
// starts at a random position (seeded), so many balancers built on the same
// list do not all hit the first backend together (grpc-java #4462).
// Each thread stripe keeps its own cursor (detail::striped_cursor: a relaxed
// load and store, no shared read-modify-write), so threads do not contend.
// An ineligible backend's turn is consumed, so eligible backends keep equal
// shares instead of the next one inheriting the turn; after 8 such turns a
// linear scan finishes the pick. O(1) when the backend is eligible; O(n) worst case.
class round_robin {
 public:
  static constexpr bool reads_load = false;
  using table_type = no_table;

  round_robin() : round_robin(detail::fresh_seed()) {}
  explicit round_robin(std::uint64_t seed) noexcept : cursor_(detail::hash64(seed, 0x7272)) {}

  [[nodiscard]] table_type build(const backend_snapshot&) const noexcept { return {}; }

  // The first turn is small enough to be inlined into the caller (so the
  // result stays in registers: GCC 12 returns a non-inlined
  // std::optional<std::size_t> through a store-forwarding stall); the
  // remaining turns are out of line.
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s,
                                                                           const table_type&,
                                                                           pick_context& ctx) noexcept {
    const std::size_t n = s.size();
    if (n == 0) return std::nullopt;
    const std::size_t i = cursor_.next(n);
    if (ctx.eligible(s, i)) [[likely]]
      return i;
    return pick_rest(s, ctx, i);
  }

 private:
  [[gnu::noinline]] std::optional<std::size_t> pick_rest(const backend_snapshot& s, pick_context& ctx,
                                                         std::size_t i) noexcept {
    const std::size_t n = s.size();
    const std::size_t turns = n < 8 ? n : 8;
    for (std::size_t k = 1; k < turns; ++k) {
      i = cursor_.next(n);
      if (ctx.eligible(s, i)) return i;
    }
    for (std::size_t k = 1; k < n; ++k) {
      if (++i == n) i = 0;
      if (ctx.eligible(s, i)) return i;
    }
    return std::nullopt;
  }

  detail::striped_cursor cursor_;
};

static_assert(strategy<round_robin>, "round_robin must satisfy levee::strategy");

}  // namespace levee
