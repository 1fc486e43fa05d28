// levee/leveler/simulation.hpp - simulation mode (options.workers == 0):
// the dispatch step of worker.hpp driven from the calling thread, with the
// clock moved (manual_clock) or slept (real clocks) to each next event.
// With manual_clock a whole spike-and-drain scenario runs exactly, in
// milliseconds of real time, and the same scenario and seed give the same
// dispatch sequence.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <levee/clock.hpp>
#include <levee/leveler/worker.hpp>
#include <optional>
#include <stdexcept>
#include <type_traits>

namespace levee::detail {

// Dispatches everything that can be dispatched at the clock's current time
// and returns how many jobs reached dispatch (ran, or expired).
// Events posted for the current time (post_at) run first, and again when
// the step itself posted some for now.
template <class Core>
std::size_t sim_step(Core& core) {
  std::size_t n = 0;
  while (!core.stopping.load(std::memory_order_acquire)) {
    const auto now = core.clock.now();
    (void)core.posted.run_due(to_ns(now));
    const auto r = core.try_progress(core.sim, now);
    if (r.kind != progress::progressed) {
      if (core.posted.next_ns() <= to_ns(now)) continue;
      core.sim_wait = r;
      break;
    }
    ++n;
  }
  return n;
}

// The time of the next event after the last step: a rate token for the job
// at the head, the next retry becoming due when nothing else waits, an
// attempt timing out, or an event posted with post_at; nullopt if there is
// none (idle, or waiting for a backend or a permit that nothing timed frees).
template <class Core>
[[nodiscard]] auto sim_next_event(const Core& core) -> std::optional<typename Core::time_point> {
  using time_point = typename Core::time_point;
  const auto& w = core.sim_wait;
  time_point t = w.kind == progress::wait_rate || w.kind == progress::idle ? w.until : time_point::max();
  t = std::min(t, core.next_attempt_timeout());
  if (const std::int64_t p = core.posted.next_ns(); p != sim_events::none)
    t = std::min(t, from_ns<time_point>(p));
  if (t == time_point::max()) return std::nullopt;
  return t;
}

// Steps and advances time (or sleeps) to each next event until no job is
// outstanding (until_drained) or the next event lies after `until`; adds the
// jobs dispatched to n and returns whether none is outstanding. Throws
// std::logic_error when draining and jobs are outstanding that no event can
// ever move.
template <class Core>
bool simulate(Core& core, typename Core::time_point until, bool until_drained, std::size_t& n) {
  using clock_type = std::remove_cvref_t<decltype(core.clock)>;
  for (;;) {
    const std::size_t k = sim_step(core);
    n += k;
    if (until_drained && core.outstanding() == 0) return true;
    if (core.stopping.load(std::memory_order_acquire)) return core.outstanding() == 0;
    const auto next = sim_next_event(core);
    if (!next && core.ledger.async_in_flight() != 0) {
      // Completions held outside the simulation (not posted): drain() waits
      // for one to fire, in real time; run_until() returns.
      if (!until_drained) return false;
      auto& quiet = core.ledger.quiet();
      const auto in_flight = core.ledger.async_in_flight();
      const auto ticket = quiet.prepare();
      if (core.ledger.async_in_flight() != in_flight || core.posted.next_ns() != sim_events::none) {
        quiet.cancel();
      } else {
        quiet.wait_until(ticket, Core::time_point::max());
      }
      continue;
    }
    if (!next) {
      if (until_drained && core.sim_wait.kind != progress::idle)
        throw std::logic_error(
            "levee::leveler::drain: jobs are outstanding but can never be dispatched "
            "(no backend, or every backend is saturated)");
      if (until_drained && core.outstanding() != 0)
        throw std::logic_error("levee::leveler::drain: jobs are outstanding but nothing can move them");
      return core.outstanding() == 0;
    }
    if (*next > until) return core.outstanding() == 0;
    const auto now = core.clock.now();
    if (*next <= now && k == 0) return core.outstanding() == 0;  // no progress possible
    if (*next > now) {
      if constexpr (requires(clock_type & ck, typename Core::time_point tp) { ck.set(tp); }) {
        core.clock.set(*next);
      } else {
        sleeper<clock_type> zz(core.clock);
        (void)zz.sleep_until(*next);
      }
    }
  }
}

}  // namespace levee::detail
