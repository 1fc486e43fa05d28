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
// An ineligible backend's turn is consumed (another fetch_add), so eligible
// backends keep equal shares instead of the next one inheriting the turn;
// after 8 such turns a linear scan finishes the pick. Pick: one relaxed
// fetch_add when the backend is eligible; O(n) worst case.
class round_robin {
 public:
  using table_type = no_table;

  round_robin() : round_robin(detail::fresh_seed()) {}
  explicit round_robin(std::uint64_t seed) noexcept : next_(detail::hash64(seed, 0x7272)) {}
  round_robin(round_robin&& o) noexcept : next_(o.next_.load(std::memory_order_relaxed)) {}
  round_robin(const round_robin& o) noexcept : next_(o.next_.load(std::memory_order_relaxed)) {}

  [[nodiscard]] table_type build(const backend_snapshot&) const noexcept { return {}; }

  [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s, const table_type&, pick_context& ctx) noexcept {
    const std::size_t n = s.size();
    if (n == 0) return std::nullopt;
    // Memory ordering: relaxed; the counter only spreads picks, it publishes nothing.
    std::size_t i = 0;
    const std::size_t turns = n < 8 ? n : 8;
    for (std::size_t k = 0; k < turns; ++k) {
      i = static_cast<std::size_t>(next_.fetch_add(1, std::memory_order_relaxed) % n);
      if (ctx.eligible(s, i)) return i;
    }
    for (std::size_t k = 1; k < n; ++k) {
      if (++i == n) i = 0;
      if (ctx.eligible(s, i)) return i;
    }
    return std::nullopt;
  }

 private:
  std::atomic<std::uint64_t> next_;
};

static_assert(strategy<round_robin>, "round_robin must satisfy levee::strategy");

}  // namespace levee
