// levee/balance/health.hpp - passive outlier ejection and panic, as a
// decorator over any strategy.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "strategy.hpp"

namespace levee {

// Health policy of a balancer. Outlier detection (Envoy semantics): after
// `consecutive_failures` failures in a row a backend is ejected for
// base_ejection x (number of its ejections so far), capped at max_ejection;
// at most max(1, floor(max_ejected_share x N)) backends are ejected at once.
// Panic: when the healthy share of a tier drops below panic_threshold (but is
// not zero), health marks and ejections are ignored and picks go over every
// backend of that tier rather than overload the few healthy ones. A tier with
// no healthy backend is skipped in favour of the next tier (failover); only if
// no tier has a healthy backend does the lowest tier panic.
// Slow start: a backend added, marked healthy again or back from ejection
// ramps its effective weight over slow_start_window (see slow_start.hpp).
struct health_options {
  std::uint32_t consecutive_failures = 5;  // 0 disables outlier ejection
  std::chrono::nanoseconds base_ejection = std::chrono::seconds(30);
  std::chrono::nanoseconds max_ejection = std::chrono::seconds(300);
  double max_ejected_share = 0.1;  // in [0, 1]; 0 disables ejection
  double panic_threshold = 0.5;    // in [0, 1]; 0 disables panic
  std::chrono::nanoseconds slow_start_window = std::chrono::nanoseconds::zero();  // 0 disables
  double slow_start_aggression = 1.0;                                             // > 0; 1 = linear ramp
  double slow_start_min_weight = 0.1;  // in [0, 1]: floor of the ramp

  // Everything off: no ejection, no panic, no slow start. set_healthy(false)
  // still removes a backend from rotation.
  [[nodiscard]] static health_options disabled() noexcept {
    health_options h;
    h.consecutive_failures = 0;
    h.max_ejected_share = 0;
    h.panic_threshold = 0;
    h.slow_start_window = std::chrono::nanoseconds::zero();
    return h;
  }

  // Throws std::invalid_argument naming `fn` and the bad value.
  void validate(const char* fn) const {
    auto bad = [&](const std::string& what) { throw std::invalid_argument(std::string(fn) + ": " + what); };
    if (base_ejection < std::chrono::nanoseconds::zero())
      bad("base_ejection < 0: " + std::to_string(base_ejection.count()) + " ns");
    if (max_ejection < base_ejection)
      bad("max_ejection < base_ejection: " + std::to_string(max_ejection.count()) + " ns");
    if (!(max_ejected_share >= 0 && max_ejected_share <= 1))
      bad("max_ejected_share not in [0, 1]: " + std::to_string(max_ejected_share));
    if (!(panic_threshold >= 0 && panic_threshold <= 1))
      bad("panic_threshold not in [0, 1]: " + std::to_string(panic_threshold));
    if (slow_start_window < std::chrono::nanoseconds::zero())
      bad("slow_start_window < 0: " + std::to_string(slow_start_window.count()) + " ns");
    if (!(slow_start_aggression > 0) || !std::isfinite(slow_start_aggression))
      bad("slow_start_aggression must be > 0: " + std::to_string(slow_start_aggression));
    if (!(slow_start_min_weight >= 0 && slow_start_min_weight <= 1))
      bad("slow_start_min_weight not in [0, 1]: " + std::to_string(slow_start_min_weight));
  }
};

// The shared, thread-safe state of outlier ejection. Ejection state itself
// lives in each backend's load_cell (so it survives membership changes);
// this object counts ejections, enforces the share cap and remembers the
// earliest expiry so that expired ejections are swept without a scan per pick.
class outlier_detector {
 public:
  explicit outlier_detector(health_options o) : o_(o) { o_.validate("levee::outlier_detector"); }

  [[nodiscard]] const health_options& options() const noexcept { return o_; }
  [[nodiscard]] std::int64_t ejected() const noexcept { return ejected_.load(std::memory_order_acquire); }
  [[nodiscard]] std::uint64_t epoch() const noexcept { return epoch_.load(std::memory_order_acquire); }
  [[nodiscard]] std::int64_t next_expiry() const noexcept {
    return next_expiry_.load(std::memory_order_acquire);
  }
  void set_members(std::size_t n) noexcept {
    members_.store(static_cast<std::int64_t>(n), std::memory_order_relaxed);
  }

  // Feeds one outcome. Lock-free. A success clears the failure streak; the
  // k-th consecutive failure ejects the backend if the share cap allows.
  //
  // Memory ordering: the ejection is published by a CAS on eject_state
  // (acq_rel) before the epoch bump (acq_rel); a pick that sees the new epoch
  // also sees the ejection.
  void record(load_cell& c, outcome o, std::int64_t now_ns) noexcept {
    if (o == outcome::success) {
      // Load first: a healthy backend's streak is already 0, and a store
      // would take the cache line away from the other threads finishing on it.
      if (c.consecutive_failures.load(std::memory_order_relaxed) != 0)
        c.consecutive_failures.store(0, std::memory_order_relaxed);
      if (c.ejections.load(std::memory_order_relaxed) != 0) {
        const std::int64_t rec = c.recovered_at_ns.load(std::memory_order_relaxed);
        if (rec != load_cell::no_sample && now_ns - rec >= o_.max_ejection.count())
          c.ejections.store(0, std::memory_order_relaxed);
      }
      return;
    }
    if (o_.consecutive_failures == 0 || o_.max_ejected_share <= 0) return;
    const std::uint32_t streak = c.consecutive_failures.fetch_add(1, std::memory_order_relaxed) + 1;
    if (streak < o_.consecutive_failures) return;
    if (c.eject_state.load(std::memory_order_acquire) != 0) return;  // already ejected, or removed
    const auto members = members_.load(std::memory_order_relaxed);
    const auto allowed = std::max<std::int64_t>(
        1, static_cast<std::int64_t>(std::floor(o_.max_ejected_share * static_cast<double>(members))));
    if (ejected_.fetch_add(1, std::memory_order_acq_rel) >= allowed) {
      ejected_.fetch_sub(1, std::memory_order_acq_rel);
      return;
    }
    const std::uint32_t mult = c.ejections.fetch_add(1, std::memory_order_relaxed) + 1;
    const double want = static_cast<double>(o_.base_ejection.count()) * mult;
    const std::int64_t dur = want >= static_cast<double>(o_.max_ejection.count())
                                 ? o_.max_ejection.count()
                                 : static_cast<std::int64_t>(want);
    std::int64_t until = now_ns + std::max<std::int64_t>(dur, 1);
    if (until == 0 || until == load_cell::removed) ++until;
    std::int64_t expected = 0;
    if (!c.eject_state.compare_exchange_strong(expected, until, std::memory_order_acq_rel)) {
      c.ejections.fetch_sub(1, std::memory_order_relaxed);
      ejected_.fetch_sub(1, std::memory_order_acq_rel);
      return;
    }
    c.consecutive_failures.store(0, std::memory_order_relaxed);
    lower_expiry(until);
    epoch_.fetch_add(1, std::memory_order_acq_rel);
  }

  // The backend left the set: it can never be ejected again, and an active
  // ejection stops counting against the cap.
  void forget(load_cell& c) noexcept {
    const std::int64_t prev = c.eject_state.exchange(load_cell::removed, std::memory_order_acq_rel);
    if (prev != 0 && prev != load_cell::removed) {
      ejected_.fetch_sub(1, std::memory_order_acq_rel);
      epoch_.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  // False while the backend is ejected; ends an expired ejection (once).
  [[nodiscard]] bool admit(load_cell& c, std::int64_t now_ns) noexcept {
    const std::int64_t s = c.eject_state.load(std::memory_order_acquire);
    if (s == 0 || s == load_cell::removed) return true;
    if (now_ns < s) return false;
    end_ejection(c, s, now_ns);
    return true;
  }

  // Ends every expired ejection in `s` and recomputes the earliest expiry.
  void sweep(const backend_snapshot& s, std::int64_t now_ns) noexcept {
    // Reset first, then lower per remaining ejection: an ejection published
    // concurrently either lowers the hint after this reset or is seen by the scan.
    next_expiry_.store(std::numeric_limits<std::int64_t>::max(), std::memory_order_seq_cst);
    for (const auto& e : s) {
      const std::int64_t st = e.load->eject_state.load(std::memory_order_seq_cst);
      if (st == 0 || st == load_cell::removed) continue;
      if (now_ns >= st)
        end_ejection(*e.load, st, now_ns);
      else
        lower_expiry(st);
    }
  }

 private:
  void end_ejection(load_cell& c, std::int64_t seen, std::int64_t now_ns) noexcept {
    if (c.eject_state.compare_exchange_strong(seen, 0, std::memory_order_acq_rel)) {
      c.recovered_at_ns.store(now_ns, std::memory_order_relaxed);
      ejected_.fetch_sub(1, std::memory_order_acq_rel);
      epoch_.fetch_add(1, std::memory_order_acq_rel);
    }
  }
  void lower_expiry(std::int64_t t) noexcept {
    std::int64_t cur = next_expiry_.load(std::memory_order_seq_cst);
    while (t < cur && !next_expiry_.compare_exchange_weak(cur, t, std::memory_order_seq_cst)) {
    }
  }

  health_options o_;
  std::atomic<std::int64_t> ejected_{0};
  std::atomic<std::int64_t> members_{0};
  std::atomic<std::uint64_t> epoch_{0};
  std::atomic<std::int64_t> next_expiry_{std::numeric_limits<std::int64_t>::max()};
};

// Decorator: skips ejected backends and applies the panic threshold, then
// lets S choose. Without ejections and with every backend marked healthy it
// costs two loads. Feed outcomes with record() (levee::balancer does this
// from lease::finish). Under failover<health<S>>, panic is judged per tier
// (see health_options); used alone, over the whole set.
template <strategy S>
class health {
 public:
  static constexpr bool needs_total_load = strategy_traits<S>::needs_total_load;
  static constexpr std::size_t filter_depth = strategy_traits<S>::filter_depth + 1;
  static constexpr bool reads_load = strategy_traits<S>::reads_load;

  struct table_type {
    typename S::table_type inner;
    std::vector<std::uint32_t> tiers;  // distinct tiers, sorted
    std::size_t marked_healthy = 0;
    std::unique_ptr<std::atomic<std::uint64_t>[]> panic_cache;  // slot 0: no tier; 1 + i: tiers[i]
  };

  explicit health(S inner = S{}, health_options o = {})
      : inner_(std::move(inner)), det_(std::make_shared<outlier_detector>(o)) {}

  [[nodiscard]] S& inner() noexcept { return inner_; }
  [[nodiscard]] const std::shared_ptr<outlier_detector>& detector() const noexcept { return det_; }
  [[nodiscard]] const health_options& options() const noexcept { return det_->options(); }

  template <class T = S>
  requires requires(const T& t) { t.latency_decay(); }
  [[nodiscard]] std::chrono::nanoseconds latency_decay() const { return inner_.latency_decay(); }

  void record(load_cell& c, outcome o, std::int64_t now_ns) noexcept { det_->record(c, o, now_ns); }

  [[nodiscard]] table_type build(const backend_snapshot& s) const {
    table_type t{inner_.build(s), {}, 0, nullptr};
    for (const auto& e : s) {
      t.tiers.push_back(e.tier);
      if (e.healthy) ++t.marked_healthy;
    }
    std::sort(t.tiers.begin(), t.tiers.end());
    t.tiers.erase(std::unique(t.tiers.begin(), t.tiers.end()), t.tiers.end());
    t.panic_cache = std::make_unique<std::atomic<std::uint64_t>[]>(t.tiers.size() + 1);
    for (std::size_t i = 0; i <= t.tiers.size(); ++i) t.panic_cache[i].store(0, std::memory_order_relaxed);
    det_->set_members(s.size());
    return t;
  }

  // Nothing ejected and every backend marked healthy: a tail call (the rest
  // is out of line so that this path never copies the result through the stack).
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s,
                                                                           const table_type& t,
                                                                           pick_context& ctx) {
    if (det_->ejected() == 0 && t.marked_healthy == s.size()) [[likely]]
      return inner_.pick(s, t.inner, ctx);
    return pick_unhealthy(s, t, ctx);
  }

 private:
  [[gnu::noinline]] std::optional<std::size_t> pick_unhealthy(const backend_snapshot& s, const table_type& t,
                                                              pick_context& ctx) {
    outlier_detector& det = *det_;
    std::int64_t ejected = det.ejected();
    if (ejected == 0 && t.marked_healthy == s.size()) return inner_.pick(s, t.inner, ctx);
    const std::int64_t now = ctx.now();
    if (ejected > 0 && now >= det.next_expiry()) {
      det.sweep(s, now);
      ejected = det.ejected();
    }
    const bool can_panic = det.options().panic_threshold > 0;
    switch (scope_state(s, t, ctx, now)) {
      case state::none_healthy:
        // Let an outer failover try the next tier first.
        if (ctx.tier && !ctx.last_resort) return std::nullopt;
        if (!can_panic) return std::nullopt;
        [[fallthrough]];
      case state::panic: {
        if (!can_panic) break;
        const bool saved = ctx.ignore_health;
        ctx.ignore_health = true;
        auto r = inner_.pick(s, t.inner, ctx);
        ctx.ignore_health = saved;
        return r;
      }
      case state::normal:
        break;
    }
    if (ejected == 0) return inner_.pick(s, t.inner, ctx);
    filter_data data{&det, now};
    pick_context::filter_scope scope(ctx, pick_filter{&admit, &data});
    return inner_.pick(s, t.inner, ctx);
  }

  struct filter_data {
    outlier_detector* det;
    std::int64_t now;
  };
  static bool admit(const void* self, const backend_snapshot& s, std::size_t i, pick_context&) {
    const auto* d = static_cast<const filter_data*>(self);
    return d->det->admit(*s[i].load, d->now);
  }

  enum class state : std::uint64_t { normal = 0, panic = 1, none_healthy = 2 };

  // Health of the candidates (the tier being tried, or all): cached per tier
  // until the next ejection change (the table itself changes with the set).
  state scope_state(const backend_snapshot& s, const table_type& t, const pick_context& ctx,
                    std::int64_t now) const {
    std::size_t slot = 0;
    if (ctx.tier) {
      auto it = std::lower_bound(t.tiers.begin(), t.tiers.end(), *ctx.tier);
      if (it != t.tiers.end() && *it == *ctx.tier) slot = 1 + static_cast<std::size_t>(it - t.tiers.begin());
    }
    const std::uint64_t epoch = det_->epoch();
    const std::uint64_t cached = t.panic_cache[slot].load(std::memory_order_acquire);
    if ((cached >> 2) == epoch + 1) return static_cast<state>(cached & 3);
    std::size_t total = 0, healthy = 0;
    for (const auto& e : s) {
      if (ctx.tier && e.tier != *ctx.tier) continue;
      ++total;
      if (e.healthy && !e.load->ejected_at(now)) ++healthy;
    }
    state st = state::normal;
    if (total > 0 && healthy == 0)
      st = state::none_healthy;
    else if (static_cast<double>(healthy) < det_->options().panic_threshold * static_cast<double>(total))
      st = state::panic;
    t.panic_cache[slot].store(((epoch + 1) << 2) | static_cast<std::uint64_t>(st), std::memory_order_release);
    return st;
  }

  S inner_;
  std::shared_ptr<outlier_detector> det_;
};

}  // namespace levee
