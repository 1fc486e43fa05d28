// levee/balance/strategy.hpp - the strategy concept and the pick context.
//
// A strategy turns (snapshot, context) into the index of an eligible backend.
// It knows nothing of jobs. Work that depends only on the member list (hash
// rings, Maglev tables, alias tables, smooth-WRR sequences) happens in
// build(), once per published snapshot, never in pick().
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <type_traits>

#include "../detail/cache.hpp"
#include "../detail/hash.hpp"
#include "../detail/rng.hpp"
#include "backend_set.hpp"

namespace levee {

// The RNG a pick uses: seedable, platform-stable (see detail/rng.hpp).
using rng = detail::xoshiro256;

class pick_context;

// A decorator's extra eligibility rule, pushed on the context for the
// duration of its inner pick. `self` is the decorator's own data.
// (Deliberately without default member initialisers: pick_context keeps an
// array of these and should not pay for zeroing it on every pick.)
struct pick_filter {
  bool (*admit)(const void* self, const backend_snapshot& s, std::size_t i, pick_context& ctx);
  const void* self;
};

// Per-pick input. Cheap to build on the stack; never allocates.
class pick_context {
 public:
  static constexpr std::size_t max_filters = 8;

  explicit pick_context(rng& r) noexcept : rng_(&r) {}

  std::optional<std::uint64_t> key;   // affinity key for hashing strategies
  std::span<const backend_id> tried;  // backends this job already used: never picked again
  std::optional<std::uint32_t> tier;  // set by failover: only this tier is eligible
  bool ignore_health = false;         // set by health in panic: route over every backend
  bool last_resort = false;           // set by failover on its final pass over the tiers

 private:
  // Next to the flags above, so that one store clears them all.
  bool has_now_ = false;
  std::uint8_t nfilters_ = 0;

 public:
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] rng& random() noexcept { return *rng_; }

  // Time for time-dependent pieces (ns since the clock's epoch). Read from the
  // clock on first use and cached for the rest of the pick.
  [[nodiscard]] std::int64_t now() noexcept {
    if (!has_now_) {
      now_ = now_fn_ != nullptr ? now_fn_(clock_) : 0;
      has_now_ = true;
    }
    return now_;
  }
  void set_now(std::int64_t ns) noexcept {
    now_ = ns;
    has_now_ = true;
  }
  void set_clock(std::int64_t (*fn)(const void*), const void* clock) noexcept {
    now_fn_ = fn;
    clock_ = clock;
    has_now_ = false;
  }

  // True if backend i may be picked now: marked healthy (unless in panic), in
  // the requested tier, below its max_in_flight, not already tried, and
  // admitted by every active decorator filter.
  // The entry's own marks are checked inline; the loops over `tried` and the
  // filters live out of line (eligible_slow), so that this stays small
  // enough to inline into every strategy's hot path.
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] bool eligible(const backend_snapshot& s, std::size_t i) {
    const backend_entry& e = s[i];
    if ((!e.healthy && !ignore_health) || (tier && e.tier != *tier) || e.at_capacity()) return false;
    if (tried.empty() && nfilters_ == 0) [[likely]]
      return true;
    return eligible_slow(s, i);
  }

  // True when this pick carries no restriction of its own: no tier, nothing
  // tried, no decorator filter. If also every backend of the snapshot is open
  // (detail::all_open: healthy, no max_in_flight), every backend is eligible
  // and a strategy may skip eligible() altogether.
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] bool unrestricted() const noexcept {
    return !tier && tried.empty() && nfilters_ == 0;
  }

  // RAII: pushes a filter, pops it on destruction. Depth is checked at
  // compile time through strategy_traits::filter_depth.
  class filter_scope {
   public:
    filter_scope(pick_context& c, pick_filter f) noexcept : c_(c) {
      c_.filters_[c_.nfilters_++] = f;
    }  // depth: see strategy_traits
    filter_scope(const filter_scope&) = delete;
    filter_scope& operator=(const filter_scope&) = delete;
    ~filter_scope() { --c_.nfilters_; }

   private:
    pick_context& c_;
  };

 private:
  [[gnu::noinline]] bool eligible_slow(const backend_snapshot& s, std::size_t i) {
    const backend_id id = s[i].id;
    for (backend_id t : tried)
      if (t == id) return false;
    for (std::size_t k = 0; k < nfilters_; ++k)
      if (!filters_[k].admit(filters_[k].self, s, i, *this)) return false;
    return true;
  }

  rng* rng_;
  std::int64_t (*now_fn_)(const void*) = nullptr;
  // Initialised although only read after set_clock() / set_now(): GCC 12
  // cannot see that and warns (-Wmaybe-uninitialized) once pick() inlines.
  const void* clock_ = nullptr;
  std::int64_t now_ = 0;
  std::array<pick_filter, max_filters> filters_;  // [0, nfilters_) are set
};

// The strategy concept. pick() is called concurrently from many threads on
// one instance (mutable state must be atomic); build() runs on the thread
// that changes the set, while picks on older snapshots may still run.
// pick() returns nullopt only when no eligible backend exists.
template <class S>
concept strategy = std::move_constructible<S> &&
    requires(S& s, const S& cs, const backend_snapshot& snap, const typename S::table_type& t,
             pick_context& ctx) {
  typename S::table_type;
  { cs.build(snap) } -> std::same_as<typename S::table_type>;
  { s.pick(snap, t, ctx) } -> std::same_as<std::optional<std::size_t>>;
};

namespace detail {
// The extra admission rule of pick_admitting() when there is none.
struct admit_all {
  constexpr bool operator()(const backend_snapshot&, std::size_t) const noexcept { return true; }
};
}  // namespace detail

// A strategy may also offer pick() with one more eligibility rule known at
// compile time:
//   template <class Admit> std::optional<std::size_t> pick_admitting(snap, table, ctx, Admit admit)
// admit(snap, i) is applied after ctx.eligible(snap, i), wherever that is, as
// a pick_filter would be, but inlined: bounded_load uses it (when present)
// instead of pushing a filter, which costs the unrestricted fast path and
// two indirect calls per candidate.
template <class S>
concept admitting_strategy = strategy<S> &&
    requires(S& s, const backend_snapshot& snap, const typename S::table_type& t, pick_context& ctx) {
  { s.pick_admitting(snap, t, ctx, detail::admit_all{}) } -> std::same_as<std::optional<std::size_t>>;
};

// What a strategy may declare (all optional):
//   static constexpr bool needs_total_load   - wants backend_snapshot::total_in_flight() in O(1)
//   static constexpr bool reads_load         - false if pick() never reads in-flight counts
//   static constexpr std::size_t filter_depth - filters it pushes, including inner strategies
//   std::chrono::nanoseconds latency_decay() const - decay of the latency EWMA it reads
template <class S>
struct strategy_traits {
  static constexpr bool needs_total_load = [] {
    if constexpr (requires { S::needs_total_load; })
      return static_cast<bool>(S::needs_total_load);
    else
      return false;
  }();
  // Whether picks read backends' in-flight counts. Conservative default
  // true; strategies that never do declare reads_load = false, which lets
  // balancer::try_pick_keeping hand a caller's held lease back without
  // touching the count (its own slot cannot bias a pick that ignores loads).
  static constexpr bool reads_load = [] {
    if constexpr (requires { S::reads_load; })
      return static_cast<bool>(S::reads_load);
    else
      return true;
  }();
  static constexpr std::size_t filter_depth = [] {
    if constexpr (requires { S::filter_depth; })
      return static_cast<std::size_t>(S::filter_depth);
    else
      return std::size_t{0};
  }();
  static_assert(filter_depth <= pick_context::max_filters,
                "levee: too many nested decorators for pick_context::max_filters");
};

struct no_table {};

namespace detail {

// A seed that differs per call and per process (for random starts). Uses
// std::random_device once per process, then a counter through SplitMix64.
inline std::uint64_t fresh_seed() {
  static std::atomic<std::uint64_t> state{[] {
    std::random_device rd;
    return (static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^
           static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }()};
  std::uint64_t s = state.fetch_add(0x9e3779b97f4a7c15ULL, std::memory_order_relaxed);
  return splitmix64_next(s);
}

// Per-thread generator for callers that do not bring one.
inline rng& thread_rng() {
  thread_local rng r{fresh_seed()};
  return r;
}

// The calling thread's stripe in [0, stripes): threads are numbered in order
// of first use, so up to `stripes` threads never share one.
inline constexpr std::size_t cursor_stripes = 16;
LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] inline std::size_t thread_stripe() noexcept {
  static std::atomic<std::size_t> next{0};
  thread_local const std::size_t mine = next.fetch_add(1, std::memory_order_relaxed) % cursor_stripes;
  return mine;
}

// Per-thread-stripe positions for round-robin style strategies: each thread
// walks its own cursor with a relaxed load and store (no read-modify-write,
// no shared cache line), as Envoy's worker-local round robin does. Threads
// that share a stripe may occasionally take the same turn; that is harmless.
class striped_cursor {
 public:
  explicit striped_cursor(std::uint64_t seed) noexcept {
    for (std::size_t i = 0; i < cursor_stripes; ++i)
      slots_[i].pos.store(hash64(i, seed), std::memory_order_relaxed);
  }
  striped_cursor(const striped_cursor& o) noexcept {
    for (std::size_t i = 0; i < cursor_stripes; ++i)
      slots_[i].pos.store(o.slots_[i].pos.load(std::memory_order_relaxed), std::memory_order_relaxed);
  }
  striped_cursor& operator=(const striped_cursor&) = delete;

  // Returns this thread's next position in [0, n) and advances it (n > 0).
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::size_t next(std::size_t n) noexcept {
    auto& p = slots_[thread_stripe()].pos;
    std::uint64_t cur = p.load(std::memory_order_relaxed);
    if (cur >= n) cur %= n;  // first use, or the set shrank
    p.store(cur + 1 == n ? 0 : cur + 1, std::memory_order_relaxed);
    return static_cast<std::size_t>(cur);
  }
  // Sets every stripe to `pos` (deterministic sequences in tests).
  void reset(std::uint64_t pos) noexcept {
    for (auto& s : slots_) s.pos.store(pos, std::memory_order_relaxed);
  }

 private:
  struct alignas(cache_line_size) slot {
    std::atomic<std::uint64_t> pos{0};
  };
  std::array<slot, cursor_stripes> slots_;
};

// True if no backend of `s` can ever be ineligible by its own marks: all
// marked healthy and none with a max_in_flight. Snapshots are immutable, so
// strategies compute this once in build() and, for unrestricted picks
// (pick_context::unrestricted), skip eligible() and the entry loads it costs.
[[nodiscard]] inline bool all_open(const backend_snapshot& s) noexcept {
  for (const auto& e : s)
    if (!e.healthy || e.max_in_flight != 0) return false;
  return true;
}

// c ? a : b without a branch. For conditions that are coin flips (alias
// draws, load comparisons) a branch is mispredicted about half the time,
// ~15-20 cycles each, more than the rest of a pick; compilers turn a plain
// ?: on such values into a branch often enough that the mask is spelled out.
[[nodiscard]] constexpr std::size_t select(bool c, std::size_t a, std::size_t b) noexcept {
  const std::size_t mask = std::size_t{0} - static_cast<std::size_t>(c);
  return b ^ ((a ^ b) & mask);
}

// Sign of (a_load + plus) / a_w - (b_load + plus) / b_w, exactly (128-bit
// cross products).
[[nodiscard]] inline int compare_load(std::int64_t a_load, std::uint32_t a_w, std::int64_t b_load,
                                      std::uint32_t b_w, std::uint64_t plus = 1) noexcept {
  const auto a1 = static_cast<std::uint64_t>(a_load < 0 ? 0 : a_load) + plus;
  const auto b1 = static_cast<std::uint64_t>(b_load < 0 ? 0 : b_load) + plus;
  const std::uint64_t l_hi = mul_high64(a1, b_w), l_lo = a1 * b_w;
  const std::uint64_t r_hi = mul_high64(b1, a_w), r_lo = b1 * a_w;
  if (l_hi != r_hi) return l_hi < r_hi ? -1 : 1;
  if (l_lo != r_lo) return l_lo < r_lo ? -1 : 1;
  return 0;
}

// O(n) fallback: weighted random choice among eligible (and admitted, see
// pick_admitting) backends (one pass, weighted reservoir sampling).
template <class Admit = admit_all>
[[nodiscard]] std::optional<std::size_t> scan_weighted_random(const backend_snapshot& s, pick_context& ctx,
                                                              Admit admit = {}) {
  std::optional<std::size_t> best;
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (!ctx.eligible(s, i) || !admit(s, i)) continue;
    total += s[i].weight;
    if (ctx.random().below(total) < s[i].weight) best = i;
  }
  return best;
}

// O(n): the eligible backend with the least (in_flight + 1) / weight, ties
// broken uniformly (reservoir sampling over the tied set).
[[nodiscard]] inline std::optional<std::size_t> scan_least_loaded(const backend_snapshot& s,
                                                                  pick_context& ctx) {
  std::optional<std::size_t> best;
  std::int64_t best_load = 0;
  std::uint64_t ties = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const std::int64_t l = s[i].load->load();
    if (best) {
      const int c = compare_load(l, s[i].weight, best_load, s[*best].weight);
      if (c > 0) continue;
      if (c == 0) {
        if (!ctx.eligible(s, i)) continue;
        if (ctx.random().below(++ties) == 0) best = i;
        continue;
      }
    }
    if (!ctx.eligible(s, i)) continue;
    best = i;
    best_load = l;
    ties = 1;
  }
  return best;
}

}  // namespace detail
}  // namespace levee
