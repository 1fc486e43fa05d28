// bench_leveler: what levee::leveler costs and how exactly it paces.
//
// 1. Per-job overhead: one producer submits N jobs with an empty handler and
//    no rate limit, then waits until all are done; jobs/s with 1 and 2 worker
//    threads, next to
//      - a std::mutex + std::condition_variable thread pool written below
//        (the baseline every ratio is taken against),
//      - Debian's libthread-pool-dev (thread_pool::ThreadPool, Submit),
//      - oneTBB's task_group inside a task_arena.
//    Bar: levee >= 2x the mutex pool's jobs/s with 2 workers.
// 2. Real-time pacing: a backlog drained at 1k, 10k and 100k jobs/s for 2 s.
//    Achieved rate (bar: within 1% of the target) and envelope violations
//    (bar: 0, levee::check_conformance on the times the handler ran).
//
// Flags: --smoke (tiny counts, for CI), --runs N (default 5), --jobs N,
//        --seconds S (pacing duration), --only overhead|pacing.
// Output: Markdown tables, median / min / max over the runs.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <functional>
#include <levee/conformance.hpp>
#include <levee/leveler.hpp>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
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
  bool overhead = true, pacing = true;
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

double run_mutex_pool(std::size_t workers, std::size_t n) {
  mutex_pool pool(workers);
  const auto t0 = steady::now();
  for (std::size_t i = 0; i < n; ++i) pool.submit([] {});
  pool.wait_idle();
  return static_cast<double>(n) / seconds_since(t0);
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

void overhead_table(const options& opt) {
  std::vector<competitor> cs{{"levee::leveler", run_levee},
                             {"mutex + condvar pool (baseline)", run_mutex_pool}};
#if defined(LEVEE_HAVE_THREAD_POOL)
  cs.push_back({"thread_pool::ThreadPool (libthread-pool-dev)", run_thread_pool});
#else
  std::printf("(libthread-pool-dev not found: skipped)\n");
#endif
#if defined(LEVEE_HAVE_TBB)
  cs.push_back({"tbb::task_group (oneTBB)", run_tbb});
#else
  std::printf("(oneTBB not found: skipped)\n");
#endif
  if (!opt.impl.empty())
    cs.erase(
        std::remove_if(cs.begin(), cs.end(),
                       [&](const competitor& c) { return std::string_view(c.name).rfind(opt.impl, 0) != 0; }),
        cs.end());
  const std::size_t worker_counts[] = {1, 2};
  // results[competitor][workers] = jobs/s of each run
  std::vector<std::vector<std::vector<double>>> results(cs.size(), std::vector<std::vector<double>>(2));
  // Interleave competitors within each run so that drift of the machine's
  // load affects every one of them alike.
  for (int r = 0; r < opt.runs; ++r)
    for (std::size_t w = 0; w < 2; ++w)
      for (std::size_t c = 0; c < cs.size(); ++c)
        results[c][w].push_back(cs[c].fn(worker_counts[w], opt.jobs));

  std::printf("\n### Per-job overhead: submit -> empty handler -> done, no rate limit\n\n");
  std::printf(
      "%zu jobs per run from one producer thread, %d runs; jobs/s as median (min - max); "
      "ratio = median [min-max] over the runs of this run's jobs/s / the mutex pool's jobs/s in the same "
      "run with the same workers (they run back to back).\n\n",
      opt.jobs, opt.runs);
  std::printf(
      "| implementation | 1 worker: jobs/s | ns/job | ratio | 2 workers: jobs/s | ns/job | ratio |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
  // The baseline is the mutex pool when it ran (see --impl).
  std::size_t base_index = cs.size();
  for (std::size_t c = 0; c < cs.size(); ++c)
    if (cs[c].fn == run_mutex_pool) base_index = c;
  // Same-run ratios against the baseline: a slow spell of the machine hits
  // both runs of a pair, so the ratio is steadier than either median.
  auto ratios = [&](std::size_t c, std::size_t w) {
    std::vector<double> v;
    for (std::size_t r = 0; r < results[c][w].size(); ++r)
      v.push_back(results[c][w][r] / results[base_index][w][r]);
    return summarize(v);
  };
  for (std::size_t c = 0; c < cs.size(); ++c) {
    std::printf("| %s ", cs[c].name);
    for (std::size_t w = 0; w < 2; ++w) {
      const stats s = summarize(results[c][w]);
      std::printf("| %s (%s - %s) | %.0f | ", si(s.median).c_str(), si(s.min).c_str(), si(s.max).c_str(),
                  1e9 / s.median);
      if (base_index < cs.size()) {
        const stats q = ratios(c, w);
        std::printf("%.2fx [%.2f-%.2f] ", q.median, q.min, q.max);
      } else {
        std::printf("n/a ");
      }
    }
    std::printf("|\n");
  }
  if (base_index < cs.size() && cs.front().fn == run_levee) {
    const double ratio2 = ratios(0, 1).median;
    std::printf("\nBar: levee >= 2x the mutex pool with 2 workers (median of same-run ratios): %.2fx, %s.\n",
                ratio2, ratio2 >= 2.0 ? "met" : "NOT MET");
  }
}

// -------------------------------------------------------------- pacing ----

struct pacing_run {
  double achieved = 0;                // jobs/s after the initial burst
  double error = 0;                   // achieved / target - 1
  std::size_t violations = 0;         // strict envelope b + r*w on the handler's clock readings
  std::size_t max_excess = 0;         // worst window: dispatches beyond the envelope
  std::size_t jitter_violations = 0;  // envelope with jitter_permits(rate) extra permits
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
  for (double rate : rates) {
    for (const std::uint64_t burst_request : opt.bursts) {
      std::vector<double> achieved, errors;
      std::size_t worst_violations = 0, worst_excess = 0, worst_jitter = 0;
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
    }
  }
}

void describe_machine() {
  std::string model = "unknown CPU";
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  std::printf("Machine: %s, %u hardware threads. Compiler: %s.\n", model.c_str(),
              std::thread::hardware_concurrency(),
#if defined(__clang__)
              "clang " __clang_version__
#elif defined(__GNUC__)
              "g++ " __VERSION__
#else
              "unknown"
#endif
  );
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
    } else if (a == "--burst") {
      opt.bursts.push_back(static_cast<std::uint64_t>(std::max(1L, std::atol(value()))));
    } else if (a == "--impl") {
      opt.impl = value();
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: bench_leveler [--smoke] [--runs N] [--jobs N] [--seconds S] [--only overhead|pacing] "
          "[--impl NAME-PREFIX] [--burst N]...\n");
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
  describe_machine();
  if (opt.overhead) overhead_table(opt);
  if (opt.pacing) pacing_table(opt);
  return 0;
}
