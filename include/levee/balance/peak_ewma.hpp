// levee/balance/peak_ewma.hpp - latency-aware P2C (Finagle / tower Peak-EWMA).
#pragma once

#include <array>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>

#include "power_of_two.hpp"
#include "strategy.hpp"

namespace levee {

struct peak_ewma_options {
  std::chrono::nanoseconds decay = std::chrono::seconds(10);                // EWMA time constant
  std::chrono::nanoseconds default_latency = std::chrono::milliseconds(1);  // estimate without samples
  std::size_t choices = 2;
};

// P2C with cost = latency estimate x (in_flight + 1) / weight. The estimate is
// the backend's peak-EWMA (a slow sample counts at once, fast samples pull it
// down with time constant `decay`, and it decays towards zero while the
// backend gets no samples). levee::balancer feeds samples from lease::finish
// using this strategy's decay. O(d) expected; for d = 2 without restrictions
// the same straight-line path as power_of_two, and the cost comparison needs
// no clock read and one exp_neg (see cheaper()).
class peak_ewma {
 public:
  using table_type = detail::alias_table;

  explicit peak_ewma(peak_ewma_options o = {})
      : decay_ns_(static_cast<double>(o.decay.count())),
        default_ns_(static_cast<double>(o.default_latency.count())),
        d_(detail::check_choices(o.choices, "levee::peak_ewma")),
        decay_(o.decay) {
    if (o.decay <= std::chrono::nanoseconds::zero())
      throw std::invalid_argument("levee::peak_ewma: decay must be > 0, got " +
                                  std::to_string(o.decay.count()) + " ns");
    if (o.default_latency < std::chrono::nanoseconds::zero())
      throw std::invalid_argument("levee::peak_ewma: default_latency must be >= 0, got " +
                                  std::to_string(o.default_latency.count()) + " ns");
  }

  [[nodiscard]] std::chrono::nanoseconds latency_decay() const noexcept { return decay_; }
  [[nodiscard]] table_type build(const backend_snapshot& s) const { return table_type(s); }

  // The cost the strategy minimises, exposed for tests and diagnostics.
  [[nodiscard]] double cost(const backend_entry& e, std::int64_t now_ns) const noexcept {
    return cost_numerator(e, now_ns) / static_cast<double>(e.weight);
  }

  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s,
                                                                           const table_type& t,
                                                                           pick_context& ctx) {
    if (s.empty() || t.size() != s.size()) return std::nullopt;
    if (d_ == 2 && t.open() && ctx.unrestricted() && s.size() >= 2) [[likely]] {
      std::size_t a, b;
      if (detail::sample_two_open(t, ctx.random(), a, b)) [[likely]]
        return cheaper(s, a, b, ctx);
    }
    return pick_general(s, t, ctx);
  }

 private:
  // Any d, restricted picks, skewed weights: out of line, so that pick()
  // stays small enough to inline.
  [[gnu::noinline]] std::optional<std::size_t> pick_general(const backend_snapshot& s, const table_type& t,
                                                            pick_context& ctx) {
    std::array<std::size_t, detail::max_choices> c;
    const std::size_t k = detail::sample_distinct(s, t, ctx, d_, c);
    if (k == 0) return std::nullopt;
    std::size_t best = c[0];
    for (std::size_t j = 1; j < k; ++j) best = cheaper(s, best, c[j], ctx);
    return best;
  }

  // b if its cost is strictly below a's, else a (ties go to the first drawn).
  // cost() without its division: ca / wa > cb / wb  <=>  ca x wb > cb x wa.
  // When neither backend has a sample both estimates are default_latency, a
  // common factor: the loads decide, in integers (as power_of_two), unless
  // default_latency is 0 (every cost 0: a tie). When both have samples the
  // clock is not needed: both estimates decay by exp(-(now - stamp) / decay),
  // so their ratio does not depend on `now` and only the older one is
  // scaled, by exp_neg(|stamp_a - stamp_b| / decay) (a cheap polynomial when
  // the stamps are close). Only a mixed pair reads the clock. The outcome is
  // selected with a mask (a coin flip to the branch predictor).
  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] std::size_t cheaper(const backend_snapshot& s, std::size_t a,
                                                               std::size_t b,
                                                               pick_context& ctx) const noexcept {
    const load_cell& ca = *s[a].load;
    const load_cell& cb = *s[b].load;
    const std::int64_t sa = ca.latency_stamp_ns.load(std::memory_order_acquire);
    const std::int64_t sb = cb.latency_stamp_ns.load(std::memory_order_acquire);
    // load() < 2^32 and weights < 2^32: (load + 1) x weight fits in 64 bits.
    const auto la = static_cast<std::uint64_t>(ca.load()) + 1, lb = static_cast<std::uint64_t>(cb.load()) + 1;
    const std::uint64_t wa = s[a].weight, wb = s[b].weight;
    if (sa == load_cell::no_sample && sb == load_cell::no_sample)
      return detail::select(default_ns_ > 0 && lb * wa < la * wb, b, a);
    double xa = static_cast<double>(la * wb), xb = static_cast<double>(lb * wa);
    if (sa != load_cell::no_sample && sb != load_cell::no_sample) [[likely]] {
      const std::int64_t d = sb - sa;  // > 0: a is older and has decayed more by `now`
      const double f = detail::exp_neg(static_cast<double>(d < 0 ? -d : d) / decay_ns_);
      xa *= ca.latency_ewma_ns.load(std::memory_order_relaxed) * (d > 0 ? f : 1.0);
      xb *= cb.latency_ewma_ns.load(std::memory_order_relaxed) * (d > 0 ? 1.0 : f);
    } else {
      const std::int64_t now = ctx.now();
      xa *= ca.latency_estimate(now, decay_ns_, default_ns_);
      xb *= cb.latency_estimate(now, decay_ns_, default_ns_);
    }
    return detail::select(xb < xa, b, a);
  }

  // latency estimate x (in_flight + 1); load() is never negative.
  [[nodiscard]] double cost_numerator(const backend_entry& e, std::int64_t now_ns) const noexcept {
    const double est = e.load->latency_estimate(now_ns, decay_ns_, default_ns_);
    return est * (static_cast<double>(e.load->load()) + 1.0);
  }

  double decay_ns_;
  double default_ns_;
  std::size_t d_;
  std::chrono::nanoseconds decay_;
};

static_assert(strategy<peak_ewma>, "peak_ewma must satisfy levee::strategy");

}  // namespace levee
