// levee/balance/maglev.hpp - Maglev consistent hashing (Eisenbud et al., NSDI 2016).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "strategy.hpp"

namespace levee {

struct maglev_options {
  // Table size M (must be prime). 0 = automatic: the smallest prime
  // >= max(65536, 100 x bit_ceil(N)). Rounding N up to a power of two keeps M
  // unchanged across most membership changes (a new M reshuffles everything)
  // while keeping M >= 100 N, the paper's condition for <= 1% imbalance.
  std::size_t table_size = 0;
  std::uint64_t seed = 0;
};

namespace detail {

[[nodiscard]] constexpr bool is_prime(std::uint64_t n) noexcept {
  if (n < 2) return false;
  if (n % 2 == 0) return n == 2;
  for (std::uint64_t d = 3; d * d <= n; d += 2)
    if (n % d == 0) return false;
  return true;
}
[[nodiscard]] constexpr std::uint64_t next_prime(std::uint64_t n) noexcept {
  while (!is_prime(n)) ++n;
  return n;
}

}  // namespace detail

// Each backend walks its own permutation (offset + j x skip) mod M of the
// table and the backends take turns claiming their next free slot; weight w
// claims w / max_weight of the turns. A key maps to entry hash(key) mod M:
// O(1) per pick: an unrestricted pick on an all-open snapshot (see
// pick_context::unrestricted) is one table load. If that backend is not
// eligible, the following entries are tried (a key-determined sequence of
// other backends), then an O(n) scan.
// The table depends only on (ids, weights, M, seed): identical in every process.
class maglev {
 public:
  static constexpr bool reads_load = false;
  struct table_type {
    std::vector<std::uint32_t> entry;  // backend index per slot
    bool open = false;                 // detail::all_open of the snapshot
  };

  explicit maglev(maglev_options o = {}) : o_(o), key_salt_(detail::hash_salt(o.seed ^ 0x6b6579ULL)) {
    if (o.table_size != 0 && !detail::is_prime(o.table_size))
      throw std::invalid_argument("levee::maglev: table_size must be prime, got " +
                                  std::to_string(o.table_size));
  }

  [[nodiscard]] const maglev_options& options() const noexcept { return o_; }

  // The table size used for n backends.
  [[nodiscard]] std::size_t table_size_for(std::size_t n) const noexcept {
    if (o_.table_size != 0) return o_.table_size;
    const std::uint64_t want =
        std::max<std::uint64_t>(65536, 100 * std::bit_ceil(std::max<std::uint64_t>(n, 1)));
    return static_cast<std::size_t>(detail::next_prime(want));
  }

  // Throws std::length_error if an explicit table_size is smaller than n.
  [[nodiscard]] table_type build(const backend_snapshot& s) const {
    table_type t;
    const std::size_t n = s.size();
    if (n == 0) return t;
    t.open = detail::all_open(s);
    const std::size_t m = table_size_for(n);
    if (m < n)
      throw std::length_error("levee::maglev: table_size " + std::to_string(m) +
                              " is smaller than the backend count " + std::to_string(n));
    constexpr std::uint32_t empty = ~std::uint32_t{0};
    t.entry.assign(m, empty);
    std::vector<std::uint64_t> pos(n), skip(n);
    for (std::size_t i = 0; i < n; ++i) {
      pos[i] = detail::hash64(s[i].id, o_.seed ^ 0x6f6666736574ULL) % m;
      skip[i] = detail::hash64(s[i].id, o_.seed ^ 0x736b6970ULL) % (m - 1) + 1;
    }
    const std::uint64_t wmax = s.max_weight();
    std::size_t filled = 0;
    for (std::uint64_t round = 0; filled < m; ++round) {
      for (std::size_t i = 0; i < n && filled < m; ++i) {
        const std::uint64_t w = s[i].weight;
        if (w != wmax && (round + 1) * w / wmax == round * w / wmax) continue;  // not this backend's turn
        while (t.entry[pos[i]] != empty) pos[i] = (pos[i] + skip[i]) % m;
        t.entry[pos[i]] = static_cast<std::uint32_t>(i);
        pos[i] = (pos[i] + skip[i]) % m;
        ++filled;
      }
    }
    return t;
  }

  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::size_t slot(std::uint64_t key, std::size_t m) const noexcept {
    return static_cast<std::size_t>(detail::mul_high64(detail::hash64_salted(key, key_salt_), m));
  }

  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s,
                                                                           const table_type& t,
                                                                           pick_context& ctx) {
    return pick_admitting(s, t, ctx, detail::admit_all{});
  }

  // pick() with one more eligibility rule (see levee::admitting_strategy).
  template <class Admit>
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick_admitting(
      const backend_snapshot& s, const table_type& t, pick_context& ctx, Admit admit) {
    const std::size_t m = t.entry.size();
    if (m == 0 || s.empty()) return std::nullopt;
    std::size_t j = ctx.key ? slot(*ctx.key, m) : static_cast<std::size_t>(ctx.random().below(m));
    if (t.open && ctx.unrestricted()) [[likely]] {
      const std::size_t i = t.entry[j];
      if (admit(s, i)) [[likely]]
        return i;
    }
    std::size_t rejected = s.size();
    const std::size_t probes = std::min(m, 8 * s.size() + 64);
    for (std::size_t k = 0; k < probes; ++k) {
      const std::size_t i = t.entry[j];
      if (i != rejected) {
        if (ctx.eligible(s, i) && admit(s, i)) return i;
        rejected = i;
      }
      if (++j == m) j = 0;
    }
    return detail::scan_weighted_random(s, ctx, admit);
  }

 private:
  maglev_options o_;
  std::uint64_t key_salt_;
};

static_assert(strategy<maglev>, "maglev must satisfy levee::strategy");

}  // namespace levee
