// bench_queue: levee::mpmc_queue against every packaged competitor, in one
// binary and one run. Workloads (see benchmarks/README.md):
//   throughput  N producers + N consumers (N = 1, 2, 4, 8), capacity 1024,
//               8-byte and 64-byte items, try_ mode and blocking mode;
//   ping-pong   round trip between two threads through two queues;
//   idle CPU    CPU time of a consumer blocked on an empty queue;
//   bulk        levee's try_push_bulk/try_pop_bulk against its single ops.
// Every cell is the median of --runs runs (default 5) with min and max, and
// its ratio to the best competitor (not levee) of the same column.
// Options: see --help. Exit status 1 when a checked claim is false.
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <functional>
#include <iterator>
#include <levee/detail/cache.hpp>
#include <levee/detail/wait.hpp>
#include <levee/mpmc_queue.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"

#if defined(LEVEE_HAVE_ATOMIC_QUEUE)
#include <atomic_queue/atomic_queue.h>
#endif
#if defined(LEVEE_HAVE_CONCURRENTQUEUE)
#include <concurrentqueue/blockingconcurrentqueue.h>
#include <concurrentqueue/concurrentqueue.h>
#endif
#if defined(LEVEE_HAVE_BOOST_LOCKFREE)
#include <boost/lockfree/queue.hpp>
#endif
#if defined(LEVEE_HAVE_TBB)
#include <tbb/concurrent_queue.h>
#endif
#if defined(LEVEE_HAVE_XENIUM)
#include <xenium/vyukov_bounded_queue.hpp>
#endif

namespace {

using clk = std::chrono::steady_clock;
constexpr std::size_t capacity = 1024;

struct item64 {
  std::uint64_t v[8];
};
inline std::uint64_t key(std::uint64_t x) { return x; }
inline std::uint64_t key(const item64& x) { return x.v[0]; }
template <class T>
T make(std::uint64_t k) {
  if constexpr (std::is_same_v<T, item64>) {
    item64 x{};
    for (auto& w : x.v) w = k;
    return x;
  } else {
    return k;
  }
}

// Identical retry policy for every non-blocking call in every queue: a few
// pauses, then yield the CPU (on a 2-core machine with 16 threads, spinning
// on a preempted peer is the dominant cost otherwise).
struct backoff {
  unsigned n = 0;
  void operator()() {
    if (n < 8) {
      ++n;
      levee::detail::cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
};

// ---- adapters ---------------------------------------------------------------
// Each adapter: try_push/try_pop, push/pop ("blocking mode": the library's
// own blocking or spinning call; for libraries that have none, a try_ loop
// with the backoff above), and `blocking_kind` describing that.

template <class T>
struct levee_adapter {
  static constexpr const char* name = "levee::mpmc_queue";
  static constexpr const char* blocking_kind = "push/pop (spin, then futex)";
  levee::mpmc_queue<T> q{capacity};
  bool try_push(const T& v) { return q.try_push(v); }
  bool try_pop(T& v) { return q.try_pop(v); }
  void push(const T& v) { (void)q.push(v); }
  void pop(T& v) { (void)q.pop(v); }
};

template <class T>
struct mutex_adapter {
  static constexpr const char* name = "std::mutex+std::deque";
  static constexpr const char* blocking_kind = "condition_variable";
  std::mutex m;
  std::condition_variable not_empty, not_full;
  std::deque<T> d;
  bool try_push(const T& v) {
    {
      std::lock_guard lock(m);
      if (d.size() >= capacity) return false;
      d.push_back(v);
    }
    not_empty.notify_one();
    return true;
  }
  bool try_pop(T& v) {
    {
      std::lock_guard lock(m);
      if (d.empty()) return false;
      v = d.front();
      d.pop_front();
    }
    not_full.notify_one();
    return true;
  }
  void push(const T& v) {
    {
      std::unique_lock lock(m);
      not_full.wait(lock, [&] { return d.size() < capacity; });
      d.push_back(v);
    }
    not_empty.notify_one();
  }
  void pop(T& v) {
    {
      std::unique_lock lock(m);
      not_empty.wait(lock, [&] { return !d.empty(); });
      v = d.front();
      d.pop_front();
    }
    not_full.notify_one();
  }
};

#if defined(LEVEE_HAVE_ATOMIC_QUEUE)
// AtomicQueueB2: runtime capacity, any element type (1-byte state per slot).
// Its capacity is rounded up to a power of two (>= 4096 with its default
// contention-minimising index remapping), so it holds more than 1024.
template <class T>
struct aq_b2_adapter {
  static constexpr const char* name = "atomic_queue B2";
  static constexpr const char* blocking_kind = "push/pop (spin)";
  atomic_queue::AtomicQueueB2<T> q{static_cast<unsigned>(capacity)};
  bool try_push(const T& v) { return q.try_push(T(v)); }
  bool try_pop(T& v) { return q.try_pop(v); }
  void push(const T& v) { q.push(T(v)); }
  void pop(T& v) { v = q.pop(); }
};
#endif
// AtomicQueueB: atomic elements (8-byte items only; 0 is its NIL value, the
// benchmark never sends 0). Release builds only: its constructor's debug
// assert calls std::atomic::is_lock_free, which needs libatomic with clang.
#if defined(LEVEE_HAVE_ATOMIC_QUEUE) && defined(NDEBUG)
#define LEVEE_BENCH_AQ_B 1
struct aq_b_adapter {
  static constexpr const char* name = "atomic_queue B (atomic elements)";
  atomic_queue::AtomicQueueB<std::uint64_t> q{static_cast<unsigned>(capacity)};
  bool try_push(std::uint64_t v) { return q.try_push(v); }
  bool try_pop(std::uint64_t& v) { return q.try_pop(v); }
  void push(std::uint64_t v) { q.push(v); }
  void pop(std::uint64_t& v) { v = q.pop(); }
};
#endif

#if defined(LEVEE_HAVE_CONCURRENTQUEUE)
// try_enqueue never allocates: the queue is pre-sized to 1024 elements
// (moodycamel's capacity is a minimum, not a maximum).
template <class T>
struct moody_adapter {
  static constexpr const char* name = "moodycamel::ConcurrentQueue";
  static constexpr const char* blocking_kind =
      "wait_dequeue (spin, then semaphore); no blocking enqueue: try_ loop";
  moodycamel::BlockingConcurrentQueue<T> q{capacity};
  bool try_push(const T& v) { return q.try_enqueue(v); }
  bool try_pop(T& v) { return q.try_dequeue(v); }
  void push(const T& v) {
    for (backoff b; !q.try_enqueue(v);) b();
  }
  void pop(T& v) { q.wait_dequeue(v); }
};
// The non-blocking ConcurrentQueue itself (try mode rows use this one).
template <class T>
struct moody_plain_adapter {
  static constexpr const char* name = "moodycamel::ConcurrentQueue";
  moodycamel::ConcurrentQueue<T> q{capacity};
  bool try_push(const T& v) { return q.try_enqueue(v); }
  bool try_pop(T& v) { return q.try_dequeue(v); }
  void push(const T& v) {
    for (backoff b; !q.try_enqueue(v);) b();
  }
  void pop(T& v) {
    for (backoff b; !q.try_dequeue(v);) b();
  }
};
#endif

#if defined(LEVEE_HAVE_BOOST_LOCKFREE)
template <class T>
struct boost_adapter {
  static constexpr const char* name = "boost::lockfree::queue";
  static constexpr const char* blocking_kind = "no blocking ops: try_ loop with pause/yield";
  boost::lockfree::queue<T, boost::lockfree::fixed_sized<true>> q{capacity};
  bool try_push(const T& v) { return q.bounded_push(v); }
  bool try_pop(T& v) { return q.pop(v); }
  void push(const T& v) {
    for (backoff b; !q.bounded_push(v);) b();
  }
  void pop(T& v) {
    for (backoff b; !q.pop(v);) b();
  }
};
#endif

#if defined(LEVEE_HAVE_TBB)
template <class T>
struct tbb_adapter {
  static constexpr const char* name = "tbb::concurrent_bounded_queue";
  static constexpr const char* blocking_kind = "push/pop (spin, then sleep)";
  tbb::concurrent_bounded_queue<T> q;
  tbb_adapter() { q.set_capacity(static_cast<std::ptrdiff_t>(capacity)); }
  bool try_push(const T& v) { return q.try_push(v); }
  bool try_pop(T& v) { return q.try_pop(v); }
  void push(const T& v) { q.push(v); }
  void pop(T& v) { q.pop(v); }
};
#endif

#if defined(LEVEE_HAVE_XENIUM)
template <class T>
struct xenium_adapter {
  static constexpr const char* name = "xenium::vyukov_bounded_queue";
  static constexpr const char* blocking_kind = "no blocking ops: try_ loop with pause/yield";
  xenium::vyukov_bounded_queue<T> q{capacity};
  bool try_push(const T& v) { return q.try_push(T(v)); }
  bool try_pop(T& v) { return q.try_pop(v); }
  void push(const T& v) {
    for (backoff b; !q.try_push(T(v));) b();
  }
  void pop(T& v) {
    for (backoff b; !q.try_pop(v);) b();
  }
};
#endif

// ---- statistics -------------------------------------------------------------

using stats = levee_bench::stats;
using levee_bench::summarize;

struct options {
  bool smoke = false;
  int runs = 5;
  std::string filter;
  std::string only;
};
options opt;
levee_bench::claims claims;

// Speed bars are checked only in full runs (smoke counts are too small to
// mean anything); correctness claims (checksums, idle CPU) in every run.
void check_bar(bool ok, const std::string& what) {
  std::printf("Bar: %s: %s\n", what.c_str(),
              ok ? "met" : (opt.smoke ? "not met (smoke: not checked)" : "NOT MET"));
  if (!opt.smoke) claims.check(ok, what);
}

bool selected(const char* name) {
  return opt.filter.empty() || std::string(name).find(opt.filter) != std::string::npos ||
         std::string(name).find("levee") != std::string::npos;
}
bool section(const char* s) { return opt.only.empty() || opt.only == s; }

// ---- throughput ---------------------------------------------------------------

// Returns items per second; each producer pushes items/n, each consumer pops
// exactly items/n, so no shared "done" counter perturbs the measurement.
template <class Q, class T>
double throughput_once(int n, bool blocking, std::uint64_t items) {
  auto q = std::make_unique<Q>();
  const std::uint64_t per = items / static_cast<std::uint64_t>(n);
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<std::uint64_t> checksum{0};
  std::vector<std::thread> threads;
  for (int p = 0; p < n; ++p) {
    threads.emplace_back([&, p] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      const std::uint64_t base = static_cast<std::uint64_t>(p) * per + 1;
      for (std::uint64_t i = 0; i < per; ++i) {
        const T v = make<T>(base + i);
        if (blocking) {
          q->push(v);
        } else {
          for (backoff b; !q->try_push(v);) b();
        }
      }
    });
  }
  for (int c = 0; c < n; ++c) {
    threads.emplace_back([&] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      std::uint64_t sum = 0;
      T v = make<T>(0);
      for (std::uint64_t i = 0; i < per; ++i) {
        if (blocking) {
          q->pop(v);
        } else {
          for (backoff b; !q->try_pop(v);) b();
        }
        sum += key(v);
      }
      checksum.fetch_add(sum);
    });
  }
  while (ready.load() != 2 * n) std::this_thread::yield();
  const auto t0 = clk::now();
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
  const double secs = std::chrono::duration<double>(clk::now() - t0).count();
  const std::uint64_t total = per * static_cast<std::uint64_t>(n);
  if (checksum.load() != total * (total + 1) / 2) {
    std::fprintf(stderr, "checksum mismatch in %s\n", Q::name);
    std::exit(1);
  }
  return static_cast<double>(total) / secs;
}

struct row {
  std::string name;
  std::vector<std::vector<double>> samples;  // per column
};

struct table {
  std::string title;
  std::vector<std::string> columns;
  std::vector<row> rows;
  bool higher_is_better = true;
  std::string unit;
  double scale = 1;  // printed value = raw / scale
};

void print_table(const table& t) {
  std::printf("\n### %s\n\n", t.title.c_str());
  levee_bench::print_machine();
  std::printf("\n");
  std::printf("| queue |");
  for (const auto& c : t.columns) std::printf(" %s |", c.c_str());
  std::printf("\n|---|");
  for (std::size_t i = 0; i < t.columns.size(); ++i) std::printf("---|");
  std::printf("\n");
  std::vector<double> best(t.columns.size(), 0);
  std::vector<std::string> best_name(t.columns.size());
  std::vector<bool> has_best(t.columns.size(), false);
  for (const row& r : t.rows) {
    // levee and the physical floor are not competitors.
    if (r.name.find("levee") != std::string::npos || r.name.find("(floor)") != std::string::npos) continue;
    for (std::size_t c = 0; c < t.columns.size(); ++c) {
      const stats s = summarize(r.samples[c]);
      if (!s.valid) continue;
      const bool better = t.higher_is_better ? s.median > best[c] : s.median < best[c];
      if (!has_best[c] || better) {
        best[c] = s.median;
        best_name[c] = r.name;
        has_best[c] = true;
      }
    }
  }
  for (const row& r : t.rows) {
    std::printf("| %s |", r.name.c_str());
    for (std::size_t c = 0; c < t.columns.size(); ++c) {
      const stats s = summarize(r.samples[c]);
      if (!s.valid) {
        std::printf(" – |");
        continue;
      }
      std::printf(" %.3g [%.3g–%.3g]", s.median / t.scale, s.min / t.scale, s.max / t.scale);
      if (has_best[c] && best[c] > 0) std::printf(" ×%.2f", s.median / best[c]);
      std::printf(" |");
    }
    std::printf("\n");
  }
  std::printf("| *best competitor* |");
  for (std::size_t c = 0; c < t.columns.size(); ++c)
    std::printf(" %s |", has_best[c] ? best_name[c].c_str() : "–");
  std::printf(
      "\n\nCells: median [min–max] of %d runs in %s; ×r = median / best competitor's median "
      "(%s is better).\n",
      opt.runs, t.unit.c_str(), t.higher_is_better ? "higher" : "lower");
}

template <class T>
using thr_fn = double (*)(int, bool, std::uint64_t);

template <class T>
struct entry {
  const char* name;
  thr_fn<T> fn;
};

template <class T>
std::vector<entry<T>> throughput_entries([[maybe_unused]] bool blocking) {
  std::vector<entry<T>> e;
  e.push_back({levee_adapter<T>::name, &throughput_once<levee_adapter<T>, T>});
#if defined(LEVEE_HAVE_ATOMIC_QUEUE)
#if defined(LEVEE_BENCH_AQ_B)
  if constexpr (std::is_same_v<T, std::uint64_t>)
    e.push_back({aq_b_adapter::name, &throughput_once<aq_b_adapter, T>});
#endif
  e.push_back({aq_b2_adapter<T>::name, &throughput_once<aq_b2_adapter<T>, T>});
#endif
#if defined(LEVEE_HAVE_CONCURRENTQUEUE)
  if (blocking) {
    e.push_back({"moodycamel::BlockingConcurrentQueue", &throughput_once<moody_adapter<T>, T>});
  } else {
    e.push_back({moody_plain_adapter<T>::name, &throughput_once<moody_plain_adapter<T>, T>});
  }
#endif
#if defined(LEVEE_HAVE_BOOST_LOCKFREE)
  e.push_back({boost_adapter<T>::name, &throughput_once<boost_adapter<T>, T>});
#endif
#if defined(LEVEE_HAVE_TBB)
  e.push_back({tbb_adapter<T>::name, &throughput_once<tbb_adapter<T>, T>});
#endif
#if defined(LEVEE_HAVE_XENIUM)
  e.push_back({xenium_adapter<T>::name, &throughput_once<xenium_adapter<T>, T>});
#endif
  e.push_back({mutex_adapter<T>::name, &throughput_once<mutex_adapter<T>, T>});
  std::erase_if(e, [](const entry<T>& x) { return !selected(x.name); });
  return e;
}

template <class T>
void throughput_table(const char* size_name, bool blocking) {
  const int pairs[] = {1, 2, 4, 8};
  const std::uint64_t items = 2000000;  // upper bound per run
  const std::uint64_t calibration_items = opt.smoke ? 1600 : 2000;
  const double target_seconds = 0.05;
  auto entries = throughput_entries<T>(blocking);
  table t;
  t.title = std::string("Throughput, ") + size_name + " items, " +
            (blocking ? "blocking mode" : "try_ mode") + ", capacity 1024 (M items/s)";
  for (int n : pairs) t.columns.push_back(std::to_string(n) + "P" + std::to_string(n) + "C");
  t.unit = "M items/s";
  t.scale = 1e6;
  for (const auto& e : entries)
    t.rows.push_back({e.name, std::vector<std::vector<double>>(std::size(pairs))});
  // Item counts are calibrated per cell so that one run takes about
  // target_seconds (slow queues, e.g. spinning ones under oversubscription,
  // would otherwise dominate the total time).
  std::vector<std::vector<std::uint64_t>> count(entries.size(), std::vector<std::uint64_t>(std::size(pairs)));
  for (std::size_t i = 0; i < entries.size(); ++i) {
    for (std::size_t c = 0; c < std::size(pairs); ++c) {
      const double rate = entries[i].fn(pairs[c], blocking, calibration_items);
      count[i][c] = opt.smoke ? calibration_items
                              : std::clamp<std::uint64_t>(static_cast<std::uint64_t>(rate * target_seconds),
                                                          calibration_items, items);
    }
  }
  for (int run = 0; run < opt.runs; ++run) {
    for (std::size_t i = 0; i < entries.size(); ++i) {
      for (std::size_t c = 0; c < std::size(pairs); ++c) {
        t.rows[i].samples[c].push_back(entries[i].fn(pairs[c], blocking, count[i][c]));
      }
    }
  }
  print_table(t);
  const row* levee_row = nullptr;
  for (const row& r : t.rows)
    if (r.name.find("levee") != std::string::npos) levee_row = &r;
  if (levee_row == nullptr) return;
  std::printf("levee 8P8C / 1P1C = %.2f\n",
              summarize(levee_row->samples[3]).median / summarize(levee_row->samples[0]).median);
  // Blocking mode: levee's push/pop against atomic_queue's spinning
  // push/pop, column by column (medians).
  if (!blocking || !std::is_same_v<T, std::uint64_t>) return;
  for (const row& r : t.rows) {
    if (r.name.find("atomic_queue") == std::string::npos) continue;
    for (std::size_t c = 0; c < t.columns.size(); ++c) {
      const double mine = summarize(levee_row->samples[c]).median;
      const double theirs = summarize(r.samples[c]).median;
      char what[200];
      std::snprintf(what, sizeof what, "blocking %s, 8-byte items: levee %.3g >= %s %.3g M items/s",
                    t.columns[c].c_str(), mine / 1e6, r.name.c_str(), theirs / 1e6);
      check_bar(mine >= theirs, what);
    }
  }
}

// ---- ping-pong ----------------------------------------------------------------

// Ping-pong waiting: pause-spin; after many fruitless pauses yield, so that a
// descheduled peer on a busy 2-core machine can run (same for every queue).
struct spin_wait {
  unsigned n = 0;
  void operator()() {
    if (++n < 4096) {
      levee::detail::cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
};

// Raw floor: one cache line bounced between two threads (a round trip is two
// line transfers), with the same pause-spin as the queue ping-pong.
double pingpong_raw(std::uint64_t trips) {
  struct alignas(levee::detail::false_sharing_range) line {
    std::atomic<std::uint64_t> v{0};
  };
  auto l = std::make_unique<line>();
  std::thread echo([l = l.get(), trips] {  // by value: see pingpong_once
    for (std::uint64_t i = 0; i < trips; ++i) {
      for (spin_wait w; l->v.load(std::memory_order_acquire) != 2 * i + 1;) w();
      l->v.store(2 * i + 2, std::memory_order_release);
    }
  });
  const auto t0 = clk::now();
  for (std::uint64_t i = 0; i < trips; ++i) {
    l->v.store(2 * i + 1, std::memory_order_release);
    for (spin_wait w; l->v.load(std::memory_order_acquire) != 2 * i + 2;) w();
  }
  const double ns = std::chrono::duration<double, std::nano>(clk::now() - t0).count();
  echo.join();
  return ns / static_cast<double>(trips);
}

// Two queues, two threads; `blocking` uses push/pop, otherwise try_ ops in a
// pause-spin. Returns ns per round trip.
// The echo thread captures only values and pointers to the heap: had it read
// the main thread's locals (a capture by reference), it would share their
// cache line with whatever the main thread writes next to them on its stack
// (return addresses and spills of every out-of-line call), paying a line
// transfer per access. That false sharing penalised queues whose operations
// are calls rather than inlined loops, by an amount that depended on the
// stack's random offset in each process (levee: 190-210 ns against 105-125 ns
// per round trip).
template <class Q>
void pingpong_send(Q& q, bool blocking, std::uint64_t v) {
  if (blocking) {
    q.push(v);
  } else {
    for (spin_wait w; !q.try_push(v);) w();
  }
}
template <class Q>
std::uint64_t pingpong_recv(Q& q, bool blocking) {
  std::uint64_t v = 0;
  if (blocking) {
    q.pop(v);
  } else {
    for (spin_wait w; !q.try_pop(v);) w();
  }
  return v;
}
template <class Q>
double pingpong_once(bool blocking, std::uint64_t trips) {
  auto there = std::make_unique<Q>();
  auto back = std::make_unique<Q>();
  std::thread echo([there = there.get(), back = back.get(), blocking, trips] {
    for (std::uint64_t i = 0; i < trips; ++i)
      pingpong_send(*back, blocking, pingpong_recv(*there, blocking) + 1);
  });
  const auto t0 = clk::now();
  for (std::uint64_t i = 1; i <= trips; ++i) {
    pingpong_send(*there, blocking, i);
    if (pingpong_recv(*back, blocking) != i + 1) std::exit(2);
  }
  const double ns = std::chrono::duration<double, std::nano>(clk::now() - t0).count();
  echo.join();
  return ns / static_cast<double>(trips);
}

void pingpong_table() {
  const std::uint64_t trips = opt.smoke ? 200 : 50000;
  struct pp {
    const char* name;
    double (*fn)(bool, std::uint64_t);
  };
  std::vector<pp> e;
  e.push_back({levee_adapter<std::uint64_t>::name, &pingpong_once<levee_adapter<std::uint64_t>>});
#if defined(LEVEE_HAVE_ATOMIC_QUEUE)
#if defined(LEVEE_BENCH_AQ_B)
  e.push_back({aq_b_adapter::name, &pingpong_once<aq_b_adapter>});
#endif
  e.push_back({aq_b2_adapter<std::uint64_t>::name, &pingpong_once<aq_b2_adapter<std::uint64_t>>});
#endif
#if defined(LEVEE_HAVE_CONCURRENTQUEUE)
  e.push_back({"moodycamel (Blocking)ConcurrentQueue", &pingpong_once<moody_adapter<std::uint64_t>>});
#endif
#if defined(LEVEE_HAVE_BOOST_LOCKFREE)
  e.push_back({boost_adapter<std::uint64_t>::name, &pingpong_once<boost_adapter<std::uint64_t>>});
#endif
#if defined(LEVEE_HAVE_TBB)
  e.push_back({tbb_adapter<std::uint64_t>::name, &pingpong_once<tbb_adapter<std::uint64_t>>});
#endif
#if defined(LEVEE_HAVE_XENIUM)
  e.push_back({xenium_adapter<std::uint64_t>::name, &pingpong_once<xenium_adapter<std::uint64_t>>});
#endif
  e.push_back({mutex_adapter<std::uint64_t>::name, &pingpong_once<mutex_adapter<std::uint64_t>>});
  std::erase_if(e, [](const pp& x) { return !selected(x.name); });
  table t;
  t.title = "Ping-pong round trip, 8-byte items (ns per round trip)";
  t.columns = {"try_ ops, pause-spin", "blocking ops"};
  t.unit = "ns";
  t.higher_is_better = false;
  for (const auto& x : e) t.rows.push_back({x.name, std::vector<std::vector<double>>(2)});
  t.rows.push_back({"raw cache line (floor)", std::vector<std::vector<double>>(2)});
  // Round trips calibrated per cell to about 40 ms per run (a spinning queue
  // whose peer is descheduled can take 100 us per round trip here).
  auto calibrate = [&](auto&& fn) {
    const std::uint64_t probe = opt.smoke ? trips : 100;
    const double ns = fn(probe);
    return opt.smoke ? trips : std::clamp<std::uint64_t>(static_cast<std::uint64_t>(40e6 / ns), probe, trips);
  };
  std::vector<std::array<std::uint64_t, 2>> n(e.size());
  for (std::size_t i = 0; i < e.size(); ++i) {
    n[i][0] = calibrate([&](std::uint64_t k) { return e[i].fn(false, k); });
    n[i][1] = calibrate([&](std::uint64_t k) { return e[i].fn(true, k); });
  }
  const std::uint64_t raw_trips = calibrate([](std::uint64_t k) { return pingpong_raw(k); });
  for (int run = 0; run < opt.runs; ++run) {
    for (std::size_t i = 0; i < e.size(); ++i) {
      t.rows[i].samples[0].push_back(e[i].fn(false, n[i][0]));
      t.rows[i].samples[1].push_back(e[i].fn(true, n[i][1]));
    }
    t.rows.back().samples[0].push_back(pingpong_raw(raw_trips));
  }
  print_table(t);
  std::printf(
      "(the raw cache line row is the physical floor, not a competitor; it is excluded from 'best')\n");
  for (const row& r : t.rows) {
    if (r.name.find("atomic_queue") == std::string::npos) continue;
    const double mine = summarize(t.rows.front().samples[1]).median;
    const double theirs = summarize(r.samples[1]).median;
    char what[200];
    std::snprintf(what, sizeof what, "blocking round trip: levee %.0f ns <= %s %.0f ns", mine, r.name.c_str(),
                  theirs);
    check_bar(mine <= theirs, what);
  }
}

// ---- CPU of a blocked consumer ------------------------------------------------

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double rusage_thread_seconds() {
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  auto secs = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6;
  };
  return secs(ru.ru_utime) + secs(ru.ru_stime);
}

struct idle_result {
  double thread_cputime = 0;  // CLOCK_THREAD_CPUTIME_ID / wall time
  double rusage = 0;          // getrusage(RUSAGE_THREAD) user + system / wall time
};

// A consumer blocks in pop() on an empty queue for `wait` (the main thread
// sleeps: the sleep is the quantity measured, not synchronisation); then one
// item arrives. Returns the consumer thread's CPU time / wall time, measured
// both ways.
template <class Q>
idle_result idle_cpu_once(std::chrono::milliseconds wait) {
  auto q = std::make_unique<Q>();
  idle_result r;
  std::thread consumer([&] {
    const double c0 = thread_cpu_seconds();
    const double r0 = rusage_thread_seconds();
    const auto t0 = clk::now();
    std::uint64_t v = 0;
    q->pop(v);
    const double wall = std::chrono::duration<double>(clk::now() - t0).count();
    r.thread_cputime = (thread_cpu_seconds() - c0) / wall;
    r.rusage = (rusage_thread_seconds() - r0) / wall;
    if (v != 7) std::exit(3);
  });
  std::this_thread::sleep_for(wait);
  q->push(7);
  consumer.join();
  return r;
}

void idle_table() {
  const auto wait = opt.smoke ? std::chrono::milliseconds(200) : std::chrono::milliseconds(1000);
  struct ic {
    const char* name;
    const char* kind;
    idle_result (*fn)(std::chrono::milliseconds);
  };
  std::vector<ic> e;
  using U = std::uint64_t;
  e.push_back({levee_adapter<U>::name, levee_adapter<U>::blocking_kind, &idle_cpu_once<levee_adapter<U>>});
#if defined(LEVEE_HAVE_ATOMIC_QUEUE)
  e.push_back({aq_b2_adapter<U>::name, aq_b2_adapter<U>::blocking_kind, &idle_cpu_once<aq_b2_adapter<U>>});
#endif
#if defined(LEVEE_HAVE_CONCURRENTQUEUE)
  e.push_back({"moodycamel::BlockingConcurrentQueue", moody_adapter<U>::blocking_kind,
               &idle_cpu_once<moody_adapter<U>>});
#endif
#if defined(LEVEE_HAVE_BOOST_LOCKFREE)
  e.push_back({boost_adapter<U>::name, boost_adapter<U>::blocking_kind, &idle_cpu_once<boost_adapter<U>>});
#endif
#if defined(LEVEE_HAVE_TBB)
  e.push_back({tbb_adapter<U>::name, tbb_adapter<U>::blocking_kind, &idle_cpu_once<tbb_adapter<U>>});
#endif
#if defined(LEVEE_HAVE_XENIUM)
  e.push_back({xenium_adapter<U>::name, xenium_adapter<U>::blocking_kind, &idle_cpu_once<xenium_adapter<U>>});
#endif
  e.push_back({mutex_adapter<U>::name, mutex_adapter<U>::blocking_kind, &idle_cpu_once<mutex_adapter<U>>});
  std::erase_if(e, [](const ic& x) { return !selected(x.name); });
  std::printf("\n### CPU used by a consumer blocked on an empty queue for %lld ms (one run each)\n\n",
              static_cast<long long>(wait.count()));
  levee_bench::print_machine();
  std::printf(
      "\n| queue | how it waits | CPU time / wall time (CLOCK_THREAD_CPUTIME_ID) | same (getrusage "
      "RUSAGE_THREAD) |\n|---|---|---:|---:|\n");
  for (const auto& x : e) {
    const idle_result r = x.fn(wait);
    std::printf("| %s | %s | %.4f%% | %.4f%% |\n", x.name, x.kind, 100.0 * r.thread_cputime,
                100.0 * r.rusage);
    if (std::string(x.name).find("levee") != std::string::npos) {
      char what[160];
      std::snprintf(what, sizeof what, "a levee consumer parked %lld ms uses < 1%% of a core: %.4f%%",
                    static_cast<long long>(wait.count()), 100.0 * std::max(r.thread_cputime, r.rusage));
      claims.check(std::max(r.thread_cputime, r.rusage) < 0.01, what);
    }
  }
}

// ---- bulk -----------------------------------------------------------------------

// levee bulk (batches of `batch`) vs single try_ ops, 8-byte items.
double bulk_once(int n, std::size_t batch, std::uint64_t items) {
  levee::mpmc_queue<std::uint64_t> q(capacity);
  const std::uint64_t per = items / static_cast<std::uint64_t>(n) / batch * batch;
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<std::uint64_t> checksum{0};
  std::vector<std::thread> threads;
  for (int p = 0; p < n; ++p) {
    threads.emplace_back([&, p] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      std::vector<std::uint64_t> buf(batch);
      const std::uint64_t base = static_cast<std::uint64_t>(p) * per + 1;
      for (std::uint64_t i = 0; i < per; i += batch) {
        for (std::size_t k = 0; k < batch; ++k) buf[k] = base + i + k;
        std::size_t done = 0;
        for (backoff b; done < batch;) {
          const std::size_t got =
              q.try_push_bulk(buf.begin() + static_cast<std::ptrdiff_t>(done), batch - done);
          if (got == 0) b();
          done += got;
        }
      }
    });
  }
  for (int c = 0; c < n; ++c) {
    threads.emplace_back([&] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      std::vector<std::uint64_t> buf(batch);
      std::uint64_t sum = 0;
      for (std::uint64_t got_total = 0; got_total < per;) {
        const std::size_t got = q.try_pop_bulk(buf.begin(), std::min<std::uint64_t>(batch, per - got_total));
        if (got == 0) {
          std::this_thread::yield();
          continue;
        }
        for (std::size_t k = 0; k < got; ++k) sum += buf[k];
        got_total += got;
      }
      checksum.fetch_add(sum);
    });
  }
  while (ready.load() != 2 * n) std::this_thread::yield();
  const auto t0 = clk::now();
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
  const double secs = std::chrono::duration<double>(clk::now() - t0).count();
  const std::uint64_t total = per * static_cast<std::uint64_t>(n);
  if (checksum.load() != total * (total + 1) / 2) {
    std::fprintf(stderr, "checksum mismatch in bulk\n");
    std::exit(1);
  }
  return static_cast<double>(total) / secs;
}

void bulk_table() {
  const int pairs[] = {1, 2, 4, 8};
  const std::uint64_t items = opt.smoke ? 3200 : 400000;
  table t;
  t.title = "levee bulk ops vs single try_ ops, 8-byte items (M items/s)";
  for (int n : pairs) t.columns.push_back(std::to_string(n) + "P" + std::to_string(n) + "C");
  t.unit = "M items/s";
  t.scale = 1e6;
  const std::size_t batches[] = {16, 64};
  t.rows.push_back(
      {"single try_push/try_pop (baseline)", std::vector<std::vector<double>>(std::size(pairs))});
  for (std::size_t b : batches) {
    t.rows.push_back(
        {"levee bulk, batch " + std::to_string(b), std::vector<std::vector<double>>(std::size(pairs))});
  }
  for (int run = 0; run < opt.runs; ++run) {
    for (std::size_t c = 0; c < std::size(pairs); ++c) {
      t.rows[0].samples[c].push_back(
          throughput_once<levee_adapter<std::uint64_t>, std::uint64_t>(pairs[c], false, items));
      for (std::size_t b = 0; b < std::size(batches); ++b) {
        t.rows[b + 1].samples[c].push_back(bulk_once(pairs[c], batches[b], items));
      }
    }
  }
  print_table(t);
  std::printf("(here ×r is relative to the single-op baseline row)\n");
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--smoke") {
      opt.smoke = true;
    } else if (a == "--runs" && i + 1 < argc) {
      opt.runs = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--filter" && i + 1 < argc) {
      opt.filter = argv[++i];
    } else if (a == "--tune" && i + 1 < argc) {  // internal: SPINS,YIELDS before levee parks
      const std::string v = argv[++i];
      levee::detail::wait_tuning_spins = static_cast<unsigned>(std::stoul(v.substr(0, v.find(','))));
      levee::detail::wait_tuning_yields = static_cast<unsigned>(std::stoul(v.substr(v.find(',') + 1)));
    } else if (a == "--only" && i + 1 < argc) {
      opt.only = argv[++i];
    } else {
      const bool help = a == "--help" || a == "-h";
      std::fprintf(help ? stdout : stderr,
                   "usage: %s [--smoke] [--runs N] [--filter NAME] [--only SECTION] [--tune SPINS,YIELDS]\n"
                   "  --smoke          tiny counts (CI); speed bars are printed but not checked\n"
                   "  --runs N         runs per cell (default 5; 1 with --smoke)\n"
                   "  --filter NAME    only competitors whose name contains NAME (levee always runs)\n"
                   "  --only SECTION   throughput | try | blocking | pingpong | idle | bulk\n"
                   "  --tune S,Y       levee's wait tuning: S pause-spins and Y yields before parking\n"
                   "Exit status 1 if a checked claim is false (checksums, idle CPU; speed bars\n"
                   "against atomic_queue's blocking mode in full runs).\n",
                   argv[0]);
      return help ? 0 : 2;
    }
  }
  if (opt.smoke && opt.runs == 5) opt.runs = 1;
  std::printf("## levee::mpmc_queue benchmark%s, %d runs per cell\n\n",
              opt.smoke ? " (SMOKE MODE: tiny counts, numbers mean nothing)" : "", opt.runs);
  levee_bench::print_machine();
  const auto t0 = clk::now();
  if (section("throughput") || section("try")) {
    throughput_table<std::uint64_t>("8-byte", false);
    throughput_table<item64>("64-byte", false);
  }
  if (section("throughput") || section("blocking")) {
    throughput_table<std::uint64_t>("8-byte", true);
    throughput_table<item64>("64-byte", true);
  }
  if (section("pingpong")) pingpong_table();
  if (section("idle")) idle_table();
  if (section("bulk")) bulk_table();
  std::printf("\nTotal benchmark time: %.1f s\n", std::chrono::duration<double>(clk::now() - t0).count());
  return claims.finish();
}
