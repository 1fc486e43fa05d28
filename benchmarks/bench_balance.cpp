// bench_balance - cost and quality of levee's balancing strategies.
//
// Tables (Markdown):
//  1. ns per pick for every strategy at N = 8, 64, 1024 backends with 1 and 2
//     threads: the bare strategy pick on a snapshot, and a full
//     levee::balancer cycle (try_pick + lease release, health/failover/slow
//     start decorators included), next to the baseline written here: a
//     mutex-protected vector with a linear least-loaded scan (pick = lock,
//     scan, ++load, unlock; release = lock, --load, unlock).
//  2. snapshot rebuild time (build()) for ring_hash and maglev (and the other
//     table-building strategies) at N = 1000.
//  3. quality per strategy: balance (max/avg of held load after 100 x N picks)
//     and disruption (fraction of 10^5 keys that change backend when 1 of 100
//     backends is removed; ideal 0.01).
// Every time cell is the median of --runs runs (default 5) with [min-max];
// each run of a cell follows a baseline run of the same N and thread count,
// and "x b" is the median over the runs of baseline ns / cell ns (higher =
// faster than the baseline).
// Options: see --help. Exit status 1 when a checked claim is false.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <levee/balance.hpp>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"

namespace {

using clk = std::chrono::steady_clock;

bool smoke = false;
bool pick_only = false;
int runs = 5;
std::vector<std::string> only;

using summary = levee_bench::stats;
levee_bench::claims claims;
using levee_bench::summarize;

std::uint32_t weight_of(std::size_t i) { return 1 + static_cast<std::uint32_t>(i % 4); }

std::size_t picks_for(std::size_t n, bool linear) {
  std::size_t p = linear ? std::max<std::size_t>(10000, 10'000'000 / n) : 1'000'000;
  return smoke ? std::max<std::size_t>(200, p / 200) : p;
}

// Runs body(thread_index) on `threads` threads started together; returns wall ns.
double parallel_ns(int threads, const std::function<void(int)>& body) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      body(t);
    });
  while (ready.load() != threads) {
  }
  const auto start = clk::now();
  go.store(true, std::memory_order_release);
  for (auto& t : ts) t.join();
  return std::chrono::duration<double, std::nano>(clk::now() - start).count();
}

// ---- the baseline --------------------------------------------------------
class mutex_least_loaded {
 public:
  explicit mutex_least_loaded(std::size_t n) : load_(n, 0) {}
  std::size_t pick() {
    std::lock_guard lock(m_);
    std::size_t best = 0;
    for (std::size_t i = 1; i < load_.size(); ++i)
      if (load_[i] < load_[best]) best = i;
    ++load_[best];
    return best;
  }
  void release(std::size_t i) {
    std::lock_guard lock(m_);
    --load_[i];
  }

 private:
  std::mutex m_;
  std::vector<std::int64_t> load_;
};

double time_baseline(std::size_t n, int threads) {
  mutex_least_loaded b(n);
  const std::size_t picks = picks_for(n, true);
  const double ns = parallel_ns(threads, [&](int) {
    for (std::size_t k = 0; k < picks; ++k) b.release(b.pick());
  });
  return ns / double(picks);
}

// ---- strategies ----------------------------------------------------------
struct setup {
  levee::backend_set set;
  levee::backend_snapshot snap;
  explicit setup(std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) set.add(i, {.weight = weight_of(i)});
    snap = set.snapshot();
  }
};

template <class S>
double time_strategy(const S& proto, std::size_t n, int threads, bool linear, bool keyed) {
  setup st(n);
  S s = proto;
  const auto table = s.build(st.snap);
  const std::size_t picks = picks_for(n, linear);
  std::atomic<std::uint64_t> sink{0};
  const double ns = parallel_ns(threads, [&](int t) {
    levee::rng r(static_cast<std::uint64_t>(t) * 7 + 1);
    std::uint64_t acc = 0;
    for (std::size_t k = 0; k < picks; ++k) {
      levee::pick_context ctx(r);
      if (keyed) ctx.key = r();  // only affinity strategies read a key; callers of the others set none
      acc += *s.pick(st.snap, table, ctx);
    }
    sink.fetch_add(acc);
  });
  if (sink.load() == 42) std::puts("");
  return ns / double(picks);
}

template <class S>
double time_balancer(const S& proto, std::size_t n, int threads, bool linear, bool keyed) {
  levee::balancer<S> b{S(proto)};
  typename levee::balancer<S>::batch all;
  for (std::size_t i = 0; i < n; ++i) all.add(i, {}, {.weight = weight_of(i)});
  b.apply(std::move(all));
  const std::size_t picks = picks_for(n, linear);
  std::atomic<std::uint64_t> sink{0};
  const double ns = parallel_ns(threads, [&](int t) {
    levee::rng r(static_cast<std::uint64_t>(t) * 13 + 5);
    std::uint64_t acc = 0;
    for (std::size_t k = 0; k < picks; ++k) {
      levee::pick_request req{.key = std::nullopt, .exclude = {}, .random = &r};
      if (keyed) req.key = r();
      auto l = b.try_pick(req);
      acc += l->id();
    }
    sink.fetch_add(acc);
  });
  if (sink.load() == 42) std::puts("");
  return ns / double(picks);
}

template <class S>
double time_build(const S& proto, std::size_t n) {
  setup st(n);
  const int reps = smoke ? 1 : 5;
  const auto start = clk::now();
  std::size_t sink = 0;
  for (int i = 0; i < reps; ++i) {
    auto t = proto.build(st.snap);
    sink += sizeof(t);
  }
  const double ns = std::chrono::duration<double, std::nano>(clk::now() - start).count() / reps;
  return sink == 0 ? 0 : ns;
}

// Balance: hold 100 x N picks (in_flight + 1 each, random keys); max/avg of
// load per unit of weight. Disruption: keys whose backend changes when one of
// 100 equal backends is removed.
template <class S>
std::pair<double, double> quality(const S& proto, bool keyed) {
  const std::size_t n = 100;
  double balance = 0;
  {
    levee::backend_set set;
    for (std::size_t i = 0; i < n; ++i) set.add(i);
    const auto snap = set.snapshot();
    S s = proto;
    const auto t = s.build(snap);
    levee::rng r(3);
    const std::size_t balls = smoke ? 10 * n : 100 * n;
    for (std::size_t k = 0; k < balls; ++k) {
      levee::pick_context ctx(r);
      ctx.key = r();
      snap[*s.pick(snap, t, ctx)].load->in_flight.fetch_add(1);
    }
    std::int64_t m = 0;
    for (const auto& e : snap) m = std::max(m, e.load->load());
    balance = double(m) / (double(balls) / double(n));
  }
  if (!keyed) return {balance, -1};
  const std::size_t keys = smoke ? 10000 : 100000;
  auto assign = [&](levee::backend_set& set) {
    const auto snap = set.snapshot();
    S s = proto;
    const auto t = s.build(snap);
    levee::rng r(5);
    std::vector<levee::backend_id> out(keys);
    for (std::size_t k = 0; k < keys; ++k) {
      levee::pick_context ctx(r);
      ctx.key = k;
      out[k] = snap[*s.pick(snap, t, ctx)].id;
    }
    return out;
  };
  levee::backend_set set;
  // Appending/removing the highest id keeps jump_hash's bucket numbering.
  for (std::size_t i = 0; i < n; ++i) set.add(i);
  const auto before = assign(set);
  set.remove(n - 1);
  const auto after = assign(set);
  std::size_t moved = 0;
  for (std::size_t k = 0; k < keys; ++k) moved += before[k] != after[k];
  return {balance, double(moved) / double(keys)};
}

// Every baseline run, by "n/threads" (for the baseline row of the tables).
std::map<std::string, std::vector<double>> base_all;

struct row {
  std::string name;
  std::string complexity;  // of the bare pick, as the header documents it
  bool exempt;             // O(n) by design (least_loaded, rendezvous)
  bool keyed;
  std::map<std::string, std::vector<double>> cells;
  std::map<std::string, std::vector<double>> ratios;  // baseline run / cell run, per run
  std::vector<double> build_ns;
  std::pair<double, double> q{0, -1};
  std::function<void(row&)> measure;
  std::function<void(row&)> measure_build;
};

template <class S>
row make_row(const char* name, const char* complexity, S proto, bool exempt, bool keyed, bool builds_table) {
  row r;
  r.name = name;
  r.complexity = complexity;
  r.exempt = exempt;
  r.keyed = keyed;
  // Every cell is timed right after a baseline run of the same size and
  // thread count, and its ratio is taken against that run: a change in the
  // machine's speed between cells (two shared vCPUs) then cancels out.
  r.measure = [proto, exempt, keyed](row& self) {
    for (std::size_t n : {8u, 64u, 1024u})
      for (int th : {1, 2}) {
        const std::string k = std::to_string(n) + "/" + std::to_string(th);
        const double bs = time_baseline(n, th);
        const double ps = time_strategy(proto, n, th, exempt, keyed);
        self.cells["s" + k].push_back(ps);
        self.ratios["s" + k].push_back(bs / ps);
        base_all[k].push_back(bs);
        if (!pick_only) {
          const double bb = time_baseline(n, th);
          const double pb = time_balancer(proto, n, th, exempt, keyed);
          self.cells["b" + k].push_back(pb);
          self.ratios["b" + k].push_back(bb / pb);
          base_all[k].push_back(bb);
        }
      }
  };
  if (pick_only) return r;
  if (builds_table)
    r.measure_build = [proto](row& self) { self.build_ns.push_back(time_build(proto, 1000)); };
  r.q = quality(proto, keyed);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--smoke") == 0)
      smoke = true;
    else if (std::strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
      runs = std::max(1, std::atoi(argv[++i]));
    else if (std::strcmp(argv[i], "--only") == 0 && i + 1 < argc)
      only.emplace_back(argv[++i]);
    else if (std::strcmp(argv[i], "--pick-only") == 0)
      pick_only = true;
    else {
      const bool help = std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0;
      std::fprintf(help ? stdout : stderr,
                   "usage: %s [--smoke] [--runs N] [--only NAME]... [--pick-only]\n"
                   "  --smoke      tiny counts (CI): at most 2 runs; the speed bar is not checked\n"
                   "  --runs N     runs per cell (default 5)\n"
                   "  --only NAME  only strategies whose name contains NAME (repeatable)\n"
                   "  --pick-only  skip balancer cycles, build timings and quality (for profiling)\n"
                   "Exit status 1 if a checked claim is false: in full runs, every O(1) strategy's\n"
                   "pick at N = 64, 1 thread, >= 5x the baseline (median of same-run ratios).\n",
                   argv[0]);
      return help ? 0 : 2;
    }
  }
  // Rows are made (and their quality measured) only when selected.
  auto wanted = [](const char* name) {
    if (only.empty()) return true;
    return std::any_of(only.begin(), only.end(),
                       [&](const std::string& o) { return std::strstr(name, o.c_str()) != nullptr; });
  };
  if (smoke) runs = std::min(runs, 2);

  std::vector<row> rows;
  if (wanted("round_robin"))
    rows.push_back(
        make_row("round_robin", "O(1) (per-thread cursor)", levee::round_robin(1), false, false, false));
  if (wanted("weighted_round_robin"))
    rows.push_back(make_row("weighted_round_robin", "O(1) (precomputed smooth period)",
                            levee::weighted_round_robin(1), false, false, true));
  if (wanted("random"))
    rows.push_back(make_row("random", "O(1) expected", levee::random{}, false, false, false));
  if (wanted("weighted_random"))
    rows.push_back(
        make_row("weighted_random", "O(1) (alias table)", levee::weighted_random{}, false, false, true));
  if (wanted("least_loaded"))
    rows.push_back(make_row("least_loaded", "O(n) scan", levee::least_loaded{}, true, false, false));
  if (wanted("power_of_two"))
    rows.push_back(make_row("power_of_two", "O(1) expected (two alias draws)", levee::power_of_two{}, false,
                            false, true));
  if (wanted("peak_ewma"))
    rows.push_back(make_row("peak_ewma", "O(1) expected (two alias draws, clock-free cost ratio)",
                            levee::peak_ewma{}, false, false, true));
  if (wanted("ring_hash"))
    rows.push_back(make_row("ring_hash", "O(1) expected (16-byte slot per bucket)", levee::ring_hash{}, false,
                            true, true));
  if (wanted("maglev"))
    rows.push_back(make_row("maglev", "O(1) (lookup table, M >= 100 N)", levee::maglev{}, false, true, true));
  if (wanted("rendezvous"))
    rows.push_back(make_row("rendezvous", "O(n) scan", levee::rendezvous{}, true, true, false));
  if (wanted("jump_hash"))
    rows.push_back(
        make_row("jump_hash", "O(1) expected (JumpBackHash)", levee::jump_hash{}, false, true, false));
  if (wanted("bounded_load<ring_hash>"))
    rows.push_back(make_row("bounded_load<ring_hash>", "O(1) expected (bound inlined into ring_hash)",
                            levee::bounded_load<levee::ring_hash>(levee::ring_hash{}, 1.25), false, true,
                            true));

  for (int run = 0; run < runs; ++run) {
    for (auto& r : rows) {
      r.measure(r);
      if (r.measure_build) r.measure_build(r);
    }
  }

  const unsigned hw = std::thread::hardware_concurrency();
  std::printf(
      "## bench_balance\n\n%d runs per cell%s; %u hardware threads. Cells: median [min-max] ns per pick "
      "(per thread); x b = median over the runs of (baseline ns / cell ns), each cell timed right after its "
      "own baseline run of the same N and thread count.\n",
      runs, smoke ? " (--smoke: tiny counts, numbers not meaningful)" : "", hw);
  levee_bench::print_machine();

  for (int th : {1, 2}) {
    std::printf("\n### ns per pick, %d thread%s\n\n", th, th == 1 ? "" : "s");
    std::printf(
        "| strategy | N=8 pick | N=8 balancer | N=64 pick | N=64 balancer | N=1024 pick | N=1024 balancer "
        "|\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    std::printf("| *baseline: mutex + linear least-loaded* |");
    for (std::size_t n : {8u, 64u, 1024u}) {
      const auto s = summarize(base_all[std::to_string(n) + "/" + std::to_string(th)]);
      std::printf(" %.1f [%.1f-%.1f] | – |", s.median, s.min, s.max);
    }
    std::printf("\n");
    for (auto& r : rows) {
      std::printf("| %s |", r.name.c_str());
      for (std::size_t n : {8u, 64u, 1024u}) {
        const std::string k = std::to_string(n) + "/" + std::to_string(th);
        for (const char* lvl : {"s", "b"}) {
          const auto s = summarize(r.cells[lvl + k]);
          if (!s.valid)
            std::printf(" – |");
          else
            std::printf(" %.1f [%.1f-%.1f] x%.1f |", s.median, s.min, s.max,
                        summarize(r.ratios[lvl + k]).median);
        }
      }
      std::printf("\n");
    }
  }

  std::printf("\n### The bar: O(1) strategies at N = 64, 1 thread, >= 5x faster than the baseline\n\n");
  std::printf(
      "| strategy | pick complexity | pick x baseline: median [min-max] of same-run ratios | balancer cycle "
      "x baseline | pick N=1024 / N=8 | verdict (pick, median) |\n"
      "|---|---|---|---|---|---|\n");
  for (auto& r : rows) {
    const auto pr = summarize(r.ratios["s64/1"]);
    const auto cr = summarize(r.ratios["b64/1"]);
    const double growth = summarize(r.cells["s1024/1"]).median / summarize(r.cells["s8/1"]).median;
    char cycle[32] = "–";
    if (cr.valid) std::snprintf(cycle, sizeof cycle, "x%.1f", cr.median);
    std::printf("| %s | %s | x%.1f [%.1f-%.1f] | %s | %.2f | %s |\n", r.name.c_str(), r.complexity.c_str(),
                pr.median, pr.min, pr.max, cycle, growth,
                r.exempt ? "exempt (O(n) by design)" : (pr.median >= 5 ? "meets" : "MISSES"));
    if (!r.exempt && !smoke)
      claims.check(pr.median >= 5, r.name + ": pick at N = 64, 1 thread, >= 5x the baseline (x" +
                                       std::to_string(pr.median) + ")");
  }

  if (pick_only) return claims.finish();
  std::printf("\n### Snapshot rebuild (build()) at N = 1000\n\n| strategy | ms |\n|---|---|\n");
  for (auto& r : rows)
    if (!r.build_ns.empty()) {
      const auto s = summarize(r.build_ns);
      std::printf("| %s | %.3f [%.3f-%.3f] |\n", r.name.c_str(), s.median / 1e6, s.min / 1e6, s.max / 1e6);
    }

  std::printf(
      "\n### Quality (N = 100, equal weights)\n\n| strategy | balance max/avg after 100N held picks | "
      "keys moved when 1 of 100 is removed (ideal 0.0100) |\n|---|---|---|\n");
  for (auto& r : rows) {
    if (r.q.second < 0)
      std::printf("| %s | %.3f | – (no key affinity) |\n", r.name.c_str(), r.q.first);
    else
      std::printf("| %s | %.3f | %.4f |\n", r.name.c_str(), r.q.first, r.q.second);
  }
  return claims.finish();
}
