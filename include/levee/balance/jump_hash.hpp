// levee/balance/jump_hash.hpp - jump consistent hash (Lamping & Veach 2014).
#pragma once

#include <bit>
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
// times), then an O(n) scan decides.
//
// pick() evaluates the same random process as Lamping & Veach's jump hash
// (bucket() below, kept as the reference) but backwards, as Ertl's
// JumpBackHash does (arXiv:2403.18682, 2024): O(1) expected per pick, no
// floating point, no division, instead of O(ln n) steps with a double
// division each (39 ns at n = 64 before, see benchmarks/README.md). The
// mapping of keys differs from bucket()'s (pick() has always salted keys, so
// it was levee-specific anyway); the guarantees are the same: uniform over
// [0, n), and jump_back(h, n + 1) is jump_back(h, n) or n.
class jump_hash {
 public:
  static constexpr bool reads_load = false;
  // Whether the snapshot's backends are all open (detail::all_open): then an
  // unrestricted pick needs no eligibility check. O(n) to build, one byte.
  struct table_type {
    bool open = false;
  };

  explicit jump_hash(jump_hash_options o = {}) noexcept : o_(o), key_salt_(detail::hash_salt(o.seed)) {}

  // The reference algorithm: bucket of `key` among n (n >= 1).
  [[nodiscard]] static constexpr std::int32_t bucket(std::uint64_t key, std::int32_t n) noexcept {
    std::int64_t b = -1, j = 0;
    while (j < n) {
      b = j;
      key = key * 2862933555777941757ULL + 1;
      j = static_cast<std::int64_t>(static_cast<double>(b + 1) * (static_cast<double>(std::int64_t{1} << 31) /
                                                                  static_cast<double>((key >> 33) + 1)));
    }
    return static_cast<std::int32_t>(b);
  }

  // The bucket of a (well mixed) 64-bit hash h among n >= 1, O(1) expected.
  //
  // Jump hash's process: for every j >= 1 the key jumps to bucket j, when the
  // count grows from j to j + 1, with probability 1/(j+1), independently; its
  // bucket among n is the last jump below n (0 if none). Within [q, 2q), q a
  // power of two, there is no jump with probability prod j/(j+1) = 1/2, and
  // given one, the last is uniform over [q, 2q). So: bit q of u says whether
  // [q, 2q) holds a jump; the highest set bit below n's range gives the range
  // of the last jump and its low bits (from one half of h, the other half for
  // the next lower range) its position b. Only the top range can reach past
  // n - 1; then the last jump below n given that [q, n) is untouched by the
  // part >= n: it is c with probability 1/n for each c in [q, n) and absent
  // with probability q/n, i.e. c uniform in [0, n) with c < q meaning "none"
  // (drawn by rejection from [0, 2q): >= 1/2 accepted per draw). Draws depend
  // only on h, so n and n + 1 see the same draws and differ only where one
  // lands on n: consistency. The draws come from SplitMix64 seeded with h.
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] static constexpr std::uint32_t jump_back(
      std::uint64_t h, std::uint32_t n) noexcept {
    if (n <= 1) return 0;
    const std::uint32_t ranges = ~std::uint32_t{0} >> std::countl_zero(n - 1);  // bits of [1, n)'s ranges
    std::uint32_t u = static_cast<std::uint32_t>(h ^ (h >> 32)) & ranges;
    for (;;) {
      // Branch-free also for u == 0 (no jump at all, answer 0; probability
      // 1/bit_ceil(n), too frequent at small n to leave to a branch):
      // then top = 1, q = 0 and b = 0.
      const std::uint32_t top = std::uint32_t{0x80000000} >> std::countl_zero(u | 1);
      const std::uint32_t q = top & u;
      const auto half = static_cast<std::uint32_t>(h >> ((std::popcount(u) & 1) * 32));
      const std::uint32_t b = q + (half & (top - 1));
      if (b < n) return b;                      // always for the lower ranges: only the top one can reach n
      const std::uint32_t span = (q << 1) - 1;  // [0, 2q); wraps to all ones for q = 2^31
      std::uint64_t state = h;
      for (bool below = false; !below;) {
        const std::uint64_t w = detail::splitmix64_next(state);
        for (const auto c :
             {static_cast<std::uint32_t>(w) & span, static_cast<std::uint32_t>(w >> 32) & span}) {
          if (c < q) {
            below = true;  // no jump in [q, n): the answer is in a lower range
            break;
          }
          if (c < n) return c;
        }
      }
      u ^= q;
    }
  }

  [[nodiscard]] table_type build(const backend_snapshot& s) const noexcept { return {detail::all_open(s)}; }

  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s,
                                                                           const table_type& t,
                                                                           pick_context& ctx) {
    return pick_admitting(s, t, ctx, detail::admit_all{});
  }

  // pick() with one more eligibility rule (see levee::admitting_strategy).
  template <class Admit>
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick_admitting(
      const backend_snapshot& s, const table_type& t, pick_context& ctx, Admit admit) {
    const std::size_t n = s.size();
    if (n == 0) return std::nullopt;
    std::uint64_t k = ctx.key ? detail::hash64_salted(*ctx.key, key_salt_) : ctx.random()();
    const auto n32 = static_cast<std::uint32_t>(n);
    if (t.open && ctx.unrestricted()) [[likely]] {
      const std::size_t i = jump_back(k, n32);
      if (admit(s, i)) [[likely]]
        return i;
    }
    return rehash(s, ctx, k, n32, admit);
  }

 private:
  // The chosen backend was not eligible (or not checked yet): up to 8 keys
  // rehashed from k, then the scan. Out of line: keeps pick() small.
  template <class Admit>
  [[gnu::noinline]] static std::optional<std::size_t> rehash(const backend_snapshot& s, pick_context& ctx,
                                                             std::uint64_t k, std::uint32_t n, Admit admit) {
    for (int attempt = 0; attempt < 8; ++attempt) {
      const std::size_t i = jump_back(k, n);
      if (ctx.eligible(s, i) && admit(s, i)) return i;
      k = detail::hash64(k, static_cast<std::uint64_t>(attempt) + 1);
    }
    return detail::scan_weighted_random(s, ctx, admit);
  }

  jump_hash_options o_;
  std::uint64_t key_salt_;
};

static_assert(strategy<jump_hash>, "jump_hash must satisfy levee::strategy");

}  // namespace levee
