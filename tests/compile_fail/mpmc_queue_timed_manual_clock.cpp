// expect: timed operations wait in real time
// levee::mpmc_queue's timed operations park the thread in real time: a
// deadline on levee::manual_clock (no static now()) is rejected.
#include <chrono>
#include <levee/clock.hpp>
#include <levee/mpmc_queue.hpp>

int main() {
  levee::mpmc_queue<int> q(1);
  int out = 0;
#ifdef LEVEE_COMPILE_FAIL_CONTROL
  const auto deadline = std::chrono::steady_clock::now();
#else
  const auto deadline = levee::manual_clock::time_point{};
#endif
  return q.try_pop_until(out, deadline) == levee::queue_status::empty ? 0 : 1;
}
