// levee/balance/least_loaded.hpp - full-scan least loaded, weight-aware.
#pragma once

#include <optional>

#include "strategy.hpp"

namespace levee {

// Scans every backend and picks the eligible one with the least
// (in_flight + 1) / weight: the backend that is least loaded relative to its
// weight after taking this job. Ties are broken uniformly (reservoir
// sampling), so idle equal backends share evenly. O(n) per pick by design.
class least_loaded {
 public:
  using table_type = no_table;
  [[nodiscard]] table_type build(const backend_snapshot&) const noexcept { return {}; }
  [[nodiscard]] std::optional<std::size_t> pick(const backend_snapshot& s, const table_type&,
                                                pick_context& ctx) {
    return detail::scan_least_loaded(s, ctx);
  }
};

static_assert(strategy<least_loaded>, "least_loaded must satisfy levee::strategy");

}  // namespace levee
