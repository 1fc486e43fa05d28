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
  std::chrono::nanoseconds decay = std::chrono::seconds(10);        // EWMA time constant
  std::chrono::nanoseconds default_latency = std::chrono::milliseconds(1);  // estimate without samples
  std::size_t choices = 2;
};

// P2C with cost = latency estimate x (in_flight + 1) / weight. The estimate is
// the backend's peak-EWMA (a slow sample counts at once, fast samples pull it
// down with time constant `decay`, and it decays towards zero while the
// backend gets no samples). levee::balancer feeds samples from lease::finish
// using this strategy's decay. Reads the clock once per pick. O(d) expected.
class peak_ewma {
 public:
  using table_type = detail::alias_table;

  explicit peak_ewma(peak_ewma_options o = {})
      : decay_ns_(static_cast<double>(o.decay.count())),
        default_ns_(static_cast<double>(o.default_latency.count())),
        d_(detail::check_choices(o.choices, "levee::peak_ewma")),
        decay_(o.decay) {
    if (o.decay <= std::chrono::nanoseconds::zero())
      throw std::invalid_argument("levee::peak_ewma: decay must be > 0, got " + std::to_string(o.decay.count()) + " ns");
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

  [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s, const table_type& t, pick_context& ctx) {
    if (s.empty() || t.size() != s.size()) return std::nullopt;
    std::array<std::size_t, detail::max_choices> c;
    const std::size_t k = detail::sample_distinct(s, t, ctx, d_, c);
    if (k == 0) return std::nullopt;
    if (k == 1) return c[0];
    const std::int64_t now = ctx.now();
    // cost() without its division: a / wa < b / wb  <=>  a x wb < b x wa.
    std::size_t best = c[0];
    double best_num = cost_numerator(s[best], now);
    for (std::size_t j = 1; j < k; ++j) {
      const double nj = cost_numerator(s[c[j]], now);
      if (nj * static_cast<double>(s[best].weight) < best_num * static_cast<double>(s[c[j]].weight))
        best = c[j], best_num = nj;
    }
    return best;
  }

 private:
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
