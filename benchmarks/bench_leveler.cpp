// bench_leveler: what levee::leveler costs and how exactly it paces.
//
// 1. Per-job overhead: one producer submits N jobs (default 1,000,000) with
//    an empty handler and no rate limit, then waits until all are done;
//    jobs/s with 1 and 2 worker threads. Every run is A-B-A: the mutex +
//    condition_variable pool below runs first, then levee and the others,
//    then the pool again; levee's ratio to the pool is taken against the
//    mean of the two pool runs of the same run, and the table reports the
//    median of those same-run ratios. Next to them:
//      - levee's own mpmc_queue as a bare hand-off (one producer push()es,
//        the workers pop() and call the empty handler): the floor of this
//        design, what the leveler adds on top of its queue;
//      - oneTBB's task_group inside a task_arena;
//      - Debian's libthread-pool-dev (thread_pool::ThreadPool, Submit).
//    Bars (full runs only): levee >= 2x the pool and >= 1.5x TBB with 1 and
//    2 workers; >= 0.5x the bare queue hand-off with 2 workers.
// 2. Real-time pacing: a backlog drained at 1k, 10k and 100k jobs/s.
//    Achieved rate (bar, full runs: within 1% of the target) and envelope
//    violations (levee::check_conformance on the times the handler ran).
//    Checked in every run, --smoke included: no window holds more than
//    b + r*w + workers readings (the gate admits at most b + r*w; each
//    worker reads the clock after its admission and before its next one, so
//    at most one reading per worker can fall in a later window).
//
// 3. The fair ingress (options.fairness): the same per-job overhead run
//    with the fair discipline, one flow and one band (CoDel-exempt: a flood
//    of a million jobs would otherwise be shed), and with 1,000 active
//    flows (job i in flow i % 1000). Every run is A-B-A: the FIFO leveler
//    before and after; the ratio is fair jobs/s / the mean of the two FIFO
//    runs of the same run, median over the runs. Bar (full runs only): one
//    flow + one band costs at most +30% per job (ratio >= 1 / 1.3).
//
// Flags: see --help. Exit status 1 when a checked claim is false.
// Output: Markdown tables, median / min / max over the runs.

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <levee/conformance.hpp>
#include <levee/leveler.hpp>
#include <levee/mpmc_queue.hpp>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "bench_support.hpp"

#if defined(LEVEE_HAVE_THREAD_POOL)
#include <thread_pool/thread_pool.hpp>
#endif
#if defined(LEVEE_HAVE_TBB)
#include <tbb/global_control.h>
#include <tbb/task_arena.h>
#include <tbb/task_group.h>
#endif

namespace {

using steady = std::chrono::steady_clock;

double seconds_since(steady::time_point t0) {
  return std::chrono::duration<double>(steady::now() - t0).count();
}

// ------------------------------------------------------------ baseline ----

// The thread pool most programs start with: one std::deque of
// std::function under one std::mutex, workers parked on a condition variable,
// wait_idle() on a second one.
class mutex_pool {
 public:
  explicit mutex_pool(std::size_t workers) {
    for (std::size_t i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }
  mutex_pool(const mutex_pool&) = delete;
  mutex_pool& operator=(const mutex_pool&) = delete;
  ~mutex_pool() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    ready_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void submit(std::function<void()> f) {
    {
      std::lock_guard lock(mutex_);
      tasks_.push_back(std::move(f));
      ++outstanding_;
    }
    ready_.notify_one();
  }

  void wait_idle() {
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [this] { return outstanding_ == 0; });
  }

 private:
  void work() {
    std::unique_lock lock(mutex_);
    for (;;) {
      ready_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
      if (tasks_.empty()) return;
      std::function<void()> f = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      f();
      lock.lock();
      if (--outstanding_ == 0) idle_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable ready_, idle_;
  std::deque<std::function<void()>> tasks_;
  std::size_t outstanding_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// --------------------------------------------------------------- stats ----

using stats = levee_bench::stats;
using levee_bench::summarize;

std::string si(double v) {
  char buf[32];
  if (v >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2f M", v / 1e6);
  else if (v >= 1e3)
    std::snprintf(buf, sizeof buf, "%.1f k", v / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

struct options {
  bool smoke = false;
  int runs = 5;
  std::size_t jobs = 1'000'000;
  double seconds = 2.0;
  bool overhead = true, pacing = true, fair = true;
  std::string impl;  // --impl PREFIX: run only the competitors whose name starts with it (for profiling)
  std::vector<std::uint64_t> bursts{0};  // pacing: 0 = the leveler's automatic burst; --burst N adds N
};

// --------------------------------------------------- per-job overhead -----

// Each function returns jobs per second for one run: the time from the first
// submit to the moment every job has finished, for n jobs.
using run_fn = double (*)(std::size_t workers, std::size_t n);

double run_levee(std::size_t workers, std::size_t n) {
  using leveler_t = levee::leveler<std::uint64_t>;
  typename leveler_t::options o;
  o.capacity = 1u << 16;
  o.workers = workers;
  leveler_t lev(o, [](std::uint64_t&) {});
  const auto t0 = steady::now();
  for (std::uint64_t i = 0; i < n; ++i) (void)lev.submit(std::uint64_t{i});
  lev.drain();
  const double s = seconds_since(t0);
  return static_cast<double>(n) / s;
}

// The fair ingress, job i in flow i % flows, one band exempt from CoDel.
double run_levee_fair(std::size_t workers, std::size_t n, std::uint64_t flows) {
  using leveler_t = levee::leveler<std::uint64_t>;
  typename leveler_t::options o;
  o.capacity = 1u << 16;
  o.workers = workers;
  levee::fairness_options f;
  f.bands[0].exempt = true;
  o.fairness = f;
  leveler_t lev(o, [](std::uint64_t&) {});
  const auto t0 = steady::now();
  for (std::uint64_t i = 0; i < n; ++i) (void)lev.submit(std::uint64_t{i}, {.flow = i % flows});
  lev.drain();
  const double s = seconds_since(t0);
  return static_cast<double>(n) / s;
}

double run_mutex_pool(std::size_t workers, std::size_t n) {
  mutex_pool pool(workers);
  const auto t0 = steady::now();
  for (std::size_t i = 0; i < n; ++i) pool.submit([] {});
  pool.wait_idle();
  return static_cast<double>(n) / seconds_since(t0);
}

// levee's own queue, nothing else: the producer push()es (blocking), each
// worker pop()s (blocking) and calls the empty handler until the queue is
// closed and drained. Same capacity as the leveler above.
double run_bare_queue(std::size_t workers, std::size_t n) {
  levee::mpmc_queue<std::uint64_t> q(1u << 16);
  std::atomic<std::uint64_t> handled{0};
  auto handler = [](std::uint64_t&) {};
  std::vector<std::thread> ts;
  for (std::size_t i = 0; i < workers; ++i)
    ts.emplace_back([&] {
      std::uint64_t count = 0;
      for (std::uint64_t v = 0; q.pop(v);) {
        handler(v);
        ++count;
      }
      handled.fetch_add(count, std::memory_order_relaxed);
    });
  const auto t0 = steady::now();
  for (std::uint64_t i = 0; i < n; ++i) (void)q.push(std::uint64_t{i});
  q.close();
  for (auto& t : ts) t.join();
  const double s = seconds_since(t0);
  if (handled.load() != n) {
    std::fprintf(stderr, "bare queue: %llu of %zu jobs handled\n",
                 static_cast<unsigned long long>(handled.load()), n);
    std::exit(1);
  }
  return static_cast<double>(n) / s;
}

#if defined(LEVEE_HAVE_THREAD_POOL)
// ThreadPool has no "wait for everything": the task counts itself done and
// the last one wakes the producer. Submit's std::future is discarded (its
// destructor does not block for packaged_task futures).
double run_thread_pool(std::size_t workers, std::size_t n) {
  std::atomic<std::size_t> done{0};
  thread_pool::ThreadPool pool(workers);
  const auto t0 = steady::now();
  for (std::size_t i = 0; i < n; ++i)
    (void)pool.Submit([&done, n] {
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == n) done.notify_all();
    });
  for (std::size_t seen = done.load(std::memory_order_acquire); seen != n;
       seen = done.load(std::memory_order_acquire))
    done.wait(seen, std::memory_order_acquire);
  return static_cast<double>(n) / seconds_since(t0);
}
#endif

#if defined(LEVEE_HAVE_TBB)
// task_arena(workers + 1, 1): `workers` TBB threads plus a slot reserved for
// the submitting thread, which (by TBB's design) helps in task_group::wait().
// global_control lifts TBB's default cap of hardware_concurrency - 1 workers.
double run_tbb(std::size_t workers, std::size_t n) {
  tbb::global_control allow(tbb::global_control::max_allowed_parallelism, workers + 1);
  tbb::task_arena arena(static_cast<int>(workers) + 1, 1);
  arena.initialize();
  double rate = 0;
  arena.execute([&] {
    tbb::task_group tg;
    const auto t0 = steady::now();
    for (std::size_t i = 0; i < n; ++i) tg.run([] {});
    tg.wait();
    rate = static_cast<double>(n) / seconds_since(t0);
  });
  return rate;
}
#endif

struct competitor {
  const char* name;
  run_fn fn;
};

levee_bench::claims claims;

void check_bar(const options& opt, bool ok, const std::string& what) {
  std::printf("Bar: %s: %s\n", what.c_str(),
              ok ? "met" : (opt.smoke ? "not met (smoke: not checked)" : "NOT MET"));
  if (!opt.smoke) claims.check(ok, what);
}

void overhead_table(const options& opt) {
  // The pool runs first and last in every run (A-B-A); the rest between.
  const competitor pool{"mutex + condvar pool (baseline)", run_mutex_pool};
  std::vector<competitor> cs{{"levee::leveler", run_levee},
                             {"levee::mpmc_queue bare hand-off (floor)", run_bare_queue}};
#if defined(LEVEE_HAVE_TBB)
  cs.push_back({"tbb::task_group (oneTBB)", run_tbb});
#else
  std::printf("(oneTBB not found: skipped)\n");
#endif
#if defined(LEVEE_HAVE_THREAD_POOL)
  cs.push_back({"thread_pool::ThreadPool (libthread-pool-dev)", run_thread_pool});
#else
  std::printf("(libthread-pool-dev not found: skipped)\n");
#endif
  if (!opt.impl.empty())
    std::erase_if(cs, [&](const competitor& c) { return std::string_view(c.name).rfind(opt.impl, 0) != 0; });
  const bool with_pool = opt.impl.empty() || std::string_view(pool.name).rfind(opt.impl, 0) == 0;
  const std::size_t worker_counts[] = {1, 2};
  // rate[c][w][run]; the pool's value for a run is the mean of its two runs.
  std::vector<std::vector<std::vector<double>>> rate(cs.size(), std::vector<std::vector<double>>(2));
  std::vector<std::vector<double>> pool_rate(2), pool_drift(2);
  for (int r = 0; r < opt.runs; ++r)
    for (std::size_t w = 0; w < 2; ++w) {
      const double before = with_pool ? pool.fn(worker_counts[w], opt.jobs) : 0;
      for (std::size_t c = 0; c < cs.size(); ++c) rate[c][w].push_back(cs[c].fn(worker_counts[w], opt.jobs));
      const double after = with_pool ? pool.fn(worker_counts[w], opt.jobs) : 0;
      pool_rate[w].push_back((before + after) / 2);
      pool_drift[w].push_back(with_pool ? after / before : 1);
    }
  // Median over runs of (x's jobs/s / y's jobs/s in the same run).
  auto same_run = [&](const std::vector<double>& x, const std::vector<double>& y) {
    std::vector<double> v;
    for (std::size_t r = 0; r < x.size(); ++r) v.push_back(x[r] / y[r]);
    return summarize(v);
  };
  auto find = [&](run_fn fn) -> const std::vector<std::vector<double>>* {
    for (std::size_t c = 0; c < cs.size(); ++c)
      if (cs[c].fn == fn) return &rate[c];
    return nullptr;
  };

  std::printf("\n### Per-job overhead: submit -> empty handler -> done, no rate limit\n\n");
  levee_bench::print_machine();
  std::printf(
      "\n%zu jobs per run from one producer thread, %d runs. jobs/s: median (min - max) over the runs. "
      "x pool: median [min-max] over the runs of this row's jobs/s / the mean of the pool's two runs (before "
      "and after, A-B-A) in the same run with the same workers.\n\n",
      opt.jobs, opt.runs);
  std::printf(
      "| implementation | 1 worker: jobs/s | ns/job | x pool | 2 workers: jobs/s | ns/job | x pool |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
  auto print_row = [&](const char* name, const std::vector<std::vector<double>>& v) {
    std::printf("| %s ", name);
    for (std::size_t w = 0; w < 2; ++w) {
      const stats s = summarize(v[w]);
      std::printf("| %s (%s - %s) | %.0f | ", si(s.median).c_str(), si(s.min).c_str(), si(s.max).c_str(),
                  1e9 / s.median);
      if (with_pool) {
        const stats q = same_run(v[w], pool_rate[w]);
        std::printf("%.2fx [%.2f-%.2f] ", q.median, q.min, q.max);
      } else {
        std::printf("n/a ");
      }
    }
    std::printf("|\n");
  };
  if (with_pool) print_row(pool.name, pool_rate);
  for (std::size_t c = 0; c < cs.size(); ++c) print_row(cs[c].name, rate[c]);
  if (with_pool) {
    const stats d1 = summarize(pool_drift[0]), d2 = summarize(pool_drift[1]);
    std::printf(
        "\nPool drift within a run (after / before): 1 worker %.2f [%.2f-%.2f], 2 workers %.2f [%.2f-%.2f]; "
        "far from 1 means the machine changed during the run.\n",
        d1.median, d1.min, d1.max, d2.median, d2.min, d2.max);
  }
  const auto* lev = find(run_levee);
  if (lev == nullptr) return;
  std::printf(
      "\nSame-run ratios of levee (median [min-max]):\n\n| levee against | 1 worker | 2 workers "
      "|\n|---|---:|---:|\n");
  struct against {
    const char* name;
    const std::vector<std::vector<double>>* v;
  };
  std::vector<against> others;
  if (with_pool) others.push_back({"mutex + condvar pool (mean of A-B-A)", &pool_rate});
  if (const auto* t = find(run_bare_queue)) others.push_back({"bare mpmc_queue hand-off (floor)", t});
#if defined(LEVEE_HAVE_TBB)
  if (const auto* t = find(run_tbb)) others.push_back({"tbb::task_group", t});
#endif
  std::vector<std::array<double, 2>> med(others.size());
  for (std::size_t o = 0; o < others.size(); ++o) {
    std::printf("| %s ", others[o].name);
    for (std::size_t w = 0; w < 2; ++w) {
      const stats q = same_run((*lev)[w], (*others[o].v)[w]);
      med[o][w] = q.median;
      std::printf("| %.2fx [%.2f-%.2f] ", q.median, q.min, q.max);
    }
    std::printf("|\n");
  }
  std::printf("\n");
  for (std::size_t o = 0; o < others.size(); ++o) {
    const std::string name = others[o].name;
    for (std::size_t w = 0; w < 2; ++w) {
      double bar = 0;
      if (name.rfind("mutex", 0) == 0) bar = 2.0;
      if (name.rfind("tbb", 0) == 0) bar = 1.5;
      if (name.rfind("bare", 0) == 0 && w == 1) bar = 0.5;
      if (bar == 0) continue;
      char what[200];
      std::snprintf(what, sizeof what, "levee >= %.1fx %s with %zu worker%s: %.2fx", bar, others[o].name,
                    worker_counts[w], w ? "s" : "", med[o][w]);
      check_bar(opt, med[o][w] >= bar, what);
    }
  }
}

// ------------------------------------------------------ fair ingress -----

void fair_table(const options& opt) {
  const std::size_t worker_counts[] = {1, 2};
  // [w][run]
  std::vector<std::vector<double>> fifo(2), one(2), many(2), r_one(2), r_many(2);
  for (int r = 0; r < opt.runs; ++r)
    for (std::size_t w = 0; w < 2; ++w) {
      const double before = run_levee(worker_counts[w], opt.jobs);
      const double a = run_levee_fair(worker_counts[w], opt.jobs, 1);
      const double b = run_levee_fair(worker_counts[w], opt.jobs, 1000);
      const double after = run_levee(worker_counts[w], opt.jobs);
      const double base = (before + after) / 2;
      fifo[w].push_back(base);
      one[w].push_back(a);
      many[w].push_back(b);
      r_one[w].push_back(a / base);
      r_many[w].push_back(b / base);
    }
  std::printf("\n### The fair ingress: per-job cost against the FIFO ingress\n\n");
  levee_bench::print_machine();
  std::printf(
      "\n%zu jobs per run from one producer thread, no rate limit, empty handler, %d runs. x FIFO: median "
      "[min-max] over the runs of this row's jobs/s / the mean of the FIFO leveler's two runs (before and "
      "after, A-B-A) in the same run with the same workers; the per-job overhead is 1 / x - 1.\n\n",
      opt.jobs, opt.runs);
  std::printf("| ingress | 1 worker: jobs/s | ns/job | x FIFO | 2 workers: jobs/s | ns/job | x FIFO |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
  auto row = [&](const char* name, const std::vector<std::vector<double>>& v,
                 const std::vector<std::vector<double>>* ratio) {
    std::printf("| %s ", name);
    for (std::size_t w = 0; w < 2; ++w) {
      const stats s = summarize(v[w]);
      std::printf("| %s (%s - %s) | %.0f | ", si(s.median).c_str(), si(s.min).c_str(), si(s.max).c_str(),
                  1e9 / s.median);
      if (ratio != nullptr) {
        const stats q = summarize((*ratio)[w]);
        std::printf("%.2fx [%.2f-%.2f] ", q.median, q.min, q.max);
      } else {
        std::printf("1 ");
      }
    }
    std::printf("|\n");
  };
  row("FIFO (default; mean of A-B-A)", fifo, nullptr);
  row("fair, 1 flow, 1 band", one, &r_one);
  row("fair, 1,000 flows, 1 band", many, &r_many);
  std::printf("\n");
  for (std::size_t w = 0; w < 2; ++w) {
    const double q = summarize(r_one[w]).median;
    char what[200];
    std::snprintf(what, sizeof what,
                  "fair ingress (1 flow, 1 band) per job within +30%% of FIFO with %zu worker%s: %+.0f%%",
                  worker_counts[w], w ? "s" : "", (1 / q - 1) * 100);
    check_bar(opt, q >= 1 / 1.3, what);
  }
}

// -------------------------------------------------------------- pacing ----

struct pacing_run {
  double achieved = 0;                // jobs/s after the initial burst
  double error = 0;                   // achieved / target - 1
  std::size_t violations = 0;         // strict envelope b + r*w on the handler's clock readings
  std::size_t max_excess = 0;         // worst window: dispatches beyond the envelope
  std::size_t jitter_violations = 0;  // envelope with jitter_permits(rate) extra permits
  std::size_t sound_violations = 0;   // envelope with one extra permit per worker (see the top)
  double wall = 0;                    // seconds from the first to the last dispatch
  std::uint64_t burst = 0;            // effective burst
};

// The handler reads the clock after the rate gate let its job go; the delay
// in between varies (wake-up latency, preemption), and can squeeze two
// dispatches closer together than the gate spaced them. One timer slack of
// jitter (100 us) is allowed in the second conformance check.
std::size_t jitter_permits(double rate) { return static_cast<std::size_t>(std::ceil(rate * 100e-6)); }

// burst_request 0 = the leveler's automatic burst (ceil(rate x 1 ms)).
pacing_run run_pacing(double rate, std::uint64_t burst_request, double seconds, std::size_t workers) {
  std::vector<std::int64_t> at;
  std::atomic<std::size_t> next{0};
  using leveler_t = levee::leveler<std::uint64_t>;
  typename leveler_t::options o;
  const auto jobs = static_cast<std::size_t>(rate * seconds);
  std::size_t cap = 1024;
  while (cap < jobs + 2 * static_cast<std::size_t>(rate / 100) + 2) cap *= 2;
  o.capacity = cap;
  o.workers = workers;
  o.rate = levee::rate::per_second(rate);
  o.burst = burst_request;
  std::uint64_t burst = 0;
  std::size_t n = 0;
  const auto t0 = steady::now();
  {
    leveler_t lev(o, [&](std::uint64_t&) {
      const auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now() - t0).count();
      at[next.fetch_add(1, std::memory_order_relaxed)] = now;
    });
    burst = lev.metrics().burst;  // the effective burst (resolves "auto")
    n = static_cast<std::size_t>(burst) + jobs;
    at.assign(n, 0);
    for (std::uint64_t i = 0; i < n; ++i) (void)lev.submit(std::uint64_t{i});
    lev.drain();
  }
  std::sort(at.begin(), at.end());
  pacing_run r;
  {
    using tp = std::chrono::time_point<steady, std::chrono::nanoseconds>;
    std::vector<tp> times;
    times.reserve(at.size());
    for (std::int64_t ns : at) times.emplace_back(std::chrono::nanoseconds(ns));
    const levee::rate lr = levee::rate::per_second(rate);
    const levee::conformance_report strict = levee::check_conformance(times, lr, burst);
    r.violations = strict.violations;
    r.max_excess = strict.ok ? 0 : static_cast<std::size_t>(strict.max_excess);
    r.jitter_violations = levee::check_conformance(times, lr, burst + jitter_permits(rate)).violations;
    r.sound_violations = levee::check_conformance(times, lr, burst + workers).violations;
  }
  r.wall = static_cast<double>(at.back() - at.front()) * 1e-9;
  // Job k >= burst is due at first + (k - burst + 1) / rate, so the last one
  // (k = n - 1) at first + (n - burst) / rate.
  r.burst = burst;
  r.achieved = static_cast<double>(n - burst) / r.wall;
  r.error = r.achieved / rate - 1.0;
  return r;
}

void pacing_table(const options& opt) {
  const double rates[] = {1e3, 1e4, 1e5};
  const std::size_t workers = 2;
  std::printf("\n### Real-time pacing of a backlog (steady_clock, %zu workers, %.2f s per run, %d runs)\n\n",
              workers, opt.seconds, opt.runs);
  levee_bench::print_machine();
  std::printf("\n");
  std::printf(
      "A backlog of b + r x %.2f s jobs is submitted at once and drained at rate r. Burst b: the leveler's "
      "automatic one (options.burst = 0), plus any given with --burst. Achieved rate = (n - b) / (last "
      "dispatch - first "
      "dispatch), from the times the handler ran; violations = admissions closing a window with more than "
      "b + r*w dispatches (levee::check_conformance), strict and with one timer slack (100 us) of jitter "
      "allowed.\n\n",
      opt.seconds);
  std::printf(
      "| target | burst | achieved: median (min - max) | error: median (worst) | strict violations, max over "
      "runs "
      "| violations with 100 us jitter allowed | within 1%% and 0 violations |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|:---:|\n");
  std::vector<std::pair<bool, std::string>> sound, bars;  // printed after the table
  for (double rate : rates) {
    for (const std::uint64_t burst_request : opt.bursts) {
      std::vector<double> achieved, errors;
      std::size_t worst_violations = 0, worst_excess = 0, worst_jitter = 0, worst_sound = 0;
      double worst_error = 0;
      std::uint64_t burst = 0;
      for (int r = 0; r < opt.runs; ++r) {
        const pacing_run p = run_pacing(rate, burst_request, opt.seconds, workers);
        burst = p.burst;
        achieved.push_back(p.achieved);
        errors.push_back(p.error);
        worst_violations = std::max(worst_violations, p.violations);
        worst_excess = std::max(worst_excess, p.max_excess);
        worst_jitter = std::max(worst_jitter, p.jitter_violations);
        worst_sound = std::max(worst_sound, p.sound_violations);
        if (std::abs(p.error) > std::abs(worst_error)) worst_error = p.error;
      }
      const stats a = summarize(achieved), e = summarize(errors);
      const bool ok = std::abs(worst_error) <= 0.01 && worst_jitter == 0;
      std::printf(
          "| %s/s | %llu%s | %s/s (%s - %s) | %+.3f%% (%+.3f%%) | %zu (worst excess %zu) | %zu (+%zu "
          "permits) "
          "| %s |\n",
          si(rate).c_str(), static_cast<unsigned long long>(burst), burst_request == 0 ? " (auto)" : "",
          si(a.median).c_str(), si(a.min).c_str(), si(a.max).c_str(), 100 * e.median, 100 * worst_error,
          worst_violations, worst_excess, worst_jitter, jitter_permits(rate), ok ? "yes" : "**no**");
      char what[200];
      std::snprintf(what, sizeof what,
                    "pacing at %s/s: no window beyond b + r*w + %zu workers (%zu violations)",
                    si(rate).c_str(), workers, worst_sound);
      sound.emplace_back(worst_sound == 0, what);
      std::snprintf(what, sizeof what,
                    "pacing at %s/s: achieved within 1%% (worst %+.3f%%) and 0 violations with 100 us jitter "
                    "allowed (%zu)",
                    si(rate).c_str(), 100 * worst_error, worst_jitter);
      bars.emplace_back(ok, what);
    }
  }
  std::printf("\n");
  for (const auto& [ok, what] : sound) claims.check(ok, what);
  for (const auto& [ok, what] : bars) check_bar(opt, ok, what);
}

}  // namespace

int main(int argc, char** argv) {
  options opt;
  bool runs_given = false, jobs_given = false, seconds_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_leveler: %s needs a value\n", argv[i]);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--smoke") {
      opt.smoke = true;
    } else if (a == "--runs") {
      opt.runs = std::max(1, std::atoi(value()));
      runs_given = true;
    } else if (a == "--jobs") {
      opt.jobs = static_cast<std::size_t>(std::max(1L, std::atol(value())));
      jobs_given = true;
    } else if (a == "--seconds") {
      opt.seconds = std::max(0.01, std::atof(value()));
      seconds_given = true;
    } else if (a == "--only") {
      const std::string_view w = value();
      opt.overhead = w == "overhead";
      opt.pacing = w == "pacing";
      opt.fair = w == "fair";
      if (!opt.overhead && !opt.pacing && !opt.fair) {
        std::fprintf(stderr, "bench_leveler: --only takes overhead, pacing or fair, not %s\n", argv[i]);
        return 2;
      }
    } else if (a == "--burst") {
      opt.bursts.push_back(static_cast<std::uint64_t>(std::max(1L, std::atol(value()))));
    } else if (a == "--impl") {
      opt.impl = value();
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: bench_leveler [--smoke] [--runs N] [--jobs N] [--seconds S] [--only overhead|pacing|fair] "
          "[--impl NAME-PREFIX] [--burst N]...\n"
          "  --smoke          tiny counts (CI): 3 runs, 20,000 jobs, 0.2 s pacing; speed bars not checked\n"
          "  --runs N         runs per cell (default 5)\n"
          "  --jobs N         jobs per overhead run (default 1,000,000)\n"
          "  --seconds S      length of one pacing run (default 2)\n"
          "  --only TABLE     overhead | pacing | fair\n"
          "  --impl PREFIX    overhead: only rows whose name starts with PREFIX (for profiling;\n"
          "                   ratios need the pool: 'mutex')\n"
          "  --burst N        pacing: also run with burst N (repeatable; 0 = automatic is always run)\n"
          "Exit status 1 if a checked claim is false: envelope in every run; the speed bars\n"
          "(x pool, x TBB, x bare queue, pacing within 1%%, fair within +30%%) in full runs only.\n");
      return 0;
    } else {
      std::fprintf(stderr, "bench_leveler: unknown flag '%s'\n", argv[i]);
      return 2;
    }
  }
  if (opt.smoke) {
    if (!runs_given) opt.runs = 3;
    if (!jobs_given) opt.jobs = 20'000;
    if (!seconds_given) opt.seconds = 0.2;
  }
  std::printf("## bench_leveler%s\n\n", opt.smoke ? " (smoke: tiny counts, numbers mean nothing)" : "");
  levee_bench::print_machine();
  if (opt.overhead) overhead_table(opt);
  if (opt.pacing) pacing_table(opt);
  if (opt.fair) fair_table(opt);
  return claims.finish();
}
