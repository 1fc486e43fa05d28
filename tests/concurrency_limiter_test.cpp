// Tests for levee/concurrency_limiter.hpp.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <levee/concurrency_limiter.hpp>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#include "eventually.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using levee::concurrency_limiter;
using levee::permit;

static_assert(!std::is_copy_constructible_v<permit>, "permit must be move-only");
static_assert(std::is_nothrow_move_constructible_v<permit>, "permit moves must not throw");

TEST_CASE("try_acquire hands out at most limit permits; RAII releases") {
  concurrency_limiter cl(2);
  {
    permit a = cl.try_acquire();
    permit b = cl.try_acquire();
    permit c = cl.try_acquire();
    CHECK(a);
    CHECK(b);
    CHECK_FALSE(c);
    CHECK(cl.in_flight() == 2);
    b.release();
    CHECK_FALSE(b);
    b.release();  // idempotent
    CHECK(cl.in_flight() == 1);
    permit d = std::move(a);
    CHECK_FALSE(a);
    CHECK(cl.in_flight() == 1);
    permit e = cl.try_acquire();
    CHECK(e);
    e = cl.try_acquire();  // the try runs while d and e are held (fails); the assignment then releases e
    CHECK_FALSE(e);
    CHECK(cl.in_flight() == 1);
  }
  CHECK(cl.in_flight() == 0);
}

TEST_CASE("bad input throws std::invalid_argument") {
  CHECK_THROWS_AS(concurrency_limiter(0), std::invalid_argument);
  concurrency_limiter cl(1);
  CHECK_THROWS_WITH_AS(cl.set_limit(0), doctest::Contains("set_limit"), std::invalid_argument);
  CHECK(cl.limit() == 1);
}

TEST_CASE("no permit leaks when a holder throws") {
  concurrency_limiter cl(3);
  for (int i = 0; i < 100; ++i) {
    try {
      permit p = cl.acquire();
      REQUIRE(p);
      throw std::runtime_error("work failed");
    } catch (const std::runtime_error&) {
    }
  }
  CHECK(cl.in_flight() == 0);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        try {
          permit p = cl.acquire();
          if (i % 2 == 0) throw std::runtime_error("x");
        } catch (const std::runtime_error&) {
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  CHECK(cl.in_flight() == 0);
}

TEST_CASE("the limit holds under 8 threads, blocking and try paths; all permits released") {
  constexpr std::size_t limit = 3;
  concurrency_limiter cl(limit);
  std::atomic<int> inside{0}, max_inside{0};
  std::atomic<long> done{0};
  const int iters = LEVEE_TEST_SANITIZED ? 2000 : 20000;
  auto body = [&] {
    const int now = inside.fetch_add(1) + 1;
    int m = max_inside.load();
    while (now > m && !max_inside.compare_exchange_weak(m, now)) {
    }
    if (now % 2 == 0) std::this_thread::yield();
    inside.fetch_sub(1);
    done.fetch_add(1);
  };
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < iters; ++i) {
        if (t % 3 == 0) {
          permit p = cl.acquire();
          REQUIRE(p);
          body();
        } else if (t % 3 == 1) {
          if (permit p = cl.try_acquire()) body();
        } else {
          if (permit p = cl.try_acquire_for(5s)) body();
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  CHECK(max_inside.load() <= static_cast<int>(limit));
  CHECK(max_inside.load() >= 1);
  CHECK(cl.in_flight() == 0);
  CHECK(done.load() > 0);
}

TEST_CASE("acquire blocks until a release; raising the limit wakes waiters") {
  concurrency_limiter cl(1);
  permit held = cl.acquire();
  std::atomic<bool> got{false};
  std::thread th([&] {
    permit p = cl.acquire();
    got = static_cast<bool>(p);
  });
  CHECK(levee_test::eventually([&] { return cl.waiters_approx() == 1; }));  // parked
  CHECK_FALSE(got.load());
  held.release();
  th.join();
  CHECK(got.load());

  held = cl.acquire();
  std::atomic<int> woke{0};
  std::vector<std::thread> ws;
  for (int i = 0; i < 3; ++i)
    ws.emplace_back([&] {
      permit p = cl.acquire();
      if (p) woke.fetch_add(1);
      // hold it until all three have one: only the raised limit allows that
      (void)levee_test::eventually([&] { return woke.load() == 3; });
    });
  CHECK(levee_test::eventually([&] { return cl.waiters_approx() == 3; }));  // all parked
  CHECK(woke.load() == 0);
  cl.set_limit(4);
  for (auto& w : ws) w.join();
  CHECK(woke.load() == 3);
  held.release();
  CHECK(cl.in_flight() == 0);
}

TEST_CASE("lowering the limit: held permits finish, new ones wait") {
  concurrency_limiter cl(3);
  permit a = cl.acquire(), b = cl.acquire(), c = cl.acquire();
  cl.set_limit(1);
  CHECK(cl.in_flight() == 3);
  a.release();
  b.release();
  CHECK_FALSE(cl.try_acquire());  // 1 in flight == new limit
  c.release();
  CHECK(cl.try_acquire());
}

TEST_CASE("timed acquisition times out; close() wakes waiters with empty permits") {
  concurrency_limiter cl(1);
  permit held = cl.acquire();
  const auto t0 = std::chrono::steady_clock::now();
  permit p = cl.try_acquire_for(30ms);
  CHECK_FALSE(p);
  CHECK(std::chrono::steady_clock::now() - t0 >= 30ms);
  std::atomic<int> result{-1};
  std::thread th([&] { result = cl.acquire() ? 1 : 0; });
  CHECK(levee_test::eventually([&] { return cl.waiters_approx() == 1; }));  // parked: close must wake it
  cl.close();
  th.join();
  CHECK(result.load() == 0);
  CHECK(cl.is_closed());
  CHECK_FALSE(cl.try_acquire());
  held.release();
  CHECK(cl.in_flight() == 0);
}

TEST_CASE("maximum durations and extreme deadlines: no deadline or an immediate answer, never UB") {
  using namespace std::chrono;
  concurrency_limiter cl(1);
  permit held = cl.acquire();
  // in the past or minimal: give up at once
  CHECK_FALSE(cl.try_acquire_for(nanoseconds::min()));
  CHECK_FALSE(cl.try_acquire_for(hours::min()));
  CHECK_FALSE(cl.try_acquire_for(-1s));
  CHECK_FALSE(cl.try_acquire_until(steady_clock::time_point::min()));
  CHECK_FALSE(cl.try_acquire_until(time_point<system_clock, hours>::min()));
  CHECK_FALSE(cl.try_acquire_until(time_point<steady_clock, hours>::min()));
  // maximal: wait without a deadline until a release (or close)
  for (int which = 0; which < 6; ++which) {
    INFO("variant " << which);
    std::atomic<int> result{-1};
    std::thread th([&] {
      permit p;
      switch (which) {
        case 0:
          p = cl.try_acquire_for(hours::max());
          break;
        case 1:
          p = cl.try_acquire_for(nanoseconds::max());
          break;
        case 2:
          p = cl.try_acquire_for(duration<double>(1e300));
          break;
        case 3:
          p = cl.try_acquire_until(steady_clock::time_point::max());
          break;
        case 4:
          p = cl.try_acquire_until(time_point<system_clock, hours>::max());
          break;
        default:
          p = cl.try_acquire_until(time_point<steady_clock, hours>::max());
          break;
      }
      result = p ? 1 : 0;
    });
    const bool parked =
        levee_test::eventually([&] { return cl.waiters_approx() == 1 || result.load() >= 0; });
    CHECK(parked);
    CHECK(result.load() == -1);  // waiting, not timed out at once
    held.release();
    const bool ended = levee_test::eventually([&] { return result.load() >= 0; });
    if (!ended) cl.close();  // fail rather than hang
    th.join();
    CHECK(result.load() == 1);
    held = cl.acquire();
  }
}
