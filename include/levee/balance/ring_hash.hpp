// levee/balance/ring_hash.hpp - consistent hashing on a ring of virtual nodes.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "strategy.hpp"

namespace levee {

struct ring_hash_options {
  std::uint32_t vnodes_per_weight = 100;          // ring points per unit of weight (NGINX: 160, HAProxy: 16)
  std::size_t max_points = std::size_t{1} << 20;  // larger rings are scaled down (>= 1 point per backend)
  std::uint64_t seed = 0;                         // changes every point and key position
};

// Ketama-style ring: backend i owns weight_i x vnodes_per_weight points at
// hash(id, r). A key goes to the first point clockwise from hash(key); if
// that backend is not eligible the walk continues clockwise (so removing a
// backend moves only its own keys, each to the next owner on the ring).
// Points depend only on (id, weight, seed): identical in every process.
// Without a key, a random ring position is used.
//
// build() sorts the points and indexes them by the top `bits` bits of the
// hash, with bit_ceil(points) buckets (~1 point per bucket). Each bucket also
// gets a 16-byte slot that answers the pick on its own: the next 16 bits of
// the bucket's first three points (the "splits") and the owners of the arcs
// between them. A pick is then one slot load, three 16-bit comparisons and
// an owner chosen by their sum, with no data-dependent branch; only keys
// whose 16 bits equal a split's (probability <= 3 / 65536) or whose bucket
// holds 4+ points (~1.8% of keys at 1 point per bucket, Poisson) take the
// exact walk over the sorted points. O(1) expected per pick: ~7 ns at
// N = 64 in bench_balance, against 17 ns with the former 16-byte one-split
// slot, which walked for the ~26% of keys in buckets of two or more points
// (a mispredicted branch and a second cache miss each).
// Memory, P = points = total weight x vnodes_per_weight (<= max_points),
// B = bit_ceil(P) buckets: hashes 8P + owners 4P + bucket index 4B + slots
// 16B bytes, e.g. 0.5 MB at N = 64 x weights 1-4 (16,000 points; as before)
// and 8.3 MB at N = 1024 (256,000 points; the former slots stopped at 2^16
// buckets, 4.1 MB, and such rings took three dependent misses per pick).
// A pick touches one slot. Slots need backend indices below 65535; larger
// sets (and rings of more than 2^22 buckets) use the bucket index alone.
class ring_hash {
 public:
  static constexpr bool reads_load = false;
  struct table_type {
    std::vector<std::uint64_t> hashes;  // sorted
    std::vector<std::uint32_t> owner;   // backend index per point
    std::vector<std::uint32_t> bucket;  // bucket b: first point with hash >> shift >= b (size buckets + 1)
    // Per bucket, the pick's one-load answer. split[j] = bits [64 - shift -
    // 16, 64 - shift) of the bucket's j-th point (ascending; 0xffff past
    // `count`); a key whose same 16 bits k differ from every split goes to
    // owner[number of splits below k] (owner[count] = the owner of the first
    // point after the bucket, wrapping). count > 3: use the walk.
    struct slot {
      std::array<std::uint16_t, 3> split;
      std::array<std::uint16_t, 4> owner;
      std::uint16_t count;
    };
    static_assert(sizeof(slot) == 16,
                  "levee: a ring slot must be 16 bytes, four per cache line, one load per pick");
    std::vector<slot> slots;  // empty: no slots (see above)
    unsigned shift = 64;      // 64 - bits, bits >= 1 once built (so a shift by it is defined)
    bool open = false;        // detail::all_open of the snapshot
  };

  explicit ring_hash(ring_hash_options o = {}) : o_(o), key_salt_(detail::hash_salt(o.seed ^ 0x6b6579ULL)) {
    if (o.vnodes_per_weight == 0)
      throw std::invalid_argument("levee::ring_hash: vnodes_per_weight must be > 0, got 0");
    if (o.max_points == 0) throw std::invalid_argument("levee::ring_hash: max_points must be > 0, got 0");
  }

  [[nodiscard]] const ring_hash_options& options() const noexcept { return o_; }

  [[nodiscard]] table_type build(const backend_snapshot& s) const {
    table_type t;
    const std::size_t n = s.size();
    if (n == 0) return t;
    t.open = detail::all_open(s);
    const double want = static_cast<double>(s.total_weight()) * o_.vnodes_per_weight;
    const double scale =
        want > static_cast<double>(o_.max_points) ? static_cast<double>(o_.max_points) / want : 1.0;
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
    // At least 2 buckets: shift stays below 64, so the pick shifts without a check.
    const unsigned bits = std::max(1u, static_cast<unsigned>(std::bit_width(std::bit_ceil(pts.size())) - 1));
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
    if (n >= no_owner || buckets > max_slot_buckets) return t;
    t.slots.resize(buckets);
    for (std::size_t b = 0; b < buckets; ++b) {
      const std::size_t first = t.bucket[b], count = t.bucket[b + 1] - first;
      auto& sl = t.slots[b];
      sl.count = static_cast<std::uint16_t>(std::min<std::size_t>(count, 4));
      sl.split.fill(0xffff);
      sl.owner.fill(0);
      if (count > 3) continue;
      for (std::size_t k = 0; k < count; ++k) {
        sl.split[k] = split_bits(t.hashes[first + k], t.shift);
        sl.owner[k] = static_cast<std::uint16_t>(t.owner[first + k]);
      }
      const std::size_t next = first + count == points ? 0 : first + count;  // wraps to point 0
      sl.owner[count] = static_cast<std::uint16_t>(t.owner[next]);
    }
    return t;
  }

  // The position of `key` on the ring (exposed for tests).
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::uint64_t position(std::uint64_t key) const noexcept {
    return detail::hash64_salted(key, key_salt_);
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
    // No slots also covers the empty table and the empty snapshot (settle
    // checks both): one test on the fast path.
    if (t.slots.empty()) [[unlikely]]
      return settle_without_slots(s, t, ctx, admit);
    const std::uint64_t h = point(ctx);
    const std::size_t b = bucket_of(h, t.shift);
    const auto& sl = t.slots[b];
    const std::uint16_t k = split_bits(h, t.shift);
    const unsigned below = unsigned{k > sl.split[0]} + unsigned{k > sl.split[1]} + unsigned{k > sl.split[2]};
    // Bitwise on purpose (one branch below, not four): as unsigned, not bool.
    const bool exact = (unsigned{k == sl.split[0]} | unsigned{k == sl.split[1]} | unsigned{k == sl.split[2]} |
                        unsigned{sl.count > 3}) != 0;
    if (!exact && t.open && ctx.unrestricted()) [[likely]] {
      const std::size_t o = sl.owner[below];
      if (admit(s, o)) [[likely]]
        return o;
    }
    return settle(s, t, ctx, h, b, exact ? no_owner : below, admit);
  }

 private:
  static constexpr std::size_t no_owner = 0xffff;  // slots hold backend indices below this
  static constexpr std::size_t max_slot_buckets = std::size_t{1} << 22;  // 64 MiB of slots

  // The pick's ring position: its key's, or a random one.
  LEVEE_DETAIL_ALWAYS_INLINE std::uint64_t point(pick_context& ctx) const noexcept {
    return ctx.key ? position(*ctx.key) : ctx.random()();
  }

  template <class Admit>
  [[gnu::noinline]] std::optional<std::size_t> settle_without_slots(const backend_snapshot& s,
                                                                    const table_type& t, pick_context& ctx,
                                                                    Admit admit) const {
    if (t.hashes.empty() || s.empty()) return std::nullopt;
    const std::uint64_t h = point(ctx);
    return settle(s, t, ctx, h, bucket_of(h, t.shift), no_owner, admit);
  }

  // Everything but the fast path, out of line so that pick() stays small
  // enough to inline: the slot's arc `below` (no_owner: find h's point by
  // walking bucket b), then eligibility and the clockwise walk.
  template <class Admit>
  [[gnu::noinline]] static std::optional<std::size_t> settle(const backend_snapshot& s, const table_type& t,
                                                             pick_context& ctx, std::uint64_t h,
                                                             std::size_t b, std::size_t below, Admit admit) {
    const std::size_t points = t.hashes.size();
    if (below == no_owner) return walk(s, t, ctx, h, b, t.bucket[b], points, admit);
    const std::size_t o = t.slots[b].owner[below];
    if (ctx.eligible(s, o) && admit(s, o)) return o;
    std::size_t j = t.bucket[b] + below;  // the point that owns h (o is its owner)
    if (j >= points) j = 0;
    return walk_from(s, t, ctx, j, o, admit);
  }

  // Finds the first point >= h from index j of bucket b, then walks clockwise.
  template <class Admit>
  static std::optional<std::size_t> walk(const backend_snapshot& s, const table_type& t, pick_context& ctx,
                                         std::uint64_t h, std::size_t b, std::size_t j, std::size_t rejected,
                                         Admit admit) {
    const std::size_t end = t.bucket[b + 1];
    while (j < end && t.hashes[j] < h) ++j;
    if (j == t.hashes.size()) j = 0;
    return walk_from(s, t, ctx, j, rejected, admit);
  }

  // From point j clockwise: the first eligible owner (owner `rejected` is skipped).
  template <class Admit>
  static std::optional<std::size_t> walk_from(const backend_snapshot& s, const table_type& t,
                                              pick_context& ctx, std::size_t j, std::size_t rejected,
                                              Admit admit) {
    const std::size_t points = t.hashes.size();
    for (std::size_t step = 0; step < points; ++step) {
      const std::size_t i = t.owner[j];
      if (i != rejected) {
        if (ctx.eligible(s, i) && admit(s, i)) return i;
        rejected = i;
      }
      if (++j == points) j = 0;
    }
    return std::nullopt;
  }

  // shift < 64 in every built table (see build()).
  LEVEE_DETAIL_ALWAYS_INLINE static std::size_t bucket_of(std::uint64_t h, unsigned shift) noexcept {
    return static_cast<std::size_t>(h >> shift);
  }
  // The 16 bits right below the bucket bits.
  LEVEE_DETAIL_ALWAYS_INLINE static std::uint16_t split_bits(std::uint64_t h, unsigned shift) noexcept {
    return static_cast<std::uint16_t>((h << (64 - shift)) >> 48);
  }
  ring_hash_options o_;
  std::uint64_t key_salt_;
};

static_assert(strategy<ring_hash>, "ring_hash must satisfy levee::strategy");

}  // namespace levee
