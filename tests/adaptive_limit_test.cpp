// Tests for levee/adaptive_limit.hpp: convergence against a simulated
// downstream on levee::manual_clock (no sleeping), bounds, thread safety.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <levee/adaptive_limit.hpp>
#include <levee/clock.hpp>
#include <queue>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "test_support.hpp"

using namespace std::chrono_literals;

namespace {

// Sanitizer builds skip the largest capacity (its run is 640k samples).
const std::vector<std::size_t> capacities =
    LEVEE_TEST_SANITIZED ? std::vector<std::size_t>{20, 100} : std::vector<std::size_t>{20, 100, 400};

// A downstream with `capacity` servers and base latency `base`: a request
// that starts while k requests are in flight (itself included) takes
// base * max(1, k / capacity) (processor sharing beyond capacity), with
// +-5% deterministic noise; requests slower than `timeout` count as dropped.
// The client is a closed loop that always keeps limit() requests in flight.
struct sim_result {
  std::vector<std::size_t> limits;        // limit after each sample
  std::chrono::nanoseconds two_thirds{};  // virtual time at sample 2 * samples / 3
};

template <class Limit>
sim_result simulate(Limit& al, levee::manual_clock clk, std::function<double(std::size_t)> capacity_at,
                    std::size_t samples, std::chrono::nanoseconds base = 10ms) {
  using tp = levee::manual_clock::time_point;
  struct job {
    tp done;
    std::chrono::nanoseconds latency;
  };
  auto later = [](const job& a, const job& b) { return a.done > b.done; };
  std::priority_queue<job, std::vector<job>, decltype(later)> running(later);
  std::mt19937_64 rng(12345);
  std::uniform_real_distribution<double> noise(0.95, 1.05);
  sim_result res;
  res.limits.reserve(samples);
  std::size_t in_flight = 0;
  auto fill = [&](std::size_t i) {
    while (in_flight < al.limit()) {
      ++in_flight;
      const double cap = capacity_at(i);
      const double factor = std::max(1.0, static_cast<double>(in_flight) / cap) * noise(rng);
      const auto lat =
          std::chrono::nanoseconds(static_cast<std::int64_t>(static_cast<double>(base.count()) * factor));
      running.push(job{clk.now() + lat, lat});
    }
  };
  fill(0);
  for (std::size_t i = 0; i < samples; ++i) {
    const job j = running.top();
    running.pop();
    clk.set(j.done);
    const std::size_t k = in_flight--;
    al.on_sample(j.latency, k, j.latency > 5 * base);
    res.limits.push_back(al.limit());
    if (i == 2 * samples / 3) res.two_thirds = clk.now().time_since_epoch();
    fill(i);
  }
  return res;
}

template <class Policy>
void check_converges(std::size_t capacity, std::size_t initial) {
  levee::manual_clock clk;
  levee::adaptive_limit<Policy> al({.initial = initial, .min = 1, .max = 2000});
  // starting far above capacity takes longer: the policies must first find
  // the unqueued latency (see the probe in adaptive_limit.hpp)
  const std::size_t samples = (initial > capacity ? 1500 : 400) * capacity + 40'000;
  const auto res = simulate(
      al, clk, [&](std::size_t) { return static_cast<double>(capacity); }, samples);
  // after convergence (the first two thirds), every value stays within 20% of capacity
  std::size_t lo = SIZE_MAX, hi = 0;
  double sum = 0;
  std::size_t converged_at = 0;
  for (std::size_t i = 0; i < samples; ++i) {
    const auto v = static_cast<double>(res.limits[i]);
    if (v < 0.8 * static_cast<double>(capacity) || v > 1.2 * static_cast<double>(capacity))
      converged_at = i + 1;
  }
  for (std::size_t i = 2 * samples / 3; i < samples; ++i) {
    lo = std::min(lo, res.limits[i]);
    hi = std::max(hi, res.limits[i]);
    sum += static_cast<double>(res.limits[i]);
  }
  const double mean = sum / static_cast<double>(samples - 2 * samples / 3);
  MESSAGE("capacity " << capacity << " initial " << initial << ": last third in [" << lo << ", " << hi
                      << "], mean " << mean << ", within 20% for good after sample " << converged_at << " of "
                      << samples);
  // The simulation is deterministic (seeded noise, virtual time): these are
  // the bounds it meets for every capacity and start, with little slack.
  CHECK(static_cast<double>(lo) >= 0.85 * static_cast<double>(capacity));
  CHECK(static_cast<double>(hi) <= 1.15 * static_cast<double>(capacity));
  CHECK(mean >= 0.98 * static_cast<double>(capacity));
  CHECK(mean <= 1.08 * static_cast<double>(capacity));
  CHECK(converged_at < 2 * samples / 3);
  // Throughput over the last third: the downstream serves at most
  // capacity / base; a limit that kept it under-used would show as more
  // virtual time for those samples.
  const std::size_t last_third = samples - 1 - 2 * samples / 3;
  const double ideal_s = static_cast<double>(last_third) * 0.010 / static_cast<double>(capacity);
  const double took_s = std::chrono::duration<double>(clk.now().time_since_epoch() - res.two_thirds).count();
  MESSAGE("virtual time " << took_s << " s, ideal " << ideal_s << " s");
  CHECK(took_s >= 0.95 * ideal_s);  // nothing beats the capacity (+-5% noise)
  CHECK(took_s <= 1.05 * ideal_s);  // measured within 1.03
}

}  // namespace

TEST_CASE("gradient converges to within 20% of the downstream's capacity and stays there") {
  for (const std::size_t cap : capacities)
    for (const std::size_t initial : {5U, 1000U}) check_converges<levee::gradient>(cap, initial);
}

TEST_CASE("aimd converges to within 20% of the downstream's capacity and stays there") {
  for (const std::size_t cap : capacities)
    for (const std::size_t initial : {5U, 1000U}) check_converges<levee::aimd>(cap, initial);
}

TEST_CASE("both policies follow a downstream whose capacity drops, then recovers") {
  auto run = [](auto policy_tag) {
    using P = decltype(policy_tag);
    levee::manual_clock clk;
    levee::adaptive_limit<P> al({.initial = 20, .min = 1, .max = 2000});
    const std::size_t n = 120'000;
    auto cap = [&](std::size_t i) { return (i >= n / 3 && i < 2 * n / 3) ? 40.0 : 160.0; };
    const auto res = simulate(al, clk, cap, n);
    auto window_ok = [&](std::size_t from, std::size_t to, double c) {
      for (std::size_t i = from; i < to; ++i)
        if (static_cast<double>(res.limits[i]) < 0.8 * c || static_cast<double>(res.limits[i]) > 1.2 * c)
          return false;
      return true;
    };
    CHECK(window_ok(n / 3 - n / 12, n / 3, 160));
    CHECK(window_ok(2 * n / 3 - n / 12, 2 * n / 3, 40));
    CHECK(window_ok(n - n / 12, n, 160));
  };
  run(levee::gradient{});
  run(levee::aimd{});
}

TEST_CASE("drops cut the limit; min and max bound it") {
  levee::adaptive_limit<levee::aimd> al({.initial = 100, .min = 10, .max = 120});
  for (int i = 0; i < 2000; ++i) al.on_sample(10ms, 100, true);
  CHECK(al.limit() == 10);
  for (int i = 0; i < 200'000; ++i) al.on_sample(10ms, 200, false);
  CHECK(al.limit() == 120);

  levee::adaptive_limit<levee::gradient> g({.initial = 50, .min = 5, .max = 60});
  for (int i = 0; i < 5000; ++i) g.on_sample(10ms, 50, true);
  CHECK(g.limit() == 5);
}

TEST_CASE("an unused limit does not grow (app-limited)") {
  levee::adaptive_limit<levee::gradient> g({.initial = 50, .min = 1, .max = 1000});
  levee::adaptive_limit<levee::aimd> a({.initial = 50, .min = 1, .max = 1000});
  for (int i = 0; i < 50'000; ++i) {
    g.on_sample(10ms, 3, false);
    a.on_sample(10ms, 3, false);
  }
  CHECK(g.limit() == 50);
  CHECK(a.limit() == 50);
}

TEST_CASE("bad options throw std::invalid_argument") {
  using G = levee::adaptive_limit<levee::gradient>;
  CHECK_THROWS_AS(G({.initial = 5, .min = 0, .max = 10}), std::invalid_argument);
  CHECK_THROWS_AS(G({.initial = 5, .min = 6, .max = 5}), std::invalid_argument);
  CHECK_THROWS_AS(G({.initial = 50, .min = 1, .max = 10}), std::invalid_argument);
  CHECK_THROWS_AS(levee::aimd({.backoff = 1.0}), std::invalid_argument);
  CHECK_THROWS_AS(levee::aimd({.backoff = 0.9, .increase = 0}), std::invalid_argument);
  CHECK_THROWS_AS(levee::gradient({.tolerance = 0.5}), std::invalid_argument);
  CHECK_THROWS_AS(levee::gradient({.tolerance = 1.1, .queue_ratio = 0, .queue_min = 0}),
                  std::invalid_argument);
}

TEST_CASE("on_sample is thread-safe with several reporting workers") {
  levee::adaptive_limit<levee::gradient> g({.initial = 20, .min = 1, .max = 500});
  std::vector<std::thread> ts;
  std::atomic<std::size_t> max_seen{0};
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < 20'000; ++i) {
        g.on_sample(std::chrono::milliseconds(10 + (i + t) % 3), 20, i % 997 == 0);
        const std::size_t l = g.limit();
        std::size_t m = max_seen.load();
        while (l > m && !max_seen.compare_exchange_weak(m, l)) {
        }
      }
    });
  for (auto& t : ts) t.join();
  CHECK(max_seen.load() >= 1);  // the gradient run is for the sanitizers; the counting run below asserts

  // An instrumented policy that adds 1 per sample: every one of the
  // concurrent samples must reach it exactly once (no lost update).
  struct counting {
    double update(double limit, const levee::limit_sample&) { return limit + 1; }
  };
  levee::adaptive_limit<counting> c({.initial = 1, .min = 1, .max = 1'000'000});
  std::vector<std::thread> cs;
  for (int t = 0; t < 4; ++t)
    cs.emplace_back([&] {
      for (int i = 0; i < 20'000; ++i) c.on_sample(1ms, 1, false);
    });
  for (auto& t : cs) t.join();
  CHECK(c.limit() == 80'001);
}

TEST_CASE("extreme latencies are clamped inputs, never UB or a NaN limit") {
  using namespace std::chrono;
  levee::adaptive_limit<levee::gradient> g({.initial = 20, .min = 2, .max = 100});
  levee::adaptive_limit<levee::aimd> a({.initial = 20, .min = 2, .max = 100});
  levee::adaptive_limit<levee::aimd> t(
      {.initial = 20, .min = 2, .max = 100},
      levee::aimd({.timeout = nanoseconds::max()}));  // the largest absolute threshold: never congested by it
  for (const nanoseconds lat : {nanoseconds::max(), nanoseconds::min(), nanoseconds(0), nanoseconds(-5),
                                duration_cast<nanoseconds>(hours(24 * 365 * 200))}) {
    for (int i = 0; i < 1000; ++i) {
      g.on_sample(lat, 20, false);
      a.on_sample(lat, 20, false);
      t.on_sample(lat, 20, false);
    }
    CHECK(g.limit() >= 2);
    CHECK(g.limit() <= 100);
  }
  // 1 ns samples after maximal ones: the baseline is finite, so a fast
  // window reads as uncongested and the limit grows back to max
  for (int i = 0; i < 200'000; ++i) a.on_sample(1ns, 200, false);
  CHECK(a.limit() == 100);
  for (int i = 0; i < 200'000; ++i) t.on_sample(1ms, 200, false);
  CHECK(t.limit() == 100);
}
