// Regression tests for the leveler used as a careless user would: each case
// is a reproducer of a defect that once deadlocked, hung, lost a job, threw
// an unexpected exception or overflowed. Every scenario that could hang runs
// under a watchdog: a hang fails the test (and ends the process with a clear
// message) instead of waiting for the CI timeout.
#include <doctest/doctest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <levee/leveler.hpp>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "eventually.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;

using levee_test::eventually;
using levee_test::gate;
using levee_test::within;

namespace {

using lev_t = levee::leveler<int>;
using sim_t = levee::leveler<int, levee::round_robin, levee::manual_clock>;

bool message_names(const std::invalid_argument& e, const std::string& option) {
  return std::string(e.what()).find(option) != std::string::npos;
}

}  // namespace

TEST_CASE("stop() from a handler while another thread is in stop() returns in both threads") {
  within(20s, "handler stop() racing an outside stop()", [] {
    lev_t::options o;
    o.workers = 1;
    lev_t* self = nullptr;
    std::atomic<bool> running{false}, handler_returned{false};
    lev_t lev(o, [&](int&) {
      running = true;
      // Wait until the outside stop() is under way (it closes first), then stop from here.
      REQUIRE(eventually([&] { return self->is_closed(); }));
      self->stop();
      handler_returned = true;
    });
    self = &lev;
    REQUIRE(lev.try_submit(1));
    REQUIRE(eventually([&] { return running.load(); }));
    lev.stop();
    CHECK(handler_returned.load());  // stop() from outside returns after the handler did
    CHECK(lev.metrics().stopped);
  });
}

TEST_CASE("two handlers calling stop() at once both return; stop() is idempotent") {
  within(20s, "two handlers calling stop()", [] {
    lev_t::options o;
    o.workers = 2;
    lev_t* self = nullptr;
    std::atomic<int> arrived{0}, returned{0};
    lev_t lev(o, [&](int&) {
      ++arrived;
      REQUIRE(eventually([&] { return arrived.load() == 2; }));  // both handlers running
      self->stop();
      ++returned;
    });
    self = &lev;
    REQUIRE(lev.try_submit(1));
    REQUIRE(lev.try_submit(2));
    REQUIRE(eventually([&] { return returned.load() == 2; }));
    lev.stop();
    lev.stop();
    const auto m = lev.metrics();
    CHECK(m.stopped);
    CHECK(m.succeeded == 2);
  });
}

TEST_CASE("concurrent stop() calls from outside all return after the running handler finished") {
  within(20s, "concurrent outside stop()", [] {
    lev_t::options o;
    o.workers = 2;
    gate g;
    std::atomic<bool> running{false}, finished{false};
    lev_t lev(o, [&](int&) {
      running = true;
      g.wait();
      finished = true;
    });
    REQUIRE(lev.try_submit(1));
    REQUIRE(eventually([&] { return running.load(); }));
    std::atomic<int> saw_finished{0};
    std::vector<std::thread> stoppers;
    for (int i = 0; i < 3; ++i)
      stoppers.emplace_back([&] {
        lev.stop();
        if (finished.load()) ++saw_finished;
      });
    REQUIRE(eventually([&] { return lev.metrics().stopped; }));
    g.open();
    for (auto& t : stoppers) t.join();
    CHECK(saw_finished.load() == 3);
  });
}

TEST_CASE("stop_for bounds the wait for running handlers; queued jobs are cancelled either way") {
  within(20s, "stop_for", [] {
    lev_t::options o;
    o.workers = 1;
    gate g;
    std::atomic<bool> running{false};
    std::atomic<int> cancelled{0};
    o.dead_letter = [&](int&&, levee::dead_letter_reason r, std::exception_ptr) {
      if (r == levee::dead_letter_reason::cancelled) ++cancelled;
    };
    lev_t lev(o, [&](int&) {
      running = true;
      g.wait();
    });
    REQUIRE(lev.try_submit(1));
    REQUIRE(eventually([&] { return running.load(); }));
    for (int i = 0; i < 5; ++i) REQUIRE(lev.try_submit(i));
    CHECK_FALSE(lev.stop_for(20ms));  // the handler is still running
    CHECK(cancelled.load() == 5);
    g.open();
    CHECK(lev.stop_for(10s));
    const auto m = lev.metrics();
    CHECK(m.succeeded == 1);
    CHECK(m.dead_lettered.cancelled == 5);
  });
}

TEST_CASE("options.workers is bounded: a huge value is std::invalid_argument naming the option") {
  for (const std::size_t w :
       {std::numeric_limits<std::size_t>::max(), std::size_t{1'000'000}, std::size_t{1025}}) {
    lev_t::options o;
    o.workers = w;
    CAPTURE(w);
    try {
      lev_t lev(o);
      FAIL("accepted workers = " << w);
    } catch (const std::invalid_argument& e) {
      CHECK(message_names(e, "options.workers"));
    }
  }
  lev_t::options o;
  o.workers = 0;
  CHECK_NOTHROW(lev_t{o});
}

TEST_CASE("capacity, rate and burst errors name the option") {
  auto expect = [](auto o, const std::string& option) {
    try {
      lev_t lev(o);
      FAIL("accepted a bad " << option);
    } catch (const std::invalid_argument& e) {
      INFO(e.what());
      CHECK(message_names(e, option));
    }
  };
  lev_t::options o;
  o.workers = 0;
  o.capacity = std::numeric_limits<std::size_t>::max();
  expect(o, "options.capacity");
  o.capacity = 16;
  o.rate = levee::rate::per_second(1000);
  o.burst = std::numeric_limits<std::uint64_t>::max();
  expect(o, "options.burst");
  o.burst = 0;
  o.rate = levee::rate::every(std::chrono::hours(24 * 365 * 200));
  expect(o, "options.rate");
}

TEST_CASE("try_submit with a deadline racing set_burst never throws and never loses the job") {
  within(60s, "deadline admission racing set_burst", [] {
    lev_t::options o;
    o.workers = 0;
    o.capacity = 1 << 16;
    o.rate = levee::rate::per_second(5);
    o.burst = 200;
    lev_t lev(o);
    std::atomic<bool> done{false};
    std::thread toggler([&] {
      while (!done.load()) {
        lev.set_burst(1);
        lev.set_burst(200);
      }
    });
    const int n = LEVEE_TEST_SANITIZED ? 5'000 : 40'000;
    int threw = 0, handed_back = 0, accepted = 0;
    for (int i = 0; i < n; ++i) {
      try {
        auto r = lev.try_submit(i, {.deadline = std::chrono::steady_clock::now() + 1h});
        if (r) {
          ++accepted;
        } else if (r.job && *r.job == i) {
          ++handed_back;
        }
      } catch (const std::exception&) {
        ++threw;
      }
    }
    done = true;
    toggler.join();
    CHECK(threw == 0);
    CHECK(accepted + handed_back == n);
    CHECK(lev.metrics().accepted == static_cast<std::uint64_t>(accepted));
  });
}

TEST_CASE("simulation mode: a blocking submit on a full queue returns `full` instead of hanging") {
  within(20s, "blocking submit in simulation mode", [] {
    levee::manual_clock clk;
    sim_t::options o;
    o.workers = 0;
    o.capacity = 2;
    sim_t lev(
        o, [](int&) {}, clk);
    REQUIRE(lev.submit(1));
    REQUIRE(lev.submit(2));
    auto r = lev.submit(3);
    CHECK(r.status == levee::submit_status::full);
    REQUIRE(r.job);
    CHECK(*r.job == 3);
    auto t = lev.submit_for(4, 1s);
    CHECK(t.status == levee::submit_status::full);
    CHECK(*t.job == 4);
    lev.drain();
    CHECK(lev.submit(5));  // room again after stepping
    lev.drain();
    CHECK(lev.metrics().succeeded == 3);
  });
}

TEST_CASE("the dead-letter sink is inside the leveler: a blocking submit from it never parks the worker") {
  within(20s, "sink submitting to a full queue", [] {
    lev_t::options o;
    o.workers = 1;
    o.capacity = 1;
    lev_t* self = nullptr;
    std::atomic<int> sink_submit_full{0};
    o.dead_letter = [&](int&& j, levee::dead_letter_reason r, std::exception_ptr) {
      if (r != levee::dead_letter_reason::failed) return;
      auto res = self->submit(j + 100);  // the queue holds job 2: full
      if (res.status == levee::submit_status::full) ++sink_submit_full;
    };
    gate g;
    std::atomic<bool> running{false};
    lev_t lev(o, [&](int& j) {
      if (j == 1) {
        running = true;
        g.wait();
        return false;  // fails: dead-lettered on the only worker
      }
      return true;
    });
    self = &lev;
    REQUIRE(lev.try_submit(1));
    REQUIRE(eventually([&] { return running.load(); }));
    REQUIRE(lev.try_submit(2));  // fills the queue
    g.open();
    lev.drain();
    CHECK(sink_submit_full.load() == 1);
    CHECK(lev.metrics().succeeded == 1);
  });
}

TEST_CASE("drain() from the dead-letter sink throws std::logic_error instead of waiting for itself") {
  within(20s, "drain from the sink", [] {
    lev_t::options o;
    o.workers = 1;
    lev_t* self = nullptr;
    std::atomic<int> logic_errors{0};
    o.dead_letter = [&](int&&, levee::dead_letter_reason, std::exception_ptr) {
      try {
        self->drain();
      } catch (const std::logic_error&) {
        ++logic_errors;
      }
    };
    gate g;
    lev_t lev(o, [&](int& j) {
      if (j == 1) g.wait();
      return j != 1;
    });
    self = &lev;
    REQUIRE(lev.try_submit(1));
    REQUIRE(lev.try_submit(2));  // outstanding while the sink runs for job 1
    g.open();
    lev.drain();
    CHECK(logic_errors.load() == 1);
    CHECK(lev.metrics().dead_letter_sink_errors == 0);
  });
}

TEST_CASE("stop() from the dead-letter sink works: stopped afterwards, no exception") {
  within(20s, "stop from the sink", [] {
    lev_t::options o;
    o.workers = 1;
    lev_t* self = nullptr;
    std::atomic<int> threw{0}, calls{0};
    o.dead_letter = [&](int&&, levee::dead_letter_reason r, std::exception_ptr) {
      ++calls;
      if (r != levee::dead_letter_reason::failed) return;
      try {
        self->stop();
      } catch (...) {
        ++threw;
      }
    };
    lev_t lev(o, [](int&) { return false; });
    self = &lev;
    REQUIRE(lev.try_submit(1));
    REQUIRE(eventually([&] { return lev.metrics().stopped; }));
    lev.stop();
    const auto m = lev.metrics();
    CHECK(threw.load() == 0);
    CHECK(m.dead_letter_sink_errors == 0);
    CHECK(m.stopped);
    CHECK(m.dead_lettered.total() == m.accepted);
  });
}

TEST_CASE("drop_oldest with a sink that re-submits the dropped job does not loop forever") {
  within(20s, "drop_oldest with a re-submitting sink", [] {
    levee::manual_clock clk;
    sim_t::options o;
    o.workers = 0;
    o.capacity = 2;
    o.overflow = levee::overflow_policy::drop_oldest;
    sim_t* self = nullptr;
    std::vector<int> handed_back;
    o.dead_letter = [&](int&& j, levee::dead_letter_reason r, std::exception_ptr) {
      if (r != levee::dead_letter_reason::dropped) return;
      auto res = self->submit(j);
      if (!res) handed_back.push_back(*res.job);
    };
    sim_t lev(
        o, [](int&) {}, clk);
    self = &lev;
    REQUIRE(lev.submit(1));
    REQUIRE(lev.submit(2));
    CHECK(lev.submit(3));
    CHECK(handed_back == std::vector<int>{1});
    lev.drain();
    CHECK(lev.metrics().succeeded == 2);
  });
}

TEST_CASE("maximum durations saturate: default_deadline, submit_for, drain_for") {
  SUBCASE("default_deadline = nanoseconds::max() means no deadline") {
    levee::manual_clock clk(levee::manual_clock::time_point(1h));
    sim_t::options o;
    o.workers = 0;
    o.rate = levee::rate::per_second(10);
    o.default_deadline = std::chrono::nanoseconds::max();
    sim_t lev(
        o, [](int&) {}, clk);
    for (int i = 0; i < 10; ++i) CHECK(lev.try_submit(i));
    lev.drain();
    CHECK(lev.metrics().succeeded == 10);
  }
  SUBCASE("submit_for(hours::max()) and drain_for(hours::max()) wait without a limit") {
    within(20s, "submit_for / drain_for with hours::max()", [] {
      lev_t::options o;
      o.workers = 1;
      o.capacity = 1;
      gate g;
      std::atomic<bool> running{false};
      lev_t lev(o, [&](int&) {
        running = true;
        g.wait();
      });
      REQUIRE(lev.try_submit(1));
      REQUIRE(eventually([&] { return running.load(); }));
      REQUIRE(lev.try_submit(2));  // the queue is full
      auto submitted =
          std::async(std::launch::async, [&] { return lev.submit_for(3, std::chrono::hours::max()); });
      auto drained = std::async(std::launch::async, [&] { return lev.drain_for(std::chrono::hours::max()); });
      // Neither may give up on its own (they did at once when the sum overflowed).
      CHECK(submitted.wait_for(50ms) == std::future_status::timeout);
      CHECK(drained.wait_for(1ms) == std::future_status::timeout);
      g.open();
      CHECK(submitted.get().status == levee::submit_status::accepted);
      CHECK(drained.get());
    });
  }
}

TEST_CASE("a predicted dispatch time beyond the clock's range refuses the job instead of wrapping") {
  levee::manual_clock clk(levee::manual_clock::time_point(1h));
  sim_t::options o;
  o.workers = 0;
  o.capacity = 120'000;
  o.rate = levee::rate::every(24h);
  o.burst = 1;
  sim_t lev(
      o, [](int&) {}, clk);
  for (int i = 0; i < 110'000; ++i) REQUIRE(lev.try_submit(i));
  // 110k jobs one day apart: about 301 years ahead, past nanoseconds::max().
  auto r = lev.try_submit(-1, {.deadline = clk.now() + 1h});
  CHECK(r.status == levee::submit_status::would_miss_deadline);
  lev.stop();
}

TEST_CASE("max_backoff = nanoseconds::max() never overflows: a retry is never scheduled in the past") {
  using mtp = levee::manual_clock::time_point;
  levee::manual_clock clk(mtp(1h));
  sim_t::options o;
  o.workers = 0;
  o.retry.max_attempts = 200;
  o.retry.base_backoff = 1ns;
  o.retry.max_backoff = std::chrono::nanoseconds::max();
  o.retry.min_retries_per_second = 1'000'000;
  std::vector<mtp> at;
  sim_t lev(
      o,
      [&](int&) {
        at.push_back(clk.now());
        return false;
      },
      clk);
  REQUIRE(lev.try_submit(1));
  // Follows every retry as far as the clock goes: the backoff ceiling reaches
  // nanoseconds::max() after 63 retries, and now + backoff must saturate.
  const mtp end(std::chrono::nanoseconds::max() - 24h);
  lev.run_until(end);
  REQUIRE(at.size() > 40);
  // From the 40th attempt on the backoff is at least uniform in [0, 2^39 ns]:
  // a retry at the same time as its failure means the sum wrapped around.
  for (std::size_t i = 40; i < at.size(); ++i) {
    CAPTURE(i);
    CHECK(at[i] > at[i - 1]);
  }
  const auto m = lev.metrics();
  CHECK(at.size() < 200);
  CHECK(m.dead_lettered.failed == 0);
  CHECK(m.retry_pending == 1);  // saturated at time_point::max(): never due
  lev.stop();
  CHECK(lev.metrics().dead_lettered.cancelled == 1);
}

namespace {
struct ref_job {
  int& n;
};
struct big_job {
  std::array<char, 1 << 16> bytes{};
};
}  // namespace

TEST_CASE("jobs need not be assignable: a job holding a reference runs, retries and is dead-lettered") {
  within(30s, "reference jobs", [] {
    int counter = 0;
    levee::leveler<ref_job>::options o;
    o.workers = 1;
    o.retry.max_attempts = 2;
    o.retry.base_backoff = 0ns;
    o.retry.max_backoff = 0ns;
    std::atomic<int> dead{0};
    o.dead_letter = [&](ref_job&&, levee::dead_letter_reason, std::exception_ptr) { ++dead; };
    int calls = 0;
    levee::leveler<ref_job> lev(o, [&](ref_job& j) {
      ++j.n;
      return ++calls % 3 != 0;
    });
    for (int i = 0; i < 50; ++i) REQUIRE(lev.submit(ref_job{counter}));
    lev.drain();
    const auto m = lev.metrics();
    CHECK(counter == calls);
    CHECK(m.succeeded + m.dead_lettered.total() == 50);
    CHECK(m.retried > 0);
  });
}

TEST_CASE("sizeof(leveler) does not grow with batches of large jobs") {
  CHECK(sizeof(levee::leveler<big_job>) < 4 * sizeof(big_job));
}

TEST_CASE("the destructor returns when no backend can ever run the jobs: they are cancelled") {
  within(20s, "destructor with no eligible backend", [] {
    std::atomic<int> cancelled{0};
    {
      lev_t::options o;
      o.workers = 1;
      o.health = levee::health_options::disabled();
      o.dead_letter = [&](int&&, levee::dead_letter_reason r, std::exception_ptr) {
        if (r == levee::dead_letter_reason::cancelled) ++cancelled;
      };
      lev_t lev(o);
      const auto id = lev.add_backend([](int&) {});
      REQUIRE(lev.set_healthy(id, false));
      for (int i = 0; i < 3; ++i) REQUIRE(lev.try_submit(i));
    }
    CHECK(cancelled.load() == 3);
  });
}

TEST_CASE("the destructor still finishes jobs that can run, including ones waiting for rate tokens") {
  within(30s, "destructor waits for runnable jobs", [] {
    std::atomic<int> ran{0};
    {
      lev_t::options o;
      o.workers = 2;
      o.rate = levee::rate::per_second(200);
      lev_t lev(o, [&](int&) { ++ran; });
      for (int i = 0; i < 20; ++i) REQUIRE(lev.try_submit(i));
    }
    CHECK(ran.load() == 20);
  });
}
