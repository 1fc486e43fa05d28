// levee/balance/slow_start.hpp - ramp a new backend's effective weight, as a
// decorator over any strategy.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>

#include "strategy.hpp"

namespace levee {

struct slow_start_options {
  std::chrono::nanoseconds window = std::chrono::seconds(30);
  double aggression = 1.0;  // > 0; the ramp is (age / window)^(1 / aggression)
  double min_weight = 0.1;  // in [0, 1]: floor of the ramp
};

// Envoy-style slow start for every strategy: a backend whose origin (added,
// marked healthy again, or back from ejection) is younger than `window` has
// effective weight w x f(age), f(age) = max((age/window)^(1/aggression),
// min_weight). Implemented by admission: S proposes candidates and a ramping
// one is accepted with probability f(age) / f(age of the oldest backend), so
// a set that started together is not slowed at all, random-type strategies
// get shares exactly proportional to the effective weights, and hashing
// strategies move the rejected share to their next candidate. If every
// candidate is rejected, the pick is repeated without the ramp (a ramp never
// makes a pick fail). Reads the clock once per pick while enabled.
template <strategy S>
class slow_start {
 public:
  static constexpr bool needs_total_load = strategy_traits<S>::needs_total_load;
  static constexpr std::size_t filter_depth = strategy_traits<S>::filter_depth + 1;
  static constexpr bool reads_load = strategy_traits<S>::reads_load;

  struct table_type {
    typename S::table_type inner;
    std::int64_t oldest_since = std::numeric_limits<std::int64_t>::max();
  };

  explicit slow_start(S inner = S{}, slow_start_options o = {}) : inner_(std::move(inner)), o_(o) {
    if (o.window < std::chrono::nanoseconds::zero())
      throw std::invalid_argument("levee::slow_start: window must be >= 0, got " +
                                  std::to_string(o.window.count()) + " ns");
    if (!(o.aggression > 0) || !std::isfinite(o.aggression))
      throw std::invalid_argument("levee::slow_start: aggression must be > 0, got " +
                                  std::to_string(o.aggression));
    if (!(o.min_weight >= 0 && o.min_weight <= 1))
      throw std::invalid_argument("levee::slow_start: min_weight must be in [0, 1], got " +
                                  std::to_string(o.min_weight));
  }

  [[nodiscard]] S& inner() noexcept { return inner_; }
  [[nodiscard]] const slow_start_options& options() const noexcept { return o_; }

  template <class T = S>
  requires requires(const T& t) { t.latency_decay(); }
  [[nodiscard]] std::chrono::nanoseconds latency_decay() const { return inner_.latency_decay(); }

  // The ramp factor f(age) in [min_weight, 1].
  [[nodiscard]] double factor(std::int64_t age_ns) const noexcept {
    const auto w = o_.window.count();
    if (w <= 0 || age_ns >= w) return 1.0;
    const double x = age_ns <= 0 ? 0.0 : static_cast<double>(age_ns) / static_cast<double>(w);
    const double v = o_.aggression == 1.0 ? x : std::pow(x, 1.0 / o_.aggression);
    return std::max(v, o_.min_weight);
  }

  [[nodiscard]] table_type build(const backend_snapshot& s) const {
    table_type t{inner_.build(s)};
    for (const auto& e : s) t.oldest_since = std::min(t.oldest_since, e.since_ns);
    return t;
  }

  // Disabled (window 0, the default): a tail call; the ramp is out of line.
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s,
                                                                           const table_type& t,
                                                                           pick_context& ctx) {
    if (o_.window.count() <= 0 || s.empty()) [[likely]]
      return inner_.pick(s, t.inner, ctx);
    return pick_ramped(s, t, ctx);
  }

 private:
  [[gnu::noinline]] std::optional<std::size_t> pick_ramped(const backend_snapshot& s, const table_type& t,
                                                           pick_context& ctx) {
    const std::int64_t now = ctx.now();
    filter_data data{this, now, factor(now - t.oldest_since)};
    {
      pick_context::filter_scope scope(ctx, pick_filter{&admit, &data});
      if (auto r = inner_.pick(s, t.inner, ctx)) return r;
    }
    return inner_.pick(s, t.inner, ctx);
  }

  struct filter_data {
    const slow_start* self;
    std::int64_t now;
    double oldest_factor;
  };
  static bool admit(const void* p, const backend_snapshot& s, std::size_t i, pick_context& ctx) {
    const auto* d = static_cast<const filter_data*>(p);
    const backend_entry& e = s[i];
    const std::int64_t recovered = e.load->recovered_at_ns.load(std::memory_order_relaxed);
    const std::int64_t origin = std::max(e.since_ns, recovered);
    const std::int64_t age = d->now - origin;
    if (age >= d->self->o_.window.count()) return true;
    const double f = d->self->factor(age) / d->oldest_factor;
    return f >= 1.0 || ctx.random().unit() < f;
  }

  S inner_;
  slow_start_options o_;
};

}  // namespace levee
