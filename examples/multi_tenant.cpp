// multi_tenant: one leveler shared by four tenants. Tenant A floods (a burst
// of thousands of jobs on top of its steady load) while B, C and D trickle.
// The same scenario runs twice in virtual time (levee::manual_clock,
// simulation mode: exact, reproducible, milliseconds of real time): first
// with the default FIFO ingress, then with the fair one (options.fairness:
// one flow per tenant, weighted deficit round robin). It prints each
// tenant's dwell time, writes an SVG chart of dwell time and dispatches per
// tenant over time for both runs, and checks the claims of "Sharing one
// leveler between tenants" in the README. Exit status 1 when a claim does
// not hold, 2 on bad flags.
//
//   multi_tenant                 # writes ./multi_tenant.svg
//   multi_tenant --out PATH      # the chart elsewhere
//   multi_tenant --smoke         # a shorter scenario for CI (chart in the temp directory)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <levee/leveler.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "support/args.hpp"
#include "support/format.hpp"
#include "support/svg_chart.hpp"

namespace {

using namespace std::chrono_literals;
using example_support::fmt;
using example_support::num;
using example_support::usage_error;
using std::chrono::nanoseconds;
using tp = levee::manual_clock::time_point;

struct config {
  double rate = 1000;          // jobs/s the downstream takes
  double duration = 16;        // seconds simulated
  double flood_at = 2;         // when A's burst arrives, s
  std::uint64_t flood = 6000;  // A's burst, jobs
  double a_steady = 300;       // A's steady load, jobs/s
  double trickle = 50;         // B, C and D each, jobs/s
  std::string out;             // chart path ("" = default)
  bool smoke = false;
};

constexpr int tenants = 4;  // A, B, C, D
const char* const names[tenants] = {"A (floods)", "B", "C", "D"};
const char* const colors[tenants] = {"#d93025", "#1a73e8", "#188038", "#f29900"};

struct job {
  int tenant = 0;
  tp submitted{};
};

struct dispatch {
  int tenant;
  std::int64_t at_ns;     // dispatch time
  std::int64_t dwell_ns;  // dispatch - submission
};

struct run_result {
  std::vector<dispatch> log;
  std::uint64_t submitted[tenants] = {};
  std::uint64_t dead = 0;
};

// The arrivals of the scenario, in time order: every tenant on its own grid,
// plus A's burst.
struct arrival {
  std::int64_t at_ns;
  int tenant;
};
std::vector<arrival> arrivals(const config& c) {
  std::vector<arrival> v;
  const auto end = static_cast<std::int64_t>(c.duration * 1e9);
  auto grid = [&](int tenant, double per_second, std::int64_t offset) {
    const auto step = static_cast<std::int64_t>(1e9 / per_second);
    for (std::int64_t t = offset; t < end; t += step) v.push_back({t, tenant});
  };
  grid(0, c.a_steady, 0);
  for (int k = 1; k < tenants; ++k) grid(k, c.trickle, k * 1'000'000);  // staggered by 1 ms
  const auto flood_ns = static_cast<std::int64_t>(c.flood_at * 1e9);
  for (std::uint64_t i = 0; i < c.flood; ++i) v.push_back({flood_ns, 0});
  std::stable_sort(v.begin(), v.end(), [](const arrival& a, const arrival& b) { return a.at_ns < b.at_ns; });
  return v;
}

run_result run(const config& c, bool fair) {
  using lev_t = levee::leveler<job, levee::round_robin, levee::manual_clock>;
  levee::manual_clock clk;
  run_result r;
  lev_t::options o;
  o.workers = 0;
  o.capacity = 100'000;
  o.overflow = levee::overflow_policy::reject;
  o.rate = levee::rate::per_second(static_cast<std::uint64_t>(c.rate));
  if (fair) {
    levee::fairness_options f;
    f.bands[0].exempt = true;  // this scenario shows fairness; CoDel would also shed A's burst
    o.fairness = f;
  }
  o.dead_letter = [&r](job&&, levee::dead_letter_reason, std::exception_ptr) { ++r.dead; };
  lev_t lev(o, clk);
  lev.add_backend([&r, clk](job& j) {
    const auto now = clk.now().time_since_epoch().count();
    r.log.push_back({j.tenant, now, now - j.submitted.time_since_epoch().count()});
  });
  for (const arrival& a : arrivals(c)) {
    if (tp(nanoseconds(a.at_ns)) > clk.now()) lev.run_until(tp(nanoseconds(a.at_ns)));
    auto s = lev.try_submit(job{a.tenant, clk.now()}, {.flow = static_cast<std::uint64_t>(a.tenant)});
    if (s.accepted()) ++r.submitted[a.tenant];
  }
  lev.drain();
  return r;
}

nanoseconds quantile(std::vector<std::int64_t> v, double q) {
  if (v.empty()) return nanoseconds{0};
  std::sort(v.begin(), v.end());
  const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
  return nanoseconds(v[std::clamp<std::size_t>(rank, 1, v.size()) - 1]);
}

std::vector<std::int64_t> dwells(const run_result& r, int tenant) {
  std::vector<std::int64_t> v;
  for (const auto& d : r.log)
    if (d.tenant == tenant) v.push_back(d.dwell_ns);
  return v;
}

// Per tenant, in bins of `bin` seconds: dispatches per second, and the
// largest dwell of the jobs dispatched in the bin (ms).
struct binned {
  example_support::series rate[tenants];
  example_support::series dwell[tenants];
};
binned bin_log(const run_result& r, double bin, double duration) {
  binned b;
  const auto n = static_cast<std::size_t>(std::ceil(duration / bin));
  for (int k = 0; k < tenants; ++k) {
    std::vector<double> count(n, 0.0), worst(n, 0.0);
    for (const auto& d : r.log) {
      if (d.tenant != k) continue;
      const auto i = static_cast<std::size_t>(static_cast<double>(d.at_ns) * 1e-9 / bin);
      if (i >= n) continue;
      count[i] += 1;
      worst[i] = std::max(worst[i], static_cast<double>(d.dwell_ns) / 1e6);
    }
    for (std::size_t i = 0; i < n; ++i) {
      const double t = (static_cast<double>(i) + 0.5) * bin;
      b.rate[k].t.push_back(t);
      b.rate[k].value.push_back(count[i] / bin);
      if (count[i] > 0) {
        b.dwell[k].t.push_back(t);
        b.dwell[k].value.push_back(worst[i]);
      }
    }
  }
  return b;
}

// Two panels of one run: dispatches per tenant, and dwell per tenant.
std::vector<std::string> panels(const config& c, const run_result& r, const std::string& name, double end) {
  const binned b = bin_log(r, 0.25, end);
  example_support::time_chart share;
  share.title = name + ": dispatches per tenant";
  share.subtitle = "A's burst of " + num(static_cast<double>(c.flood)) +
                   " jobs arrives at t = " + num(c.flood_at) + " s; the leveler dispatches " + num(c.rate) +
                   " jobs/s in total";
  share.duration = end;
  share.left_label = "dispatches per second";
  share.area_axis_label = "";
  for (int k = 0; k < tenants; ++k) share.lines.push_back({names[k], colors[k], 2.0, b.rate[k]});
  share.limit_line = example_support::time_chart::limit{c.rate, 0.2, "rate limit " + num(c.rate) + "/s"};
  share.footer = "multi_tenant: simulation on levee::manual_clock, 250 ms bins";

  example_support::time_chart dwell;
  dwell.title = name + ": dwell time per tenant";
  std::string sub = "p99 dwell:";
  for (int k = 0; k < tenants; ++k)
    sub += std::string(" ") + (k == 0 ? "A" : names[k]) + " " +
           fmt("%.0f ms", static_cast<double>(quantile(dwells(r, k), 0.99).count()) / 1e6);
  dwell.subtitle = sub;
  dwell.duration = end;
  dwell.left_label = "largest dwell in the bin (ms)";
  dwell.area_axis_label = "";
  for (int k = 0; k < tenants; ++k) dwell.lines.push_back({names[k], colors[k], 2.0, b.dwell[k]});
  dwell.footer = "dwell = dispatch time - submission time";
  return {example_support::render_svg(share), example_support::render_svg(dwell)};
}

// Four 1000 x 560 charts in a 2 x 2 grid: rows FIFO, fair; columns
// dispatches, dwell.
std::string grid_svg(const std::vector<std::string>& charts) {
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 2000 1120\" width=\"2000\" "
       "height=\"1120\">\n";
  for (std::size_t i = 0; i < charts.size(); ++i) {
    const double x = static_cast<double>(i % 2) * 1000.0, y = static_cast<double>(i / 2) * 560.0;
    s << "<svg x=\"" << x << "\" y=\"" << y << "\"" << charts[i].substr(4);
  }
  s << "</svg>\n";
  return s.str();
}

std::optional<config> parse_flags(int argc, char** argv) {
  config c;
  example_support::arg_reader args(argc, argv);
  while (auto flag = args.next()) {
    const std::string& f = *flag;
    if (f == "--help" || f == "-h") return std::nullopt;
    if (f == "--smoke") {
      c.smoke = true;
      c.duration = 8;
      c.flood_at = 1;
      c.flood = 2500;
    } else if (f == "--out") {
      c.out = args.value();
      if (c.out.empty()) throw usage_error("--out: empty path");
    } else {
      throw usage_error("unknown flag '" + f + "'");
    }
  }
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<config> cfg;
  try {
    cfg = parse_flags(argc, argv);
  } catch (const usage_error& e) {
    std::cerr << "multi_tenant: " << e.what() << "\n(try --help)\n";
    return 2;
  }
  if (!cfg) {
    std::cout << "usage: multi_tenant [--smoke] [--out PATH]\n";
    return 0;
  }
  const config& c = *cfg;
  const run_result fifo = run(c, false);
  const run_result fair = run(c, true);

  struct check {
    bool ok;
    std::string what;
  };
  std::vector<check> checks;
  const double interval_ms = 1000.0 / c.rate;
  std::printf("multi_tenant: rate %.0f/s; A: %.0f/s + %llu jobs at t = %.0f s; B, C, D: %.0f/s each\n\n",
              c.rate, c.a_steady, static_cast<unsigned long long>(c.flood), c.flood_at, c.trickle);
  std::printf("%-12s %14s %14s %14s %14s\n", "tenant", "FIFO p50", "FIFO p99", "fair p50", "fair p99");
  double fifo_trickle_p99 = 0, fair_trickle_p99 = 0;
  for (int k = 0; k < tenants; ++k) {
    auto ms = [](nanoseconds d) { return static_cast<double>(d.count()) / 1e6; };
    const auto f50 = quantile(dwells(fifo, k), 0.5), f99 = quantile(dwells(fifo, k), 0.99);
    const auto g50 = quantile(dwells(fair, k), 0.5), g99 = quantile(dwells(fair, k), 0.99);
    std::printf("%-12s %11.1f ms %11.1f ms %11.1f ms %11.1f ms\n", names[k], ms(f50), ms(f99), ms(g50),
                ms(g99));
    if (k != 0) {
      fifo_trickle_p99 = std::max(fifo_trickle_p99, ms(f99));
      fair_trickle_p99 = std::max(fair_trickle_p99, ms(g99));
    }
  }
  checks.push_back({fair_trickle_p99 <= 2 * interval_ms,
                    "fair: every trickling tenant's p99 dwell <= 2 emission intervals (" +
                        fmt("%.1f ms", fair_trickle_p99) + ")"});
  checks.push_back({fifo_trickle_p99 >= 1000, "FIFO: the trickling tenants wait behind the flood (p99 " +
                                                  fmt("%.0f ms", fifo_trickle_p99) + " >= 1 s)"});
  for (const run_result* r : {&fifo, &fair}) {
    std::uint64_t handled[tenants] = {};
    for (const auto& d : r->log) ++handled[d.tenant];
    bool all = r->dead == 0;
    for (int k = 0; k < tenants; ++k) all = all && handled[k] == r->submitted[k];
    checks.push_back(
        {all, std::string(r == &fifo ? "FIFO" : "fair") + ": every job of every tenant ran, none lost"});
  }
  // Work conserving: the fair queue reorders, it does not slow the flood
  // down. The backlog is gone when every job that arrived has been
  // dispatched; at the rate r with steady load s that is the burst / (r - s)
  // after it arrived, with either discipline.
  const std::vector<arrival> arr = arrivals(c);
  auto drained_at = [&](const run_result& r) {
    const auto flood_ns = static_cast<std::int64_t>(c.flood_at * 1e9);
    std::size_t arrived = 0;
    for (std::size_t i = 0; i < r.log.size(); ++i) {
      const std::int64_t t = r.log[i].at_ns;
      while (arrived < arr.size() && arr[arrived].at_ns <= t) ++arrived;
      if (t > flood_ns && i + 1 == arrived) return static_cast<double>(t) / 1e9;
    }
    return -1.0;
  };
  const double steady = c.a_steady + (tenants - 1) * c.trickle;
  const double predicted = c.flood_at + static_cast<double>(c.flood) / (c.rate - steady);
  const double fifo_drained = drained_at(fifo), fair_drained = drained_at(fair);
  checks.push_back(
      {std::fabs(fair_drained - fifo_drained) <= 0.001 && std::fabs(fair_drained - predicted) <= 0.05,
       "fair: the flood's backlog is gone when the rate says, as with FIFO (" + fmt("%.3f s", fair_drained) +
           ", FIFO " + fmt("%.3f s", fifo_drained) + ", formula " + fmt("%.3f s", predicted) + ")"});
  const std::int64_t fifo_end = fifo.log.back().at_ns, fair_end = fair.log.back().at_ns;
  // During the flood's backlog, B, C and D keep their own rate with the fair
  // queue; with FIFO they get (almost) nothing until A's burst is through.
  const auto from = static_cast<std::int64_t>((c.flood_at + 0.5) * 1e9);
  const auto to = static_cast<std::int64_t>((c.flood_at + 2.5) * 1e9);
  auto trickle_rate = [&](const run_result& r) {
    double n = 0;
    for (const auto& d : r.log)
      if (d.tenant != 0 && d.at_ns >= from && d.at_ns < to) n += 1;
    return n / 2.0 / (tenants - 1);
  };
  const double fair_rate = trickle_rate(fair), fifo_rate = trickle_rate(fifo);
  checks.push_back({std::fabs(fair_rate - c.trickle) <= 0.1 * c.trickle,
                    "fair: during the flood each trickling tenant is dispatched at its own rate (" +
                        fmt("%.1f/s", fair_rate) + " of " + num(c.trickle) + "/s)"});
  checks.push_back(
      {fifo_rate <= 0.1 * c.trickle,
       "FIFO: during the flood the trickling tenants are starved (" + fmt("%.1f/s", fifo_rate) + ")"});

  std::string path = c.out;
  if (path.empty())
    path = c.smoke ? (std::filesystem::temp_directory_path() / "multi_tenant_smoke.svg").string()
                   : "multi_tenant.svg";
  const double end = std::ceil(static_cast<double>(std::max(fifo_end, fair_end)) / 1e9 + 0.5);
  std::vector<std::string> charts;
  for (const auto& [r, name] : {std::pair{&fifo, "FIFO"}, std::pair{&fair, "fair"}})
    for (auto& s : panels(c, *r, name, end)) charts.push_back(std::move(s));
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << grid_svg(charts);
    f.close();
    const bool written = static_cast<bool>(f);
    checks.push_back({written, "the chart was written to " + path});
  }

  bool all = true;
  std::printf("\nchecks\n");
  for (const auto& ck : checks) {
    std::printf("  [%s] %s\n", ck.ok ? " ok " : "FAIL", ck.what.c_str());
    all = all && ck.ok;
  }
  std::printf("%s\n", all ? "all claims hold" : "SOME CLAIMS DO NOT HOLD");
  return all ? 0 : 1;
}
