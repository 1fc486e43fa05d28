// A levee::leveler paced by levee::redis::shared_rate_gate against a real
// redis-server: two levelers (a fleet of two, each with its own gate and
// connection) share one key, and their merged dispatch log holds the
// fleet-wide rate and the gate's documented envelope.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <levee/conformance.hpp>
#include <levee/leveler.hpp>
#include <levee/redis/shared_rate_gate.hpp>
#include <memory>
#include <mutex>
#include <vector>

#include "redis_test_support.hpp"

using namespace std::chrono_literals;
using namespace levee_redis_test;

namespace {

using gate_t = levee::redis::shared_rate_gate<>;
using lev_t = levee::leveler<int, levee::round_robin, std::chrono::steady_clock, gate_t>;
static_assert(levee::rate_gate<gate_t> && !levee::reconfigurable_rate_gate<gate_t>);

}  // namespace

TEST_CASE("leveler on shared_rate_gate: a fleet of two holds one rate and the envelope") {
  auto srv = start_server();
  constexpr std::int64_t per_second = 1000;
  constexpr std::uint64_t burst = 10;
  constexpr std::uint64_t batch = 16;
  constexpr int members = 2;
  constexpr int jobs_each = 1000;  // 2000 jobs at 1000/s: about 2 s
  const auto rate = levee::rate::per_second(per_second);

  std::mutex m;
  std::vector<std::chrono::steady_clock::time_point> log;
  log.reserve(members * jobs_each);
  std::vector<std::shared_ptr<gate_t>> gates;
  std::vector<std::unique_ptr<lev_t>> fleet;
  for (int i = 0; i < members; ++i) {
    levee::redis::shared_rate_gate_options go;
    go.connection = conn_opts(srv);
    go.key = "leveler-fleet";
    go.rate = rate;
    go.burst = burst;
    go.batch = batch;
    gates.push_back(std::make_shared<gate_t>(go));
    lev_t::options o;
    o.capacity = jobs_each;
    o.workers = 2;
    o.gate = gates.back();
    fleet.push_back(std::make_unique<lev_t>(o, [&](int&) {
      const auto t = std::chrono::steady_clock::now();
      std::lock_guard lock(m);
      log.push_back(t);
    }));
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (int j = 0; j < jobs_each; ++j)
    for (auto& l : fleet) REQUIRE(l->try_submit(j));
  for (auto& l : fleet) REQUIRE(l->drain_for(60s));  // the watchdog: a stalled gate fails here
  const auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::int64_t max_rtt = 0;
  std::uint64_t round_trips = 0, errors = 0;
  for (auto& g : gates) {
    const auto gm = g->metrics();
    max_rtt = std::max<std::int64_t>(max_rtt, gm.max_round_trip.count());
    round_trips += gm.round_trips;
    errors += gm.errors;
  }
  std::lock_guard lock(m);
  REQUIRE(log.size() == members * jobs_each);
  std::sort(log.begin(), log.end());
  // The envelope of shared_rate_gate.hpp: burst + min(N k, b + r h) + jitter
  // (r times the largest reply delay, plus one). Handler start times lag the
  // admissions by a scheduling delay, counted in the same jitter term.
  const auto jitter = static_cast<std::uint64_t>(max_rtt * per_second / 1'000'000'000) + 1;
  const std::uint64_t envelope = burst + members * batch + jitter;
  const auto rep = levee::check_conformance(log, rate, envelope);
  const double achieved =
      static_cast<double>(log.size() - 1) / std::chrono::duration<double>(log.back() - log.front()).count();
  MESSAGE("fleet of " << members << " levelers: " << log.size() << " jobs in " << elapsed << " s, "
                      << achieved << "/s (target " << per_second << "), " << round_trips
                      << " round trips, max round trip " << max_rtt / 1000 << " us, excess over burst "
                      << burst << ": " << levee::check_conformance(log, rate, burst).max_excess
                      << " (allowed " << envelope - burst << ")");
  CHECK(errors == 0);
  CHECK(rep.ok);
  // Never faster than the fleet's rate allows, whatever the machine's load.
  CHECK(achieved <=
        static_cast<double>(per_second) * 1.0 +
            static_cast<double>(envelope) / std::chrono::duration<double>(log.back() - log.front()).count());
  // Near the rate unless the machine starves the processes (see redis_gate_test).
  if (max_rtt <= 10'000'000) {
    CHECK(achieved >= 0.95 * per_second);
  } else {
    MESSAGE("machine starved (max round trip " << max_rtt / 1000 << " us): rate reported only");
  }
  for (auto& l : fleet) CHECK(l->metrics().rate_limit == doctest::Approx(static_cast<double>(per_second)));
}

TEST_CASE("leveler on shared_rate_gate: options.rate cannot build a fleet gate") {
  lev_t::options o;
  o.workers = 0;
  o.rate = levee::rate::per_second(10);
  CHECK_THROWS_WITH_AS(lev_t{o}, doctest::Contains("options.gate"), std::invalid_argument);
}
