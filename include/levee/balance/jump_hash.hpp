// levee/balance/jump_hash.hpp - jump consistent hash (Lamping & Veach 2014).
#pragma once

#include <cstdint>
#include <optional>

#include "strategy.hpp"

namespace levee {

struct jump_hash_options {
  std::uint64_t seed = 0;  // keys are mixed with the seed before jumping
};

// Maps a key to a bucket in [0, n) with no table and no memory; growing n to
// n + 1 moves exactly the keys that land in the new bucket (1/(n+1) of them).
// Buckets are backend indices in id order, so the promise holds when backends
// are added with ids larger than every existing id and removed from the top;
// removing a backend from the middle renumbers the ones above it (use
// ring_hash, maglev or rendezvous for arbitrary membership). Weights are
// ignored. If the chosen backend is not eligible the key is rehashed (up to 8
// times), then an O(n) scan decides. O(ln n) per pick.
class jump_hash {
 public:
  using table_type = no_table;

  explicit jump_hash(jump_hash_options o = {}) noexcept : o_(o), key_salt_(detail::hash_salt(o.seed)) {}

  // The reference algorithm: bucket of `key` among n (n >= 1).
  [[nodiscard]] static constexpr std::int32_t bucket(std::uint64_t key, std::int32_t n) noexcept {
    std::int64_t b = -1, j = 0;
    while (j < n) {
      b = j;
      key = key * 2862933555777941757ULL + 1;
      j = static_cast<std::int64_t>(static_cast<double>(b + 1) *
                                    (static_cast<double>(std::int64_t{1} << 31) / static_cast<double>((key >> 33) + 1)));
    }
    return static_cast<std::int32_t>(b);
  }

  [[nodiscard]] table_type build(const backend_snapshot&) const noexcept { return {}; }

  [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s, const table_type&, pick_context& ctx) {
    const std::size_t n = s.size();
    if (n == 0) return std::nullopt;
    std::uint64_t k = ctx.key ? detail::hash64_salted(*ctx.key, key_salt_) : ctx.random()();
    for (int attempt = 0; attempt < 8; ++attempt) {
      const auto i = static_cast<std::size_t>(bucket(k, static_cast<std::int32_t>(n)));
      if (ctx.eligible(s, i)) return i;
      k = detail::hash64(k, static_cast<std::uint64_t>(attempt) + 1);
    }
    return detail::scan_weighted_random(s, ctx);
  }

 private:
  jump_hash_options o_;
  std::uint64_t key_salt_;
};

static_assert(strategy<jump_hash>, "jump_hash must satisfy levee::strategy");

}  // namespace levee
