// Tests for levee/rate_limiter.hpp. All on levee::manual_clock: nothing sleeps
// on real time except the bounded waits in the blocking tests.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <levee/conformance.hpp>
#include <levee/rate_limiter.hpp>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "eventually.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using levee::manual_clock;
using levee::rate;
using limiter = levee::rate_limiter<manual_clock>;
using tp = manual_clock::time_point;

namespace {

constexpr std::size_t scaled(std::size_t n) { return LEVEE_TEST_SANITIZED ? n / 8 : n; }

tp at_ns(std::int64_t ns) { return tp(std::chrono::nanoseconds(ns)); }

// Greedy demand on a virtual time line: at each step, random-size requests are
// made until one fails; time then advances by a random step in [0, max_step].
// Returns the admission time of every permit.
std::vector<tp> greedy_run(limiter& lim, std::int64_t start_ns, std::int64_t max_step_ns, std::size_t permits,
                           std::uint64_t max_n, std::uint32_t seed, std::int64_t* end_ns = nullptr) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> step(0, max_step_ns);
  std::uniform_int_distribution<std::uint64_t> size(1, max_n);
  std::vector<tp> out;
  out.reserve(permits + max_n);
  std::int64_t t = start_ns;
  while (out.size() < permits) {
    const tp now = at_ns(t);
    for (;;) {
      const std::uint64_t n = size(rng);
      if (!lim.try_acquire(n, now)) break;
      out.insert(out.end(), n, now);
    }
    t += step(rng);
  }
  if (end_ns != nullptr) *end_ns = t;
  return out;
}

}  // namespace

TEST_CASE("rate: exact fractions, readable constructors") {
  constexpr rate r = rate::per_second(1000);
  static_assert(r.count() == 1 && r.period() == 1ms, "per_second(1000) must reduce to 1 per 1 ms");
  CHECK(rate::every(2ms) == rate::per(1, 2ms));
  CHECK(rate::per(6, 3s) == rate::per_second(2));
  CHECK(rate::per_second(2.0) == rate::per_second(2));
  CHECK(rate::per_second(0.5) == rate::every(2s));
  CHECK(rate::per_second(1000).emission_interval() == 1ms);
  CHECK(rate::per_second(3).emission_interval() == 333333333ns);
  CHECK(rate::per_second(1e-3).emission_interval() == std::chrono::nanoseconds(1'000'000'000'000));
  CHECK(rate::per_second(2.5).per_second_value() == doctest::Approx(2.5).epsilon(1e-15));
  CHECK(rate::per_second(123456.789).per_second_value() == doctest::Approx(123456.789).epsilon(1e-15));
  CHECK(rate::per_second(1e-3).per_second_value() == doctest::Approx(1e-3).epsilon(1e-15));
  CHECK(rate::per_second(1'000'000'000).emission_interval() == 1ns);
}

TEST_CASE("rate and limiter: bad input throws std::invalid_argument") {
  CHECK_THROWS_AS(rate::per_second(0), std::invalid_argument);
  CHECK_THROWS_AS(rate::per_second(-5), std::invalid_argument);
  CHECK_THROWS_AS(rate::per_second(0.0), std::invalid_argument);
  CHECK_THROWS_AS(rate::per_second(-1.5), std::invalid_argument);
  CHECK_THROWS_AS(rate::per_second(std::nan("")), std::invalid_argument);
  CHECK_THROWS_AS(rate::per_second(std::numeric_limits<double>::infinity()), std::invalid_argument);
  CHECK_THROWS_AS(rate::per_second(1e-300), std::invalid_argument);
  CHECK_THROWS_AS(rate::per(0, 1s), std::invalid_argument);
  CHECK_THROWS_AS(rate::per(1, 0ns), std::invalid_argument);
  CHECK_THROWS_AS(rate::per(1, -1s), std::invalid_argument);
  CHECK_THROWS_AS(rate::every(0ns), std::invalid_argument);
  CHECK_THROWS_WITH_AS(rate::per_second(std::nan("")), doctest::Contains("levee::rate::per_second"),
                       std::invalid_argument);

  manual_clock clk;
  CHECK_THROWS_AS(limiter(rate::per_second(10), 0, clk), std::invalid_argument);
  CHECK_THROWS_AS(limiter(rate::per(1, std::chrono::hours(24 * 365 * 100)), 1'000'000, clk),
                  std::invalid_argument);
  limiter lim(rate::per_second(10), 3, clk);
  CHECK_FALSE(lim.try_acquire(4, clk.now()));  // n > burst: never
  CHECK_THROWS_AS(lim.acquire(4), std::invalid_argument);
  CHECK_THROWS_AS((void)lim.reserve(4), std::invalid_argument);
  CHECK_THROWS_AS((void)lim.available_at(4), std::invalid_argument);
  CHECK_THROWS_AS((void)lim.try_acquire_for(4, 1s), std::invalid_argument);
  CHECK_THROWS_AS(lim.set_burst(0), std::invalid_argument);
  CHECK(lim.try_acquire(0, clk.now()));  // n == 0 is trivially satisfied
  CHECK(lim.burst() == 3);
}

TEST_CASE("fresh limiter is full; then one permit per emission interval") {
  manual_clock clk(at_ns(5'000'000'000));
  limiter lim(rate::per_second(10), 3, clk);
  const tp t0 = clk.now();
  CHECK(lim.available(t0) == 3);
  CHECK(lim.try_acquire(2, t0));
  CHECK(lim.try_acquire(1, t0));
  CHECK_FALSE(lim.try_acquire(1, t0));
  CHECK(lim.available_at(1, t0) == t0 + 100ms);
  CHECK_FALSE(lim.try_acquire(1, t0 + 100ms - 1ns));
  CHECK(lim.try_acquire(1, t0 + 100ms));
  CHECK(lim.available_at(2, t0 + 100ms) == t0 + 300ms);
  CHECK(lim.try_acquire(3, t0 + 400ms));  // refilled to the full burst, not beyond
  CHECK_FALSE(lim.try_acquire(1, t0 + 400ms));
  CHECK(lim.available(t0 + 10s) == 3);
}

TEST_CASE("available_at is exactly the first time try_acquire succeeds") {
  for (const rate r :
       {rate::per_second(3), rate::per_second(777.7), rate::per(7, 3s), rate::per_second(1'000'000)}) {
    manual_clock clk;
    limiter lim(r, 4, clk);
    std::mt19937_64 rng(42);
    tp now = clk.now();
    for (int i = 0; i < 500; ++i) {
      const std::uint64_t n = 1 + rng() % 4;
      const tp at = lim.available_at(n, now);
      CHECK(at >= now);
      if (at > now) CHECK_FALSE(lim.try_acquire(n, at - 1ns));
      CHECK(lim.try_acquire(n, at));
      now = at + std::chrono::nanoseconds(static_cast<std::int64_t>(rng() % 3));
    }
  }
}

TEST_CASE("envelope: 0 violations from 1e-3/s to 1e6/s, several bursts, long virtual runs") {
  const double rates[] = {1e-3, 0.37, 1.0, 7.0, 1000.0, 33333.3, 1e6};
  const std::uint64_t bursts[] = {1, 3, 50};
  std::uint32_t seed = 1;
  for (const double per_s : rates) {
    for (const std::uint64_t b : bursts) {
      const rate r = rate::per_second(per_s);
      const auto t_ns = static_cast<std::int64_t>(1e9 / per_s);
      for (const std::int64_t start : {std::int64_t{0}, std::int64_t{-3'000'000'000'000'000'000},
                                       std::int64_t{4'000'000'000'000'000'000}}) {
        if (per_s < 1.0 && start != 0) continue;  // keep virtual time within int64
        manual_clock clk(at_ns(start));
        limiter lim(r, b, clk);
        const std::size_t permits = scaled(per_s < 1.0 ? 20'000 : 60'000);
        // steps up to 3 intervals: both saturated stretches and refills
        const auto adm = greedy_run(lim, start, std::max<std::int64_t>(1, 3 * t_ns), permits, b, seed++);
        const auto rep = levee::check_conformance(adm, r, b);
        INFO("rate " << per_s << "/s burst " << b << " start " << start);
        CHECK(rep.ok);
        CHECK(rep.violations == 0);
        // ...and the checker is tight: one more permit than the envelope is caught.
        auto tighter = levee::check_conformance(adm, r, b > 1 ? b - 1 : 1);
        if (b > 1) CHECK_FALSE(tighter.ok);
      }
    }
  }
}

TEST_CASE("extreme rates: one per 1000 days and 1e9 per second") {
  {
    manual_clock clk;
    const rate r = rate::per(1, std::chrono::hours(24 * 1000));
    limiter lim(r, 5, clk);
    // 80 permits span ~6e18 ns: as much of the int64 time line as fits
    const auto adm = greedy_run(lim, 0, 86'400'000'000'000'000, 80, 5, 7);
    CHECK(levee::check_conformance(adm, r, 5).ok);
    CHECK(lim.resolution_bits() == 0);
  }
  {
    manual_clock clk(at_ns(1'700'000'000'000'000'000));
    const rate r = rate::per_second(1'000'000'000);
    limiter lim(r, 16, clk);
    std::int64_t end = 0;
    const std::int64_t start = clk.now().time_since_epoch().count();
    const auto adm = greedy_run(lim, start, 15, scaled(400'000), 1, 9, &end);  // steps < burst: nothing lost
    CHECK(levee::check_conformance(adm, r, 16).ok);
    // 1 ns exactly: burst + one permit per elapsed ns, no drift
    const auto elapsed = adm.back().time_since_epoch().count() - start;
    CHECK(static_cast<std::int64_t>(adm.size()) == 16 + elapsed);
  }
}

TEST_CASE("long-run accuracy within 0.1% while demand exceeds the rate") {
  // Non-round rates on purpose: their intervals are not whole nanoseconds.
  const rate rates[] = {rate::per_second(1000),    rate::per_second(999.9),    rate::per_second(33333.3),
                        rate::per(7, 3s),          rate::per_second(123456.7), rate::per_second(1'000'000),
                        rate::per_second(987654.3)};
  for (const rate r : rates) {
    for (const std::uint64_t b : {std::uint64_t{1}, std::uint64_t{4}}) {
      manual_clock clk;
      limiter lim(r, b, clk);
      const double t_ns = 1e9 / r.per_second_value();
      const std::size_t permits = scaled(200'000);
      std::vector<tp> adm;
      if (b == 1) {
        // burst 1 cannot make up for a late caller, so the caller comes back
        // exactly at available_at() (as the leveler does); the only loss is
        // available_at's rounding up to a whole ns.
        tp now = clk.now();
        while (adm.size() < permits) {
          if (lim.try_acquire(1, now)) adm.push_back(now);
          now = lim.available_at(1, now);
        }
      } else {
        // burst 4 absorbs any lateness below 3 intervals: random steps up to 2.5
        adm = greedy_run(lim, 0, static_cast<std::int64_t>(2.5 * t_ns), permits, 1, 11);
      }
      const double elapsed_s = static_cast<double>(adm.back().time_since_epoch().count()) * 1e-9;
      const double achieved = static_cast<double>(adm.size() - b) / elapsed_s;
      INFO("rate " << r.per_second_value() << " burst " << b << " achieved " << achieved);
      CHECK(std::abs(achieved / r.per_second_value() - 1.0) <= 0.001);
      CHECK(levee::check_conformance(adm, r, b).ok);
    }
  }
}

TEST_CASE("stale and backwards now: single thread, deterministic") {
  manual_clock clk;
  limiter lim(rate::every(10ns), 1, clk);
  CHECK(lim.try_acquire(1, at_ns(1000)));
  // The x/time class of bug: alternating a stale and a fresh time must not
  // mint permits.
  CHECK_FALSE(lim.try_acquire(1, at_ns(500)));
  CHECK_FALSE(lim.try_acquire(1, at_ns(1005)));
  CHECK_FALSE(lim.try_acquire(1, at_ns(0)));
  CHECK(lim.try_acquire(1, at_ns(1010)));
  CHECK_FALSE(lim.try_acquire(1, at_ns(1000)));
  CHECK_FALSE(lim.try_acquire(1, at_ns(1015)));
  CHECK(lim.try_acquire(1, at_ns(1020)));
}

TEST_CASE("out-of-order and backwards now from several threads: 0 violations") {
  for (const std::uint64_t b : {std::uint64_t{1}, std::uint64_t{8}}) {
    const rate r = rate::every(100ns);
    manual_clock clk;
    limiter lim(r, b, clk);
    std::atomic<std::int64_t> frontier{0};
    constexpr int threads = 4;
    const std::size_t attempts = scaled(80'000);
    std::vector<std::vector<tp>> got(threads);
    std::vector<std::thread> ts;
    for (int i = 0; i < threads; ++i) {
      ts.emplace_back([&, i] {
        std::mt19937_64 rng(static_cast<std::uint64_t>(i) * 7919U + b);
        for (std::size_t k = 0; k < attempts; ++k) {
          // every thread advances the shared frontier a little, then uses a
          // time up to 20 intervals stale, sometimes far in the past
          const std::int64_t f = frontier.fetch_add(static_cast<std::int64_t>(rng() % 40));
          std::int64_t t = f - static_cast<std::int64_t>(rng() % 2000);
          if (rng() % 64 == 0) t = f - static_cast<std::int64_t>(rng() % 1'000'000);
          const std::uint64_t n = 1 + rng() % b;
          if (lim.try_acquire(n, at_ns(t)))
            got[static_cast<std::size_t>(i)].insert(got[static_cast<std::size_t>(i)].end(), n, at_ns(t));
        }
      });
    }
    for (auto& t : ts) t.join();
    std::vector<tp> all;
    for (auto& g : got) all.insert(all.end(), g.begin(), g.end());
    const auto rep = levee::check_conformance(all, r, b);
    INFO("burst " << b << " admitted " << all.size() << " worst excess " << rep.max_excess);
    CHECK(rep.ok);
    // sanity: the run was saturated, not trivially idle
    const double span = static_cast<double>(frontier.load());
    CHECK(static_cast<double>(all.size()) > 0.1 * span / 100.0);
  }
}

TEST_CASE("reservations: order, cancel and refund") {
  manual_clock clk;
  limiter lim(rate::per_second(1), 1, clk);
  const tp t0 = clk.now();
  auto r1 = lim.reserve(1, t0);
  auto r2 = lim.reserve(1, t0);
  auto r3 = lim.reserve(1, t0);
  REQUIRE((r1 && r2 && r3));
  CHECK(r1.ready_at() == t0);
  CHECK(r2.ready_at() == t0 + 1s);
  CHECK(r3.ready_at() == t0 + 2s);
  CHECK(r3.delay_from(t0) == 2s);
  CHECK(r2.cancel() == false);  // r3 depends on it: no refund
  CHECK(r3.cancel() == true);   // the latest: refunded exactly
  CHECK(r3.cancel() == false);  // spent
  auto r4 = lim.reserve(1, t0);
  CHECK(r4.ready_at() == t0 + 2s);  // r3's slot, not r2's
  CHECK(r4.cancel());
  // after an admission, an earlier reservation cannot be refunded either
  auto r5 = lim.reserve(1, t0 + 5s);
  CHECK(r5.ready_at() == t0 + 5s);
  CHECK(lim.try_acquire(1, t0 + 6s));
  CHECK_FALSE(r5.cancel());
  // a reconfiguration makes outstanding reservations non-refundable
  auto r6 = lim.reserve(1, t0 + 6s);
  lim.set_burst(1);
  CHECK_FALSE(r6.cancel());
  // moved-from handles are empty
  auto r7 = lim.reserve(1, t0 + 20s);
  auto r8 = std::move(r7);
  CHECK_FALSE(r7.ok());
  CHECK(r8.cancel());
}

TEST_CASE("reservations: a large n is not starved by a stream of small requests") {
  manual_clock clk;
  const rate r = rate::per_second(1000);
  limiter lim(r, 10, clk);
  REQUIRE(lim.try_acquire(10, clk.now()));  // empty
  const tp t0 = clk.now();
  auto big = lim.reserve(10, t0 + 1ms);
  REQUIRE(big);
  CHECK(big.ready_at() == t0 + 10ms);
  std::vector<tp> admitted(10, big.ready_at());
  // small requests every 100 us: none gets in before the big one is served,
  // and reserved small ones queue behind it in order
  tp last_ready = big.ready_at();
  for (int i = 1; i <= 300; ++i) {
    const tp now = t0 + std::chrono::microseconds(100 * i);
    if (now < big.ready_at()) CHECK_FALSE(lim.try_acquire(1, now));
    if (i % 3 == 0) {
      auto s = lim.reserve(1, now);
      CHECK(s.ready_at() >= last_ready);
      last_ready = s.ready_at();
      admitted.push_back(s.ready_at());
    } else if (lim.try_acquire(1, now)) {
      admitted.push_back(now);
    }
  }
  std::vector<tp> all{t0, t0, t0, t0, t0, t0, t0, t0, t0, t0};
  all.insert(all.end(), admitted.begin(), admitted.end());
  CHECK(levee::check_conformance(all, r, 10).ok);
}

TEST_CASE("set_rate: lowering allows no catch-up burst; the new envelope holds from then on") {
  const rate r1 = rate::per_second(1000);
  for (const rate r2 : {rate::per_second(10), rate::per_second(50'000)}) {
    manual_clock clk;
    limiter lim(r1, 10, clk);
    const tp t0 = clk.now();
    REQUIRE(lim.try_acquire(10, t0));
    const tp t1 = t0 + 5ms;  // 5 permits refilled at 1000/s
    CHECK(lim.available(t1) == 5);
    clk.set(t1);
    lim.set_rate(r2);
    CHECK(lim.get_rate() == r2);
    CHECK(lim.available(t1) == 5);  // debt kept in permits: no catch-up, no loss
    // greedy demand after the change obeys the new envelope exactly
    const double t_ns = 1e9 / r2.per_second_value();
    auto adm =
        greedy_run(lim, t1.time_since_epoch().count(), static_cast<std::int64_t>(2 * t_ns), 5000, 3, 5);
    CHECK(levee::check_conformance(adm, r2, 10).ok);
  }
}

TEST_CASE("set_rate with a reservation in flight: windows after the change fit the new envelope + 1") {
  for (const rate r2 : {rate::per_second(10), rate::per_second(100'000)}) {
    manual_clock clk;
    limiter lim(rate::per_second(1000), 5, clk);
    const tp t0 = clk.now();
    REQUIRE(lim.try_acquire(5, t0));
    auto res = lim.reserve(3, t0);  // due at t0 + 3 ms under the old rate
    REQUIRE(res);
    CHECK(res.ready_at() == t0 + 3ms);
    const tp t1 = t0 + 1ms;
    clk.set(t1);
    lim.set_rate(r2);
    std::vector<tp> after(3, res.ready_at());  // the reservation's permits are used when due
    const double t_ns = 1e9 / r2.per_second_value();
    const auto greedy =
        greedy_run(lim, t1.time_since_epoch().count(), static_cast<std::int64_t>(2 * t_ns), 3000, 2, 3);
    after.insert(after.end(), greedy.begin(), greedy.end());
    CHECK(levee::check_conformance(greedy, r2, 5).ok);     // admissions after the change: exact
    CHECK(levee::check_conformance(after, r2, 5 + 3).ok);  // + the in-flight reservation
    CHECK_FALSE(res.cancel());                             // reconfigured: no refund
  }
}

namespace {
// A clock that reads the shared virtual time line of the concurrent test
// below: set_rate() then takes `now` inside its seqlock write, so no thread
// can admit at a later time between that reading and the state change (a
// manual_clock set by the main thread beforehand could be stale by however
// long the main thread was descheduled, and the debt kept in permits would
// then be counted from a time the workers had already left behind).
struct frontier_clock {
  using rep = manual_clock::rep;
  using period = manual_clock::period;
  using duration = manual_clock::duration;
  using time_point = manual_clock::time_point;
  const std::atomic<std::int64_t>* frontier = nullptr;
  [[nodiscard]] time_point now() const noexcept { return at_ns(frontier->load()); }
};
static_assert(levee::clock<frontier_clock>);
}  // namespace

TEST_CASE("set_rate under concurrent demand: windows after the change obey the new envelope") {
  const rate r1 = rate::every(100ns), r2 = rate::every(1000ns);
  std::atomic<std::int64_t> frontier{0};
  levee::rate_limiter<frontier_clock> lim(r1, 4, frontier_clock{&frontier});
  std::atomic<bool> changed{false};
  std::atomic<std::size_t> progress{0};
  const std::size_t attempts = scaled(60'000);
  std::vector<std::vector<tp>> after(3);
  std::vector<std::thread> ts;
  for (int i = 0; i < 3; ++i) {
    ts.emplace_back([&, i] {
      std::mt19937_64 rng(static_cast<std::uint64_t>(i) + 99);
      for (std::size_t k = 0; k < attempts; ++k) {
        progress.fetch_add(1);
        // the last third always runs after the change (even if the main
        // thread is descheduled); the middle third races with it
        if (k == 2 * attempts / 3)
          while (!changed.load(std::memory_order_acquire)) std::this_thread::yield();
        const bool was_changed = changed.load(std::memory_order_acquire);
        const std::int64_t t = frontier.fetch_add(static_cast<std::int64_t>(rng() % 30));
        if (lim.try_acquire(1, at_ns(t)) && was_changed)
          after[static_cast<std::size_t>(i)].push_back(at_ns(t));
      }
    });
  }
  while (progress.load() < attempts) std::this_thread::yield();  // a third of the run
  lim.set_rate(r2);
  changed.store(true, std::memory_order_release);
  for (auto& t : ts) t.join();
  std::vector<tp> all;
  for (auto& a : after) all.insert(all.end(), a.begin(), a.end());
  // the last third alone spans >= 3 * attempts / 3 * 14.5 ns of virtual time on average
  const double span_ns = static_cast<double>(attempts) * 14.5;
  INFO("admitted after change " << all.size() << ", expected about " << span_ns / 1000.0);
  REQUIRE(static_cast<double>(all.size()) > 0.5 * span_ns / 1000.0);
  // every admission seen after set_rate returned obeys r2's envelope (+0: no in-flight slack needed)
  const auto rep = levee::check_conformance(all, r2, 4);
  INFO("excess " << rep.max_excess);
  CHECK(rep.ok);
}

TEST_CASE("set_burst: lowering caps the bucket, raising does not hand out the extra capacity at once") {
  manual_clock clk;
  limiter lim(rate::per_second(100), 10, clk);
  const tp t0 = clk.now();
  REQUIRE(lim.try_acquire(4, t0));
  lim.set_burst(3);
  CHECK(lim.burst() == 3);
  CHECK(lim.available(t0) == 3);  // min(6 left, new burst 3)
  REQUIRE(lim.try_acquire(3, t0));
  CHECK(lim.available(t0) == 0);
  CHECK(lim.available(t0 + 10ms) == 1);
  lim.set_burst(20);
  CHECK(lim.available(t0) == 0);         // raising keeps the number available now
  CHECK(lim.available(t0 + 10ms) == 1);  // extra capacity accrues at the rate
  CHECK(lim.available(t0 + 50ms) == 5);
  CHECK(lim.available(t0 + 10s) == 20);
  // lowering with 5 of 20 available: 5 stay available under a burst of 8, 2 under a burst of 2
  clk.set(t0 + 50ms);
  lim.set_burst(8);
  CHECK(lim.available(t0 + 50ms) == 5);
  lim.set_burst(2);
  CHECK(lim.available(t0 + 50ms) == 2);
  CHECK(lim.available(t0 + 60ms) == 2);
}

TEST_CASE("set_burst: lowering then raising creates no debt without an admission (issue 15, defect 4)") {
  manual_clock clk;
  limiter lim(rate::per_second(5), 200, clk);
  for (int i = 0; i < 3; ++i) {
    lim.set_burst(1);
    lim.set_burst(200);
  }
  CHECK(lim.available_at(1) == clk.now());  // was now + 79.6 s
  CHECK(lim.available(clk.now()) == 1);     // the full bucket was capped at 1 by the first lowering
  for (int i = 0; i < 1000; ++i) {
    lim.set_burst(1);
    lim.set_burst(200);
  }
  CHECK(lim.available_at(1) == clk.now());  // was now + 11 h
  CHECK(lim.try_acquire(1, clk.now()));
  CHECK_FALSE(lim.try_acquire(1, clk.now()));
  CHECK(lim.available_at(1) == clk.now() + 200ms);
}

TEST_CASE("reconfigurations without admissions never take away an available permit (random sequences)") {
  // The invariant the fuzzer checks: when at least one permit is available,
  // no sequence of set_rate/set_burst calls (at any times, without
  // admissions) pushes available_at(1) beyond now + one emission interval;
  // and set_burst alone keeps it exactly at now.
  std::mt19937_64 rng(15);
  for (int trial = 0; trial < 200; ++trial) {
    manual_clock clk;
    limiter lim(rate::per_second(1000), 1 + rng() % 50, clk);
    // a random state with at least one permit available
    const std::uint64_t used = rng() % lim.burst();
    if (used > 0) REQUIRE(lim.try_acquire(used, clk.now()));
    REQUIRE(lim.available(clk.now()) >= 1);
    bool rate_changed = false;
    std::chrono::nanoseconds slowest{1'000'000};
    for (int step = 0; step < 40; ++step) {
      if (rng() % 3 == 0) {
        const auto interval = std::chrono::nanoseconds(100'000 * (1 + rng() % 40));
        slowest = std::max(slowest, interval);
        lim.set_rate(rate::every(interval));
        rate_changed = true;
      } else {
        lim.set_burst(1 + rng() % 300);
      }
      if (rng() % 4 == 0) clk.advance(std::chrono::nanoseconds(rng() % 1'000'000));
      INFO("trial " << trial << " step " << step);
      if (rate_changed)
        REQUIRE(lim.available_at(1) <= clk.now() + slowest);
      else
        REQUIRE(lim.available_at(1) == clk.now());
    }
  }
}

TEST_CASE("available_at(n): n > burst throws, n == burst of a full bucket is now, agrees with try_acquire") {
  manual_clock clk;
  limiter lim(rate::per_second(10), 4, clk);
  const tp t0 = clk.now();
  CHECK(lim.available_at(0, t0) == t0);
  CHECK(lim.available_at(4, t0) == t0);
  CHECK_THROWS_AS((void)lim.available_at(5, t0), std::invalid_argument);
  try {
    (void)lim.available_at(5, t0);
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("n = 5 exceeds burst 4") != std::string::npos);
  }
  CHECK_THROWS_AS((void)lim.reserve(5, t0), std::invalid_argument);
  CHECK_FALSE(lim.try_acquire(5, t0));  // try_ reports, never throws
  REQUIRE(lim.try_acquire(3, t0));
  for (std::uint64_t n = 1; n <= 4; ++n) {
    const tp at = lim.available_at(n, t0);
    CHECK(at == t0 + std::chrono::milliseconds(100 * static_cast<int>(n > 1 ? n - 1 : 0)));
    CHECK_FALSE(lim.try_acquire(n, at - 1ns));  // n permits are not there 1 ns earlier
  }
  const tp at4 = lim.available_at(4, t0);
  CHECK(lim.try_acquire(4, at4));
  // after lowering the burst, the old n throws (a stale burst must be re-read)
  lim.set_burst(2);
  CHECK_THROWS_AS((void)lim.available_at(3, at4), std::invalid_argument);
}

TEST_CASE("set_rate and set_burst: the envelope holds in every configuration segment") {
  for (const std::uint32_t seed : {1U, 2U, 3U, 4U}) {
    manual_clock clk;
    std::mt19937_64 rng(seed);
    rate r = rate::per_second(1000);
    std::uint64_t b = 5;
    limiter lim(r, b, clk);
    std::vector<tp> segment;
    std::size_t segments = 0, admitted = 0;
    auto close_segment = [&] {
      const auto rep = levee::check_conformance(segment, r, b);
      INFO("seed " << seed << " segment " << segments << " rate " << r.count() << "/" << r.period().count()
                   << " ns, burst " << b);
      CHECK(rep.ok);
      admitted += segment.size();
      segment.clear();
      ++segments;
    };
    for (int step = 0; step < 20'000; ++step) {
      const std::uint64_t dice = rng() % 100;
      if (dice < 90) {
        const std::uint64_t n = 1 + rng() % 3;
        if (lim.try_acquire(n, clk.now())) segment.insert(segment.end(), n, clk.now());
        clk.advance(std::chrono::nanoseconds(rng() % 700'000));
      } else if (dice < 95) {
        close_segment();
        r = rate::every(std::chrono::nanoseconds(200'000 * (1 + rng() % 10)));
        lim.set_rate(r);
      } else {
        close_segment();
        b = 1 + rng() % 12;
        lim.set_burst(b);
      }
    }
    close_segment();
    CHECK(segments > 1000);
    CHECK(admitted > 5000);
  }
}

TEST_CASE("acquire blocks on the manual clock and returns the admission time") {
  manual_clock clk;
  limiter lim(rate::per_second(10), 1, clk);
  std::vector<tp> got;
  std::atomic<bool> done{false};
  std::thread th([&] {
    for (int i = 0; i < 5; ++i) got.push_back(lim.acquire());
    done = true;
  });
  while (!done.load()) {
    clk.advance(7ms);
    std::this_thread::yield();
  }
  th.join();
  REQUIRE(got.size() == 5);
  for (std::size_t i = 0; i < got.size(); ++i)
    CHECK(got[i] >= tp(std::chrono::milliseconds(100 * static_cast<int>(i))));
  CHECK(levee::check_conformance(got, rate::per_second(10), 1).ok);
}

TEST_CASE("raising the rate wakes a sleeping acquire promptly") {
  manual_clock clk;
  limiter lim(rate::per(1, 1000s), 1, clk);
  REQUIRE(lim.try_acquire(1, clk.now()));
  std::atomic<bool> done{false};
  std::thread th([&] {
    lim.acquire();
    done = true;
  });
  // wait until it sleeps on the clock (until t = 1000 s): the wake-up path is what is tested
  const bool parked = levee_test::eventually([&] { return clk.waiters_approx() == 1; });
  CHECK(parked);
  lim.set_rate(rate::per_second(1000));
  clk.advance(1ms);  // enough under the new rate, far too little under the old one
  const bool woke = levee_test::eventually([&] { return done.load(); });
  if (!woke) clk.advance(2000s);  // release the thread so the test fails instead of hanging
  th.join();
  CHECK(woke);
}

TEST_CASE("lowering the burst below a waiter's n makes acquire throw instead of hanging") {
  manual_clock clk;
  limiter lim(rate::per_second(1), 3, clk);
  REQUIRE(lim.try_acquire(3, clk.now()));
  std::atomic<int> outcome{-1};
  std::thread th([&] {
    try {
      (void)lim.acquire(3);
      outcome = 1;
    } catch (const std::invalid_argument&) {
      outcome = 0;
    }
  });
  const bool parked = levee_test::eventually([&] { return clk.waiters_approx() == 1; });
  CHECK(parked);  // asleep in acquire(3): set_burst must wake it
  lim.set_burst(2);
  const bool ended = levee_test::eventually([&] { return outcome.load() >= 0; });
  CHECK(ended);
  if (!ended) clk.advance(1h);  // fail rather than hang
  th.join();
  CHECK(outcome.load() == 0);
}

TEST_CASE("set_burst raising a large debt stays within the horizon (no wrap to 'idle')") {
  manual_clock clk;
  // F = 0: the schedule may run 2^61 ns (~26.7 intervals of 1000 days) ahead
  const rate r = rate::per(1, std::chrono::hours(24 * 1000));
  CHECK_THROWS_AS(limiter(r, 14, clk), std::invalid_argument);  // 14 intervals exceed half the horizon
  limiter lim(r, 10, clk);
  const tp now = clk.now();
  REQUIRE(lim.try_acquire(10, now));
  auto a = lim.reserve(10, now);  // 20 intervals ahead
  auto b = lim.reserve(6, now);   // 26 intervals ahead
  auto c = lim.reserve(1, now);   // 27 > horizon: refused
  CHECK(a.ok());
  CHECK(b.ok());
  CHECK_FALSE(c.ok());
  lim.set_burst(13);  // would add 3 intervals of debt: capped at the horizon, not wrapped into the past
  CHECK(lim.available(now) == 0);
  CHECK_FALSE(lim.try_acquire(1, now));
  CHECK_FALSE(lim.try_acquire(1, now + std::chrono::hours(24 * 1000 * 5)));
}

TEST_CASE("a limiter left idle for any length of time is full again (the ring cannot alias)") {
  // 10k/s uses F = 8: the 2^64 ring spans 4 horizons of 2^53 ns (~104 days)
  // each; without the era check an idle gap of 3..4 horizons would read as a
  // schedule far in the future.
  constexpr std::int64_t horizon_ns = std::int64_t{1} << 53;
  for (const std::int64_t gap : {horizon_ns / 2, 2 * horizon_ns + 12345, 3 * horizon_ns + horizon_ns / 3,
                                 4 * horizon_ns - 1000, 9 * horizon_ns + 7}) {
    manual_clock clk;
    limiter lim(rate::per_second(10'000), 4, clk);
    REQUIRE(lim.resolution_bits() == 8);
    REQUIRE(lim.try_acquire(4, clk.now()));
    clk.advance(std::chrono::nanoseconds(gap));
    INFO("idle for " << gap << " ns");
    CHECK(lim.available(clk.now()) == 4);
    CHECK(lim.available_at(4, clk.now()) == clk.now());
    CHECK(lim.try_acquire(4, clk.now()));
    CHECK_FALSE(lim.try_acquire(1, clk.now()));
  }
  // also right after construction (no admission at all)
  manual_clock clk;
  limiter lim(rate::per_second(10'000), 4, clk);
  clk.advance(std::chrono::nanoseconds(3 * horizon_ns + 5));
  CHECK(lim.try_acquire(4, clk.now()));
  // and through set_rate / set_burst after a long idle period
  clk.advance(std::chrono::nanoseconds(3 * horizon_ns + 5));
  lim.set_rate(rate::per_second(20'000));
  lim.set_burst(6);
  CHECK(lim.available(clk.now()) == 4);  // raising the burst does not hand out the 2 extra at once
  CHECK(lim.available(clk.now() + 100us) == 6);
}

namespace {

__extension__ typedef __int128 i128;

// The GCRA of the header comment written out directly on unbounded integers
// (no ring, no eras, no parity bit, no fast path), in the limiter's own time
// unit (ticks of 2^-(F+1) ns) so that set_rate's documented rounding can be
// reproduced exactly. try_acquire's fast path, its out-of-line slow path and
// the era logic must all agree with it decision for decision.
struct reference_gcra {
  static constexpr i128 horizon = i128{1} << 62;
  unsigned shift;
  i128 interval, tau, burst, tat;
  std::uint64_t epoch = 0;

  [[nodiscard]] i128 ticks(std::int64_t ns) const { return i128{ns} << shift; }
  [[nodiscard]] i128 ahead(i128 now) const { return tat > now ? tat - now : 0; }
  bool try_acquire(std::uint64_t n, i128 now) {
    if (n == 0) return true;
    if (static_cast<i128>(n) > burst) return false;
    const i128 cost = static_cast<i128>(n) * interval;
    if (ahead(now) + cost > tau) return false;
    tat = std::max(tat, now) + cost;
    return true;
  }
  [[nodiscard]] std::uint64_t available(i128 now) const {
    const i128 a = ahead(now);
    return a >= tau ? 0 : static_cast<std::uint64_t>((tau - a) / interval);
  }
  void set_rate(i128 interval_new, i128 now) {
    const i128 a = ahead(now);
    if (a > 0) {  // the debt in permits, rounded up to an even tick, capped at the horizon
      i128 a_new = std::min((a * interval_new + interval - 1) / interval, horizon);
      a_new += a_new & 1;
      tat = now + a_new;
    }
    interval = interval_new;
    tau = burst * interval;
    ++epoch;
  }
  void set_burst(i128 b, i128 now) {
    const i128 tau_new = b * interval;
    if (tau_new > tau)
      tat = now + std::min(ahead(now) + (tau_new - tau), horizon);  // keeps tau - ahead
    else if (ahead(now) > 0)
      tat = now + std::max(ahead(now) - (tau - tau_new), i128{0});  // min(tau - ahead, tau_new)
    burst = b;
    tau = tau_new;
    ++epoch;
  }
};

}  // namespace

TEST_CASE(
    "try_acquire, reserve, cancel, set_rate and set_burst agree with a direct GCRA model, across eras") {
  // 10k/s: F = 8, an era is 2^53 ns. Start just before an era boundary so the
  // run crosses it (and later several more) with fresh and stale `now`.
  constexpr std::int64_t era_ns = std::int64_t{1} << 53;
  const std::int64_t start = 5 * era_ns - 2'000'000;
  for (const std::uint32_t seed : {1U, 2U, 3U}) {
    manual_clock clk(at_ns(start));
    limiter lim(rate::per_second(10'000), 3, clk);
    REQUIRE(lim.resolution_bits() == 8);
    const unsigned shift = lim.resolution_bits() + 1;
    auto interval_ticks = [&](std::int64_t interval_ns) {
      return 2 * (i128{interval_ns} << lim.resolution_bits());
    };
    reference_gcra ref{shift, interval_ticks(100'000), 0, 3, 0};
    ref.tau = ref.burst * ref.interval;
    ref.tat = ref.ticks(start) - reference_gcra::horizon;  // a fresh limiter is full

    struct pending {
      limiter::reservation r;
      i128 end, cost;
      std::uint64_t epoch;
    };
    std::vector<pending> held;
    std::mt19937_64 rng(seed);
    std::int64_t frontier = start;
    std::size_t admitted = 0, refused = 0, slow_eras = 0;
    const std::size_t steps = scaled(200'000);
    for (std::size_t i = 0; i < steps; ++i) {
      const std::uint64_t dice = rng() % 1000;
      // time: mostly small steps, sometimes an idle gap of up to 3 eras
      if (dice < 2) {
        frontier += static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(3 * era_ns));
      } else {
        frontier += static_cast<std::int64_t>(rng() % 60'000);
      }
      // `now`: usually the frontier, sometimes stale by up to 3 intervals or
      // by up to a quarter era (which reaches back into the previous era)
      std::int64_t now = frontier;
      const std::uint64_t stale = rng() % 16;
      if (stale == 0) now -= static_cast<std::int64_t>(rng() % 300'000);
      if (stale == 1 && rng() % 8 == 0)
        now -= static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(era_ns / 4));
      if ((now >> 53) != (frontier >> 53)) ++slow_eras;
      const i128 nt = ref.ticks(now);
      INFO("seed " << seed << " step " << i << " now " << now);
      if (dice < 960) {
        const std::uint64_t n = rng() % 5;  // 0..4 with burst 3 or 4: includes n > burst
        const bool want = ref.try_acquire(n, nt);
        REQUIRE(lim.try_acquire(n, at_ns(now)) == want);
        (want ? admitted : refused) += 1;
      } else if (dice < 975) {
        REQUIRE(lim.available(at_ns(now)) == ref.available(nt));
      } else if (dice < 985) {
        const std::uint64_t n = 1 + rng() % static_cast<std::uint64_t>(ref.burst);
        const i128 a = ref.ahead(nt), cost = static_cast<i128>(n) * ref.interval;
        auto r = lim.reserve(n, at_ns(now));
        REQUIRE(r.ok());
        // ready_at is a whole ns, and the schedule continues from it
        const i128 late = a + cost - ref.tau, unit = i128{1} << shift;
        const i128 late_rounded = late > 0 ? (late + unit - 1) / unit * unit : 0;
        const std::int64_t ready = now + static_cast<std::int64_t>(late_rounded >> shift);
        CHECK(r.ready_at() == at_ns(ready));
        const i128 base = std::max(ref.tat, nt);
        ref.tat = late > 0 ? nt + ref.tau + late_rounded : base + cost;
        held.push_back({std::move(r), ref.tat, ref.tat - base, ref.epoch});
      } else if (dice < 993) {
        if (!held.empty()) {
          const std::size_t k = static_cast<std::size_t>(rng() % held.size());
          pending p = std::move(held[k]);
          held.erase(held.begin() + static_cast<std::ptrdiff_t>(k));
          // refunded exactly when nothing was admitted, reserved or reconfigured since
          const bool refund = p.end == ref.tat && p.epoch == ref.epoch;
          REQUIRE(p.r.cancel() == refund);
          if (refund) ref.tat -= p.cost;
        }
      } else {
        // reconfiguration reads the limiter's clock: move it to the frontier
        clk.set(at_ns(frontier));
        const i128 nf = ref.ticks(frontier);
        if (dice < 997) {
          const std::int64_t interval_ns = std::int64_t{50'000} * static_cast<std::int64_t>(1 + rng() % 4);
          lim.set_rate(rate::every(std::chrono::nanoseconds(interval_ns)));
          ref.set_rate(interval_ticks(interval_ns), nf);
        } else {
          const std::uint64_t b = 3 + rng() % 2;
          lim.set_burst(b);
          ref.set_burst(static_cast<i128>(b), nf);
        }
      }
    }
    INFO("seed " << seed);
    CHECK(admitted > steps / 4);  // the run was neither starved nor trivially idle
    CHECK(refused > steps / 10);
    CHECK(slow_eras > 0);
  }
}

TEST_CASE("try_acquire_until / for: fail fast when the deadline cannot be met, succeed when it can") {
  manual_clock clk;
  limiter lim(rate::per_second(1), 1, clk);
  REQUIRE(lim.try_acquire(1, clk.now()));
  CHECK_FALSE(lim.try_acquire_until(1, clk.now() + 500ms));  // returns at once: no clock movement needed
  CHECK_FALSE(lim.try_acquire_for(1, 999ms));
  std::atomic<int> result{-1};
  std::thread th([&] { result = lim.try_acquire_for(1, 2s) ? 1 : 0; });
  while (result.load() < 0) {
    clk.advance(50ms);
    std::this_thread::yield();
  }
  th.join();
  CHECK(result.load() == 1);
  CHECK(clk.now() >= tp(1s));
  // the one-permit spellings
  manual_clock clk2;
  limiter one(rate::per_second(1), 1, clk2);
  const tp t1 = clk2.now();
  REQUIRE(one.try_acquire(1, t1));
  CHECK_FALSE(one.try_acquire_until(t1 + 500ms));
  CHECK_FALSE(one.try_acquire_for(500ms));
  clk2.set(t1 + 1s);
  CHECK(one.try_acquire_until(t1 + 1s));
  clk2.set(t1 + 2s);
  CHECK(one.try_acquire_for(0ms));
  CHECK_FALSE(one.try_acquire(1, t1 + 2s));
}

TEST_CASE("real clock: acquire paces at roughly the rate (generous bounds)") {
  using namespace std::chrono;
  // sleeping only, and sleeping then busy-waiting the end of each wait
  for (const nanoseconds spin : {nanoseconds(0), nanoseconds(microseconds(200))}) {
    INFO("spin limit " << spin.count() << " ns");
    levee::rate_limiter<> lim(rate::per_second(2000), 1);
    lim.set_spin_limit(spin);
    std::vector<steady_clock::time_point> got;
    const auto t0 = steady_clock::now();
    for (int i = 0; i < 100; ++i) {
      got.push_back(lim.acquire());
      CHECK(got.back() <=
            steady_clock::now());  // the admission time is a clock reading, never a future due time
    }
    const double secs = duration<double>(steady_clock::now() - t0).count();
    CHECK(secs >= 0.045);  // 99 intervals of 0.5 ms minimum
    CHECK(secs < 5.0);
    CHECK(levee::check_conformance(got, rate::per_second(2000), 1).ok);
  }
}

TEST_CASE("maximum durations and extreme time points saturate (no deadline, never UB)") {
  manual_clock clk;
  limiter lim(rate::per_second(1), 1, clk);
  REQUIRE(lim.try_acquire(1, clk.now()));
  // negative and minimal timeouts: fail at once without overflow
  CHECK_FALSE(lim.try_acquire_for(1, std::chrono::nanoseconds::min()));
  CHECK_FALSE(lim.try_acquire_for(1, std::chrono::hours::min()));
  CHECK_FALSE(lim.try_acquire_until(1, tp::min()));
  // maximal timeouts mean "no deadline": the call waits for the permit
  // (due at t = 1 s) instead of overflowing into the past and giving up
  for (int which = 0; which < 4; ++which) {
    manual_clock c;
    limiter l(rate::per_second(1), 1, c);
    REQUIRE(l.try_acquire(1, c.now()));
    std::atomic<int> result{-1};
    std::thread th([&] {
      bool ok = false;
      switch (which) {
        case 0:
          ok = l.try_acquire_for(1, std::chrono::hours::max());
          break;
        case 1:
          ok = l.try_acquire_for(1, std::chrono::nanoseconds::max());
          break;
        case 2:
          ok = l.try_acquire_for(std::chrono::duration<double>(1e300));
          break;
        default:
          ok = l.try_acquire_until(1, tp::max());
          break;
      }
      result = ok ? 1 : 0;
    });
    INFO("variant " << which);
    const bool parked = levee_test::eventually([&] { return c.waiters_approx() == 1 || result.load() >= 0; });
    CHECK(parked);
    CHECK(result.load() == -1);  // still waiting: it did not give up at once
    c.advance(1s);
    const bool ended = levee_test::eventually([&] { return result.load() >= 0; });
    if (!ended) c.advance(std::chrono::hours(1'000'000));  // fail rather than hang
    th.join();
    CHECK(result.load() == 1);
  }
  // extreme `now` values: decisions without UB; available_at saturates
  limiter far(rate::per(1, std::chrono::hours(24)), 2, clk);
  CHECK(far.try_acquire(1, tp::max()));
  CHECK(far.try_acquire(1, tp::max()));
  CHECK_FALSE(far.try_acquire(1, tp::max()));
  CHECK(far.available_at(1, tp::max()) == tp::max());  // now + 1 day does not fit: saturated
  auto r = far.reserve(1, tp::max());
  CHECK(r.ok());
  CHECK(r.ready_at() == tp::max());
  (void)far.try_acquire(1, tp::min());
  (void)far.available(tp::min());
  (void)far.available_at(1, tp::min());
}

namespace {
// A real clock counting microseconds.
struct coarse_clock {
  using rep = std::int64_t;
  using period = std::micro;
  using duration = std::chrono::microseconds;
  using time_point = std::chrono::time_point<coarse_clock, duration>;
  static constexpr bool is_steady = true;
  static time_point now() noexcept {
    return time_point(
        std::chrono::duration_cast<duration>(std::chrono::steady_clock::now().time_since_epoch()));
  }
};
}  // namespace

TEST_CASE("a clock coarser than ns: extreme time points do not overflow the conversion") {
  levee::rate_limiter<coarse_clock> lim(rate::per_second(10), 2);
  using ctp = coarse_clock::time_point;
  CHECK(lim.try_acquire(1, ctp::max()));
  CHECK(lim.available(ctp::max()) == 1);
  (void)lim.try_acquire(1, ctp::min());
  (void)lim.try_acquire_until(1, ctp::min());  // a deadline in the past: at most one try, no wait
  levee::rate_limiter<coarse_clock> fresh(rate::per_second(10), 1);
  CHECK(fresh.try_acquire_for(1, std::chrono::hours::max()));  // available at once
  CHECK(fresh.try_acquire_for(1, std::chrono::hours::max()));  // sleeps ~100 ms: no overflow, no give-up
}
