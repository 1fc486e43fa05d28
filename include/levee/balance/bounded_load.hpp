// levee/balance/bounded_load.hpp - consistent hashing with bounded loads
// (Mirrokni, Thorup, Zadimoghaddam 2018), as a decorator over any strategy.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include "strategy.hpp"

namespace levee {

// Caps every backend's in-flight count: a backend is eligible only while
//   in_flight + 1 <= ceil(c x (total_in_flight + 1) x weight / total_weight),
// so after any pick no backend exceeds ceil(c x average load) (weighted).
// S proposes candidates in its own order (ring_hash walks clockwise, maglev
// along its table), so a key keeps its backend unless that one is full. If
// every backend is full (only possible through races or max_in_flight), the
// least loaded relative to weight is returned (Envoy's behaviour), never a loop.
// The bound is exact for serialised picks; concurrent picks may each see the
// same room, so it can be exceeded by (concurrent pickers - 1).
template <strategy S>
class bounded_load {
 public:
  static constexpr bool needs_total_load = true;
  static constexpr std::size_t filter_depth = strategy_traits<S>::filter_depth + 1;
  using table_type = typename S::table_type;

  explicit bounded_load(S inner = S{}, double c = 1.25) : inner_(std::move(inner)), c_(c) {
    if (!(c >= 1.0) || !std::isfinite(c))
      throw std::invalid_argument("levee::bounded_load: factor c must be finite and >= 1, got " + std::to_string(c));
  }

  [[nodiscard]] S& inner() noexcept { return inner_; }
  [[nodiscard]] double factor() const noexcept { return c_; }

  template <class T = S>
    requires requires(const T& t) { t.latency_decay(); }
  [[nodiscard]] std::chrono::nanoseconds latency_decay() const {
    return inner_.latency_decay();
  }

  // The cap of a backend of weight w when `total` jobs are in flight.
  [[nodiscard]] std::int64_t capacity(std::uint32_t w, std::int64_t total, std::uint64_t total_weight) const noexcept {
    const double per_weight = c_ * static_cast<double>(total + 1) / static_cast<double>(total_weight);
    return static_cast<std::int64_t>(std::ceil(per_weight * static_cast<double>(w) - 1e-9));
  }

  [[nodiscard]] table_type build(const backend_snapshot& s) const { return inner_.build(s); }

  [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s, const table_type& t, pick_context& ctx) {
    if (s.empty()) return std::nullopt;
    filter_data d{this, &s, -1, s.total_weight()};
    {
      pick_context::filter_scope scope(ctx, pick_filter{&admit, &d});
      if (auto r = inner_.pick(s, t, ctx)) return r;
    }
    return detail::scan_least_loaded(s, ctx);
  }

 private:
  // The total is read lazily: capacity() never decreases as the total grows
  // and the total is at least the candidate's own load, so a candidate that
  // fits with total = its own load fits with the real total too. Only a
  // candidate that fails that test makes the pick read the real total
  // (O(n) when the snapshot has no maintained counter), once per pick.
  struct filter_data {
    const bounded_load* self;
    const backend_snapshot* snap;
    mutable std::int64_t total;  // < 0: not read yet
    std::uint64_t total_weight;
  };
  static bool admit(const void* p, const backend_snapshot& s, std::size_t i, pick_context&) {
    const auto* d = static_cast<const filter_data*>(p);
    const std::int64_t load = s[i].load->load();
    if (load + 1 <= d->self->capacity(s[i].weight, d->total < 0 ? load : d->total, d->total_weight)) return true;
    if (d->total >= 0) return false;
    d->total = d->snap->total_in_flight();
    return load + 1 <= d->self->capacity(s[i].weight, d->total, d->total_weight);
  }

  S inner_;
  double c_;
};

}  // namespace levee
