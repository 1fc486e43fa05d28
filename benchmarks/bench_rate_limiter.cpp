// bench_rate_limiter - cost and pacing accuracy of levee::rate_limiter.
//
// Table 1: ns per try_acquire with 1 and 2 threads on one shared limiter,
//   (a) with a caller-supplied `now` (the clock is read once per 64 calls and
//       the reading reused, as the leveler does), and
//   (b) with the clock read inside every call,
//   in two workloads: "admit" (rate 1e9/s, burst 1e6: every call succeeds, so
//   every call writes the shared state) and "reject" (rate 1000/s after the
//   bucket is drained: nearly every call fails).
//   Baselines written here: a std::mutex token bucket (double tokens, lazy
//   refill) and a lock-free token bucket that CASes one std::atomic<double>
//   "zero time" (the folly TokenBucket / Envoy AtomicTokenBucket design).
//   Every call of every implementation does the same work around it (same
//   loop, same clock amortisation, one permit). Each run measures the three
//   implementations back to back in a rotating order. Cells: median
//   [min-max] of --runs runs; "x mutex" = median [min-max] of the same-run
//   ratios mutex ns / cell ns (higher = faster than the mutex baseline).
// Table 2: real-clock pacing: one thread calls acquire() in a loop at 1k, 10k
//   and 100k permits/s for 2 s (--smoke: 0.1 s): achieved rate (permits after
//   the initial burst / elapsed), envelope violations of the admission times
//   acquire() returned (levee::check_conformance, must be 0), and CPU time of
//   the pacing thread per admitted permit. Configurations: burst 1 (pure
//   sleeping), burst 1 with set_spin_limit(200us) (busy-waits the end of each
//   wait: the learned OS wake-up lateness plus a margin, at most 200 us),
//   burst 16, and bursts of 2 ms and 20 ms of the rate (late wake-ups up to
//   that long are absorbed by the bucket).
// Options: see --help. Exit status 1 when a checked claim is false.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <levee/conformance.hpp>
#include <levee/rate_limiter.hpp>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"

namespace {

using sc = std::chrono::steady_clock;
using namespace std::chrono_literals;

bool smoke = false;
int runs = 5;
int only_table = 0;

using summary = levee_bench::stats;
levee_bench::claims claims;
using levee_bench::summarize;

std::int64_t ns_of(sc::time_point t) { return t.time_since_epoch().count(); }

// ---- baselines -------------------------------------------------------------

// A classic token bucket under a std::mutex (Guava / x/time style).
class mutex_bucket {
 public:
  mutex_bucket(double per_second, double burst) : per_ns_(per_second * 1e-9), burst_(burst), tokens_(burst) {}
  bool try_acquire(std::int64_t now_ns) {
    std::lock_guard lock(m_);
    if (now_ns > last_) {
      tokens_ = std::min(burst_, tokens_ + static_cast<double>(now_ns - last_) * per_ns_);
      last_ = now_ns;  // never moves backwards (no phantom tokens)
    }
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
  }

 private:
  std::mutex m_;
  double per_ns_, burst_, tokens_;
  std::int64_t last_ = 0;
};

// Lock-free token bucket on one atomic<double> "zero time" (folly TokenBucket).
class cas_double_bucket {
 public:
  cas_double_bucket(double per_second, double burst, std::int64_t now_ns)
      : per_ns_(per_second * 1e-9), burst_(burst), zero_(static_cast<double>(now_ns) - burst / per_ns_) {}
  bool try_acquire(std::int64_t now_ns) {
    const auto now = static_cast<double>(now_ns);
    double z = zero_.load(std::memory_order_relaxed);
    for (;;) {
      const double tokens = std::min((now - z) * per_ns_, burst_);
      if (tokens < 1.0) return false;
      const double nz = now - (tokens - 1.0) / per_ns_;
      if (zero_.compare_exchange_weak(z, nz, std::memory_order_acq_rel, std::memory_order_relaxed))
        return true;
    }
  }

 private:
  double per_ns_, burst_;
  alignas(64) std::atomic<double> zero_;
};

using levee_bench::load_average;

// ---- table 1 ---------------------------------------------------------------

enum class impl { levee, mutex, cas_double };
const char* impl_name(impl i) {
  switch (i) {
    case impl::levee:
      return "levee::rate_limiter (GCRA, 1 CAS)";
    case impl::mutex:
      return "std::mutex token bucket";
    case impl::cas_double:
      return "CAS on atomic<double>";
  }
  return "?";
}

struct workload {
  const char* name;
  double per_second;
  std::uint64_t burst;
};

// The timed loop, one instantiation per implementation and clock mode, so
// that every implementation runs the same loop with nothing decided per call
// except the call itself (and the clock read every 64 calls, or in every call).
template <impl Which, bool ClockInside>
std::uint64_t call_loop(levee::rate_limiter<>& lim, mutex_bucket& mb, cas_double_bucket& cb,
                        std::uint64_t calls, sc::time_point t0) {
  std::uint64_t ok = 0;
  sc::time_point now = t0;
  for (std::uint64_t i = 0; i < calls; ++i) {
    // levee's try_acquire() reads the clock itself; the baselines get one read per call
    if constexpr (ClockInside) {
      if constexpr (Which != impl::levee) now = sc::now();
    } else {
      if ((i & 63U) == 0) now = sc::now();
    }
    bool r = false;
    if constexpr (Which == impl::levee) {
      if constexpr (ClockInside) {
        r = lim.try_acquire();
      } else {
        r = lim.try_acquire(1, now);
      }
    } else if constexpr (Which == impl::mutex) {
      r = mb.try_acquire(ns_of(now));
    } else {
      r = cb.try_acquire(ns_of(now));
    }
    ok += r ? 1U : 0U;
  }
  return ok;
}

// Returns ns per call per thread (wall time of the slowest thread / calls).
double run_try(impl which, const workload& w, int threads, bool clock_inside, std::uint64_t calls,
               std::uint64_t* admitted_out) {
  levee::rate_limiter<> lim(levee::rate::per_second(w.per_second), w.burst);
  mutex_bucket mb(w.per_second, static_cast<double>(w.burst));
  cas_double_bucket cb(w.per_second, static_cast<double>(w.burst), ns_of(sc::now()));
  if (w.per_second < 1e6) {  // "reject": drain the bucket first
    const auto now = sc::now();
    for (std::uint64_t i = 0; i < w.burst + 10; ++i) {
      (void)lim.try_acquire(1, now);
      (void)mb.try_acquire(ns_of(now));
      (void)cb.try_acquire(ns_of(now));
    }
  }
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<std::uint64_t> admitted{0};
  std::vector<double> elapsed(static_cast<std::size_t>(threads));
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      const auto t0 = sc::now();
      std::uint64_t ok = 0;
      switch ((which == impl::levee ? 0 : which == impl::mutex ? 2 : 4) + (clock_inside ? 1 : 0)) {
        case 0:
          ok = call_loop<impl::levee, false>(lim, mb, cb, calls, t0);
          break;
        case 1:
          ok = call_loop<impl::levee, true>(lim, mb, cb, calls, t0);
          break;
        case 2:
          ok = call_loop<impl::mutex, false>(lim, mb, cb, calls, t0);
          break;
        case 3:
          ok = call_loop<impl::mutex, true>(lim, mb, cb, calls, t0);
          break;
        case 4:
          ok = call_loop<impl::cas_double, false>(lim, mb, cb, calls, t0);
          break;
        default:
          ok = call_loop<impl::cas_double, true>(lim, mb, cb, calls, t0);
          break;
      }
      elapsed[static_cast<std::size_t>(t)] = std::chrono::duration<double, std::nano>(sc::now() - t0).count();
      admitted.fetch_add(ok);
    });
  }
  while (ready.load() < threads) {
  }
  go.store(true, std::memory_order_release);
  for (auto& th : ts) th.join();
  *admitted_out = admitted.load();
  return *std::max_element(elapsed.begin(), elapsed.end()) / static_cast<double>(calls);
}

void table1() {
  const workload loads[] = {{"admit", 1e9, 1'000'000}, {"reject", 1000, 10}};
  const std::uint64_t calls = smoke ? 20'000 : 2'000'000;
  std::printf("\n## 1. ns per try_acquire (lower is better)\n\n");
  levee_bench::print_machine();
  std::printf("\n");
  std::printf(
      "Median [min-max] of %d runs, %llu calls per thread; with 2 threads each thread's own time per call "
      "(both hammer one limiter). The implementations run interleaved in every run; `x mutex` = median "
      "[min-max] over the runs of (mutex ns / cell ns) measured in the same run.\n\n",
      runs, static_cast<unsigned long long>(calls));
  std::printf("| workload | now | threads | implementation | ns/call | x mutex | admitted/call |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const auto& w : loads) {
    for (const bool inside : {false, true}) {
      for (const int threads : {1, 2}) {
        // The three implementations are interleaved within each run (in a
        // rotating order), and "x mutex" is the median of the ratios measured
        // in the same run: on a shared machine the load changes between runs,
        // and measuring all runs of one implementation before the next would
        // turn that change into a bogus ratio.
        constexpr impl order[] = {impl::mutex, impl::levee, impl::cas_double};
        std::vector<double> ns[3], ratio[3];
        double adm_frac[3] = {0, 0, 0};
        for (int r = 0; r < runs; ++r) {
          double cell[3] = {0, 0, 0};
          for (int k = 0; k < 3; ++k) {
            const impl which = order[(k + r) % 3];
            std::uint64_t adm = 0;
            cell[static_cast<int>(which)] = run_try(which, w, threads, inside, calls, &adm);
            adm_frac[static_cast<int>(which)] =
                static_cast<double>(adm) / static_cast<double>(calls * static_cast<std::uint64_t>(threads));
          }
          for (int i = 0; i < 3; ++i) {
            ns[i].push_back(cell[i]);
            ratio[i].push_back(cell[static_cast<int>(impl::mutex)] / cell[i]);
          }
        }
        for (const impl which : {impl::levee, impl::mutex, impl::cas_double}) {
          const summary c = summarize(ns[static_cast<int>(which)]);
          const summary x = summarize(ratio[static_cast<int>(which)]);
          std::printf("| %s | %s | %d | %s | %.1f [%.1f-%.1f] | %.2fx [%.2f-%.2f] | %.3f |\n", w.name,
                      inside ? "clock read in every call" : "caller-supplied (1 read / 64 calls)", threads,
                      impl_name(which), c.median, c.min, c.max, x.median, x.min, x.max,
                      adm_frac[static_cast<int>(which)]);
        }
      }
    }
  }
}

// ---- table 2 ---------------------------------------------------------------

double thread_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

struct pacing_result {
  double achieved_ratio = 0;  // achieved / target
  std::size_t violations = 0;
  double cpu_us_per_permit = 0;
};

pacing_result run_pacing(std::uint64_t per_second, std::uint64_t burst, std::chrono::nanoseconds spin,
                         std::chrono::duration<double> length) {
  pacing_result res;
  std::thread th([&] {
    const levee::rate r = levee::rate::per_second(per_second);
    levee::rate_limiter<> lim(r, burst);
    lim.set_spin_limit(spin);
    std::vector<sc::time_point> adm;
    adm.reserve(static_cast<std::size_t>(static_cast<double>(per_second) * length.count() * 1.1) + burst +
                16);
    const double cpu0 = thread_cpu_seconds();
    const auto t0 = sc::now();
    const auto end = t0 + std::chrono::duration_cast<sc::duration>(length);
    for (;;) {
      const auto t = lim.acquire();
      if (t >= end) break;
      adm.push_back(t);
    }
    const double elapsed = std::chrono::duration<double>(end - t0).count();
    const double cpu = thread_cpu_seconds() - cpu0;
    const double after_burst = static_cast<double>(adm.size()) - static_cast<double>(burst);
    res.achieved_ratio = after_burst / elapsed / static_cast<double>(per_second);
    res.violations = levee::check_conformance(adm, r, burst).violations;
    res.cpu_us_per_permit = cpu * 1e6 / static_cast<double>(adm.size());
  });
  th.join();
  return res;
}

// Context for table 2: how late a thread wakes from an absolute-deadline
// condition-variable sleep on this machine right now (timer slack plus
// scheduling delay when the CPUs are busy).
void wake_latency() {
  std::mutex m;
  std::condition_variable cv;
  std::vector<double> late;
  const int n = smoke ? 50 : 1000;
  auto t = sc::now();
  for (int i = 0; i < n; ++i) {
    t += 1ms;
    std::unique_lock lock(m);
    while (sc::now() < t) cv.wait_until(lock, t);
    late.push_back(std::chrono::duration<double, std::micro>(sc::now() - t).count());
  }
  std::sort(late.begin(), late.end());
  auto pct = [&](double p) {
    return late[static_cast<std::size_t>(p * static_cast<double>(late.size() - 1))];
  };
  std::printf(
      "\nOS wake-up lateness of %d absolute sleeps (1 ms apart) just before table 2: p50 %.0f us, p90 %.0f "
      "us, "
      "p99 %.0f us, max %.0f us; load average %s.\n",
      n, pct(0.5), pct(0.9), pct(0.99), late.back(), load_average().c_str());
}

void table2() {
  wake_latency();
  const auto length = smoke ? std::chrono::duration<double>(0.1) : std::chrono::duration<double>(2.0);
  const int pruns = smoke ? 1 : runs;
  std::printf("\n## 2. Real-clock pacing with acquire() (target: achieved within 1%%, 0 violations)\n\n");
  levee_bench::print_machine();
  std::printf("\n");
  std::printf(
      "One thread, %.1f s per run, median [min-max] of %d runs. achieved = (admitted - burst) / elapsed / "
      "target. CPU = pacing thread's user+sys time per admitted permit.\n\n",
      length.count(), pruns);
  std::printf(
      "| target /s | configuration | achieved / target | envelope violations (max of runs) | CPU us/permit "
      "|\n");
  std::printf("|---|---|---|---|---|\n");
  struct cfg {
    const char* name;
    std::uint64_t burst;
    std::chrono::nanoseconds spin;
  };
  const cfg cfgs[] = {{"burst 1, sleep only", 1, 0ns},
                      {"burst 1, spin up to 200 us (learned)", 1, 200us},
                      {"burst 16, sleep only", 16, 0ns},
                      {"burst = 2 ms of rate, sleep only", 0, 0ns},
                      {"burst = 20 ms of rate, sleep only", 0, 1ns}};
  for (const std::uint64_t per_s : {1000ULL, 10'000ULL, 100'000ULL}) {
    for (cfg c : cfgs) {
      std::string name = c.name;
      if (c.burst == 0) {  // sized from the rate; spin 1ns marks the 20 ms variant
        const bool big = c.spin == 1ns;
        c.burst = std::max<std::uint64_t>(2, big ? per_s / 50 : per_s / 500);
        name = "burst " + std::to_string(c.burst) + (big ? " (20 ms of rate)" : " (2 ms of rate)") +
               ", sleep only";
        c.spin = 0ns;
      }
      std::vector<double> ach, cpu;
      std::size_t viol = 0;
      for (int r = 0; r < pruns; ++r) {
        const auto res = run_pacing(per_s, c.burst, c.spin, length);
        ach.push_back(res.achieved_ratio);
        cpu.push_back(res.cpu_us_per_permit);
        viol = std::max(viol, res.violations);
      }
      const auto a = summarize(ach), u = summarize(cpu);
      std::printf("| %llu | %s | %.4f [%.4f-%.4f] | %zu | %.2f [%.2f-%.2f] |\n",
                  static_cast<unsigned long long>(per_s), name.c_str(), a.median, a.min, a.max, viol,
                  u.median, u.min, u.max);
      // The admission times are the limiter's own: the envelope is exact
      // whatever the machine's load, so it is checked in every run.
      claims.check(viol == 0, std::to_string(per_s) + "/s, " + name + ": 0 envelope violations (got " +
                                  std::to_string(viol) + ")");
      // Rate within 1%: claimed for bursts sized from the rate (2 ms is what
      // levee::leveler picks). Burst 1 sleeping cannot catch up after a late
      // wake-up (the envelope forbids it), burst 16 only at low rates: shown,
      // not claimed.
      if (!smoke && name.find(" ms of rate)") != std::string::npos)
        claims.check(std::abs(a.median - 1) <= 0.01, std::to_string(per_s) + "/s, " + name +
                                                         ": achieved within 1% (median " +
                                                         std::to_string(a.median) + ")");
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--smoke") == 0) {
      smoke = true;
    } else if (std::strcmp(argv[i], "--runs") == 0 && i + 1 < argc) {
      runs = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--table") == 0 && i + 1 < argc) {
      only_table = std::atoi(argv[++i]);
    } else {
      const bool help = std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0;
      std::fprintf(help ? stdout : stderr,
                   "usage: %s [--smoke] [--runs N] [--table 1|2]\n"
                   "  --smoke      tiny counts (CI): at most 2 runs, 0.1 s pacing runs\n"
                   "  --runs N     runs per cell (default 5)\n"
                   "  --table T    only table 1 (ns per try_acquire) or 2 (real-clock pacing)\n"
                   "Exit status 1 if a checked claim is false: 0 envelope violations in every run;\n"
                   "achieved rate within 1%% in full runs, for bursts of 2 ms and 20 ms of the rate.\n",
                   argv[0]);
      return help ? 0 : 2;
    }
  }
  if (smoke) runs = std::min(runs, 2);
  std::printf("# bench_rate_limiter, %d runs%s\n", runs, smoke ? " (SMOKE MODE: numbers meaningless)" : "");
  if (only_table != 2) table1();
  if (only_table != 1) table2();
  return claims.finish();
}
