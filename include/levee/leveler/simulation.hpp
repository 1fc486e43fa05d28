// levee/leveler/simulation.hpp - simulation mode (options.workers == 0):
// the dispatch step of worker.hpp driven from the calling thread, with the
// clock moved (manual_clock) or slept (real clocks) to each next event.
// With manual_clock a whole spike-and-drain scenario runs exactly, in
// milliseconds of real time, and the same scenario and seed give the same
// dispatch sequence.
#pragma once

#include <atomic>
#include <cstddef>
#include <levee/clock.hpp>
#include <levee/leveler/worker.hpp>
#include <optional>
#include <stdexcept>
#include <type_traits>

namespace levee::detail {

// Dispatches everything that can be dispatched at the clock's current time
// and returns how many jobs reached dispatch (ran, or expired).
template <class Core>
std::size_t sim_step(Core& core) {
  std::size_t n = 0;
  while (!core.stopping.load(std::memory_order_acquire)) {
    const auto r = core.try_progress(core.sim, core.clock.now());
    if (r.kind != progress::progressed) {
      core.sim_wait = r;
      break;
    }
    ++n;
  }
  return n;
}

// The time of the next event the last step stopped at (a rate token for the
// job at the head, or the next retry becoming due when nothing else waits),
// or nullopt if it waits for nothing timed (idle, or a backend / permit).
template <class Core>
[[nodiscard]] auto sim_next_event(const Core& core) -> std::optional<typename Core::time_point> {
  const auto& w = core.sim_wait;
  if (w.kind == progress::progressed || w.kind == progress::wait_capacity) return std::nullopt;
  if (w.until == Core::time_point::max()) return std::nullopt;
  return w.until;
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
