// levee/balance/rendezvous.hpp - weighted rendezvous (highest random weight) hashing.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>

#include "strategy.hpp"

namespace levee {

struct rendezvous_options {
  std::uint64_t seed = 0;
};

// Every eligible backend scores the key and the best score wins: with
// u = hash(key, id) mapped into (0, 1), score = -weight / ln(u) (Schindelhauer
// & Schomaker 2005), so backend i wins with probability weight_i / total.
// Removing a backend moves exactly its own keys; adding one moves only the
// keys it now wins. With equal weights the raw 64-bit hashes are compared
// (exact, no floating point). O(n) per pick by design; no table.
// Without a key, a random key is drawn.
class rendezvous {
 public:
  static constexpr bool reads_load = false;
  struct table_type {
    bool equal_weights = true;
  };

  explicit rendezvous(rendezvous_options o = {}) noexcept : o_(o) {}

  [[nodiscard]] table_type build(const backend_snapshot& s) const noexcept {
    table_type t;
    for (const auto& e : s) t.equal_weights = t.equal_weights && e.weight == s.max_weight();
    return t;
  }

  // The score of backend `e` for a key (exposed for tests).
  [[nodiscard]] double score(std::uint64_t key, const backend_entry& e) const noexcept {
    const std::uint64_t h = detail::hash_pair(key, e.id, o_.seed);
    const double u = (static_cast<double>(h >> 11) + 0.5) * 0x1.0p-53;  // in (0, 1)
    return -static_cast<double>(e.weight) / std::log(u);
  }

  [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s, const table_type& t,
                                                pick_context& ctx) {
    const std::uint64_t key = ctx.key ? *ctx.key : ctx.random()();
    std::optional<std::size_t> best;
    if (t.equal_weights) {
      std::uint64_t best_h = 0;
      for (std::size_t i = 0; i < s.size(); ++i) {
        const std::uint64_t h = detail::hash_pair(key, s[i].id, o_.seed);
        if ((!best || h > best_h) && ctx.eligible(s, i)) best = i, best_h = h;
      }
      return best;
    }
    double best_score = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
      const double sc = score(key, s[i]);
      if ((!best || sc > best_score) && ctx.eligible(s, i)) best = i, best_score = sc;
    }
    return best;
  }

 private:
  rendezvous_options o_;
};

static_assert(strategy<rendezvous>, "rendezvous must satisfy levee::strategy");

}  // namespace levee
