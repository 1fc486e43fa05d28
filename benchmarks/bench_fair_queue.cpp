// bench_fair_queue - per-item cost of levee::fair_queue against the FIFO it
// would replace (levee::mpmc_queue), measured in the same run.
//
// Table 1 (one thread): ns per item for push + pop, in batches of 64 (push
// 64, pop 64), 8-byte items, capacity 1024, `now` read once per batch and
// passed in (as the leveler does). Pops one at a time (try_pop) or the 64
// with one call (try_pop_bulk, as the leveler's batching worker does):
//   fair/1     levee::fair_queue, one flow, one band (CoDel on, nothing shed)
//   fair/1000  levee::fair_queue, 1,000 flows (item i in flow i % 1000), one band
//   fair/1000+ the same with max_queued_per_flow set (striped per-flow counters on push)
// against levee::mpmc_queue<std::uint64_t> (fifo) with the same pop mode.
// Each fair cell is measured between two fifo cells (A-B-A): its ratio is
// its ns / the mean of the two fifo cells around it, in the same run.
// Cells: median [min-max] of --runs runs; ratios: median of the same-run ratios.
// Table 2 (threads): 2 producers and 2 consumers moving N items through the
// queue (try_ operations, yield when full/empty; consumers take one item per
// call, then up to 16 with the bulk operations): wall ns per item, fifo vs
// fair/1000, same A-B-A scheme.
// Options: --smoke (tiny counts, 1 run), --runs N (default 5).
#include <sys/utsname.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <levee/fair_queue.hpp>
#include <levee/mpmc_queue.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"

namespace {

using sc = std::chrono::steady_clock;
bool smoke = false;
int runs = 5;

std::atomic<std::uint64_t> sink_total{0};

struct no_sink {
  void operator()(std::uint64_t&&, const levee::fair_item_info<sc::time_point>&) const noexcept {
    sink_total.fetch_add(1, std::memory_order_relaxed);
  }
};

constexpr std::size_t batch = 64;

struct adder {
  std::uint64_t* sum;
  adder& operator*() noexcept { return *this; }
  adder& operator++() noexcept { return *this; }
  adder operator++(int) noexcept { return *this; }
  adder& operator=(std::uint64_t v) noexcept {
    *sum += v;
    return *this;
  }
  using difference_type = std::ptrdiff_t;
};

double run_fifo(std::uint64_t items, bool bulk) {
  levee::mpmc_queue<std::uint64_t> q(1024);
  std::uint64_t sum = 0;
  const auto t0 = sc::now();
  for (std::uint64_t done = 0; done < items; done += batch) {
    for (std::size_t i = 0; i < batch; ++i)
      if (!q.try_push(done + i)) std::abort();
    if (bulk) {
      if (q.try_pop_bulk(adder{&sum}, batch) != batch) std::abort();
      continue;
    }
    for (std::size_t i = 0; i < batch; ++i) {
      std::uint64_t v = 0;
      if (!q.try_pop(v)) std::abort();
      sum += v;
    }
  }
  const double ns = std::chrono::duration<double, std::nano>(sc::now() - t0).count();
  if (sum == 42) std::printf(" ");
  return ns / static_cast<double>(items);
}

double run_fair(std::uint64_t items, std::uint64_t flows, bool per_flow_limit, bool bulk) {
  levee::fair_queue_options o;
  o.capacity = 1024;
  if (per_flow_limit) o.max_queued_per_flow = 1024;
  levee::fair_queue<std::uint64_t> q(o);
  std::uint64_t sum = 0;
  const auto t0 = sc::now();
  for (std::uint64_t done = 0; done < items; done += batch) {
    const auto now = sc::now();
    for (std::size_t i = 0; i < batch; ++i)
      if (q.try_push(done + i, (done + i) % flows, 0, 1, now) != levee::fair_push_status::ok) std::abort();
    if (bulk) {
      const auto r = q.try_pop_bulk(
          now, batch, [&](std::uint64_t&& v, const auto&) noexcept { sum += v; }, no_sink{});
      if (r.count != batch) std::abort();
      continue;
    }
    for (std::size_t i = 0; i < batch; ++i) {
      auto r = q.try_pop(now, no_sink{});
      if (!r) std::abort();
      sum += *r.value;
    }
  }
  const double ns = std::chrono::duration<double, std::nano>(sc::now() - t0).count();
  if (sum == 42) std::printf(" ");
  return ns / static_cast<double>(items);
}

// 2 producers, 2 consumers; wall ns per item.
template <class Push, class Pop>
double run_threads(std::uint64_t items, Push push, Pop pop) {
  std::atomic<std::uint64_t> consumed{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  const std::uint64_t per = items / 2;
  for (int p = 0; p < 2; ++p)
    ts.emplace_back([&, p] {
      while (!go.load()) std::this_thread::yield();
      for (std::uint64_t i = 0; i < per; ++i)
        while (!push(static_cast<std::uint64_t>(p) * per + i)) std::this_thread::yield();
    });
  for (int c = 0; c < 2; ++c)
    ts.emplace_back([&] {
      while (!go.load()) std::this_thread::yield();
      while (consumed.load(std::memory_order_relaxed) < 2 * per) {
        if (const std::uint64_t n = pop(); n != 0)
          consumed.fetch_add(n, std::memory_order_relaxed);
        else
          std::this_thread::yield();
      }
    });
  const auto t0 = sc::now();
  go.store(true);
  for (auto& t : ts) t.join();
  const double ns = std::chrono::duration<double, std::nano>(sc::now() - t0).count();
  return ns / static_cast<double>(2 * per);
}

// pop: items taken by one consumer call (0 = none).
double threads_fifo(std::uint64_t items, bool bulk) {
  levee::mpmc_queue<std::uint64_t> q(1024);
  return run_threads(
      items, [&](std::uint64_t v) { return q.try_push(v); },
      [&]() -> std::uint64_t {
        std::uint64_t sum = 0;
        if (bulk) return q.try_pop_bulk(adder{&sum}, 16);
        return q.try_pop(sum) ? 1 : 0;
      });
}

double threads_fair(std::uint64_t items, bool bulk) {
  levee::fair_queue_options o;
  o.capacity = 1024;
  levee::fair_queue<std::uint64_t> q(o);
  return run_threads(
      items,
      [&](std::uint64_t v) { return q.try_push(std::uint64_t{v}, v % 1000) == levee::fair_push_status::ok; },
      [&]() -> std::uint64_t {
        if (bulk)
          return q
              .try_pop_bulk(
                  sc::now(), 16, [](std::uint64_t&&, const auto&) noexcept {}, no_sink{})
              .count;
        return q.try_pop(no_sink{}).status == levee::fair_pop_status::ok ? 1 : 0;
      });
}

void print_cell(const char* name, const levee_bench::stats& s, const levee_bench::stats* ratio) {
  std::printf("| %-10s | %7.1f [%.1f-%.1f] |", name, s.median, s.min, s.max);
  if (ratio != nullptr)
    std::printf(" %.2fx [%.2f-%.2f] |\n", ratio->median, ratio->min, ratio->max);
  else
    std::printf(" - |\n");
}

void describe_machine() {
  std::string model = "unknown CPU";
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  utsname u{};
  uname(&u);
  std::printf("Machine: %s, %u hardware threads, Linux %s; compiler %s; %d runs per cell%s.\n", model.c_str(),
              std::thread::hardware_concurrency(), u.release, __VERSION__, runs,
              smoke ? " (SMOKE MODE)" : "");
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--smoke") {
      smoke = true;
    } else if (a == "--runs" && i + 1 < argc) {
      runs = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--smoke] [--runs N]\n", argv[0]);
      return 2;
    }
  }
  if (smoke && runs == 5) runs = 1;
  std::printf("## levee::fair_queue benchmark\n\n");
  describe_machine();
  const std::uint64_t items = smoke ? 64 * 100 : 64 * 100000;

  struct cell {
    const char* name;
    std::uint64_t flows;
    bool limit;
    bool bulk;
    std::vector<double> ns, ratio;
  };
  std::vector<cell> cells = {
      {"fair/1", 1, false, false, {}, {}},       {"fair/1000", 1000, false, false, {}, {}},
      {"fair/1000+", 1000, true, false, {}, {}}, {"fair/1", 1, false, true, {}, {}},
      {"fair/1000", 1000, false, true, {}, {}},  {"fair/1000+", 1000, true, true, {}, {}},
  };
  std::vector<double> fifo[2];
  for (int run = 0; run < runs; ++run) {
    for (auto& c : cells) {
      const double a0 = run_fifo(items, c.bulk);
      const double b = run_fair(items, c.flows, c.limit, c.bulk);
      const double a1 = run_fifo(items, c.bulk);
      fifo[c.bulk ? 1 : 0].insert(fifo[c.bulk ? 1 : 0].end(), {a0, a1});
      c.ns.push_back(b);
      c.ratio.push_back(b / ((a0 + a1) / 2));
    }
  }
  for (int bulk = 0; bulk < 2; ++bulk) {
    std::printf("\n### One thread: push 64 + pop 64 (%s), ns per item\n\n",
                bulk ? "try_pop_bulk" : "try_pop");
    std::printf("| queue | ns/item median [min-max] | x fifo (same-run ratio) |\n|---|---|---|\n");
    print_cell("fifo", levee_bench::summarize(fifo[bulk]), nullptr);
    for (const auto& c : cells) {
      if (c.bulk != (bulk == 1)) continue;
      const auto r = levee_bench::summarize(c.ratio);
      print_cell(c.name, levee_bench::summarize(c.ns), &r);
    }
  }

  const std::uint64_t titems = smoke ? 2000 : 2000000;
  for (int bulk = 0; bulk < 2; ++bulk) {
    std::vector<double> tf, tq, tr;
    for (int run = 0; run < runs; ++run) {
      const double a0 = threads_fifo(titems, bulk == 1);
      const double b = threads_fair(titems, bulk == 1);
      const double a1 = threads_fifo(titems, bulk == 1);
      tf.insert(tf.end(), {a0, a1});
      tq.push_back(b);
      tr.push_back(b / ((a0 + a1) / 2));
    }
    std::printf("\n### 2 producers + 2 consumers (%s): wall ns per item\n\n",
                bulk ? "consumers take up to 16 per call" : "one per call");
    std::printf("| queue | ns/item median [min-max] | x fifo (same-run ratio) |\n|---|---|---|\n");
    const auto s_tr = levee_bench::summarize(tr);
    print_cell("fifo", levee_bench::summarize(tf), nullptr);
    print_cell("fair/1000", levee_bench::summarize(tq), &s_tr);
  }
  if (sink_total.load() != 0)
    std::printf("\n(shed during the runs: %llu)\n", static_cast<unsigned long long>(sink_total.load()));
  return 0;
}
