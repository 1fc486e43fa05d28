// expect: (clock<Clock>|does not satisfy 'clock')
// levee::sleeper's Clock must satisfy levee::clock: a clock whose now()
// returns another type than its time_point is rejected.
#include <chrono>
#include <levee/clock.hpp>

struct wrong_now {
  using rep = std::int64_t;
  using period = std::nano;
  using duration = std::chrono::nanoseconds;
  using time_point = std::chrono::time_point<wrong_now, duration>;
  [[nodiscard]] std::int64_t now() const { return 0; }  // not a time_point
};

#ifdef LEVEE_COMPILE_FAIL_CONTROL
using clock_type = levee::manual_clock;
#else
using clock_type = wrong_now;
#endif

int main() {
  levee::sleeper<clock_type> s;
  return s.ticket() == 0 ? 0 : 1;
}
