// expect: (clock<Clock>|does not satisfy 'clock')
// levee::rate_limiter's Clock must satisfy levee::clock (now() returning the
// clock's time_point): a type without now() is rejected by the concept.
#include <chrono>
#include <levee/rate_limiter.hpp>

struct not_a_clock {
  using rep = std::int64_t;
  using period = std::nano;
  using duration = std::chrono::nanoseconds;
  using time_point = std::chrono::time_point<not_a_clock, duration>;
  // no now()
};

#ifdef LEVEE_COMPILE_FAIL_CONTROL
using clock_type = std::chrono::steady_clock;
#else
using clock_type = not_a_clock;
#endif

int main() {
  levee::rate_limiter<clock_type> lim(levee::rate::per_second(10));
  return lim.burst() == 1 ? 0 : 1;
}
