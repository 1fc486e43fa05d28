// Multi-threaded stress tests for levee::mpmc_queue: oversubscribed
// producers/consumers (8+8 and 16+16 on a 2-core machine) with try_,
// blocking, timed and bulk operations on a non-trivial element type, and
// all of them mixed on one queue;
// exactly-once delivery and per-producer FIFO; close() racing with blocked
// producers and consumers.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <iterator>
#include <levee/mpmc_queue.hpp>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "eventually.hpp"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;

#if LEVEE_TEST_SANITIZED
constexpr int scale = 5;
#else
constexpr int scale = 1;
#endif

// Non-trivial element: owns heap memory (the string is longer than any SSO
// buffer) whose content is derived from the identity, so a torn or
// double-moved element is detected.
struct item {
  int producer = 0;
  int seq = 0;
  std::string payload;
  item(int p, int s) : producer(p), seq(s), payload(expected_payload(p, s)) {}
  item(item&&) noexcept = default;
  item& operator=(item&&) noexcept = default;
  static std::string expected_payload(int p, int s) {
    return "producer " + std::to_string(p) + " item " + std::to_string(s) + " ......................";
  }
};

// mixed: thread k of each side uses blocking ops if k % 3 == 0, try_ ops if
// k % 3 == 1, timed ops if k % 3 == 2, all on the same queue.
enum class mode { try_ops, blocking, timed, bulk, mixed };

const char* name(mode m) {
  switch (m) {
    case mode::try_ops:
      return "try";
    case mode::blocking:
      return "blocking";
    case mode::timed:
      return "timed";
    case mode::bulk:
      return "bulk";
    case mode::mixed:
      return "mixed";
  }
  return "?";
}

// Each consumer records what it received; afterwards everything is checked.
struct consumer_log {
  std::vector<std::vector<int>> per_producer;  // seqs in the order received
  long bad_payload = 0;
  void record(const item& x) {
    if (x.payload != item::expected_payload(x.producer, x.seq)) ++bad_payload;
    per_producer[static_cast<std::size_t>(x.producer)].push_back(x.seq);
  }
};

void check_logs(const std::vector<consumer_log>& logs, const std::vector<int>& pushed_per_producer) {
  const std::size_t producers = pushed_per_producer.size();
  std::vector<std::vector<int>> seen(producers);
  for (std::size_t p = 0; p < producers; ++p)
    seen[p].assign(static_cast<std::size_t>(pushed_per_producer[p]), 0);
  long fifo_violations = 0;
  long out_of_range = 0;
  long bad_payload = 0;
  for (const consumer_log& log : logs) {
    bad_payload += log.bad_payload;
    for (std::size_t p = 0; p < producers; ++p) {
      int last = -1;
      for (int s : log.per_producer[p]) {
        if (s <= last) ++fifo_violations;  // per-producer FIFO, as seen by one consumer
        last = s;
        if (s < 0 || s >= pushed_per_producer[p]) {
          ++out_of_range;
        } else {
          ++seen[p][static_cast<std::size_t>(s)];
        }
      }
    }
  }
  long missing = 0;
  long duplicated = 0;
  for (const auto& v : seen) {
    for (int c : v) {
      if (c == 0) ++missing;
      if (c > 1) ++duplicated;
    }
  }
  CHECK(bad_payload == 0);
  CHECK(fifo_violations == 0);
  CHECK(out_of_range == 0);
  CHECK(missing == 0);
  CHECK(duplicated == 0);
}

void run_stress(int producers, int consumers, int per_producer, std::size_t capacity, mode m) {
  CAPTURE(producers);
  CAPTURE(consumers);
  CAPTURE(capacity);
  const std::string mode_name = name(m);
  CAPTURE(mode_name);
  levee::mpmc_queue<item> q(capacity);
  std::vector<consumer_log> logs(static_cast<std::size_t>(consumers));
  for (auto& l : logs) l.per_producer.resize(static_cast<std::size_t>(producers));
  const long total = static_cast<long>(producers) * per_producer;
  std::atomic<long> consumed{0};
  std::atomic<long> timeouts{0};

  std::vector<std::thread> threads;
  for (int c = 0; c < consumers; ++c) {
    threads.emplace_back([&, c] {
      consumer_log& log = logs[static_cast<std::size_t>(c)];
      switch (m) {
        case mode::try_ops:
          while (consumed.load(std::memory_order_relaxed) < total) {
            if (std::optional<item> x = q.try_pop()) {
              log.record(*x);
              consumed.fetch_add(1, std::memory_order_relaxed);
            } else {
              std::this_thread::yield();
            }
          }
          break;
        case mode::blocking:
          while (std::optional<item> x = q.pop()) log.record(*x);
          break;
        case mode::timed: {
          item x(0, 0);
          for (;;) {
            const levee::queue_status s = q.try_pop_for(x, 2ms);
            if (s == levee::queue_status::closed) break;
            if (s == levee::queue_status::ok) {
              log.record(x);
            } else {
              timeouts.fetch_add(1, std::memory_order_relaxed);
            }
          }
          break;
        }
        case mode::mixed:
          if (c % 3 == 0) {
            while (std::optional<item> x = q.pop()) log.record(*x);
          } else if (c % 3 == 1) {
            for (;;) {
              // Closed before a failing try_pop: every push had completed
              // (producers are joined before close()), so the queue is empty.
              const bool closed = q.is_closed();
              if (std::optional<item> x = q.try_pop()) {
                log.record(*x);
              } else if (closed) {
                break;
              } else {
                std::this_thread::yield();
              }
            }
          } else {
            item x(0, 0);
            for (;;) {
              const levee::queue_status s = q.try_pop_for(x, 1ms);
              if (s == levee::queue_status::closed) break;
              if (s == levee::queue_status::ok) log.record(x);
            }
          }
          break;
        case mode::bulk: {
          std::vector<item> batch;
          while (consumed.load(std::memory_order_relaxed) < total) {
            batch.clear();
            const std::size_t n = q.try_pop_bulk(std::back_inserter(batch), 7);
            for (const item& x : batch) log.record(x);
            if (n == 0) std::this_thread::yield();
            consumed.fetch_add(static_cast<long>(n), std::memory_order_relaxed);
          }
          break;
        }
      }
    });
  }
  std::vector<std::thread> producer_threads;
  for (int p = 0; p < producers; ++p) {
    producer_threads.emplace_back([&, p] {
      int s = 0;
      while (s < per_producer) {
        switch (m) {
          case mode::try_ops: {
            item x(p, s);
            while (!q.try_push(std::move(x))) std::this_thread::yield();
            ++s;
            break;
          }
          case mode::blocking: {
            if (s % 2 == 0) {
              CHECK(q.push(item(p, s)));
            } else {
              CHECK(q.emplace(p, s));
            }
            ++s;
            break;
          }
          case mode::timed: {
            item x(p, s);
            while (q.try_push_for(std::move(x), 1ms) != levee::queue_status::ok) {
              timeouts.fetch_add(1, std::memory_order_relaxed);
            }
            ++s;
            break;
          }
          case mode::mixed: {
            item x(p, s);
            if (p % 3 == 0) {
              CHECK(q.push(std::move(x)));
            } else if (p % 3 == 1) {
              while (!q.try_push(std::move(x))) std::this_thread::yield();
            } else {
              while (q.try_push_for(std::move(x), 1ms) != levee::queue_status::ok) {
                timeouts.fetch_add(1, std::memory_order_relaxed);
              }
            }
            ++s;
            break;
          }
          case mode::bulk: {
            std::vector<item> batch;
            for (int k = 0; k < 5 && s + k < per_producer; ++k) batch.emplace_back(p, s + k);
            std::size_t done = 0;
            while (done < batch.size()) {
              const std::size_t n =
                  q.try_push_bulk(std::make_move_iterator(batch.begin() + static_cast<std::ptrdiff_t>(done)),
                                  batch.size() - done);
              if (n == 0) std::this_thread::yield();
              done += n;
            }
            s += static_cast<int>(batch.size());
            break;
          }
        }
      }
    });
  }
  for (auto& t : producer_threads) t.join();
  if (m == mode::blocking || m == mode::timed || m == mode::mixed) q.close();
  for (auto& t : threads) t.join();
  CHECK(q.size_approx() == 0);
  check_logs(logs, std::vector<int>(static_cast<std::size_t>(producers), per_producer));
  MESSAGE(mode_name << " " << producers << "P" << consumers << "C cap " << capacity << ": timeouts "
                    << timeouts.load());
}

}  // namespace

TEST_CASE("mpmc_queue stress: 8 producers + 8 consumers, exactly once, per-producer FIFO") {
  const int n = 8000 / scale;
  // Both wake-up protocols: membarrier-based (the default on Linux) and seq_cst.
  for (bool symmetric : {false, true}) {
    CAPTURE(symmetric);
    levee::detail::force_symmetric_fence = symmetric;
    for (mode m : {mode::try_ops, mode::blocking, mode::timed, mode::bulk, mode::mixed}) {
      run_stress(8, 8, n, 1024, m);
      run_stress(8, 8, n / 4, 3, m);  // tiny, non power of two: constant full/empty edges
    }
    run_stress(4, 4, n / 4, 1, mode::blocking);
  }
  levee::detail::force_symmetric_fence = false;
}

TEST_CASE("mpmc_queue stress: 16 producers + 16 consumers (oversubscribed)") {
  const int n = 4000 / scale;
  for (mode m : {mode::try_ops, mode::blocking, mode::timed, mode::bulk, mode::mixed}) {
    run_stress(16, 16, n, 1000, m);
  }
  run_stress(16, 16, n / 4, 1, mode::mixed);     // capacity 1: blocking, try_ and timed ops meet at one slot
  run_stress(16, 16, n / 4, 1, mode::blocking);  // capacity 1: every operation waits
  run_stress(16, 2, n / 2, 16, mode::blocking);  // many blocked producers
  run_stress(2, 16, n / 2, 16, mode::blocking);  // many blocked consumers
}

TEST_CASE("mpmc_queue stress: close() racing with blocked producers and consumers") {
  const int rounds = 40 / scale + 2;
  for (int round = 0; round < rounds; ++round) {
    CAPTURE(round);
    constexpr int producers = 6;
    constexpr int consumers = 6;
    levee::mpmc_queue<item> q(static_cast<std::size_t>(1 + round % 4));
    std::vector<consumer_log> logs(consumers);
    for (auto& l : logs) l.per_producer.resize(producers);
    std::vector<int> pushed(producers, 0);
    std::atomic<int> finished{0};
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) {
      threads.emplace_back([&, p] {
        for (int s = 0;; ++s) {
          bool ok = false;
          if (p % 3 == 0) {
            ok = q.push(item(p, s));
          } else if (p % 3 == 1) {
            const levee::queue_status st = q.try_push_for(item(p, s), 1h);
            CHECK((st == levee::queue_status::ok || st == levee::queue_status::closed));
            ok = st == levee::queue_status::ok;
          } else {
            item x(p, s);
            while (!(ok = q.try_push(std::move(x))) && !q.is_closed()) std::this_thread::yield();
          }
          if (!ok) {
            pushed[static_cast<std::size_t>(p)] = s;  // every later push fails too
            break;
          }
        }
        ++finished;
      });
    }
    for (int c = 0; c < consumers; ++c) {
      threads.emplace_back([&, c] {
        consumer_log& log = logs[static_cast<std::size_t>(c)];
        if (c % 2 == 0) {
          while (std::optional<item> x = q.pop()) log.record(*x);
        } else {
          item x(0, 0);
          levee::queue_status st;
          while ((st = q.try_pop_until(x, std::chrono::system_clock::now() + 1h)) ==
                 levee::queue_status::ok) {
            log.record(x);
          }
          CHECK(st == levee::queue_status::closed);
        }
        ++finished;
      });
    }
    // Vary when close() lands: immediately, during traffic, or after
    // everyone has parked on a full queue (consumers slowed by the traffic).
    if (round % 3 == 1) std::this_thread::sleep_for(1ms);
    if (round % 3 == 2) std::this_thread::sleep_for(10ms);
    q.close();
    const auto t0 = std::chrono::steady_clock::now();
    for (auto& t : threads) t.join();
    CHECK(std::chrono::steady_clock::now() - t0 < 20s);
    CHECK(finished == producers + consumers);
    CHECK(q.size_approx() == 0);
    check_logs(logs, pushed);
  }
}

TEST_CASE("mpmc_queue stress: close() wakes threads parked with nothing to do") {
  levee::mpmc_queue<item> empty_q(8);
  levee::mpmc_queue<item> full_q(2);
  REQUIRE(full_q.try_emplace(0, 0));
  REQUIRE(full_q.try_emplace(0, 1));
  std::atomic<int> woke{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      if (!empty_q.pop()) ++woke;
    });
    threads.emplace_back([&] {
      if (!full_q.push(item(1, 0))) ++woke;
    });
  }
  // all sixteen parked before close() (a watchdog bounds the wait)
  CHECK(
      levee_test::eventually([&] { return empty_q.waiters_approx() == 8 && full_q.waiters_approx() == 8; }));
  CHECK(woke == 0);
  empty_q.close();
  full_q.close();
  for (auto& t : threads) t.join();
  CHECK(woke == 16);
}
