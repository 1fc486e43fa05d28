// bench_async: what asynchronous handlers (levee::completion) cost, and how
// many I/O-bound calls two worker threads keep in flight.
//
// 1. Per-job overhead, empty work, one producer, N jobs (default 200,000),
//    jobs/s with 1 and 2 workers, A-B-A in every run: the synchronous
//    handler (the baseline), then an asynchronous handler completing inline
//    (inside the handler), then one whose completion is fired by another
//    thread (a completer thread popping completions from a levee::mpmc_queue),
//    then the synchronous handler again. Ratios are to the mean of the two
//    synchronous runs of the same run; the table shows their median.
// 2. Memory per asynchronous attempt in flight: the heap in use (glibc's
//    mallinfo2) freed when 10,000 held attempts finish, per attempt.
// 3. I/O-bound throughput with real threads: 2 workers, one reactor thread
//    completing each job 50 ms after it started, max_concurrency 2,000, for
//    3 s after a 0.5 s warm-up: completions per second (bar, full runs:
//    >= 0.9 x C / L = 36,000/s) and the CPU the rest of the process used
//    (the workers and the leveler; the reactor's own CPU is subtracted and
//    the producer sleeps): workers park while they wait, so far less than one core.
//
// Flags: --smoke (tiny counts, bars not checked), --runs N, --jobs N.
// Exit status 1 when a checked claim is false.

#include <malloc.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <levee/leveler.hpp>
#include <levee/mpmc_queue.hpp>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "bench_support.hpp"

namespace {

using steady = std::chrono::steady_clock;
using job = std::uint64_t;

double seconds_since(steady::time_point t0) {
  return std::chrono::duration<double>(steady::now() - t0).count();
}

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}
double process_cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

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
  std::size_t jobs = 200'000;
};

levee_bench::claims claims;

// ------------------------------------------------------ 1. overhead ----
enum class form { sync, async_inline, async_foreign };

double run_form(form f, std::size_t workers, std::size_t n) {
  levee::leveler<job>::options o;
  o.capacity = 1u << 16;
  o.workers = workers;
  o.max_async_in_flight = 4096;
  levee::mpmc_queue<levee::completion> to_fire(8192);
  std::jthread completer;
  levee::leveler<job> lev(o);
  switch (f) {
    case form::sync:
      (void)lev.add_backend([](job&) {});
      break;
    case form::async_inline:
      (void)lev.add_backend([](job&, levee::completion done) { std::move(done).succeed(); });
      break;
    case form::async_foreign:
      completer = std::jthread([&to_fire] {
        for (levee::completion c; to_fire.pop(c);) std::move(c).succeed();
      });
      (void)lev.add_backend(
          [&to_fire](job&, levee::completion done) { (void)to_fire.push(std::move(done)); });
      break;
  }
  const auto t0 = steady::now();
  for (job i = 0; i < n; ++i) (void)lev.submit(job{i});
  lev.drain();
  const double rate = static_cast<double>(n) / seconds_since(t0);
  to_fire.close();
  if (lev.metrics().succeeded != n) {
    std::fprintf(stderr, "bench_async: %llu of %zu jobs succeeded\n",
                 static_cast<unsigned long long>(lev.metrics().succeeded), n);
    std::exit(1);
  }
  return rate;
}

void overhead_table(const options& opt) {
  std::printf(
      "\n### Per-job overhead: synchronous vs asynchronous handlers (empty work, %zu jobs, %d runs)\n\n",
      opt.jobs, opt.runs);
  levee_bench::print_machine();
  std::printf(
      "\nA-B-A per run: sync, async inline, async from another thread, sync. Ratio = jobs/s over the mean of "
      "the run's two sync runs; median (min - max) over the runs.\n\n");
  std::printf(
      "| workers | sync jobs/s | async inline jobs/s | x sync | async other thread jobs/s | x sync |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|\n");
  for (std::size_t workers : {std::size_t{1}, std::size_t{2}}) {
    std::vector<double> sync_r, inline_r, foreign_r, inline_x, foreign_x;
    for (int r = 0; r < opt.runs; ++r) {
      const double a = run_form(form::sync, workers, opt.jobs);
      const double b = run_form(form::async_inline, workers, opt.jobs);
      const double c = run_form(form::async_foreign, workers, opt.jobs);
      const double a2 = run_form(form::sync, workers, opt.jobs);
      const double base = (a + a2) / 2;
      sync_r.push_back(base);
      inline_r.push_back(b);
      foreign_r.push_back(c);
      inline_x.push_back(b / base);
      foreign_x.push_back(c / base);
    }
    const auto s = levee_bench::summarize(sync_r), i = levee_bench::summarize(inline_r),
               f = levee_bench::summarize(foreign_r), ix = levee_bench::summarize(inline_x),
               fx = levee_bench::summarize(foreign_x);
    std::printf("| %zu | %s | %s | %.2fx (%.2f - %.2f) | %s | %.2fx (%.2f - %.2f) |\n", workers,
                si(s.median).c_str(), si(i.median).c_str(), ix.median, ix.min, ix.max, si(f.median).c_str(),
                fx.median, fx.min, fx.max);
    std::printf("|   | %.0f ns/job | %.0f ns/job | | %.0f ns/job | |\n", 1e9 / s.median, 1e9 / i.median,
                1e9 / f.median);
  }
}

// --------------------------------------------------------- 2. memory ----
void memory_table(const options& opt) {
  const std::size_t k = opt.smoke ? 1000 : 10'000;
  std::vector<levee::completion> held;
  held.reserve(k);
  std::int64_t bytes = 0;
  {
    levee::leveler<job>::options o;
    o.capacity = k;
    o.workers = 1;
    o.max_concurrency = k;
    std::mutex m;
    levee::leveler<job> lev(o, [&](job&, levee::completion done) {
      std::lock_guard l(m);
      held.push_back(std::move(done));
    });
    for (job i = 0; i < k; ++i) (void)lev.submit(job{i});
    while (lev.metrics().in_flight != k) std::this_thread::yield();
    const auto before = static_cast<std::int64_t>(mallinfo2().uordblks);
    {
      std::lock_guard l(m);
      for (auto& c : held) std::move(c).succeed();
      held.clear();
    }
    lev.drain();
    bytes = before - static_cast<std::int64_t>(mallinfo2().uordblks);
  }
  std::printf("\n### Memory per asynchronous attempt in flight (%zu attempts held)\n\n", k);
  std::printf(
      "Heap in use per attempt in flight (glibc mallinfo2, allocator overhead included; the job type is 8 "
      "bytes), measured as the heap freed when the attempts finish: **%.0f bytes**.\n",
      static_cast<double>(bytes) / static_cast<double>(k));
}

// --------------------------------------------------- 3. I/O-bound rate ----
// Fires each completion `latency` after it was queued, from one thread. The
// latency is the same for every job, so arrival order is firing order.
class fifo_reactor {
 public:
  explicit fifo_reactor(std::chrono::nanoseconds latency) : latency_(latency) {}
  ~fifo_reactor() { stop(); }
  void start() {
    thread_ = std::thread([this] { run(); });
  }
  void stop() {
    {
      std::lock_guard l(m_);
      quit_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  void push(levee::completion done) {
    bool wake;
    {
      std::lock_guard l(m_);
      wake = q_.empty();
      q_.push_back({steady::now() + latency_, std::move(done)});
    }
    if (wake) cv_.notify_one();
  }
  double cpu_seconds() const { return cpu_.load(); }

 private:
  struct item {
    steady::time_point at;
    levee::completion done;
  };
  void run() {
    std::vector<levee::completion> due;
    std::unique_lock l(m_);
    while (!quit_) {
      if (q_.empty()) {
        cv_.wait(l, [&] { return quit_ || !q_.empty(); });
        continue;
      }
      const auto at = q_.front().at;
      if (steady::now() < at) {
        cv_.wait_until(l, at, [&] { return quit_; });
        continue;
      }
      const auto now = steady::now();
      while (!q_.empty() && q_.front().at <= now) {
        due.push_back(std::move(q_.front().done));
        q_.pop_front();
      }
      l.unlock();
      for (auto& d : due) std::move(d).succeed();
      due.clear();
      l.lock();
    }
    q_.clear();
    cpu_.store(thread_cpu_seconds());
  }
  std::chrono::nanoseconds latency_;
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<item> q_;
  bool quit_ = false;
  std::atomic<double> cpu_{0};
  std::thread thread_;
};

void io_table(const options& opt) {
  const double warmup = opt.smoke ? 0.2 : 0.5, window = opt.smoke ? 0.5 : 3.0;
  const std::size_t concurrency = 2000;
  const auto latency = std::chrono::milliseconds(50);
  const double ideal = static_cast<double>(concurrency) / 0.050;
  std::printf(
      "\n### I/O-bound calls on two worker threads (L = 50 ms, max_concurrency %zu, %.1f s window, %d "
      "runs)\n\n",
      concurrency, window, opt.runs);
  levee_bench::print_machine();
  std::printf(
      "\nOne reactor thread fires each completion 50 ms after the handler started the call. C / L = %s/s. "
      "CPU = "
      "process CPU time minus the reactor's (the producer sleeps), per second of wall time, during the "
      "window.\n\n",
      si(ideal).c_str());
  std::printf("| run | completions/s | x C/L | in flight (sampled) | workers + leveler CPU (cores) |\n");
  std::printf("|---:|---:|---:|---:|---:|\n");
  std::vector<double> rates, cpus;
  for (int r = 0; r < opt.runs; ++r) {
    fifo_reactor reactor(latency);
    reactor.start();
    levee::leveler<job>::options o;
    const auto total = static_cast<std::size_t>(ideal * (warmup + window) * 1.2);
    o.capacity = total;
    o.workers = 2;
    o.max_concurrency = concurrency;
    levee::leveler<job> lev(o, [&](job&, levee::completion done) { reactor.push(std::move(done)); });
    for (job i = 0; i < total; ++i) (void)lev.try_submit(job{i});
    const auto t0 = steady::now();
    while (seconds_since(t0) < warmup) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const auto done0 = lev.metrics().succeeded;
    const double cpu0 = process_cpu_seconds();
    const auto w0 = steady::now();
    std::size_t in_flight = 0;
    while (seconds_since(w0) < window) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      in_flight = std::max(in_flight, lev.metrics().in_flight);
    }
    const auto done1 = lev.metrics().succeeded;
    const double wall = seconds_since(w0);
    const double cpu1 = process_cpu_seconds();
    lev.stop();
    reactor.stop();
    // The reactor's CPU over the whole run approximates its share in the window (it is busy uniformly).
    const double reactor_share = reactor.cpu_seconds() * window / (warmup + window + 0.05);
    const double cpu = std::max(0.0, (cpu1 - cpu0) - reactor_share) / wall;
    const double rate = static_cast<double>(done1 - done0) / wall;
    rates.push_back(rate);
    cpus.push_back(cpu);
    std::printf("| %d | %s | %.3f | %zu | %.2f |\n", r + 1, si(rate).c_str(), rate / ideal, in_flight, cpu);
  }
  const auto s = levee_bench::summarize(rates), c = levee_bench::summarize(cpus);
  std::printf("| median | %s | %.3f | | %.2f |\n", si(s.median).c_str(), s.median / ideal, c.median);
  const bool ok = s.median >= 0.9 * ideal;
  char what[200];
  std::snprintf(what, sizeof what, "I/O-bound: median %s/s >= 0.9 x C/L (%s/s)", si(s.median).c_str(),
                si(0.9 * ideal).c_str());
  std::printf("Bar: %s: %s\n", what, ok ? "met" : (opt.smoke ? "not met (smoke: not checked)" : "NOT MET"));
  if (!opt.smoke) claims.check(ok, what);
  std::snprintf(what, sizeof what, "I/O-bound: workers park while waiting (median %.2f cores < 1)", c.median);
  std::printf("Bar: %s: %s\n", what, c.median < 1.0 ? "met" : (opt.smoke ? "not met (smoke)" : "NOT MET"));
  if (!opt.smoke) claims.check(c.median < 1.0, what);
}

}  // namespace

int main(int argc, char** argv) {
  options opt;
  bool runs_given = false, jobs_given = false;
  bool overhead = true, memory = true, io = true;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_async: %s needs a value\n", argv[i]);
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
    } else if (a == "--only") {
      const std::string_view w = value();
      overhead = w == "overhead";
      memory = w == "memory";
      io = w == "io";
      if (!overhead && !memory && !io) {
        std::fprintf(stderr, "bench_async: --only takes overhead, memory or io, not %s\n", argv[i]);
        return 2;
      }
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: bench_async [--smoke] [--runs N] [--jobs N] [--only overhead|memory|io]\n"
          "  --smoke      tiny counts (CI): 2 runs, 20,000 jobs, short windows; bars not checked\n"
          "  --runs N     runs per cell (default 5)\n"
          "  --jobs N     jobs per overhead run (default 200,000)\n"
          "Exit status 1 if a checked claim is false (the I/O-bound bars, full runs only).\n");
      return 0;
    } else {
      std::fprintf(stderr, "bench_async: unknown flag '%s'\n", argv[i]);
      return 2;
    }
  }
  if (opt.smoke) {
    if (!runs_given) opt.runs = 2;
    if (!jobs_given) opt.jobs = 20'000;
  }
  std::printf("## bench_async%s\n\n", opt.smoke ? " (smoke: tiny counts, numbers mean nothing)" : "");
  levee_bench::print_machine();
  if (overhead) overhead_table(opt);
  if (memory) memory_table(opt);
  if (io) io_table(opt);
  return claims.finish();
}
