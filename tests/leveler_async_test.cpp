// Asynchronous handlers: levee::completion, attempt timeouts, cancellation,
// the in-flight bound, drain/stop, and simulated I/O with post_at.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <levee/conformance.hpp>
#include <levee/leveler.hpp>
#include <map>
#include <mutex>
#include <queue>
#include <stop_token>
#include <system_error>
#include <thread>
#include <vector>

#include "eventually.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;

namespace {

using sim_leveler = levee::leveler<int, levee::round_robin, levee::manual_clock>;
using tp = levee::manual_clock::time_point;

levee::attempt_errc error_code_of(const std::exception_ptr& e) {
  try {
    if (e) std::rethrow_exception(e);
  } catch (const std::system_error& se) {
    if (se.code().category() == levee::attempt_category())
      return static_cast<levee::attempt_errc>(se.code().value());
  } catch (...) {
  }
  return levee::attempt_errc{};
}

// Final states per job id, from the handler (successes) and the sink.
struct outcomes {
  std::mutex m;
  std::map<int, int> finals;  // id -> number of final states
  std::map<levee::dead_letter_reason, int> by_reason;
  std::map<levee::attempt_errc, int> by_error;
  void final_state(int id) {
    std::lock_guard l(m);
    ++finals[id];
  }
  auto sink() {
    return [this](int&& id, levee::dead_letter_reason r, std::exception_ptr e) {
      std::lock_guard l(m);
      ++finals[id];
      ++by_reason[r];
      ++by_error[error_code_of(e)];
    };
  }
};

// A reactor for real-thread tests: fires each completion at its time, from
// one thread, in time order.
class reactor {
 public:
  reactor() : thread_([this](std::stop_token st) { run(st); }) {}
  ~reactor() {
    thread_.request_stop();
    cv_.notify_all();
  }
  void at(std::chrono::steady_clock::time_point t, levee::completion done, bool ok = true) {
    {
      std::lock_guard l(m_);
      q_.push(item{t, seq_++, std::make_shared<levee::completion>(std::move(done)), ok});
    }
    cv_.notify_all();
  }

 private:
  struct item {
    std::chrono::steady_clock::time_point t;
    std::uint64_t seq;
    std::shared_ptr<levee::completion> done;
    bool ok;
    bool operator>(const item& o) const { return t != o.t ? t > o.t : seq > o.seq; }
  };
  void run(std::stop_token st) {
    std::unique_lock l(m_);
    while (!st.stop_requested()) {
      if (q_.empty()) {
        cv_.wait(l, st, [&] { return !q_.empty(); });
        continue;
      }
      const auto t = q_.top().t;
      if (std::chrono::steady_clock::now() < t) {
        cv_.wait_until(l, st, t, [&] { return !q_.empty() && q_.top().t < t; });
        continue;
      }
      item it = q_.top();
      q_.pop();
      l.unlock();
      if (it.ok) {
        std::move(*it.done).succeed();
      } else {
        std::move(*it.done).fail();
      }
      l.lock();
    }
    while (!q_.empty()) q_.pop();  // remaining completions are abandoned
  }
  std::mutex m_;
  std::condition_variable_any cv_;
  std::priority_queue<item, std::vector<item>, std::greater<>> q_;
  std::uint64_t seq_ = 0;
  std::jthread thread_;
};

}  // namespace

TEST_CASE("async: C/L dispatch rate with simulated I/O (L = 100 ms, max_concurrency 10,000)") {
  levee::manual_clock clk;
  sim_leveler::options o;
  o.workers = 0;
  o.max_concurrency = 10'000;
  o.capacity = 200'000;
  sim_leveler* lp = nullptr;
  sim_leveler lev(
      o,
      [&](int&, levee::completion done) {
        lp->post_at(lp->get_clock().now() + 100ms,
                    [d = std::move(done)]() mutable { std::move(d).succeed(); });
      },
      clk);
  lp = &lev;
  for (int i = 0; i < 150'000; ++i) REQUIRE(lev.try_submit(i));
  const tp t0 = clk.now();
  (void)lev.step();
  CHECK(lev.metrics().in_flight == 10'000);
  const auto started0 = lev.metrics().started;
  CHECK(started0 == 10'000);
  lev.run_until(t0 + 1s);
  const auto m = lev.metrics();
  CHECK(m.started - started0 == 100'000);  // exactly C / L over one virtual second
  CHECK(m.in_flight == 10'000);
  CHECK(m.succeeded == 100'000);
  lev.drain();
  CHECK(lev.metrics().succeeded == 150'000);
  CHECK(lev.metrics().in_flight == 0);
}

TEST_CASE(
    "async: rate 1,000/s, L = 200 ms, concurrency 500: envelope, in flight, timeouts retried then "
    "dead-lettered") {
  levee::manual_clock clk;
  sim_leveler::options o;
  o.workers = 0;
  o.max_concurrency = 500;
  o.capacity = 10'000;
  o.rate = levee::rate::per_second(1000);
  o.burst = 10;
  o.attempt_timeout = 300ms;
  o.retry.max_attempts = 3;
  o.retry.base_backoff = 1ms;
  o.retry.max_backoff = 1ms;
  o.retry.budget_ratio = 10;  // the budget is not under test here
  outcomes out;
  o.dead_letter = out.sink();
  std::vector<tp> starts;
  std::map<int, int> attempts_of;
  std::size_t max_in_flight = 0;
  sim_leveler* lp = nullptr;
  sim_leveler lev(
      o,
      [&](int& id, levee::completion done) {
        const tp now = lp->get_clock().now();
        starts.push_back(now);
        ++attempts_of[id];
        // Every 10th job is stuck: it would answer after 1 s, past its timeout.
        const auto latency = id % 10 == 0 ? 1000ms : 200ms;
        lp->post_at(now + latency, [&out, id, d = std::move(done)]() mutable {
          std::move(d).succeed();
          // A late completion does not make a second final state.
          if (id % 10 != 0) out.final_state(id);
        });
        max_in_flight = std::max<std::size_t>(max_in_flight, lp->metrics().in_flight);
      },
      clk);
  lp = &lev;
  const int n = 3000;
  for (int i = 0; i < n; ++i) REQUIRE(lev.try_submit(i));
  const tp t0 = clk.now();
  lev.run_until(t0 + 1500ms);
  const auto mid = lev.metrics();
  CHECK(mid.in_flight >= 195);
  CHECK(mid.in_flight <= 310);  // 200 ms of dispatches, plus stuck attempts (up to 300 ms)
  lev.drain();
  const auto m = lev.metrics();
  const auto report = levee::check_conformance(starts, levee::rate::per_second(1000), 10);
  CHECK(report.violations == 0);
  CHECK(max_in_flight <= 500);
  // 300 stuck jobs: 3 attempts each, each timing out, then dead-lettered as failed with the timeout error.
  CHECK(m.attempt_timeouts == 900);
  CHECK(m.retried == 600);
  CHECK(m.dead_lettered.failed == 300);
  CHECK(out.by_error[levee::attempt_errc::timeout] == 300);
  CHECK(m.succeeded == 2700);
  for (int i = 0; i < n; i += 10) CHECK(attempts_of[i] == 3);
  // The stuck completions fire later and are counted, not applied.
  lev.run_until(clk.now() + 2s);
  CHECK(lev.metrics().late_completions == 900);
  CHECK(lev.metrics().succeeded == 2700);
  for (int i = 0; i < n; ++i) CHECK(out.finals[i] == 1);
}

TEST_CASE("async: a completion fired inside the handler settles after it returns, without recursion") {
  levee::manual_clock clk;
  sim_leveler::options o;
  o.workers = 0;
  o.capacity = 300'000;
  o.retry.max_attempts = 2;
  o.retry.budget_ratio = 10;
  int depth = 0, max_depth = 0, calls = 0;
  sim_leveler lev(
      o,
      [&](int& id, levee::completion done) {
        ++depth;
        max_depth = std::max(max_depth, depth);
        ++calls;
        if (id % 2 == 0) {
          std::move(done).succeed();
        } else {
          std::move(done).fail(std::make_error_code(std::errc::connection_refused));
        }
        CHECK_FALSE(done.valid());
        --depth;
      },
      clk);
  const int n = 200'000;
  for (int i = 0; i < n; ++i) REQUIRE(lev.try_submit(i));
  lev.drain();
  const auto m = lev.metrics();
  CHECK(max_depth == 1);
  CHECK(m.succeeded == n / 2);
  CHECK(m.dead_lettered.failed == n / 2);
  CHECK(m.in_flight == 0);
  CHECK(calls == n + n / 2);
}

TEST_CASE("async: a completion destroyed unfired fails the attempt as abandoned, and returns the permit") {
  levee::manual_clock clk;
  sim_leveler::options o;
  o.workers = 0;
  o.max_concurrency = 1;
  outcomes out;
  o.dead_letter = out.sink();
  sim_leveler lev(
      o, [](int&, levee::completion) { /* dropped */ }, clk);
  REQUIRE(lev.try_submit(1));
  REQUIRE(lev.try_submit(2));
  lev.drain();  // with one permit, the second job runs only if the first returned it
  const auto m = lev.metrics();
  CHECK(m.abandoned == 2);
  CHECK(m.dead_lettered.failed == 2);
  CHECK(out.by_error[levee::attempt_errc::abandoned] == 2);
  CHECK(m.in_flight == 0);
}

TEST_CASE(
    "async: a completion fired after the timeout is ignored and counted; its stop_token was requested") {
  levee::manual_clock clk;
  sim_leveler::options o;
  o.workers = 0;
  o.attempt_timeout = 50ms;
  outcomes out;
  o.dead_letter = out.sink();
  std::optional<levee::completion> kept;
  std::stop_token token;
  sim_leveler lev(
      o,
      [&](int&, levee::completion done) {
        token = done.stop_token();
        kept.emplace(std::move(done));
      },
      clk);
  REQUIRE(lev.try_submit(7));
  (void)lev.step();
  CHECK(lev.metrics().in_flight == 1);
  CHECK_FALSE(token.stop_requested());
  REQUIRE(lev.next_event().has_value());
  CHECK(*lev.next_event() == clk.now() + 50ms);
  lev.run_until(clk.now() + 49ms);
  CHECK(lev.metrics().in_flight == 1);
  lev.run_until(clk.now() + 1ms);
  auto m = lev.metrics();
  CHECK(token.stop_requested());
  CHECK(m.in_flight == 0);
  CHECK(m.attempt_timeouts == 1);
  CHECK(m.dead_lettered.failed == 1);
  CHECK(out.by_error[levee::attempt_errc::timeout] == 1);
  CHECK(m.late_completions == 0);
  std::move(*kept).succeed();
  m = lev.metrics();
  CHECK(m.late_completions == 1);
  CHECK(m.succeeded == 0);
  CHECK(out.finals[7] == 1);
}

TEST_CASE("async: a per-backend attempt timeout overrides options.attempt_timeout") {
  levee::manual_clock clk;
  sim_leveler::options o;
  o.workers = 0;
  o.attempt_timeout = 1s;
  std::vector<levee::completion> held;
  sim_leveler lev(o, clk);
  levee::backend_options bo;
  bo.attempt_timeout = 10ms;
  (void)lev.add_backend([&](int&, levee::completion done) { held.push_back(std::move(done)); }, bo);
  REQUIRE(lev.try_submit(1));
  (void)lev.step();
  lev.run_until(clk.now() + 10ms);
  CHECK(lev.metrics().attempt_timeouts == 1);
}

TEST_CASE("async: synchronous and asynchronous backends mix in one leveler") {
  levee::manual_clock clk;
  sim_leveler::options o;
  o.workers = 0;
  sim_leveler* lp = nullptr;
  int sync_runs = 0, async_runs = 0;
  sim_leveler lev(o, clk);
  lp = &lev;
  (void)lev.add_backend([&](int&) { ++sync_runs; });
  (void)lev.add_backend([&](int&, levee::completion done) {
    ++async_runs;
    lp->post_at(lp->get_clock().now() + 5ms, [d = std::move(done)]() mutable { std::move(d).succeed(); });
  });
  for (int i = 0; i < 100; ++i) REQUIRE(lev.try_submit(i));
  lev.drain();
  CHECK(sync_runs == 50);
  CHECK(async_runs == 50);
  CHECK(lev.metrics().succeeded == 100);
}

TEST_CASE(
    "async: a handler that throws fails the attempt with its exception, even after handing off the "
    "completion") {
  levee::manual_clock clk;
  sim_leveler::options o;
  o.workers = 0;
  std::exception_ptr seen;
  o.dead_letter = [&](int&&, levee::dead_letter_reason, std::exception_ptr e) { seen = e; };
  std::optional<levee::completion> stash;
  sim_leveler lev(
      o,
      [&](int&, levee::completion done) {
        stash.emplace(std::move(done));
        throw std::runtime_error("could not start");
      },
      clk);
  REQUIRE(lev.try_submit(1));
  lev.drain();
  REQUIRE(seen);
  CHECK_THROWS_WITH_AS(std::rethrow_exception(seen), "could not start", std::runtime_error);
  std::move(*stash).succeed();  // late
  CHECK(lev.metrics().late_completions == 1);
  CHECK(lev.metrics().succeeded == 0);
}

TEST_CASE("async: without a concurrency gate, options.max_async_in_flight bounds the attempts in flight") {
  levee::manual_clock clk;
  sim_leveler::options o;
  o.workers = 0;
  o.max_async_in_flight = 5;
  sim_leveler* lp = nullptr;
  std::size_t peak = 0;
  sim_leveler lev(
      o,
      [&](int&, levee::completion done) {
        peak = std::max<std::size_t>(peak, lp->metrics().in_flight);
        lp->post_at(lp->get_clock().now() + 1ms, [d = std::move(done)]() mutable { std::move(d).succeed(); });
      },
      clk);
  lp = &lev;
  for (int i = 0; i < 100; ++i) REQUIRE(lev.try_submit(i));
  (void)lev.step();
  CHECK(lev.metrics().in_flight == 5);
  lev.drain();
  CHECK(peak == 5);
  CHECK(lev.metrics().succeeded == 100);
}

TEST_CASE("async: bad options are refused with the option's name") {
  sim_leveler::options o;
  o.workers = 0;
  o.attempt_timeout = 0ms;
  CHECK_THROWS_WITH_AS(sim_leveler{o}, doctest::Contains("options.attempt_timeout"), std::invalid_argument);
  o.attempt_timeout.reset();
  o.max_async_in_flight = 0;
  CHECK_THROWS_WITH_AS(sim_leveler{o}, doctest::Contains("options.max_async_in_flight"),
                       std::invalid_argument);
  o.max_async_in_flight = 1;
  sim_leveler lev(o);
  levee::backend_options bo;
  bo.attempt_timeout = -1ms;
  CHECK_THROWS_AS((void)lev.add_backend([](int&, levee::completion) {}, bo), std::invalid_argument);
  CHECK(lev.backend_count() == 0);
}

TEST_CASE("async: a synchronous attempt past its timeout is counted; its result stands") {
  levee::manual_clock clk;
  sim_leveler::options o;
  o.workers = 0;
  o.attempt_timeout = 10ms;
  sim_leveler lev(
      o, [&](int&) { clk.advance(20ms); }, clk);
  REQUIRE(lev.try_submit(1));
  lev.drain();
  CHECK(lev.metrics().attempt_timeouts == 1);
  CHECK(lev.metrics().succeeded == 1);
}

TEST_CASE(
    "async: stop() requests stop on attempts in flight, cancels the rest, and waits for the completions") {
  levee::leveler<int>::options o;
  o.workers = 2;
  o.max_concurrency = 4;
  outcomes out;
  o.dead_letter = out.sink();
  std::mutex m, fm;
  std::vector<std::unique_ptr<std::stop_callback<std::function<void()>>>> callbacks;
  std::atomic<int> succeeded{0};
  std::vector<std::jthread> finishers;
  levee_test::within(60s, "stop with async attempts", [&] {
    levee::leveler<int> lev(o, [&](int& id, levee::completion done) {
      // Each attempt finishes only when asked to stop, from another thread.
      auto d = std::make_shared<levee::completion>(std::move(done));
      std::lock_guard l(m);
      const auto token = d->stop_token();
      callbacks.push_back(std::make_unique<std::stop_callback<std::function<void()>>>(
          token, std::function<void()>([&, d, id] {
            std::lock_guard fl(fm);
            finishers.emplace_back([&, d, id] {
              succeeded.fetch_add(1);
              out.final_state(id);
              std::move(*d).succeed();
            });
          })));
    });
    for (int i = 0; i < 20; ++i) REQUIRE(lev.try_submit(i));
    REQUIRE(levee_test::eventually([&] { return lev.metrics().in_flight == 4; }));
    lev.stop();
    const auto mt = lev.metrics();
    CHECK(mt.in_flight == 0);
    CHECK(mt.succeeded == 4);
    CHECK(mt.dead_lettered.cancelled == 16);
    {
      std::lock_guard fl(fm);
      for (auto& t : finishers) t.join();
      finishers.clear();
    }
    std::lock_guard l(m);
    callbacks.clear();
  });
  CHECK(succeeded.load() == 4);
  for (int i = 0; i < 20; ++i) CHECK(out.finals[i] == 1);
}

TEST_CASE("async: drain() waits for completions fired from another thread; workers park meanwhile") {
  levee::leveler<int>::options o;
  o.workers = 2;
  o.max_concurrency = 2000;
  o.capacity = 20'000;
  std::atomic<int> done_count{0};
  levee_test::within(60s, "drain with a reactor", [&] {
    reactor r;
    levee::leveler<int> lev(o, [&](int&, levee::completion done) {
      r.at(std::chrono::steady_clock::now() + 20ms, std::move(done));
    });
    const int n = LEVEE_TEST_SANITIZED ? 4'000 : 20'000;
    for (int i = 0; i < n; ++i) REQUIRE(lev.submit(i));
    // Thousands of calls in flight on two worker threads.
    CHECK(levee_test::eventually([&] { return lev.metrics().in_flight >= 1000; }));
    lev.drain();
    const auto m = lev.metrics();
    CHECK(m.succeeded == static_cast<std::uint64_t>(n));
    CHECK(m.in_flight == 0);
    done_count = static_cast<int>(m.succeeded);
  });
  CHECK(done_count.load() > 0);
}

TEST_CASE("async: a completion that outlives its leveler is safe to fire or drop") {
  std::vector<levee::completion> kept;
  {
    levee::manual_clock clk;
    sim_leveler::options o;
    o.workers = 0;
    o.attempt_timeout = 1ms;
    sim_leveler lev(
        o, [&](int&, levee::completion done) { kept.push_back(std::move(done)); }, clk);
    for (int i = 0; i < 3; ++i) REQUIRE(lev.try_submit(i));
    (void)lev.step();
    lev.run_until(clk.now() + 1ms);  // all three time out
    CHECK(lev.metrics().attempt_timeouts == 3);
  }
  std::move(kept[0]).succeed();
  std::move(kept[1]).fail();
  kept.clear();  // the third is dropped
}

TEST_CASE("async stress: completions from 4 threads race timeouts, stop(), backend removal and retries") {
  const int rounds = LEVEE_TEST_SANITIZED ? 3 : 10;
  for (int round = 0; round < rounds; ++round) {
    levee::leveler<int>::options o;
    o.workers = 2;
    o.capacity = 4096;
    o.max_concurrency = 64;
    o.attempt_timeout = 2ms;
    o.retry.max_attempts = 3;
    o.retry.base_backoff = 0ms;
    o.retry.max_backoff = 1ms;
    o.retry.budget_ratio = 100;
    outcomes out;
    o.dead_letter = out.sink();
    std::mutex m;
    std::deque<std::pair<levee::completion, int>> pending;
    std::atomic<bool> quit{false};
    std::atomic<std::uint64_t> fired{0};
    levee_test::within(120s, "async stress round", [&] {
      std::vector<std::jthread> firers;
      {
        levee::leveler<int> lev(o);
        auto handler = [&](int& id, levee::completion done) {
          std::lock_guard l(m);
          pending.emplace_back(std::move(done), id);
        };
        const auto b1 = lev.add_backend(handler);
        const auto b2 = lev.add_backend(handler);
        auto firer = [&](int t) {
          std::uint64_t x = std::uint64_t{0x9e3779b97f4a7c15} * static_cast<std::uint64_t>(t + 1 + round * 7);
          while (!quit.load()) {
            std::optional<std::pair<levee::completion, int>> p;
            {
              std::lock_guard l(m);
              if (!pending.empty()) {
                p.emplace(std::move(pending.front()));
                pending.pop_front();
              }
            }
            if (!p) {
              std::this_thread::yield();
              continue;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            switch (x % 4) {
              case 0:
                std::move(p->first).succeed();
                break;
              case 1:
                std::move(p->first).fail();
                break;
              case 2:
                break;  // abandoned
              default:
                std::this_thread::sleep_for(std::chrono::microseconds(x % 3000));  // races the timeout
                std::move(p->first).succeed();
            }
            fired.fetch_add(1);
          }
        };
        for (int t = 0; t < 4; ++t) firers.emplace_back(firer, t);
        const int n = LEVEE_TEST_SANITIZED ? 1500 : 5000;
        for (int i = 0; i < n; ++i) {
          REQUIRE(lev.submit(i));
          if (i == n / 2) CHECK(lev.remove_backend(b1));
        }
        if (round % 2 == 1) {
          // No leak: after a drain every permit and lease is back. The
          // remaining backend shows no lease in flight, and exactly
          // max_concurrency held attempts fit again.
          lev.drain();
          for (const auto& b : lev.metrics().backends) CHECK(b.in_flight == 0);
          CHECK(lev.metrics().in_flight == 0);
          quit = true;
          for (auto& t : firers) t.join();
          firers.clear();
          {
            std::lock_guard l(m);
            pending.clear();  // completions of attempts already timed out: late or abandoned
          }
          // Held attempts that do not time out: exactly 64 permits are free.
          CHECK(lev.remove_backend(b2));
          levee::backend_options held;
          held.attempt_timeout = std::chrono::hours(1);
          (void)lev.add_backend(handler, held);
          for (int i = 0; i < 100; ++i) REQUIRE(lev.submit(n + i));
          CHECK(levee_test::eventually([&] { return lev.metrics().in_flight == 64; }));
          CHECK(lev.metrics().outstanding == 100);  // 36 wait: queued, or held by a worker at the gate
          quit = false;
          firers.emplace_back(firer, 4);  // finishes them (stop() waits for their completions)
        } else {
          std::this_thread::sleep_for(std::chrono::milliseconds(round % 3) * 5);  // stop at varying points
        }
        lev.stop();
        const auto mt = lev.metrics();
        CHECK(mt.in_flight == 0);
        CHECK(mt.outstanding == 0);
        CHECK(mt.succeeded + mt.dead_lettered.failed + mt.dead_lettered.cancelled +
                  mt.dead_lettered.expired ==
              mt.accepted);
        CHECK(mt.accepted == static_cast<std::uint64_t>(round % 2 == 1 ? n + 100 : n));
        CHECK(mt.late_completions <= mt.attempt_timeouts);
      }
      quit = true;
      for (auto& t : firers) t.join();
      std::lock_guard l(m);
      pending.clear();  // completions of a destroyed leveler: abandoned safely
    });
    for (const auto& [id, count] : out.finals) CHECK(count == 1);  // dead-lettered at most once
  }
}
