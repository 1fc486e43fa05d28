// Threaded stress tests of levee::leveler: 8 producers, several workers,
// failing backends, retries, close/stop racing submits, backends changing
// under load. Each asserts that every accepted job reaches exactly one final
// state and every rejected job none. Sized to run in a few seconds under
// TSan and ASan.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <levee/leveler.hpp>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

using namespace std::chrono_literals;

namespace {

constexpr std::size_t producers = 8;
constexpr std::size_t per_producer = LEVEE_TEST_SANITIZED ? 1500 : 6000;
constexpr std::size_t total = producers * per_producer;

struct job {
  std::uint32_t id = 0;
};

// Per job: how it was admitted and how many final states it reached.
struct ledger {
  std::unique_ptr<std::atomic<int>[]> finals = std::make_unique<std::atomic<int>[]>(total);
  std::unique_ptr<std::atomic<int>[]> admitted =
      std::make_unique<std::atomic<int>[]>(total);  // 1 accepted, -1 rejected
  std::atomic<std::uint64_t> accepted{0}, rejected{0}, successes{0}, dead{0};

  void final_state(std::uint32_t id) { finals[id].fetch_add(1, std::memory_order_relaxed); }
  void admit(std::uint32_t id, bool ok) {
    admitted[id].store(ok ? 1 : -1, std::memory_order_relaxed);
    (ok ? accepted : rejected).fetch_add(1, std::memory_order_relaxed);
  }
  // Call after everything settled.
  void check_exactly_once(std::size_t n = total) const {
    std::size_t bad_accepted = 0, bad_rejected = 0, unsubmitted = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const int a = admitted[i].load();
      const int f = finals[i].load();
      if (a == 1 && f != 1) ++bad_accepted;
      if (a == -1 && f != 0) ++bad_rejected;
      if (a == 0) ++unsubmitted;
    }
    CHECK(bad_accepted == 0);
    CHECK(bad_rejected == 0);
    CHECK(unsubmitted == 0);
    CHECK(accepted.load() + rejected.load() == n);
  }
};

std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return x;
}

using lev_t = levee::leveler<job, levee::power_of_two>;

lev_t::options base_options(ledger& led) {
  lev_t::options o;
  o.workers = 4;
  o.capacity = 512;
  o.retry.max_attempts = 3;
  o.retry.base_backoff = 50us;
  o.retry.max_backoff = 500us;
  o.retry.budget_ratio = 1.0;
  o.retry.min_retries_per_second = 100'000;
  o.seed = 7;
  o.dead_letter = [&led](job&& j, levee::dead_letter_reason, std::exception_ptr) {
    led.dead.fetch_add(1, std::memory_order_relaxed);
    led.final_state(j.id);
  };
  return o;
}

// Backend i fails a job attempt with probability ~fail_pct% (by throwing on
// odd backends and returning failure on even ones). `first`, if set, runs at
// the start of every attempt.
void add_flaky_backends(lev_t& lev, ledger& led, std::initializer_list<int> fail_pct,
                        std::function<void(const job&)> first = {}) {
  int i = 0;
  for (int pct : fail_pct) {
    const int me = i++;
    lev.add_backend([&led, pct, me, first,
                     n = std::make_shared<std::atomic<std::uint64_t>>(0)](job& j) -> levee::handler_result {
      if (first) first(j);
      const std::uint64_t k = n->fetch_add(1, std::memory_order_relaxed);
      if (static_cast<int>(mix(j.id * 31u + k) % 100) < pct) {
        if (me % 2 == 1) throw std::runtime_error("flaky backend");
        return levee::handler_result::failure(std::runtime_error("flaky backend"));
      }
      led.successes.fetch_add(1, std::memory_order_relaxed);
      led.final_state(j.id);
      return levee::handler_result::success();
    });
  }
}

}  // namespace

TEST_CASE("8 producers, 4 workers, flaky backends with retries: every accepted job ends exactly once") {
  ledger led;
  auto o = base_options(led);
  o.overflow = levee::overflow_policy::block;
  lev_t lev(o);
  add_flaky_backends(lev, led, {30, 10, 0});
  std::vector<std::thread> ps;
  for (std::size_t p = 0; p < producers; ++p)
    ps.emplace_back([&, p] {
      for (std::size_t i = 0; i < per_producer; ++i) {
        const auto id = static_cast<std::uint32_t>(p * per_producer + i);
        levee::submit_result<job> r;
        switch (id % 3) {
          case 0:
            r = lev.submit(job{id});
            break;  // block
          case 1:
            r = lev.submit_for(job{id}, 50ms);
            break;  // block with a limit
          default:
            r = lev.try_submit(job{id}, {.key = id});
            break;  // never blocks
        }
        if (!r) REQUIRE(r.job->id == id);
        led.admit(id, r.accepted());
      }
    });
  for (auto& t : ps) t.join();
  lev.drain();
  led.check_exactly_once();
  const auto m = lev.metrics();
  CHECK(m.accepted == led.accepted.load());
  CHECK(m.succeeded == led.successes.load());
  CHECK(m.succeeded + m.dead_lettered.total() == m.accepted);
  CHECK(m.dead_lettered.total() == led.dead.load());
  CHECK(m.retried > 0);
  CHECK(m.outstanding == 0);
  CHECK(m.in_flight == 0);
  MESSAGE("accepted " << m.accepted << ", succeeded " << m.succeeded << ", retried " << m.retried
                      << ", dead-lettered " << m.dead_lettered.total() << ", rejected "
                      << m.rejected.total());
}

TEST_CASE("close() racing 8 producers: accepted jobs all finish, later submits report closed") {
  ledger led;
  auto o = base_options(led);
  o.overflow = levee::overflow_policy::block;
  lev_t lev(o);
  add_flaky_backends(lev, led, {20, 0});
  std::atomic<bool> go{false};
  std::atomic<std::uint64_t> after_close_accepted{0};
  std::atomic<bool> closed{false};
  std::atomic<std::size_t> submitted{0};
  std::vector<std::thread> ps;
  for (std::size_t p = 0; p < producers; ++p)
    ps.emplace_back([&, p] {
      while (!go.load()) std::this_thread::yield();
      for (std::size_t i = 0; i < per_producer; ++i) {
        const auto id = static_cast<std::uint32_t>(p * per_producer + i);
        const bool was_closed = closed.load(std::memory_order_acquire);
        auto r = (id % 2 == 0) ? lev.submit(job{id}) : lev.try_submit(job{id});
        if (was_closed && r) after_close_accepted.fetch_add(1);
        if (was_closed) CHECK(r.status == levee::submit_status::closed);
        led.admit(id, r.accepted());
        submitted.fetch_add(1);
        // Keep submitting until close() is seen, so the race is real however fast the build is.
        if (i + 1 == per_producer / 2)
          while (!closed.load(std::memory_order_acquire)) std::this_thread::yield();
      }
    });
  go = true;
  // Close while producers are mid-stream: at least a quarter of the submissions were made,
  // and half of each producer's are still to come.
  while (submitted.load() < producers * per_producer / 4) std::this_thread::yield();
  lev.close();
  closed.store(true, std::memory_order_release);
  for (auto& t : ps) t.join();
  lev.drain();
  led.check_exactly_once();
  CHECK(after_close_accepted == 0);
  const auto m = lev.metrics();
  CHECK(m.rejected.closed > 0);
  CHECK(m.succeeded + m.dead_lettered.total() == m.accepted);
}

TEST_CASE("stop() racing producers, running handlers and pending retries: nothing is lost") {
  for (int round = 0; round < (LEVEE_TEST_SANITIZED ? 2 : 5); ++round) {
    ledger led;
    auto o = base_options(led);
    o.overflow = round % 2 == 0 ? levee::overflow_policy::drop_oldest : levee::overflow_policy::block;
    o.retry.base_backoff = 1ms;
    o.retry.max_backoff = 5ms;
    auto lev = std::make_unique<lev_t>(o);
    // In rounds > 0, jobs with i % 100 == 50 hold their worker until stop()
    // closes the leveler: once all 4 workers hold one, the queue can only
    // fill up, so stop() is guaranteed to find jobs to cancel.
    std::atomic<int> holding{0};
    add_flaky_backends(*lev, led, {40, 40, 5}, [&holding, &lev, round](const job& j) {
      if (round == 0 || j.id % per_producer % 100 != 50) return;
      ++holding;
      while (!lev->is_closed()) std::this_thread::yield();
    });
    std::atomic<bool> go{false};
    std::vector<std::thread> ps;
    for (std::size_t p = 0; p < producers; ++p)
      ps.emplace_back([&, p] {
        while (!go.load()) std::this_thread::yield();
        for (std::size_t i = 0; i < per_producer; ++i) {
          const auto id = static_cast<std::uint32_t>(p * per_producer + i);
          auto r = lev->submit(job{id});
          led.admit(id, r.accepted());
        }
      });
    go = true;
    // Round 0 stops as soon as possible; later rounds once every worker is held and the queue is not empty.
    if (round != 0) {
      const auto limit = std::chrono::steady_clock::now() + 30s;
      while ((holding.load() < 4 || lev->metrics().queue_depth == 0) &&
             std::chrono::steady_clock::now() < limit)
        std::this_thread::yield();
      REQUIRE(holding.load() >= 4);
    }
    lev->stop();
    for (auto& t : ps) t.join();
    // After stop() returned, every job accepted before it is final; jobs
    // accepted after it cannot exist (closed), so the ledger is settled.
    led.check_exactly_once();
    const auto m = lev->metrics();
    CHECK(m.outstanding == 0);
    CHECK(m.stopped);
    CHECK(m.succeeded + m.dead_lettered.total() == m.accepted);
    CHECK(m.accepted == led.accepted.load());
    if (round != 0) {
      // stop() found queued jobs and cancelled them.
      CHECK(m.accepted > 0);
      CHECK(m.dead_lettered.cancelled > 0);
      if (o.overflow == levee::overflow_policy::block) {
        CHECK(m.rejected.closed > 0);  // producers still blocked on the full queue
      } else {
        CHECK(m.dead_lettered.dropped > 0);
      }
    }
    lev.reset();  // destructor after stop(): nothing left to do
  }
}

TEST_CASE("handlers resubmitting into their own small leveler (block policy) never deadlock") {
  lev_t::options o;
  o.workers = 3;
  o.capacity = 8;
  o.overflow = levee::overflow_policy::block;
  std::atomic<std::uint64_t> ran{0}, resubmitted{0}, refused_full{0};
  lev_t* self = nullptr;
  lev_t lev(o, [&](job& j) {
    ran.fetch_add(1);
    if (j.id < 1'000'000) {  // first generation: spawn a child
      auto r = self->submit(job{j.id + 1'000'000});
      if (r)
        resubmitted.fetch_add(1);
      else if (r.status == levee::submit_status::full)
        refused_full.fetch_add(1);
    }
  });
  self = &lev;
  std::vector<std::thread> ps;
  const std::uint32_t n = LEVEE_TEST_SANITIZED ? 2000 : 10000;
  for (std::size_t p = 0; p < 4; ++p)
    ps.emplace_back([&, p] {
      for (std::uint32_t i = static_cast<std::uint32_t>(p); i < n; i += 4) (void)lev.submit(job{i});
    });
  for (auto& t : ps) t.join();
  lev.drain();
  CHECK(ran.load() == n + resubmitted.load());
  CHECK(resubmitted.load() + refused_full.load() == n);
  MESSAGE("children accepted " << resubmitted.load() << ", refused (full) " << refused_full.load());
}

TEST_CASE("backends added, reweighted and removed while jobs flow") {
  ledger led;
  auto o = base_options(led);
  o.retry.max_attempts = 5;
  lev_t lev(o);
  add_flaky_backends(lev, led, {0});
  std::atomic<bool> done{false};
  std::thread churn([&] {
    std::vector<levee::backend_id> mine;
    std::uint32_t k = 0;
    while (!done.load()) {
      mine.push_back(lev.add_backend([&led](job& j) {
        led.successes.fetch_add(1, std::memory_order_relaxed);
        led.final_state(j.id);
      }));
      (void)lev.set_weight(mine.back(), 1 + (k++ % 4));
      (void)lev.set_max_in_flight(mine.back(), k % 3);
      if (mine.size() > 3) {
        CHECK(lev.remove_backend(mine.front()));
        mine.erase(mine.begin());
      }
      std::this_thread::sleep_for(200us);
    }
  });
  std::vector<std::thread> ps;
  for (std::size_t p = 0; p < producers; ++p)
    ps.emplace_back([&, p] {
      for (std::size_t i = 0; i < per_producer / 2; ++i) {
        const auto id = static_cast<std::uint32_t>(p * per_producer + i);
        led.admit(id, lev.submit(job{id}).accepted());
      }
    });
  for (auto& t : ps) t.join();
  lev.drain();
  done = true;
  churn.join();
  // only the first half of each producer's id range was used
  std::size_t bad = 0;
  for (std::size_t p = 0; p < producers; ++p)
    for (std::size_t i = 0; i < per_producer / 2; ++i) {
      const auto id = p * per_producer + i;
      if (led.admitted[id].load() == 1 && led.finals[id].load() != 1) ++bad;
    }
  CHECK(bad == 0);
  const auto m = lev.metrics();
  CHECK(m.succeeded == led.successes.load());
  CHECK(m.succeeded + m.dead_lettered.total() == m.accepted);
}

TEST_CASE("metrics() and to_prometheus() while everything runs") {
  ledger led;
  auto o = base_options(led);
  o.rate = levee::rate::per_second(200'000);
  lev_t lev(o);
  add_flaky_backends(lev, led, {10, 0});
  std::atomic<bool> done{false};
  std::atomic<int> snapshots{0};
  std::thread reader([&] {
    levee::metrics_snapshot prev;
    while (!done.load()) {
      const auto m = lev.metrics();
      // The documented snapshot guarantees: never more finished than
      // accepted, submitted = accepted + rejected, and counters never go back.
      CHECK(m.succeeded + m.dead_lettered.total() <= m.accepted);
      CHECK(m.submitted == m.accepted + m.rejected.total());
      CHECK(m.accepted >= prev.accepted);
      CHECK(m.succeeded >= prev.succeeded);
      CHECK(m.started >= prev.started);
      const std::string text = levee::to_prometheus(m);
      CHECK(text.find("levee_jobs_succeeded_total " + std::to_string(m.succeeded) + "\n") !=
            std::string::npos);
      CHECK(text.find("levee_jobs_accepted_total " + std::to_string(m.accepted) + "\n") != std::string::npos);
      prev = m;
      ++snapshots;
    }
  });
  std::vector<std::thread> ps;
  for (std::size_t p = 0; p < 4; ++p)
    ps.emplace_back([&, p] {
      for (std::size_t i = 0; i < per_producer / 2; ++i) {
        const auto id = static_cast<std::uint32_t>(p * per_producer + i);
        led.admit(id, lev.submit(job{id}).accepted());
      }
    });
  for (auto& t : ps) t.join();
  lev.drain();
  done = true;
  reader.join();
  CHECK(snapshots.load() > 0);
  const auto m = lev.metrics();
  CHECK(m.succeeded + m.dead_lettered.total() == m.accepted);
  CHECK(m.dwell_time.count() == m.started);
  CHECK(m.service_time.count() == m.started);
}
