// Load-leveling properties of levee::leveler, proved in simulation mode
// (levee::manual_clock, zero workers): every number below is exact and the
// whole file runs in well under a second of real time.
//
// Scenario (the issue's): base load 500/s, rate r = 1000/s, burst b, a 10x
// spike (arrivals at 10r) for S = 2 s, then base load again.
// Formulas asserted (derivation in README.md, "Load-leveling properties"):
//   peak backlog  B* = (10r - r) * S - b + 1
//       (the spike brings 10r*S jobs; during it the gate dispatches the b
//        jobs its full bucket allows at once plus one per emission interval
//        after the first, r*S - 1)
//   drain time    B / (r - base), B the backlog measured when the spike ends
//   envelope      every closed window [t, t+w] of dispatch times holds
//                 <= b + floor(r*w) dispatches (levee::check_conformance)
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <levee/conformance.hpp>
#include <levee/leveler.hpp>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <vector>

#include "test_support.hpp"

using namespace std::chrono_literals;

namespace {

struct job {
  std::uint64_t id = 0;
  levee::manual_clock::time_point arrived{};
  std::optional<levee::manual_clock::time_point> deadline;
};

using lev_t = levee::leveler<job, levee::round_robin, levee::manual_clock>;
using tp = levee::manual_clock::time_point;

tp at(std::chrono::nanoseconds d) { return tp(d); }

// Arrival times of the scenario: base load on its own grid, the spike on
// a finer one, base load again from the end of the spike.
std::vector<tp> scenario(double base, double spike_rate, std::chrono::nanoseconds lead,
                         std::chrono::nanoseconds spike, std::chrono::nanoseconds tail) {
  std::vector<tp> out;
  const auto gb = std::chrono::nanoseconds(static_cast<std::int64_t>(1e9 / base));
  const auto gs = std::chrono::nanoseconds(static_cast<std::int64_t>(1e9 / spike_rate));
  for (auto t = 0ns; t < lead; t += gb) out.push_back(at(t));
  for (auto t = lead; t < lead + spike; t += gs) out.push_back(at(t));
  for (auto t = lead + spike; t < lead + spike + tail; t += gb) out.push_back(at(t));
  return out;
}

struct spike_result {
  std::uint64_t arrivals = 0;
  std::uint64_t peak = 0;
  std::uint64_t backlog_at_spike_end = 0;
  std::optional<tp> drained_at;
  std::vector<tp> dispatches;
  levee::metrics_snapshot during_spike;
  // While the backlog shrinks: 1 s and 3 s after the spike's end.
  levee::metrics_snapshot draining[2];
  levee::metrics_snapshot end;
  std::uint64_t dead_letters = 0;
};

spike_result run_spike(std::uint64_t burst, std::size_t capacity) {
  const double r = 1000, base = 500;
  const auto lead = 4s, spike = 2s, tail = 40s;
  const tp spike_end = at(lead + spike);
  levee::manual_clock clk;
  lev_t::options o;
  o.workers = 0;
  o.capacity = capacity;
  o.overflow = levee::overflow_policy::reject;
  o.rate = levee::rate::per_second(1000);
  o.burst = burst;
  spike_result res;
  o.dead_letter = [&](job&&, levee::dead_letter_reason, std::exception_ptr) { ++res.dead_letters; };
  lev_t* self = nullptr;
  lev_t lev(
      o,
      [&](job&) {
        res.dispatches.push_back(clk.now());
        // Only this job is outstanding: the queue just became empty.
        if (!res.drained_at && clk.now() >= spike_end && self->outstanding() == 1) res.drained_at = clk.now();
      },
      clk);
  self = &lev;
  std::uint64_t id = 0;
  bool sampled = false;
  for (tp t : scenario(base, 10 * r, lead, spike, tail)) {
    lev.run_until(t);
    if (t >= spike_end && res.backlog_at_spike_end == 0) res.backlog_at_spike_end = lev.outstanding();
    if (!sampled && t >= at(lead + spike - 1ms)) {
      res.during_spike = lev.metrics();
      sampled = true;
    }
    for (int k = 0; k < 2; ++k)
      if (t == at(lead + spike + (k == 0 ? 1s : 3s))) res.draining[k] = lev.metrics();
    auto s = lev.try_submit(job{id++, t, std::nullopt});
    if (s) res.peak = std::max(res.peak, lev.outstanding());
    ++res.arrivals;
  }
  lev.drain();
  res.end = lev.metrics();
  return res;
}

}  // namespace

TEST_CASE("spike: nothing lost, peak backlog, envelope, drain time (b = 10)") {
  const std::uint64_t b = 10;
  const auto res = run_spike(b, 20'000);
  const double r = 1000, base = 500;

  // 0 lost or rejected
  CHECK(res.end.rejected.total() == 0);
  CHECK(res.end.accepted == res.arrivals);
  CHECK(res.end.succeeded == res.arrivals);
  CHECK(res.end.dead_lettered.total() == 0);
  CHECK(res.dead_letters == 0);
  CHECK(res.dispatches.size() == res.arrivals);

  // peak backlog: exactly the formula (the simulation is exact)
  const double formula = (10 * r - r) * 2.0 - static_cast<double>(b) + 1;
  MESSAGE("peak backlog " << res.peak << ", formula (10r - r) S - b + 1 = " << formula);
  CHECK(res.peak == static_cast<std::uint64_t>(formula));
  CHECK(res.end.outstanding_peak == res.peak);

  // every window of dispatch times within b + r w
  const auto rep = levee::check_conformance(res.dispatches, levee::rate::per_second(1000), b);
  CHECK(rep.ok);
  CHECK(rep.violations == 0);
  // ... and the envelope is tight: the same dispatches break b - 1 + r w
  CHECK_FALSE(levee::check_conformance(res.dispatches, levee::rate::per_second(1000), b - 1).ok);

  // drain time within one emission interval of B / (r - base)
  REQUIRE(res.drained_at.has_value());
  const double B = static_cast<double>(res.backlog_at_spike_end);
  const double expected_s = B / (r - base);
  const double measured_s = std::chrono::duration<double>(res.drained_at->time_since_epoch() - 6s).count();
  MESSAGE("backlog at spike end " << B << ", drain " << measured_s
                                  << " s, formula B/(r-base) = " << expected_s << " s");
  CHECK(std::abs(measured_s - expected_s) <= 1.0 / r + 1e-12);

  // metrics during the spike: arrivals outpace the drain rate
  CHECK(res.during_spike.trailing_behind);
  CHECK_FALSE(res.during_spike.drain_eta.has_value());
  CHECK(res.during_spike.arrival_rate == doctest::Approx(10 * r).epsilon(0.02));
  CHECK(res.during_spike.dispatch_rate == doctest::Approx(r).epsilon(0.02));
  CHECK(res.during_spike.drain_rate == doctest::Approx(r));
  // metrics while the backlog shrinks: not trailing, and the ETA is the
  // backlog over (drain rate - arrival rate), which here is the real
  // remaining drain time (base arrivals continue at 500/s)
  for (int k = 0; k < 2; ++k) {
    CAPTURE(k);
    const auto& m = res.draining[k];
    const double t_s = k == 0 ? 1.0 : 3.0;
    CHECK_FALSE(m.trailing_behind);
    REQUIRE(m.drain_eta.has_value());
    CHECK(m.arrival_rate == doctest::Approx(base).epsilon(0.02));
    const double eta_s = std::chrono::duration<double>(*m.drain_eta).count();
    CHECK(eta_s == doctest::Approx(static_cast<double>(m.queue_depth) / (r - m.arrival_rate)).epsilon(1e-9));
    CHECK(eta_s == doctest::Approx(measured_s - t_s).epsilon(0.02));
  }
  CHECK(*res.draining[1].drain_eta < *res.draining[0].drain_eta);

  // worst dwell time ~ B / r (FIFO behind the whole backlog)
  const double max_dwell = std::chrono::duration<double>(res.end.dwell_time.max()).count();
  CHECK(max_dwell == doctest::Approx(formula / r).epsilon(0.01));
  CHECK(res.end.dwell_time.count() == res.arrivals);
}

TEST_CASE("spike: the peak-backlog formula holds for several bursts") {
  // (one burst under sanitizers, to keep the run short)
  const std::vector<std::uint64_t> bursts =
      LEVEE_TEST_SANITIZED ? std::vector<std::uint64_t>{50} : std::vector<std::uint64_t>{1, 50, 400};
  for (std::uint64_t b : bursts) {
    CAPTURE(b);
    const auto res = run_spike(b, 20'000);
    const std::uint64_t formula = (10 * 1000 - 1000) * 2 - b + 1;
    CHECK(res.peak == formula);
    CHECK(res.end.succeeded == res.arrivals);
    CHECK(levee::check_conformance(res.dispatches, levee::rate::per_second(1000), b).ok);
    REQUIRE(res.drained_at.has_value());
    const double measured_s = std::chrono::duration<double>(res.drained_at->time_since_epoch() - 6s).count();
    CHECK(std::abs(measured_s - static_cast<double>(res.backlog_at_spike_end) / 500.0) <= 1e-3 + 1e-12);
  }
}

TEST_CASE("spike with a queue smaller than the backlog: the excess is rejected, handed back, and counted") {
  const auto res = run_spike(10, 5'000);
  CHECK(res.end.rejected.full > 0);
  CHECK(res.end.accepted + res.end.rejected.total() == res.arrivals);
  CHECK(res.end.submitted == res.arrivals);
  CHECK(res.end.succeeded == res.end.accepted);
  // outstanding = the full queue + the one job the simulated worker holds at the rate gate
  CHECK(res.peak == 5'000 + 1);
  CHECK(levee::check_conformance(res.dispatches, levee::rate::per_second(1000), 10).ok);
}

namespace {

struct deadline_run {
  std::uint64_t arrivals = 0, accepted = 0, ran = 0, late = 0, expired_in_sink = 0;
  std::set<std::uint64_t> expired_ids, ran_ids;
  levee::metrics_snapshot m;
};

deadline_run run_deadlines(bool admission) {
  levee::manual_clock clk;
  lev_t::options o;
  o.workers = 0;
  o.capacity = 20'000;
  o.rate = levee::rate::per_second(1000);
  o.burst = 10;
  o.deadline_admission = admission;
  o.overflow = levee::overflow_policy::reject;
  deadline_run res;
  o.dead_letter = [&](job&& j, levee::dead_letter_reason why, std::exception_ptr) {
    CHECK(why == levee::dead_letter_reason::expired);
    CHECK(clk.now() > *j.deadline);  // only past-deadline jobs are expired
    ++res.expired_in_sink;
    res.expired_ids.insert(j.id);
  };
  lev_t lev(
      o,
      [&](job& j) {
        ++res.ran;
        res.ran_ids.insert(j.id);
        if (clk.now() > *j.deadline) ++res.late;
      },
      clk);
  std::uint64_t id = 0;
  for (tp t : scenario(500, 10'000, 1s, 2s, 20s)) {
    lev.run_until(t);
    const tp deadline = t + 3s;  // the spike's backlog takes up to ~18 s: many would miss
    if (lev.try_submit(job{id, t, deadline}, {.deadline = deadline})) ++res.accepted;
    ++id;
    ++res.arrivals;
  }
  lev.drain();
  res.m = lev.metrics();
  return res;
}

}  // namespace

TEST_CASE("deadlines without admission: never dispatched late, the rest expire into the dead-letter sink") {
  const auto res = run_deadlines(false);
  CHECK(res.late == 0);
  CHECK(res.m.dead_lettered.expired > 0);
  CHECK(res.m.dead_lettered.expired == res.expired_in_sink);
  CHECK(res.ran + res.expired_in_sink == res.accepted);
  CHECK(res.accepted == res.arrivals);
  for (auto i : res.expired_ids) CHECK(res.ran_ids.count(i) == 0);
  MESSAGE("expired " << res.expired_in_sink << " of " << res.accepted);
}

TEST_CASE("deadlines with admission: jobs that would miss are refused at the door, none dispatched late") {
  const auto res = run_deadlines(true);
  CHECK(res.late == 0);
  CHECK(res.m.rejected.would_miss_deadline > 0);
  CHECK(res.accepted + res.m.rejected.would_miss_deadline == res.arrivals);
  CHECK(res.ran + res.expired_in_sink == res.accepted);
  // The prediction is the gate's own schedule, so in simulation nothing that
  // was admitted expires.
  CHECK(res.expired_in_sink == 0);
  // Admission keeps the backlog at what can be served within the deadline.
  CHECK(res.m.outstanding_peak <= 3 * 1000 + 10 + 1);
  MESSAGE("refused " << res.m.rejected.would_miss_deadline << ", ran " << res.ran);
}

namespace {

// Records every job's final states.
struct ledger {
  std::map<std::uint64_t, int> finals;
  std::map<std::uint64_t, levee::dead_letter_reason> reasons;
  std::set<std::uint64_t> accepted, rejected;
  void final_state(std::uint64_t id) { ++finals[id]; }
  void check_exactly_once() const {
    for (auto id : accepted) {
      auto it = finals.find(id);
      CAPTURE(id);
      REQUIRE(it != finals.end());
      CHECK(it->second == 1);
    }
    for (auto id : rejected) CHECK(finals.count(id) == 0);
    CHECK(finals.size() == accepted.size());
  }
};

}  // namespace

TEST_CASE(
    "every accepted job ends in exactly one final state: failures, retries, deadlines, drops, handler "
    "throws") {
  levee::manual_clock clk;
  lev_t::options o;
  o.workers = 0;
  o.capacity = 64;
  o.overflow = levee::overflow_policy::drop_oldest;
  o.rate = levee::rate::per_second(200);
  o.burst = 5;
  o.retry.max_attempts = 3;
  o.retry.base_backoff = 5ms;
  o.retry.max_backoff = 40ms;
  o.retry.budget_ratio = 0.5;
  o.seed = 99;
  ledger led;
  o.dead_letter = [&](job&& j, levee::dead_letter_reason why, std::exception_ptr) {
    led.final_state(j.id);
    led.reasons[j.id] = why;
  };
  std::map<std::uint64_t, int> attempts;
  lev_t lev(o, clk);
  // backend 1 fails every job whose id % 3 == 0 by throwing; backend 2 fails
  // ids % 5 == 0 by returning failure; ids % 7 == 0 always fail everywhere.
  lev.add_backend([&](job& j) -> levee::handler_result {
    ++attempts[j.id];
    if (j.id % 7 == 0 || j.id % 3 == 0) throw std::runtime_error("backend 1 down for this job");
    led.final_state(j.id);
    return levee::handler_result::success();
  });
  lev.add_backend([&](job& j) -> levee::handler_result {
    ++attempts[j.id];
    if (j.id % 7 == 0 || j.id % 5 == 0)
      return levee::handler_result::failure(std::runtime_error("backend 2 says no"));
    led.final_state(j.id);
    return levee::handler_result::success();
  });
  std::uint64_t id = 0;
  for (int burst_round = 0; burst_round < 20; ++burst_round) {
    const tp t0 = clk.now();
    for (int k = 0; k < 100; ++k) {  // 100 arrivals at once: beyond capacity, drop_oldest evicts
      const std::uint64_t me = id++;
      std::optional<tp> deadline;
      if (me % 11 == 0) deadline = t0 + 100ms;
      job j{me, t0, deadline};
      auto r = lev.submit(std::move(j), {.deadline = deadline});
      if (r) {
        led.accepted.insert(me);
      } else {
        led.rejected.insert(me);
        CHECK(r.job.has_value());
        CHECK(r.job->id == me);
      }
    }
    CHECK_NOTHROW(lev.run_until(t0 + 700ms));
  }
  lev.drain();
  const auto m = lev.metrics();
  led.check_exactly_once();
  CHECK(m.accepted == led.accepted.size());
  CHECK(m.succeeded + m.dead_lettered.total() == m.accepted);
  CHECK(m.dead_lettered.dropped > 0);
  CHECK(m.dead_lettered.failed > 0);
  CHECK(m.retried > 0);
  CHECK(m.outstanding == 0);
  // ids % 7 == 0 that ran were attempted at most max_attempts times and ended failed
  for (const auto& [jid, n] : attempts) {
    CHECK(n <= 3);
    if (jid % 7 == 0) CHECK(led.reasons.count(jid) == 1);
  }
  // a job failing on one backend only was retried on the other one and succeeded
  // (id % 3 == 0 but not % 5 or % 7: fails on 1, succeeds on 2) unless dropped/expired first
  std::size_t rescued = 0;
  for (const auto& [jid, n] : attempts)
    if (jid % 3 == 0 && jid % 5 != 0 && jid % 7 != 0 && n == 2 && led.reasons.count(jid) == 0) ++rescued;
  CHECK(rescued > 0);
}

TEST_CASE("retry backoff: full jitter within the exponential cap, on another backend") {
  levee::manual_clock clk;
  lev_t::options o;
  o.workers = 0;
  o.retry.max_attempts = 4;
  o.retry.base_backoff = 100ms;
  o.retry.max_backoff = 250ms;
  o.retry.min_retries_per_second = 100;
  std::vector<std::pair<tp, levee::backend_id>> seen;  // per attempt: time, backend
  std::exception_ptr last;
  levee::dead_letter_reason reason{};
  int sink_calls = 0;
  o.dead_letter = [&](job&&, levee::dead_letter_reason why, std::exception_ptr e) {
    ++sink_calls;
    reason = why;
    last = e;
  };
  lev_t lev(o, clk);
  levee::backend_id ids[2];
  for (int i = 0; i < 2; ++i) {
    ids[i] = lev.add_backend([&, i](job&) {
      seen.push_back({clk.now(), static_cast<levee::backend_id>(i)});
      throw std::runtime_error("attempt " + std::to_string(seen.size()));
    });
  }
  REQUIRE(lev.try_submit(job{1, clk.now(), std::nullopt}));
  lev.drain();
  REQUIRE(seen.size() == 4);
  REQUIRE(sink_calls == 1);
  CHECK(reason == levee::dead_letter_reason::failed);
  REQUIRE(last);
  try {
    std::rethrow_exception(last);
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()) == "attempt 4");
  }
  // retry k waits uniform [0, min(250ms, 100ms * 2^(k-1))]
  const std::chrono::nanoseconds caps[] = {100ms, 200ms, 250ms};
  for (std::size_t k = 1; k < seen.size(); ++k) {
    const auto gap = seen[k].first - seen[k - 1].first;
    CAPTURE(k);
    CHECK(gap >= 0ns);
    CHECK(gap <= caps[k - 1]);
  }
  // attempt 2 avoided the backend attempt 1 failed on; with both failed, attempts go anywhere
  CHECK(seen[1].second != seen[0].second);
  const auto m = lev.metrics();
  CHECK(m.started == 4);
  CHECK(m.failed == 4);
  CHECK(m.retried == 3);
  CHECK(m.dead_lettered.failed == 1);
  (void)ids;
}

TEST_CASE("retry budget: retries beyond min_retries_per_second + ratio of traffic are refused") {
  levee::manual_clock clk;
  lev_t::options o;
  o.workers = 0;
  o.retry.max_attempts = 2;
  o.retry.base_backoff = 0ns;
  o.retry.max_backoff = 0ns;
  o.retry.budget_ratio = 0.1;
  o.retry.min_retries_per_second = 1;  // 10 per 10 s window
  lev_t lev(
      o, [](job&) { throw std::runtime_error("always"); }, clk);
  for (std::uint64_t i = 0; i < 100; ++i) REQUIRE(lev.try_submit(job{i, clk.now(), std::nullopt}));
  lev.drain();
  const auto m = lev.metrics();
  // 100 first attempts: allowance = 1 * 10 + 0.1 * 100 = 20 retries
  CHECK(m.retried == 20);
  CHECK(m.retries_denied_by_budget == 80);
  CHECK(m.dead_lettered.failed == 100);
  CHECK(m.started == 120);
}

TEST_CASE("stop() in simulation: every job not started goes to the sink as cancelled, nothing lost") {
  levee::manual_clock clk;
  lev_t::options o;
  o.workers = 0;
  o.capacity = 1000;
  o.rate = levee::rate::per_second(100);
  o.burst = 1;
  o.retry.max_attempts = 5;
  o.retry.base_backoff = 1s;
  o.retry.max_backoff = 1s;
  o.retry.min_retries_per_second = 100;
  ledger led;
  std::uint64_t cancelled = 0;
  o.dead_letter = [&](job&& j, levee::dead_letter_reason why, std::exception_ptr) {
    if (why == levee::dead_letter_reason::cancelled) ++cancelled;
    led.final_state(j.id);
  };
  lev_t lev(
      o,
      [&](job& j) {
        if (j.id % 4 == 0) throw std::runtime_error("retry me");
        led.final_state(j.id);
      },
      clk);
  for (std::uint64_t i = 0; i < 500; ++i) {
    REQUIRE(lev.try_submit(job{i, clk.now(), std::nullopt}));
    led.accepted.insert(i);
  }
  lev.run_until(at(1500ms));  // ~150 dispatched, some failed and waiting for a retry
  const auto before = lev.metrics();
  CHECK(before.retry_pending > 0);
  lev.stop();
  CHECK(lev.is_closed());
  CHECK_FALSE(lev.try_submit(job{9999, clk.now(), std::nullopt}));
  const auto m = lev.metrics();
  led.check_exactly_once();
  CHECK(m.outstanding == 0);
  CHECK(m.dead_lettered.cancelled == cancelled);
  CHECK(m.succeeded + m.dead_lettered.total() == m.accepted);
  CHECK(cancelled >= 500 - before.started);
  CHECK(m.stopped);
  CHECK(m.rejected.closed == 1);
}

TEST_CASE("catch-up batch: a late wake dispatches at most b at once and the long-run rate stays exact") {
  // A simulated worker that wakes 7 emission intervals late each time: the
  // absolute GCRA schedule lets it catch up within the burst, so the long-run
  // rate stays exactly r.
  levee::manual_clock clk;
  lev_t::options o;
  o.workers = 0;
  o.capacity = 10'000;
  o.rate = levee::rate::per_second(1000);
  o.burst = 8;
  std::vector<tp> d;
  lev_t lev(
      o, [&](job&) { d.push_back(clk.now()); }, clk);
  for (std::uint64_t i = 0; i < 5000; ++i) REQUIRE(lev.try_submit(job{i, clk.now(), std::nullopt}));
  std::size_t max_batch = 0;
  for (int wake = 0; wake < 500; ++wake) {
    clk.advance(7ms);
    max_batch = std::max(max_batch, lev.step());
  }
  // 8 at the first wake (full bucket), then 7 per wake: one per emission
  // interval of the 7 ms slept, on the absolute schedule
  CHECK(max_batch == 8);
  CHECK(d.size() == 8 + 499 * 7);
  CHECK(levee::check_conformance(d, levee::rate::per_second(1000), 8).ok);
}

TEST_CASE("deterministic: the same scenario and seed give the same dispatch sequence") {
  auto once = [] {
    levee::manual_clock clk;
    levee::leveler<job, levee::power_of_two, levee::manual_clock>::options o;
    o.workers = 0;
    o.rate = levee::rate::per_second(500);
    o.burst = 3;
    o.seed = 1234;
    o.retry.max_attempts = 3;
    o.retry.base_backoff = 20ms;
    o.retry.max_backoff = 200ms;
    std::vector<std::pair<std::int64_t, int>> trace;
    levee::leveler<job, levee::power_of_two, levee::manual_clock> lev(o, clk);
    for (int b = 0; b < 4; ++b)
      lev.add_backend([&, b](job& j) {
        trace.push_back({clk.now().time_since_epoch().count(), b});
        if ((j.id + static_cast<std::uint64_t>(b)) % 5 == 0) throw std::runtime_error("flaky");
      });
    for (std::uint64_t i = 0; i < 300; ++i) (void)lev.try_submit(job{i, clk.now(), std::nullopt});
    lev.drain();
    return trace;
  };
  const auto a = once();
  const auto b = once();
  CHECK(a.size() >= 300);
  CHECK(a == b);
}

TEST_CASE("simulation API misuse is reported") {
  levee::manual_clock clk;
  lev_t::options o;
  o.workers = 0;
  lev_t lev(o, clk);  // no backend
  REQUIRE(lev.try_submit(job{1, clk.now(), std::nullopt}));
  CHECK(lev.step() == 0);
  CHECK_THROWS_AS(lev.drain(), std::logic_error);  // nothing could ever run it
  lev.add_backend([](job&) {});
  CHECK_NOTHROW(lev.drain());
  CHECK(lev.metrics().succeeded == 1);
}

TEST_CASE("retry backoff grows exponentially with full jitter and stops growing at max_backoff") {
  // 2000 jobs fail 4 times each; the handler takes no time on the manual
  // clock, so the gap between two attempts of a job is exactly its backoff.
  levee::manual_clock clk;
  lev_t::options o;
  o.workers = 0;
  o.capacity = 4096;
  o.retry.max_attempts = 4;
  o.retry.base_backoff = 100ms;
  o.retry.max_backoff = 250ms;
  o.retry.budget_ratio = 10;
  o.retry.min_retries_per_second = 1'000'000;
  constexpr int jobs = 2000;
  std::vector<std::vector<tp>> attempts(jobs);
  lev_t lev(
      o,
      [&](job& j) {
        attempts[j.id].push_back(clk.now());
        return false;
      },
      clk);
  for (int i = 0; i < jobs; ++i)
    REQUIRE(lev.try_submit(job{static_cast<std::uint64_t>(i), clk.now(), std::nullopt}));
  lev.drain();
  // Retry k (1-based) waits uniform in [0, min(250 ms, 100 ms * 2^(k-1))].
  const double caps_ms[] = {100, 200, 250};  // by retry
  for (int k = 1; k <= 3; ++k) {
    CAPTURE(k);
    double sum = 0, lo = 1e18, hi = 0;
    int below_half = 0;
    for (const auto& a : attempts) {
      REQUIRE(a.size() == 4);
      const double gap = std::chrono::duration<double, std::milli>(a[static_cast<std::size_t>(k)] -
                                                                   a[static_cast<std::size_t>(k) - 1])
                             .count();
      sum += gap;
      lo = std::min(lo, gap);
      hi = std::max(hi, gap);
      if (gap < caps_ms[k - 1] / 2) ++below_half;
    }
    const double cap = caps_ms[k - 1];
    CHECK(hi <= cap);                                               // the exponential cap (and max_backoff)
    CHECK(hi >= 0.99 * cap);                                        // ... reached: the ceiling grew to it
    CHECK(lo <= 0.01 * cap);                                        // full jitter starts at 0
    CHECK(sum / jobs == doctest::Approx(cap / 2).epsilon(0.05));    // uniform: mean cap / 2
    CHECK(below_half == doctest::Approx(jobs / 2.0).epsilon(0.1));  // ... and half below it
  }
  CHECK(lev.metrics().dead_lettered.failed == static_cast<std::uint64_t>(jobs));
}
