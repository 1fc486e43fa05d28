// levee/balance/bounded_load.hpp - consistent hashing with bounded loads
// (Mirrokni, Thorup, Zadimoghaddam 2018), as a decorator over any strategy.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "strategy.hpp"

namespace levee {

// Caps every backend's in-flight count: a backend is eligible only while
//   in_flight + 1 <= ceil(c x (total_in_flight + 1) x weight / total_weight),
// so after any pick no backend exceeds ceil(c x average load) (weighted).
// S proposes candidates in its own order (ring_hash walks clockwise, maglev
// along its table), so a key keeps its backend unless that one is full. If
// every backend is full (only possible through races or max_in_flight), the
// least loaded relative to weight is returned (Envoy's behaviour), never a loop.
// With an S that offers pick_admitting (ring_hash, maglev, jump_hash) the
// rule is inlined into S's pick, which keeps its O(1) fast path; with any
// other S it is pushed as a pick_filter. O(1) expected per pick plus S's cost.
// The bound is exact for serialised picks; concurrent picks may each see the
// same room, so it can be exceeded by (concurrent pickers - 1).
template <strategy S>
class bounded_load {
 public:
  static constexpr bool needs_total_load = true;
  static constexpr std::size_t filter_depth = strategy_traits<S>::filter_depth + 1;
  // S's table, c / total weight (the pick's one division, done in build())
  // and per backend the largest load that passes the bound with the total
  // taken as that load itself (see room): 8 bytes per backend.
  struct table_type {
    typename S::table_type inner;
    double c_per_weight = 0;
    std::vector<std::int64_t> self_max;
  };

  explicit bounded_load(S inner = S{}, double c = 1.25) : inner_(std::move(inner)), c_(c) {
    if (!(c >= 1.0) || !std::isfinite(c))
      throw std::invalid_argument("levee::bounded_load: factor c must be finite and >= 1, got " +
                                  std::to_string(c));
  }

  [[nodiscard]] S& inner() noexcept { return inner_; }
  [[nodiscard]] double factor() const noexcept { return c_; }

  template <class T = S>
  requires requires(const T& t) { t.latency_decay(); }
  [[nodiscard]] std::chrono::nanoseconds latency_decay() const { return inner_.latency_decay(); }

  // The cap of a backend of weight w when `total` jobs are in flight.
  [[nodiscard]] std::int64_t capacity(std::uint32_t w, std::int64_t total,
                                      std::uint64_t total_weight) const noexcept {
    const double per_weight = c_ * static_cast<double>(total + 1) / static_cast<double>(total_weight);
    return static_cast<std::int64_t>(std::ceil(per_weight * static_cast<double>(w) - 1e-9));
  }

  [[nodiscard]] table_type build(const backend_snapshot& s) const {
    table_type t{inner_.build(s), s.empty() ? 0.0 : c_ / static_cast<double>(s.total_weight()), {}};
    t.self_max.reserve(s.size());
    for (const auto& e : s) {
      // fits(m, w, m) holds for m up to some point and fails beyond it (or
      // holds for all m when c w / W >= 1): estimate, then settle exactly.
      const double kw = t.c_per_weight * e.weight;
      constexpr std::int64_t unbounded = std::int64_t{1} << 40;  // loads stay below 2^32
      std::int64_t m =
          kw >= 1.0 ? unbounded : static_cast<std::int64_t>(std::min(kw / (1.0 - kw), double(unbounded)));
      while (m >= 0 && !room::fits(t.c_per_weight, m, e.weight, m)) --m;
      while (m < unbounded && room::fits(t.c_per_weight, m + 1, e.weight, m + 1)) ++m;
      t.self_max.push_back(m);
    }
    return t;
  }

  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s,
                                                                           const table_type& t,
                                                                           pick_context& ctx) {
    // (An empty snapshot: S and the scan below both return nullopt.)
    std::int64_t total = -1;  // the real total, read at most once per pick (see room)
    const room r{t.c_per_weight, t.self_max.size() == s.size() ? t.self_max.data() : nullptr, &total};
    if constexpr (admitting_strategy<S>) {
      // The rule inlined into S's pick (no filter: S keeps its fast path).
      if (auto i = inner_.pick_admitting(s, t.inner, ctx, r)) return i;
    } else {
      pick_context::filter_scope scope(ctx, pick_filter{&admit, &r});
      if (auto i = inner_.pick(s, t.inner, ctx)) return i;
    }
    return detail::scan_least_loaded(s, ctx);
  }

 private:
  // Room for one more job on backend i: load + 1 <= capacity(w, total, W),
  // i.e. load + 1 <= ceil(y) with y = c (total + 1) w / W - 1e-9. For an
  // integer m, m <= ceil(y) <=> m - 1 < y, so this is load < y: no ceil()
  // (a libm call without SSE4.1) and, with c / W computed once per pick, no
  // division per candidate. The same bound as capacity(), exactly up to the
  // rounding of c / W (1 ulp; the 1e-9 slack is there for such rounding).
  //
  // The total is read lazily: the bound never decreases as the total grows
  // and the total is at least the candidate's own load, so a candidate that
  // fits with total = its own load fits with the real total too (that test
  // is one integer comparison with table_type::self_max). Only a candidate
  // that fails it makes the pick read the real total (O(n) when the snapshot
  // has no maintained counter), once per pick.
  // A small value (passed to S's out-of-line paths by copy), so that S's
  // inlined fast path keeps it in registers; only the cached total has an
  // address.
  struct room {
    double c_per_weight;           // c / total_weight
    const std::int64_t* self_max;  // table_type::self_max, null if it does not match the snapshot
    std::int64_t* total;           // the pick's total in flight, < 0 until read

    [[nodiscard]] static bool fits(double c_per_weight, std::int64_t load, std::uint32_t w,
                                   std::int64_t tot) noexcept {
      return static_cast<double>(load) <
             c_per_weight * static_cast<double>(tot + 1) * static_cast<double>(w) - 1e-9;
    }
    LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] bool operator()(const backend_snapshot& s, std::size_t i) const {
      const std::int64_t load = s[i].load->load();
      if (self_max != nullptr && load <= self_max[i]) [[likely]]
        return true;
      return admits_slow(s, i, load, c_per_weight, *total);
    }
    [[gnu::noinline]] static bool admits_slow(const backend_snapshot& s, std::size_t i, std::int64_t load,
                                              double c_per_weight, std::int64_t& total) {
      const std::uint32_t w = s[i].weight;
      if (total < 0) {
        if (fits(c_per_weight, load, w, load)) return true;
        total = s.total_in_flight();
      }
      return fits(c_per_weight, load, w, total);
    }
  };
  static bool admit(const void* p, const backend_snapshot& s, std::size_t i, pick_context&) {
    return (*static_cast<const room*>(p))(s, i);
  }

  S inner_;
  double c_;
};

}  // namespace levee
