// levee/balance/ring_hash.hpp - consistent hashing on a ring of virtual nodes.
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

struct ring_hash_options {
  std::uint32_t vnodes_per_weight = 100;  // ring points per unit of weight (NGINX: 160, HAProxy: 16)
  std::size_t max_points = std::size_t{1} << 20;  // larger rings are scaled down (>= 1 point per backend)
  std::uint64_t seed = 0;                 // changes every point and key position
};

// Ketama-style ring: backend i owns weight_i x vnodes_per_weight points at
// hash(id, r). A key goes to the first point clockwise from hash(key); if
// that backend is not eligible the walk continues clockwise (so removing a
// backend moves only its own keys, each to the next owner on the ring).
// build() sorts the points and indexes them by the top bits of the hash, so a
// pick is O(1) expected (one bucket of ~1 point), not a binary search.
// Points depend only on (id, weight, seed): identical in every process.
// Without a key, a random ring position is used.
class ring_hash {
 public:
  struct table_type {
    std::vector<std::uint64_t> hashes;  // sorted
    std::vector<std::uint32_t> owner;   // backend index per point
    std::vector<std::uint32_t> bucket;  // bucket b: first point with hash >> shift >= b (size buckets + 1)
    // The pick's one-load fast path, per bucket: keys up to `split` (the
    // first point at or after the bucket's start, or the last possible hash
    // if none follows) go to `le`, larger ones to `gt` (the owner of the next
    // point); gt == npos when the bucket holds two or more points.
    struct slot {
      std::uint64_t split;
      std::uint32_t le;
      std::uint32_t gt;
    };
    static constexpr std::uint32_t npos = ~std::uint32_t{0};
    std::vector<slot> slots;
    unsigned shift = 64;
  };

  explicit ring_hash(ring_hash_options o = {}) : o_(o), key_salt_(detail::hash_salt(o.seed ^ 0x6b6579ULL)) {
    if (o.vnodes_per_weight == 0) throw std::invalid_argument("levee::ring_hash: vnodes_per_weight must be > 0, got 0");
    if (o.max_points == 0) throw std::invalid_argument("levee::ring_hash: max_points must be > 0, got 0");
  }

  [[nodiscard]] const ring_hash_options& options() const noexcept { return o_; }

  [[nodiscard]] table_type build(const backend_snapshot& s) const {
    table_type t;
    const std::size_t n = s.size();
    if (n == 0) return t;
    const double want = static_cast<double>(s.total_weight()) * o_.vnodes_per_weight;
    const double scale = want > static_cast<double>(o_.max_points) ? static_cast<double>(o_.max_points) / want : 1.0;
    std::vector<std::pair<std::uint64_t, std::uint32_t>> pts;
    pts.reserve(static_cast<std::size_t>(std::min(want, static_cast<double>(o_.max_points))) + n);
    for (std::size_t i = 0; i < n; ++i) {
      const double p = static_cast<double>(s[i].weight) * o_.vnodes_per_weight * scale;
      const auto points = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(p));
      for (std::uint64_t r = 0; r < points; ++r)
        pts.emplace_back(detail::hash_pair(s[i].id, r, o_.seed), static_cast<std::uint32_t>(i));
    }
    // Ties (astronomically rare) go to the lower id: indices follow id order.
    std::sort(pts.begin(), pts.end());
    t.hashes.reserve(pts.size());
    t.owner.reserve(pts.size());
    for (const auto& [h, i] : pts) t.hashes.push_back(h), t.owner.push_back(i);
    const unsigned bits = static_cast<unsigned>(std::bit_width(std::bit_ceil(pts.size())) - 1);
    t.shift = 64 - bits;
    const std::size_t buckets = std::size_t{1} << bits;
    t.bucket.resize(buckets + 1);
    std::size_t j = 0;
    for (std::size_t b = 0; b < buckets; ++b) {
      while (j < t.hashes.size() && bucket_of(t.hashes[j], t.shift) < b) ++j;
      t.bucket[b] = static_cast<std::uint32_t>(j);
    }
    t.bucket[buckets] = static_cast<std::uint32_t>(t.hashes.size());
    const std::size_t points = t.hashes.size();
    // Slots double the table's memory; past ~1 MB (the L2 of common x86
    // cores) they cost more in cache misses than they save (measured at
    // N = 1024 x 100 vnodes), so large rings use the bucket index alone.
    if (buckets > max_slot_buckets) return t;
    t.slots.resize(buckets);
    for (std::size_t b = 0; b < buckets; ++b) {
      const std::size_t first = t.bucket[b], in_bucket = t.bucket[b + 1] - first;
      auto& sl = t.slots[b];
      if (first == points) {  // nothing at or after this bucket: every key wraps to point 0
        sl = {~std::uint64_t{0}, t.owner[0], t.owner[0]};
        continue;
      }
      sl.split = in_bucket == 0 ? ~std::uint64_t{0} : t.hashes[first];
      sl.le = t.owner[first];
      sl.gt = in_bucket >= 2 ? table_type::npos : t.owner[first + 1 == points ? 0 : first + 1];
    }
    return t;
  }

  // The position of `key` on the ring (exposed for tests).
  [[nodiscard]] std::uint64_t position(std::uint64_t key) const noexcept { return detail::hash64_salted(key, key_salt_); }

  [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s, const table_type& t, pick_context& ctx) {
    const std::size_t points = t.hashes.size();
    if (points == 0 || s.empty()) return std::nullopt;
    const std::uint64_t h = ctx.key ? position(*ctx.key) : ctx.random()();
    const std::size_t b = bucket_of(h, t.shift);
    std::size_t rejected = points;  // last owner found ineligible, to skip its runs cheaply
    if (t.slots.empty()) return walk(s, t, ctx, h, b, t.bucket[b], rejected);
    const auto& sl = t.slots[b];
    const bool le = h <= sl.split;
    const std::uint32_t o = le ? sl.le : sl.gt;
    if (o == table_type::npos) return walk(s, t, ctx, h, b, t.bucket[b] + 1, rejected);
    if (ctx.eligible(s, o)) return o;
    rejected = o;
    std::size_t j = t.bucket[b] + (le ? 0 : 1);  // the point that owns h (o is its owner)
    if (j >= points) j = 0;
    return walk_from(s, t, ctx, j, rejected);
  }

 private:
  static constexpr std::size_t max_slot_buckets = std::size_t{1} << 16;

  // Finds the first point >= h from index j of bucket b, then walks clockwise.
  static std::optional<std::size_t> walk(const backend_snapshot& s, const table_type& t, pick_context& ctx,
                                         std::uint64_t h, std::size_t b, std::size_t j, std::size_t rejected) {
    const std::size_t end = t.bucket[b + 1];
    while (j < end && t.hashes[j] < h) ++j;
    if (j == t.hashes.size()) j = 0;
    return walk_from(s, t, ctx, j, rejected);
  }

  // From point j clockwise: the first eligible owner (owner `rejected` is skipped).
  static std::optional<std::size_t> walk_from(const backend_snapshot& s, const table_type& t, pick_context& ctx,
                                              std::size_t j, std::size_t rejected) {
    const std::size_t points = t.hashes.size();
    for (std::size_t step = 0; step < points; ++step) {
      const std::size_t i = t.owner[j];
      if (i != rejected) {
        if (ctx.eligible(s, i)) return i;
        rejected = i;
      }
      if (++j == points) j = 0;
    }
    return std::nullopt;
  }

  static std::size_t bucket_of(std::uint64_t h, unsigned shift) noexcept {
    return shift >= 64 ? 0 : static_cast<std::size_t>(h >> shift);
  }
  ring_hash_options o_;
  std::uint64_t key_salt_;
};

static_assert(strategy<ring_hash>, "ring_hash must satisfy levee::strategy");

}  // namespace levee
