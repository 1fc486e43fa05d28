// Tests for levee/clock.hpp: the clock concepts, manual_clock, sleeper.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <levee/clock.hpp>
#include <stdexcept>
#include <thread>
#include <vector>

#include "eventually.hpp"

using namespace std::chrono_literals;
using levee::manual_clock;
using tp = manual_clock::time_point;

static_assert(levee::clock<std::chrono::system_clock>, "system_clock is a levee clock");
static_assert(!levee::waitable_clock<std::chrono::steady_clock>, "steady_clock is not waitable");
static_assert(levee::waitable_clock<manual_clock>, "manual_clock is waitable");
static_assert(!levee::clock<int>, "int is not a clock");

TEST_CASE("manual_clock: starts at zero or the given time; advance and set") {
  manual_clock c;
  CHECK(c.now() == tp{});
  c.advance(5ms);
  CHECK(c.now() == tp(5ms));
  c.advance(std::chrono::microseconds(3));  // other duration types convert
  CHECK(c.now() == tp(5ms + 3us));
  c.set(tp(-10s));  // backwards, and before the epoch
  CHECK(c.now() == tp(-10s));
  c.advance(0ns);
  CHECK(c.now() == tp(-10s));
  CHECK_THROWS_AS(c.advance(-1ns), std::invalid_argument);
  CHECK(c.now() == tp(-10s));
  manual_clock d(tp(42s));
  CHECK(d.now() == tp(42s));
}

TEST_CASE("manual_clock: copies share one time line; distinct clocks do not") {
  manual_clock a;
  manual_clock b = a;
  CHECK(a == b);
  b.advance(1s);
  CHECK(a.now() == tp(1s));
  manual_clock other;
  CHECK_FALSE(a == other);
  CHECK(other.now() == tp{});
}

TEST_CASE("manual_clock: concurrent advances are all counted") {
  manual_clock c;
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i)
    ts.emplace_back([c]() mutable {
      for (int k = 0; k < 1000; ++k) c.advance(1ns);
    });
  for (auto& t : ts) t.join();
  CHECK(c.now() == tp(4000ns));
}

TEST_CASE("manual_clock: wait_until returns when time reaches the target, or when stop says so") {
  manual_clock c;
  CHECK(c.wait_until(tp{}, [] { return false; }));  // already there
  std::atomic<int> r{-1};
  std::thread th([&] { r = c.wait_until(tp(10ms), [] { return false; }) ? 1 : 0; });
  c.advance(4ms);
  c.advance(5ms);
  std::this_thread::sleep_for(10ms);
  CHECK(r.load() == -1);  // 9 ms < 10 ms: still waiting
  c.advance(1ms);
  th.join();
  CHECK(r.load() == 1);

  std::atomic<bool> stop{false};
  std::thread th2([&] { r = c.wait_until(tp(1h), [&] { return stop.load(); }) ? 1 : 0; });
  std::this_thread::sleep_for(10ms);
  stop = true;
  c.notify_waiters();
  th2.join();
  CHECK(r.load() == 0);

  // set() backwards then forwards past the target also wakes
  std::thread th3([&] { r = c.wait_until(tp(2h), [] { return false; }) ? 1 : 0; });
  c.set(tp(-1h));
  c.set(tp(3h));
  th3.join();
  CHECK(r.load() == 1);
}

TEST_CASE("sleeper<manual_clock>: sleeps until the clock reaches the deadline; notify_all interrupts") {
  manual_clock c;
  levee::sleeper<manual_clock> s(c);
  CHECK(s.sleep_until(tp{}));
  std::atomic<int> r{-1};
  std::thread th([&] { r = s.sleep_until(tp(1s)) ? 1 : 0; });
  while (r.load() == -1) c.advance(10ms);
  th.join();
  CHECK(r.load() == 1);
  CHECK(c.now() >= tp(1s));

  r = -1;
  std::thread th2([&] { r = s.sleep_for(1h) ? 1 : 0; });
  // a notify_all before the sleep began is not for it: repeat until it returns
  while (r.load() == -1) {
    s.notify_all();
    std::this_thread::sleep_for(1ms);
  }
  th2.join();
  CHECK(r.load() == 0);
}

TEST_CASE("sleeper: a notify_all after ticket() makes the sleep return at once (no lost wake-up)") {
  {
    manual_clock c;
    levee::sleeper<manual_clock> s(c);
    const auto t = s.ticket();
    s.notify_all();
    CHECK_FALSE(s.sleep_until(tp(1h), t));  // would hang if the notification were lost
    CHECK(s.sleep_until(tp{}, s.ticket()));
  }
  {
    levee::sleeper<std::chrono::steady_clock> s;
    const auto t = s.ticket();
    s.notify_all();
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(s.sleep_until(t0 + 1h, t));
    CHECK(std::chrono::steady_clock::now() - t0 < 10s);
  }
}

TEST_CASE("sleeper<steady_clock>: absolute deadline, early return on notify_all") {
  using sc = std::chrono::steady_clock;
  levee::sleeper<sc> s;
  const auto t0 = sc::now();
  CHECK(s.sleep_until(t0 - 1s));  // in the past: at once
  CHECK(s.sleep_until(t0 + 20ms));
  CHECK(sc::now() >= t0 + 20ms);
  CHECK(s.sleep_for(5ms));

  std::atomic<int> r{-1};
  const auto t1 = sc::now();
  std::thread th([&] { r = s.sleep_until(sc::now() + 1h) ? 1 : 0; });
  while (r.load() == -1) {
    s.notify_all();
    std::this_thread::sleep_for(1ms);
  }
  th.join();
  CHECK(r.load() == 0);
  CHECK(sc::now() - t1 < 30s);
  // get_clock() returns the sleeper's own clock: it reads the same time line
  const auto before = sc::now();
  const auto read = s.get_clock().now();
  CHECK(read >= before);
  CHECK(read <= sc::now());
  levee::manual_clock mc(levee::manual_clock::time_point(5s));
  levee::sleeper<levee::manual_clock> ms(mc);
  CHECK(ms.get_clock() == mc);  // shares the time line of the clock it was given
  mc.advance(1s);
  CHECK(ms.get_clock().now() == levee::manual_clock::time_point(6s));
}

TEST_CASE("sleeper: maximal durations and time points mean no deadline, never UB") {
  using namespace std::chrono;
  {
    levee::sleeper<steady_clock> s;
    CHECK(s.sleep_for(hours::min()));  // in the past: at once
    CHECK(s.sleep_until(steady_clock::time_point::min()));
    for (int which = 0; which < 3; ++which) {
      INFO("variant " << which);
      std::atomic<int> r{-1};
      const std::uint64_t ticket = s.ticket();
      std::thread th([&] {
        bool reached = true;
        if (which == 0) reached = s.sleep_for(hours::max());
        if (which == 1) reached = s.sleep_for(nanoseconds::max());
        if (which == 2) reached = s.sleep_until(steady_clock::time_point::max(), ticket);
        r = reached ? 1 : 0;
      });
      // it sleeps until notify_all: an overflow into "already due" would return true
      const bool woke = levee_test::eventually([&] {
        s.notify_all();
        return r.load() >= 0;
      });
      CHECK(woke);
      th.join();
      CHECK(r.load() == 0);
    }
  }
  {
    levee::manual_clock clk;
    levee::sleeper<levee::manual_clock> s(clk);
    std::atomic<int> r{-1};
    std::thread th([&] { r = s.sleep_for(hours::max()) ? 1 : 0; });
    CHECK(levee_test::eventually([&] { return clk.waiters_approx() == 1; }));
    clk.advance(hours(24 * 365 * 200));  // 200 years: far, but not the saturated end of time
    s.notify_all();  // wait_until checks the time first: a deadline that overflowed would read as reached
    th.join();
    CHECK(r.load() == 0);
    CHECK(clk.waiters_approx() == 0);
  }
}
