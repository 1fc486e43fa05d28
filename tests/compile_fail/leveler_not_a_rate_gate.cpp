// expect: (rate_gate<RateGate>|does not satisfy 'rate_gate')
// levee::leveler's RateGate must satisfy levee::rate_gate: a type with the
// calls of a gate but no available_at() (the leveler could neither wait for
// a token nor forecast one) is rejected by the concept.
#include <chrono>
#include <cstdint>
#include <levee/clock.hpp>
#include <levee/leveler.hpp>

struct no_forecast {
  using clock_type = levee::manual_clock;
  using time_point = clock_type::time_point;
  bool try_acquire(std::uint64_t, time_point) { return true; }
  [[nodiscard]] std::uint64_t burst() const { return 1; }
  [[nodiscard]] levee::rate get_rate() const { return levee::rate::per_second(1); }
};

#ifdef LEVEE_COMPILE_FAIL_CONTROL
using gate_type = levee::rate_limiter<levee::manual_clock>;
#else
using gate_type = no_forecast;
#endif

int main() {
  levee::leveler<int, levee::round_robin, levee::manual_clock, gate_type>::options o;
  o.workers = 0;
  levee::leveler<int, levee::round_robin, levee::manual_clock, gate_type> lev(o);
  return lev.outstanding() == 0 ? 0 : 1;
}
