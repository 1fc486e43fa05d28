// levee/rate_gate.hpp - the rate-gate concept: what a consumer scheduler
// (levee::leveler) needs from the gate that paces its dispatches, so that a
// gate whose permits come from elsewhere (levee::redis::shared_rate_gate,
// leasing tokens from a fleet-wide GCRA) can stand in for the local
// levee::rate_limiter.
//
// The calls a scheduler makes, and what each must mean:
//
//   g.try_acquire(n, now) -> bool
//       Admits n permits at time `now` (a reading of the gate's clock, which
//       may be stale or out of order across threads) or admits nothing.
//       Non-blocking: never waits for a lock holder, a network or a refill.
//   g.available_at(n, now) -> time_point
//       The earliest time at which try_acquire(n, t) is expected to succeed,
//       given what the gate knows now; `now` or earlier when it would succeed
//       now. A gate that cannot predict (its permits arrive from elsewhere)
//       returns a time strictly after `now` when it has nothing to give, so a
//       caller that sleeps until the returned time and tries again polls at a
//       bounded pace instead of spinning. Callers pass n <= burst().
//       Admits nothing; such a gate may take the question as demand (start
//       fetching permits), since a scheduler asks before it tries.
//   g.burst() -> std::uint64_t
//       The largest number of permits the gate can admit at one instant
//       (used to predict dispatch times beyond the bucket).
//   g.get_rate() -> levee::rate
//       The sustained rate the gate admits (for predictions and metrics).
//
// Reconfiguration is optional: a gate that supports it also models
// reconfigurable_rate_gate (set_rate(rate), set_burst(std::uint64_t), both
// taking effect for future admissions and throwing std::invalid_argument on a
// bad value). A scheduler offers set_rate/set_burst only for such gates.
//
// Every member may be called concurrently from several threads.
#pragma once

#include <concepts>
#include <cstdint>
#include <levee/clock.hpp>
#include <levee/rate_limiter.hpp>

namespace levee {

template <class G>
concept rate_gate = requires {
  typename G::clock_type;
  typename G::time_point;
  requires clock<typename G::clock_type>;
  requires std::same_as<typename G::time_point, typename G::clock_type::time_point>;
}
&&requires(G& g, const G& cg, std::uint64_t n, typename G::time_point now) {
  { g.try_acquire(n, now) } -> std::same_as<bool>;
  { cg.available_at(n, now) } -> std::same_as<typename G::time_point>;
  { cg.burst() } -> std::convertible_to<std::uint64_t>;
  { cg.get_rate() } -> std::convertible_to<levee::rate>;
};

template <class G>
concept reconfigurable_rate_gate = rate_gate<G> && requires(G& g, levee::rate r, std::uint64_t b) {
  g.set_rate(r);
  g.set_burst(b);
};

static_assert(rate_gate<rate_limiter<>>, "levee::rate_limiter must model levee::rate_gate");
static_assert(reconfigurable_rate_gate<rate_limiter<>>,
              "levee::rate_limiter must model levee::reconfigurable_rate_gate");
static_assert(rate_gate<rate_limiter<manual_clock>>,
              "levee::rate_limiter<manual_clock> must model levee::rate_gate");

}  // namespace levee
