// Tests for levee/leveler.hpp: the API contract (statuses, overflow
// policies, handlers, backends, gates, lifecycle, metrics). Rate and deadline
// properties are in leveler_simulation_test.cpp, races in leveler_stress_test.cpp.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <future>
#include <levee/conformance.hpp>
#include <levee/leveler.hpp>
#include <levee/mpmc_queue.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "eventually.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;

using levee_test::eventually;
using levee_test::gate;

namespace {

using sim_t = levee::leveler<int, levee::round_robin, levee::manual_clock>;
using tp = levee::manual_clock::time_point;

sim_t::options sim_options() {
  sim_t::options o;
  o.workers = 0;
  return o;
}

}  // namespace

TEST_CASE("options are validated at construction with a message naming the bad value") {
  auto throws_with = [](sim_t::options o, const std::string& fragment) {
    try {
      sim_t lev(o);
      FAIL("no exception");
    } catch (const std::invalid_argument& e) {
      CAPTURE(e.what());
      CHECK(std::string(e.what()).find(fragment) != std::string::npos);
      CHECK(std::string(e.what()).find("levee::leveler") != std::string::npos);
    }
  };
  auto o = sim_options();
  o.capacity = 0;
  throws_with(o, "capacity");
  o = sim_options();
  o.retry.max_attempts = 0;
  throws_with(o, "max_attempts");
  o = sim_options();
  o.retry.base_backoff = 2s;
  o.retry.max_backoff = 1s;
  throws_with(o, "max_backoff");
  o = sim_options();
  o.retry.budget_ratio = std::nan("");
  throws_with(o, "budget_ratio");
  o = sim_options();
  o.retry.base_backoff = -1ms;
  throws_with(o, "base_backoff");
  o = sim_options();
  o.default_deadline = 0ns;
  throws_with(o, "default_deadline");
  // the rate limiter and balancer validate their own inputs
  o = sim_options();
  o.rate = levee::rate::per_second(100);
  CHECK_NOTHROW(sim_t{o});
}

TEST_CASE("try_submit: accepted, full and closed, with the job handed back on rejection") {
  levee::manual_clock clk;
  auto o = sim_options();
  o.capacity = 2;
  sim_t lev(o, clk);
  auto a = lev.try_submit(1);
  CHECK(a);
  CHECK(a.status == levee::submit_status::accepted);
  CHECK_FALSE(a.job.has_value());
  CHECK(lev.try_submit(2));
  auto full = lev.try_submit(3);
  CHECK_FALSE(full);
  CHECK(full.status == levee::submit_status::full);
  REQUIRE(full.job.has_value());
  CHECK(*full.job == 3);
  lev.close();
  auto closed = lev.try_submit(4);
  CHECK(closed.status == levee::submit_status::closed);
  CHECK(*closed.job == 4);
  const auto m = lev.metrics();
  CHECK(m.submitted == 4);
  CHECK(m.accepted == 2);
  CHECK(m.rejected.full == 1);
  CHECK(m.rejected.closed == 1);
  CHECK(m.queue_depth == 2);
  CHECK(m.outstanding == 2);
  CHECK(m.closed);
  CHECK(levee::to_string(levee::submit_status::would_miss_deadline) == "would_miss_deadline");
  CHECK(levee::to_string(levee::dead_letter_reason::dropped) == "dropped");
  CHECK(levee::to_string(levee::overflow_policy::drop_oldest) == "drop_oldest");
}

TEST_CASE("a deadline already past is refused at the door; default_deadline applies to jobs without one") {
  levee::manual_clock clk(tp(10s));
  auto o = sim_options();
  o.default_deadline = 50ms;
  o.rate = levee::rate::per_second(100);  // 10 ms apart
  o.burst = 1;
  std::vector<std::pair<int, levee::dead_letter_reason>> dead;
  o.dead_letter = [&](int&& j, levee::dead_letter_reason why, std::exception_ptr) {
    dead.push_back({j, why});
  };
  std::vector<int> ran;
  sim_t lev(
      o, [&](int& j) { ran.push_back(j); }, clk);
  auto r = lev.try_submit(1, {.deadline = clk.now() - 1ns});
  CHECK(r.status == levee::submit_status::would_miss_deadline);
  CHECK(*r.job == 1);
  // default deadline 50 ms at 100/s: positions 1..6 fit (t+0, +10, ... +50), the 7th does not
  int accepted = 0;
  for (int i = 0; i < 10; ++i) accepted += lev.try_submit(100 + i) ? 1 : 0;
  CHECK(accepted == 6);
  CHECK(lev.metrics().rejected.would_miss_deadline == 1 + 4);
  lev.drain();
  CHECK(ran.size() == 6);
  CHECK(dead.empty());
}

TEST_CASE("overflow_policy::reject: submit() returns full with the job") {
  auto o = sim_options();
  o.capacity = 1;
  o.overflow = levee::overflow_policy::reject;
  sim_t lev(o);
  CHECK(lev.submit(1));
  auto r = lev.submit(2);
  CHECK(r.status == levee::submit_status::full);
  CHECK(*r.job == 2);
}

TEST_CASE("overflow_policy::drop_oldest: the oldest queued jobs go to the dead-letter sink as dropped") {
  auto o = sim_options();
  o.capacity = 3;
  o.overflow = levee::overflow_policy::drop_oldest;
  std::vector<int> dropped;
  o.dead_letter = [&](int&& j, levee::dead_letter_reason why, std::exception_ptr e) {
    CHECK(why == levee::dead_letter_reason::dropped);
    CHECK_FALSE(e);
    dropped.push_back(j);
  };
  std::vector<int> ran;
  sim_t lev(o, [&](int& j) { ran.push_back(j); });
  for (int i = 1; i <= 5; ++i) CHECK(lev.submit(i));
  // try_submit never evicts
  CHECK(lev.try_submit(6).status == levee::submit_status::full);
  CHECK(dropped == std::vector<int>{1, 2});
  lev.drain();
  CHECK(ran == std::vector<int>{3, 4, 5});
  const auto m = lev.metrics();
  CHECK(m.dead_lettered.dropped == 2);
  CHECK(m.accepted == 5);
  CHECK(m.succeeded == 3);
}

TEST_CASE("overflow_policy::block: waits for room, times out, and is woken by close()") {
  levee::leveler<int>::options o;
  o.capacity = 2;
  o.workers = 1;
  gate g;
  std::atomic<int> ran{0};
  levee::leveler<int> lev(o, [&](int&) {
    g.wait();
    ++ran;
  });
  CHECK(lev.submit(1));  // taken by the worker, which blocks in the handler
  REQUIRE(eventually([&] { return lev.metrics().in_flight == 1; }));
  CHECK(lev.submit(2));
  CHECK(lev.submit(3));  // queue now full
  const auto t0 = std::chrono::steady_clock::now();
  auto r = lev.submit_for(4, 30ms);
  CHECK(r.status == levee::submit_status::timeout);
  CHECK(*r.job == 4);
  CHECK(std::chrono::steady_clock::now() - t0 >= 30ms);

  // a blocked submitter proceeds when a slot frees up
  std::atomic<bool> done{false};
  levee::submit_status st{};
  std::thread producer([&] {
    st = lev.submit(5).status;
    done = true;
  });
  std::this_thread::sleep_for(20ms);
  CHECK_FALSE(done.load());
  g.open();
  producer.join();
  CHECK(st == levee::submit_status::accepted);
  lev.drain();
  CHECK(ran == 4);

  // close() wakes a blocked submitter with `closed`
  gate g2;
  levee::leveler<int> lev2(o, [&](int&) { g2.wait(); });
  CHECK(lev2.submit(1));
  REQUIRE(eventually([&] { return lev2.metrics().in_flight == 1; }));
  CHECK(lev2.submit(2));
  CHECK(lev2.submit(3));
  levee::submit_status st2{};
  std::thread blocked([&] { st2 = lev2.submit(4).status; });
  std::this_thread::sleep_for(20ms);
  lev2.close();
  blocked.join();
  CHECK(st2 == levee::submit_status::closed);
  g2.open();
}

TEST_CASE("a handler that submits to its own full leveler gets `full` at once instead of deadlocking") {
  levee::leveler<int>::options o;
  o.capacity = 1;
  o.workers = 1;
  o.overflow = levee::overflow_policy::block;
  std::atomic<int> self_full{0}, self_accepted{0}, ran{0};
  levee::leveler<int>* self = nullptr;
  gate ready;
  levee::leveler<int> lev(o, [&](int& j) {
    ready.wait();
    ++ran;
    if (j < 100) {
      // two resubmissions: the first fits (the queue has room for one), the second finds it full
      for (int k = 0; k < 2; ++k) {
        auto r = self->submit(j + 100);
        if (r)
          ++self_accepted;
        else if (r.status == levee::submit_status::full)
          ++self_full;
      }
    }
  });
  self = &lev;
  CHECK(lev.submit(1));
  ready.open();
  lev.drain();
  CHECK(self_accepted == 1);
  CHECK(self_full == 1);
  CHECK(ran == 2);
}

TEST_CASE("handler results: void, bool and handler_result; exceptions become failures with the error") {
  auto o = sim_options();
  std::vector<std::pair<int, std::string>> dead;
  o.dead_letter = [&](int&& j, levee::dead_letter_reason why, std::exception_ptr e) {
    CHECK(why == levee::dead_letter_reason::failed);
    std::string what = "<none>";
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        what = ex.what();
      }
    }
    dead.push_back({j, what});
  };
  sim_t lev(o);
  lev.add_backend([](int& j) -> levee::handler_result {
    switch (j % 4) {
      case 0:
        return levee::handler_result::success();
      case 1:
        return levee::handler_result::failure(std::runtime_error("returned"));
      case 2:
        throw std::logic_error("thrown");
      default:
        return levee::handler_result::failure();
    }
  });
  for (int i = 0; i < 4; ++i) REQUIRE(lev.try_submit(i));
  CHECK_NOTHROW(lev.drain());
  REQUIRE(dead.size() == 3);
  CHECK(dead[0] == std::make_pair(1, std::string("returned")));
  CHECK(dead[1] == std::make_pair(2, std::string("thrown")));
  CHECK(dead[2] == std::make_pair(3, std::string("<none>")));

  auto o2 = sim_options();
  int failed = 0;
  o2.dead_letter = [&](int&&, levee::dead_letter_reason, std::exception_ptr) { ++failed; };
  sim_t lev2(o2, [](int& j) { return j % 2 == 0; });  // bool: true = success
  for (int i = 0; i < 10; ++i) REQUIRE(lev2.try_submit(i));
  lev2.drain();
  CHECK(failed == 5);
  CHECK(lev2.metrics().succeeded == 5);
}

TEST_CASE("a throwing dead-letter sink is counted and never escapes") {
  auto o = sim_options();
  o.dead_letter = [](int&&, levee::dead_letter_reason, std::exception_ptr) {
    throw std::runtime_error("sink down");
  };
  sim_t lev(o, [](int&) { throw 1; });
  for (int i = 0; i < 3; ++i) REQUIRE(lev.try_submit(i));
  CHECK_NOTHROW(lev.drain());
  const auto m = lev.metrics();
  CHECK(m.dead_letter_sink_errors == 3);
  CHECK(m.dead_lettered.failed == 3);
  CHECK(m.outstanding == 0);
}

TEST_CASE("backends: weights, run-time add/remove, per-backend metrics") {
  levee::manual_clock clk;
  levee::leveler<int, levee::weighted_round_robin, levee::manual_clock>::options o;
  o.workers = 0;
  o.capacity = 10'000;
  levee::leveler<int, levee::weighted_round_robin, levee::manual_clock> lev(o, clk);
  std::map<int, int> hits;
  const auto a = lev.add_backend([&](int&) { ++hits[0]; }, levee::backend_options{3, 0, 0});
  const auto b = lev.add_backend([&](int&) { ++hits[1]; }, levee::backend_options{1, 0, 0});
  CHECK(a != b);
  CHECK(lev.backend_count() == 2);
  for (int i = 0; i < 400; ++i) REQUIRE(lev.try_submit(i));
  lev.drain();
  CHECK(hits[0] == 300);
  CHECK(hits[1] == 100);
  auto m = lev.metrics();
  REQUIRE(m.backends.size() == 2);
  CHECK(m.backends[0].id == a);
  CHECK(m.backends[0].weight == 3);
  CHECK(m.backends[0].started == 300);
  CHECK(m.backends[0].succeeded == 300);
  CHECK(m.backends[1].started == 100);

  CHECK(lev.set_weight(b, 3));
  CHECK_FALSE(lev.set_weight(12345, 1));
  for (int i = 0; i < 600; ++i) REQUIRE(lev.try_submit(i));
  lev.drain();
  CHECK(hits[0] == 600);
  CHECK(hits[1] == 400);

  CHECK(lev.remove_backend(a));
  CHECK_FALSE(lev.remove_backend(a));
  for (int i = 0; i < 50; ++i) REQUIRE(lev.try_submit(i));
  lev.drain();
  CHECK(hits[0] == 600);
  CHECK(hits[1] == 450);
  m = lev.metrics();
  REQUIRE(m.backends.size() == 1);
  CHECK(m.backends[0].id == b);
}

TEST_CASE(
    "per-backend metrics are exact after drain with worker threads (workers keep leases between jobs)") {
  levee::leveler<int>::options o;
  o.workers = 2;
  o.capacity = 4096;
  std::atomic<int> ran{0};
  levee::leveler<int> lev(o);
  const auto a = lev.add_backend([&](int&) { ran.fetch_add(1); });
  const auto b = lev.add_backend([&](int&) { ran.fetch_add(1); });
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 500; ++i) REQUIRE(lev.submit(i));
    lev.drain();
    const auto m = lev.metrics();
    REQUIRE(m.backends.size() == 2);
    std::uint64_t started = 0;
    for (const auto& be : m.backends) {
      CHECK(be.in_flight == 0);
      CHECK(be.started == be.succeeded + be.failed);
      started += be.started;
    }
    CHECK(started == static_cast<std::uint64_t>(500 * (round + 1)));
  }
  CHECK(ran.load() == 10'000);
  CHECK(lev.remove_backend(a));
  CHECK(lev.remove_backend(b));
}

TEST_CASE("set_healthy(false) takes a backend out of rotation") {
  auto o = sim_options();
  o.health = levee::health_options::disabled();
  sim_t lev(o);
  std::map<int, int> hits;
  const auto a = lev.add_backend([&](int&) { ++hits[0]; });
  lev.add_backend([&](int&) { ++hits[1]; });
  CHECK(lev.set_healthy(a, false));
  for (int i = 0; i < 20; ++i) REQUIRE(lev.try_submit(i));
  lev.drain();
  CHECK(hits[0] == 0);
  CHECK(hits[1] == 20);
}

TEST_CASE("concurrency gate and per-backend max_in_flight bound the jobs running at once") {
  levee::leveler<int>::options o;
  o.workers = 4;
  o.capacity = 1000;
  o.max_concurrency = 2;
  std::atomic<int> running{0}, peak{0};
  levee::leveler<int> lev(o, [&](int&) {
    const int now = ++running;
    int p = peak.load();
    while (now > p && !peak.compare_exchange_weak(p, now)) {
    }
    std::this_thread::sleep_for(200us);
    --running;
  });
  for (int i = 0; i < 200; ++i) REQUIRE(lev.submit(i));
  lev.drain();
  CHECK(peak.load() <= 2);
  CHECK(peak.load() >= 1);
  CHECK(lev.metrics().concurrency_limit == std::optional<std::size_t>(2));
  lev.set_concurrency_limit(1);
  peak = 0;
  for (int i = 0; i < 50; ++i) REQUIRE(lev.submit(i));
  lev.drain();
  CHECK(peak.load() == 1);

  levee::leveler<int>::options o2;
  o2.workers = 4;
  levee::leveler<int> lev2(o2);
  std::atomic<int> run_a{0}, peak_a{0};
  const auto a = lev2.add_backend([&](int&) {
    const int now = ++run_a;
    int p = peak_a.load();
    while (now > p && !peak_a.compare_exchange_weak(p, now)) {
    }
    std::this_thread::sleep_for(300us);
    --run_a;
  });
  CHECK(lev2.set_max_in_flight(a, 1));
  for (int i = 0; i < 100; ++i) REQUIRE(lev2.submit(i));
  lev2.drain();
  CHECK(peak_a.load() == 1);
  CHECK_THROWS_AS(lev2.set_concurrency_limit(3), std::logic_error);
}

TEST_CASE("handler exceptions never kill a worker") {
  levee::leveler<int>::options o;
  o.workers = 1;
  std::atomic<int> ok{0};
  levee::leveler<int> lev(o, [&](int& j) {
    if (j % 2 == 0) throw std::runtime_error("boom");
    ++ok;
  });
  for (int i = 0; i < 100; ++i) REQUIRE(lev.submit(i));
  lev.drain();
  CHECK(ok == 50);
  const auto m = lev.metrics();
  CHECK(m.failed == 50);
  CHECK(m.dead_lettered.failed == 50);
  CHECK(m.succeeded == 50);
}

TEST_CASE("lifecycle: close keeps running queued work; drain waits; stop cancels; destructor drains") {
  std::atomic<int> ran{0};
  {
    levee::leveler<int>::options o;
    o.workers = 2;
    levee::leveler<int> lev(o, [&](int&) { ++ran; });
    for (int i = 0; i < 500; ++i) REQUIRE(lev.submit(i));
    lev.close();
    CHECK(lev.submit(1).status == levee::submit_status::closed);
  }  // destructor: close + drain + stop
  CHECK(ran == 500);

  // stop(): everything not started is cancelled into the sink, nothing lost
  levee::leveler<int>::options o;
  o.workers = 1;
  std::atomic<int> cancelled{0}, succeeded{0};
  o.dead_letter = [&](int&&, levee::dead_letter_reason why, std::exception_ptr) {
    CHECK(why == levee::dead_letter_reason::cancelled);
    ++cancelled;
  };
  gate g;
  levee::leveler<int> lev(o, [&](int&) {
    g.wait();
    ++succeeded;
  });
  for (int i = 0; i < 100; ++i) REQUIRE(lev.submit(i));
  REQUIRE(eventually([&] { return lev.metrics().in_flight == 1; }));
  // Not started: in the queue or in the worker's batch, both counted as queued.
  CHECK(lev.metrics().queue_depth == 99);
  std::thread stopper([&] { lev.stop(); });
  // stop() marks the leveler stopping and cancels what is queued before it
  // joins the workers: once all 99 queued jobs are cancelled, the running
  // handler is the only job left, whatever the scheduling.
  REQUIRE(eventually([&] { return lev.metrics().dead_lettered.cancelled == 99; }));
  g.open();  // the running handler finishes; stop() then joins
  stopper.join();
  CHECK(succeeded == 1);
  CHECK(cancelled == 99);
  const auto m = lev.metrics();
  CHECK(m.stopped);
  CHECK(m.outstanding == 0);
  CHECK(m.dead_lettered.cancelled == 99);
  CHECK_NOTHROW(lev.stop());  // idempotent
  CHECK(lev.try_submit(1).status == levee::submit_status::closed);
}

TEST_CASE("drain_for gives up; drain from a handler throws; step() needs simulation mode") {
  levee::leveler<int>::options o;
  o.workers = 1;
  gate g;
  std::atomic<bool> drain_threw{false};
  levee::leveler<int>* self = nullptr;
  levee::leveler<int> lev(o, [&](int& j) {
    if (j == 0) {
      try {
        self->drain();
      } catch (const std::logic_error&) {
        drain_threw = true;
      }
    }
    g.wait();
  });
  self = &lev;
  REQUIRE(lev.submit(0));
  CHECK_FALSE(lev.drain_for(20ms));
  g.open();
  CHECK(lev.drain_for(10s));
  CHECK(drain_threw);
  CHECK_THROWS_AS(lev.step(), std::logic_error);
}

TEST_CASE("set_rate / set_burst change the gate at run time; without a gate they throw") {
  levee::manual_clock clk;
  auto o = sim_options();
  o.rate = levee::rate::per_second(10);
  o.burst = 1;
  o.capacity = 1000;
  std::vector<tp> d;
  sim_t lev(
      o, [&](int&) { d.push_back(clk.now()); }, clk);
  for (int i = 0; i < 100; ++i) REQUIRE(lev.try_submit(i));
  lev.run_until(tp(1s));
  const auto first = d.size();
  CHECK(first == 11);  // t = 0, 0.1, ..., 1.0
  lev.set_rate(levee::rate::per_second(100));
  lev.run_until(tp(2s));
  // the new rate applies from the limiter's current schedule on: ~100 more
  // in the next second (the old schedule's last interval may delay the first)
  CHECK(d.size() - first >= 88);
  CHECK(d.size() - first <= 101);
  const std::vector<tp> after(d.begin() + static_cast<std::ptrdiff_t>(first), d.end());
  CHECK(levee::check_conformance(after, levee::rate::per_second(100), 1).ok);
  lev.set_burst(5);
  CHECK(lev.metrics().burst == 5);
  CHECK(lev.metrics().rate_limit == doctest::Approx(100.0));

  sim_t plain(sim_options());
  CHECK_THROWS_AS(plain.set_rate(levee::rate::per_second(5)), std::logic_error);
  CHECK_THROWS_AS(plain.set_concurrency_limit(5), std::logic_error);
}

TEST_CASE("burst 0 means auto: ceil(rate x 5 ms), at least 2") {
  auto o = sim_options();
  o.rate = levee::rate::per_second(100'000);
  CHECK(sim_t(o).metrics().burst == 500);
  o.rate = levee::rate::per_second(10);
  CHECK(sim_t(o).metrics().burst == 2);
  o.rate = levee::rate::per_second(1000);
  CHECK(sim_t(o).metrics().burst == 5);
  o.rate = levee::rate::per_second(10'000);
  CHECK(sim_t(o).metrics().burst == 50);
}

TEST_CASE("auto burst keeps a 100 us jitter reserve: the gate admits b - max(1, floor(r x 100 us)) at once") {
  // Handlers start a little after their admission. If the first burst's
  // handlers start 100 us late and later ones on time, the start times must
  // still respect b + r x w for the reported b: that is what the reserve is for.
  auto dispatch_times = [](std::uint64_t burst, std::uint64_t* reported) {
    levee::manual_clock clk;
    auto o = sim_options();
    o.capacity = 2000;
    o.rate = levee::rate::per_second(100'000);
    o.burst = burst;
    std::vector<tp> at;
    sim_t lev(
        o, [&](int&) { at.push_back(clk.now()); }, clk);
    for (int i = 0; i < 1500; ++i) REQUIRE(lev.try_submit(i));
    lev.drain();
    *reported = lev.metrics().burst;
    const tp first = at.front();
    for (auto& t : at)
      if (t == first) t += 100us;  // the initial burst starts late
    std::sort(at.begin(), at.end());
    return at;
  };
  std::uint64_t b = 0;
  const auto automatic = dispatch_times(0, &b);
  CHECK(b == 500);
  CHECK(levee::check_conformance(automatic, levee::rate::per_second(100'000), b).ok);
  // The same delays with an explicit burst of 500 (no reserve) break the envelope.
  const auto explicit_500 = dispatch_times(500, &b);
  CHECK(b == 500);
  CHECK_FALSE(levee::check_conformance(explicit_500, levee::rate::per_second(100'000), b).ok);
}

TEST_CASE("auto burst at 1k/s: one token of reserve, so a late first burst still keeps b + r x w") {
  auto dispatch_times = [](std::uint64_t burst, std::uint64_t* reported) {
    levee::manual_clock clk;
    auto o = sim_options();
    o.capacity = 100;
    o.rate = levee::rate::per_second(1000);
    o.burst = burst;
    std::vector<tp> at;
    sim_t lev(
        o, [&](int&) { at.push_back(clk.now()); }, clk);
    for (int i = 0; i < 50; ++i) REQUIRE(lev.try_submit(i));
    lev.drain();
    *reported = lev.metrics().burst;
    REQUIRE(at.size() == 50);
    const tp first = at.front();
    const auto n = std::count(at.begin(), at.end(), first);
    for (auto& t : at)
      if (t == first) t += 900us;  // the initial burst's handlers start up to one interval late
    std::sort(at.begin(), at.end());
    return std::pair{at, n};
  };
  std::uint64_t b = 0;
  const auto [automatic, first_burst] = dispatch_times(0, &b);
  CHECK(b == 5);
  CHECK(first_burst == 4);  // the gate's own burst: b - 1
  CHECK(levee::check_conformance(automatic, levee::rate::per_second(1000), b).ok);
  const auto [explicit_5, first_5] = dispatch_times(5, &b);
  CHECK(first_5 == 5);
  CHECK_FALSE(levee::check_conformance(explicit_5, levee::rate::per_second(1000), 5).ok);
}

TEST_CASE("metrics of a live leveler render as Prometheus text") {
  levee::manual_clock clk;
  auto o = sim_options();
  o.rate = levee::rate::per_second(1000);
  o.max_concurrency = 4;
  sim_t lev(
      o, [&](int&) { clk.advance(2ms); }, clk);
  for (int i = 0; i < 50; ++i) REQUIRE(lev.try_submit(i));
  lev.drain();
  const auto m = lev.metrics();
  CHECK(m.service_time.count() == 50);
  CHECK(m.service_time.p50() == 2ms);  // simulated 2 ms handlers
  CHECK(m.service_time.max() == 2ms);
  CHECK(m.workers == 0);
  const auto text = levee::to_prometheus(m, "app");
  CHECK(text.find("app_jobs_succeeded_total 50\n") != std::string::npos);
  CHECK(text.find("app_concurrency_limit 4\n") != std::string::npos);
  CHECK(text.find("app_rate_limit_per_second 1000\n") != std::string::npos);
  CHECK(text.find("app_service_seconds_count 50\n") != std::string::npos);
  CHECK(text.find("app_backend_started_total{backend=\"1\"} 50\n") != std::string::npos);
}

TEST_CASE("arrival rate: submissions (accepted or not) per second over the last second, also when sparse") {
  levee::manual_clock clk;
  auto o = sim_options();
  o.capacity = 10'000;
  sim_t lev(
      o, [](int&) {}, clk);
  CHECK(lev.metrics().arrival_rate == 0.0);
  clk.advance(5s);  // the window never reaches back before the leveler existed
  // 200 submissions per second for 3 s: one every 5 ms.
  for (int i = 0; i < 600; ++i) {
    REQUIRE(lev.try_submit(i));
    clk.advance(5ms);
  }
  CHECK(lev.metrics().arrival_rate == doctest::Approx(200.0).epsilon(0.01));
  // Rejected submissions are arrivals too.
  lev.close();
  for (int i = 0; i < 100; ++i) {
    CHECK(lev.try_submit(i).status == levee::submit_status::closed);
    clk.advance(5ms);
  }
  CHECK(lev.metrics().arrival_rate == doctest::Approx(200.0).epsilon(0.01));
  // Silence: the estimate decays to 0 once the window holds no submission.
  clk.advance(1500ms);
  CHECK(lev.metrics().arrival_rate == 0.0);
  // One lone submission after the silence: 1 over the window's span.
  CHECK(lev.try_submit(1).status == levee::submit_status::closed);
  const auto m = lev.metrics();
  CHECK(m.arrival_rate > 0.0);
  CHECK(m.arrival_rate <= 1.0 / 1.0 + 1e-9);
}

TEST_CASE("measurement clock: cheap steady_clock readings stay within the anchor bound of the real clock") {
  // One round spins (no sleep) for 60 ms of real time so that the counter's
  // ratio gets calibrated (>= 20 ms) and several 250 us re-anchoring windows
  // pass. The bound is 1 us (an anchor's two counter reads are < 2 us apart)
  // plus < 25 ns of ratio drift per window. A machine under load can
  // disturb a round (the hypervisor's clock and the counter are sampled at
  // different moments), so the tight bound must hold in one of three
  // rounds, and a gross error (a wrong ratio or anchor) fails every round.
  using sc = std::chrono::steady_clock;
  struct round_result {
    long n = 0;
    std::int64_t worst_below = 0, worst_above = 0;
  };
  auto round = [] {
    round_result r;
    const auto end = sc::now() + 60ms;
    for (auto before = sc::now(); before < end; before = sc::now(), ++r.n) {
      const auto m = levee::detail::measurement_now();
      const auto after = sc::now();
      r.worst_below = std::max<std::int64_t>(r.worst_below, (before - m).count());
      r.worst_above = std::max<std::int64_t>(r.worst_above, (m - after).count());
    }
    return r;
  };
  bool tight = false;
  for (int attempt = 0; attempt < 3 && !tight; ++attempt) {
    const round_result r = round();
    INFO("round " << attempt << ": readings: " << r.n << ", worst below: " << r.worst_below
                  << " ns, worst above: " << r.worst_above << " ns");
    CHECK(r.n > 1000);
    CHECK(r.worst_below < 100'000);
    CHECK(r.worst_above < 100'000);
    tight = r.worst_below < 1100 && r.worst_above < 1100;
  }
  CHECK(tight);
}

#if LEVEE_DETAIL_HAS_TSC
TEST_CASE(
    "measurement clock: the self-check's tolerance is two anchor errors plus 2e-4 of the elapsed time") {
  using levee::detail::tsc_consistent;
  CHECK(tsc_consistent(0, 0));
  CHECK(tsc_consistent(2'000, 0));
  CHECK(tsc_consistent(-2'000, 0));
  CHECK_FALSE(tsc_consistent(2'001, 0));
  CHECK_FALSE(tsc_consistent(-2'001, 0));
  CHECK(tsc_consistent(2'050, 250'000));  // 2 us + 50 ns over a window
  CHECK_FALSE(tsc_consistent(2'060, 250'000));
  CHECK(tsc_consistent(202'000, 1'000'000'000));  // 2 us + 200 us over a second
  CHECK_FALSE(tsc_consistent(203'000, 1'000'000'000));
  CHECK_FALSE(tsc_consistent(3'000, -5));  // a negative span counts as 0
}

TEST_CASE(
    "measurement clock: an anchor that extrapolates wrongly discards the calibration, then it recovers") {
  using sc = std::chrono::steady_clock;
  if (!levee::detail::tsc_usable()) {
    MESSAGE(
        "no invariant counter with a tsc or kvm-clock clocksource here: measurement_now() is "
        "steady_clock::now()");
    return;
  }
  auto& g = levee::detail::tsc_global();
  auto calibrated = [&] {
    std::lock_guard lock(g.m);
    return g.ns_per_tick > 0;
  };
  auto discarded = [&] {
    std::lock_guard lock(g.m);
    return g.discarded;
  };
  // Spin (no sleep) until calibrated: >= 20 ms of real time.
  for (const auto end = sc::now() + 2s; !calibrated() && sc::now() < end;)
    (void)levee::detail::measurement_now();
  REQUIRE(calibrated());
  // Nothing was discarded while calibrating on this machine (a counter that
  // disagreed with the clock would have been).
  CHECK(discarded() == 0);
  // An anchor whose extrapolation is 1 ms off, as after a counter jump.
  levee::detail::tsc_anchor a;
  (void)levee::detail::tsc_reanchor(a);
  REQUIRE(a.window_ticks != 0);
  a.ns -= 1'000'000;
  const auto before = discarded();
  (void)levee::detail::tsc_reanchor(a);
  CHECK(discarded() == before + 1);
  CHECK_FALSE(calibrated());
  CHECK(a.window_ticks == 0);  // its next reading is the real clock
  // A good anchor is not flagged, and the ratio comes back after 20 ms.
  for (const auto end = sc::now() + 2s; !calibrated() && sc::now() < end;)
    (void)levee::detail::measurement_now();
  CHECK(calibrated());
  levee::detail::tsc_anchor b;
  (void)levee::detail::tsc_reanchor(b);
  (void)levee::detail::tsc_reanchor(b);
  CHECK(discarded() == before + 1);
}
#endif

TEST_CASE("keys give affinity with hashing strategies: the same key always lands on the same backend") {
  auto check = [](auto tag) {
    using S = decltype(tag);
    levee::manual_clock clk;
    typename levee::leveler<int, S, levee::manual_clock>::options o;
    o.workers = 0;
    o.capacity = 10'000;
    levee::leveler<int, S, levee::manual_clock> lev(o, clk);
    std::map<int, std::set<int>> backends_of_key;  // key -> backends that ran it
    std::set<int> used;
    for (int b = 0; b < 5; ++b)
      lev.add_backend([&, b](int& key) {
        backends_of_key[key].insert(b);
        used.insert(b);
      });
    for (int round = 0; round < 20; ++round)
      for (int key = 0; key < 200; ++key)
        REQUIRE(lev.try_submit(key, {.key = static_cast<std::uint64_t>(key) * 7919u}));
    lev.drain();
    REQUIRE(backends_of_key.size() == 200);
    for (const auto& entry : backends_of_key) {
      const int key = entry.first;
      CAPTURE(key);
      CHECK(entry.second.size() == 1);
    }
    CHECK(used.size() == 5);  // and the keys spread over every backend
  };
  SUBCASE("jump_hash") { check(levee::jump_hash{}); }
  SUBCASE("ring_hash") { check(levee::ring_hash{}); }
  SUBCASE("maglev") { check(levee::maglev{}); }
  SUBCASE("rendezvous") { check(levee::rendezvous{}); }
}

TEST_CASE("worker threads on a manual clock wait for the clock: rate tokens and retries follow its time") {
  levee::manual_clock clk;
  levee::leveler<int, levee::round_robin, levee::manual_clock>::options o;
  o.workers = 2;
  o.rate = levee::rate::per_second(10);  // one per 100 ms
  o.burst = 1;
  o.retry.max_attempts = 2;
  o.retry.base_backoff = 1s;
  o.retry.max_backoff = 1s;
  std::atomic<int> ran{0}, failures{0};
  levee::leveler<int, levee::round_robin, levee::manual_clock> lev(
      o,
      [&](int&) {
        ++ran;
        // Whichever job wins the token at t = 0 (either worker may) fails once.
        if (failures.fetch_add(1) == 0) throw std::runtime_error("once");
      },
      clk);
  // Declared after lev, so it runs first: if a REQUIRE fails, stop() cancels
  // what waits for this clock instead of the destructor waiting for a time
  // nobody will set.
  struct stop_on_exit {
    levee::leveler<int, levee::round_robin, levee::manual_clock>& l;
    ~stop_on_exit() { l.stop(); }
  } guard{lev};
  for (int i = 0; i < 5; ++i) REQUIRE(lev.try_submit(i));
  REQUIRE(eventually([&] { return ran.load() == 1; }));  // the token available at t = 0
  std::this_thread::sleep_for(20ms);
  CHECK(ran.load() == 1);  // no more until the clock moves
  for (int step = 1; step <= 4; ++step) {
    clk.advance(100ms);
    REQUIRE(eventually([&] { return ran.load() == 1 + step; }));
  }
  // the first job failed at t = 0 and waits up to 1 s (full jitter) for its retry
  clk.advance(1s);
  REQUIRE(eventually([&] { return ran.load() == 6; }));
  CHECK(lev.drain_for(1ms));
  const auto m = lev.metrics();
  CHECK(m.succeeded == 5);
  CHECK(m.retried == 1);
}

TEST_CASE(
    "adaptive concurrency: failures shrink the limit, healthy traffic leaves it; options are exclusive") {
  auto run = [](bool fail) {
    auto o = sim_options();
    o.adaptive = levee::adaptive_limit<>::options{8, 1, 8};
    sim_t lev(o, [fail](int&) { return !fail; });
    CHECK(lev.metrics().concurrency_limit == std::optional<std::size_t>(8));
    for (int i = 0; i < 400; ++i) REQUIRE(lev.try_submit(i));
    lev.drain();
    return *lev.metrics().concurrency_limit;
  };
  const auto failing = run(true);
  CHECK(failing < 8);
  CHECK(failing >= 1);
  CHECK(run(false) == 8);

  auto o = sim_options();
  o.adaptive = levee::adaptive_limit<>::options{};
  o.max_concurrency = 4;
  CHECK_THROWS_AS(sim_t{o}, std::invalid_argument);
  o.max_concurrency = 0;
  sim_t lev(o);
  CHECK_THROWS_AS(lev.set_concurrency_limit(3), std::logic_error);  // the adaptive limit owns it
}

TEST_CASE("outcomes feed outlier ejection: a failing backend is ejected and its jobs retried elsewhere") {
  levee::manual_clock clk;
  auto o = sim_options();
  o.health.consecutive_failures = 3;
  o.health.base_ejection = 10s;
  o.health.max_ejection = 10s;
  o.health.max_ejected_share = 0.5;
  o.health.panic_threshold = 0;
  o.retry.max_attempts = 2;
  o.retry.base_backoff = 0ns;
  o.retry.max_backoff = 0ns;
  o.retry.min_retries_per_second = 1000;
  sim_t lev(o, clk);
  std::atomic<int> bad_calls{0}, good_calls{0};
  const auto bad = lev.add_backend([&](int&) {
    ++bad_calls;
    throw std::runtime_error("down");
  });
  lev.add_backend([&](int&) { ++good_calls; });
  for (int i = 0; i < 100; ++i) REQUIRE(lev.try_submit(i));
  lev.drain();
  auto m = lev.metrics();
  CHECK(m.succeeded == 100);  // every job that hit the bad backend was retried on the good one
  CHECK(bad_calls.load() == 3);
  CHECK(good_calls.load() == 100);
  CHECK(m.ejected_backends == 1);
  REQUIRE(m.backends.size() == 2);
  CHECK(m.backends[0].id == bad);
  CHECK(m.backends[0].ejected);
  CHECK(m.backends[0].failed == 3);
  // after the ejection time the backend is back in rotation
  clk.advance(11s);
  for (int i = 0; i < 10; ++i) REQUIRE(lev.try_submit(i));
  lev.drain();
  CHECK(bad_calls.load() > 3);
}

TEST_CASE("batching: a slow handler never strands the jobs a worker took with it") {
  // With a deep queue of short jobs a worker takes up to 32 jobs per claim.
  // The job that blocks here waits until every other job has run, which only
  // happens if the other worker takes the jobs batched behind it (unless it
  // happens to be the last of its batch: ~1 run in 32 would not notice).
  constexpr int n = LEVEE_TEST_SANITIZED ? 2000 : 20000;
  constexpr int slow = n / 2;
  levee::leveler<int>::options o;
  o.workers = 2;
  o.capacity = n;
  gate g;
  std::atomic<int> others{0};
  std::atomic<bool> saw_all{false};
  levee::leveler<int> lev(o, [&](int& j) {
    if (j < 2) g.wait();  // both workers wait here while the queue fills up
    if (j != slow) {
      others.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    saw_all = eventually([&] { return others.load() == n - 1; }, 20s);
  });
  REQUIRE(lev.submit(0));
  REQUIRE(eventually([&] { return lev.metrics().in_flight == 1; }));
  REQUIRE(lev.submit(1));
  REQUIRE(eventually([&] { return lev.metrics().in_flight == 2; }));
  for (int i = 2; i < n; ++i) REQUIRE(lev.submit(i));
  CHECK(lev.metrics().queue_depth == static_cast<std::size_t>(n - 2));
  g.open();
  lev.drain();
  CHECK(saw_all);
  CHECK(others == n - 1);
  const auto m = lev.metrics();
  CHECK(m.succeeded == static_cast<std::uint64_t>(n));
  CHECK(m.queue_depth == 0);
}

namespace {
struct counted {
  static inline std::atomic<long> live{0};
  int v;
  explicit counted(int x) noexcept : v(x) { ++live; }
  counted(counted&& o) noexcept : v(o.v) {
    o.v = -1;
    ++live;
  }
  counted& operator=(counted&& o) noexcept {
    v = o.v;
    o.v = -1;
    return *this;
  }
  ~counted() { --live; }
};
}  // namespace

TEST_CASE("job_batch: FIFO refill from the queue, owner and thief takes, refill only when all moved out") {
  {
    levee::mpmc_queue<counted> q(64);
    for (int i = 0; i < 20; ++i) REQUIRE(q.try_emplace(i));
    levee::detail::job_batch<counted, 8> b;
    b.enable();
    auto pop = [&](auto out, std::size_t max) noexcept { return q.try_pop_bulk(out, max); };
    CHECK(b.refillable());
    CHECK(b.refill(pop) == 8);
    CHECK(b.size_approx() == 8);
    CHECK_FALSE(b.refillable());
    CHECK(b.take(true)->v == 0);
    CHECK(b.take(false)->v == 1);  // a thief takes from the same front
    for (int i = 2; i < 8; ++i) {
      CHECK_FALSE(b.refillable());  // refillable only once the last one is out
      auto e = b.take(i % 2 == 0);
      REQUIRE(e);
      CHECK(e->v == i);
    }
    CHECK_FALSE(b.take(true));
    CHECK(b.refillable());
    CHECK(b.refill(pop) == 8);  // wraps around the same slots
    for (int i = 8; i < 16; ++i) CHECK(b.take(true)->v == i);
    CHECK(b.refill(pop) == 4);  // what the queue has left
    CHECK(b.size_approx() == 4);
    CHECK(b.take(false)->v == 16);
    CHECK_FALSE(b.refillable());
    CHECK(q.size_approx() == 0);
    CHECK(counted::live == 3);  // 17, 18, 19 still in the batch
  }
  CHECK(counted::live == 0);  // the batch destroys what it still holds
}

TEST_CASE(
    "job_batch: one owner refilling and three thieves under oversubscription deliver every job exactly "
    "once") {
  constexpr int n = LEVEE_TEST_SANITIZED ? 20000 : 200000;
  levee::mpmc_queue<int> q(256);
  levee::detail::job_batch<int, 32> b;
  b.enable();
  std::vector<std::atomic<int>> seen(n);
  std::atomic<int> delivered{0};
  std::atomic<bool> done{false};
  std::thread producer([&] {
    for (int i = 0; i < n; ++i)
      while (!q.try_push(i)) std::this_thread::yield();
  });
  std::thread owner([&] {
    auto pop = [&](auto out, std::size_t max) noexcept { return q.try_pop_bulk(out, max); };
    while (delivered.load() < n) {
      std::optional<int> e = b.take(true);
      if (!e && b.refillable() && b.refill(pop) != 0) e = b.take(true);
      if (!e) {
        std::this_thread::yield();
        continue;
      }
      seen[static_cast<std::size_t>(*e)].fetch_add(1);
      delivered.fetch_add(1);
    }
  });
  std::vector<std::thread> thieves;
  for (int t = 0; t < 3; ++t)
    thieves.emplace_back([&] {
      while (!done.load()) {
        if (auto e = b.take(false)) {
          seen[static_cast<std::size_t>(*e)].fetch_add(1);
          delivered.fetch_add(1);
        } else {
          std::this_thread::yield();
        }
      }
    });
  producer.join();
  owner.join();
  done = true;
  for (auto& t : thieves) t.join();
  int wrong = 0;
  for (auto& s : seen) wrong += s.load() != 1;
  CHECK(wrong == 0);
  CHECK(delivered == n);
}

TEST_CASE("a blocked submit wakes at its job's deadline with would_miss_deadline; submit_until times out") {
  using mlev = levee::leveler<int, levee::round_robin, levee::manual_clock>;
  levee::manual_clock clk;
  mlev::options o;
  o.workers = 1;
  o.capacity = 1;
  gate g;
  std::atomic<bool> running{false};
  mlev lev(
      o,
      [&](int&) {
        running = true;
        g.wait();
      },
      clk);
  struct open_on_exit {  // a failed REQUIRE must not leave the handler blocked
    gate& g;
    ~open_on_exit() { g.open(); }
  } guard{g};
  REQUIRE(lev.try_submit(1));
  REQUIRE(eventually([&] { return running.load(); }));
  REQUIRE(lev.try_submit(2));  // the queue is full from here on
  const auto t0 = clk.now();
  auto by_deadline = std::async(std::launch::async, [&] { return lev.submit(3, {.deadline = t0 + 1s}); });
  auto by_until = std::async(std::launch::async, [&] { return lev.submit_until(4, t0 + 2s); });
  CHECK(by_deadline.wait_for(20ms) == std::future_status::timeout);  // waits for room on the manual clock
  clk.advance(999ms);
  CHECK(by_deadline.wait_for(20ms) == std::future_status::timeout);
  clk.advance(1ms);  // the job's deadline: no room will come in time
  const auto d = by_deadline.get();
  CHECK(d.status == levee::submit_status::would_miss_deadline);
  CHECK(*d.job == 3);
  CHECK(by_until.wait_for(1ms) == std::future_status::timeout);
  clk.advance(1s);
  const auto u = by_until.get();
  CHECK(u.status == levee::submit_status::timeout);
  CHECK(*u.job == 4);
  // A time limit already past gives up at once.
  CHECK(lev.submit_until(5, clk.now() - 1ms).status == levee::submit_status::timeout);
  // drain_until gives up at its time on the leveler's clock.
  auto drained = std::async(std::launch::async, [&] { return lev.drain_until(clk.now() + 1s); });
  CHECK(drained.wait_for(20ms) == std::future_status::timeout);
  clk.advance(1s);
  CHECK_FALSE(drained.get());
  const auto m = lev.metrics();
  CHECK(m.rejected.would_miss_deadline == 1);
  CHECK(m.rejected.timeout == 2);
  g.open();
  CHECK(lev.drain_until(clk.now() + 1h));  // drained long before that time
}

TEST_CASE(
    "try_submit with job_options: the key routes, the deadline is checked at the door and at dispatch") {
  levee::manual_clock clk;
  typename levee::leveler<int, levee::jump_hash, levee::manual_clock>::options o;
  o.workers = 0;
  std::map<int, std::set<int>> backend_of;  // job -> backends
  levee::leveler<int, levee::jump_hash, levee::manual_clock> lev(o, clk);
  std::map<int, int> ran_on;
  for (int b = 0; b < 4; ++b) lev.add_backend([&, b](int& j) { ran_on[j] = b; });
  // Jobs 0..99 with key 7 all land on one backend; 100..199 with their own keys spread.
  for (int j = 0; j < 100; ++j) REQUIRE(lev.try_submit(j, {.key = 7}));
  for (int j = 100; j < 200; ++j) REQUIRE(lev.try_submit(j, {.key = static_cast<std::uint64_t>(j)}));
  // A deadline in the past is refused at the door, with the job handed back.
  auto late = lev.try_submit(1000, {.key = 1, .deadline = clk.now() - 1ns});
  CHECK(late.status == levee::submit_status::would_miss_deadline);
  CHECK(*late.job == 1000);
  // One due in 1 ms, behind nothing that takes time: dispatched.
  REQUIRE(lev.try_submit(1001, {.deadline = clk.now() + 1ms}));
  lev.drain();
  std::set<int> keyed, spread;
  for (int j = 0; j < 100; ++j) keyed.insert(ran_on.at(j));
  for (int j = 100; j < 200; ++j) spread.insert(ran_on.at(j));
  CHECK(keyed.size() == 1);
  CHECK(spread.size() == 4);
  CHECK(ran_on.count(1000) == 0);
  CHECK(ran_on.count(1001) == 1);
}
