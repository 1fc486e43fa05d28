// spike_demo: a downstream that accepts r jobs/s, three weighted backends
// behind it, and a traffic spike in front of it. levee::leveler absorbs the
// spike in its bounded queue and drains it at exactly r, in real time, with
// worker threads. A live view shows the queue filling and draining; a summary
// compares what was measured with the formulas of load leveling; an SVG chart
// of the run is written at the end. The same scenario is then replayed in
// virtual time (levee::manual_clock, simulation mode), where the formulas
// hold exactly and are checked tightly.
//
//   spike_demo                         # the README's demo, ~13 s
//   spike_demo --rate 2000 --spike 5   # see --help for every flag
//
// Scenario (all rates in jobs/s): base load `base` for `lead` seconds, then
// arrivals at `spike * rate` for `spike-seconds`, then base load again until
// the backlog has drained, plus a short tail. With burst b the formulas are
//   peak backlog  B = (spike*r - r) * S - b
//   drain time    B / (r - base)
// The program exits non-zero when a claim does not hold.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <levee/balance.hpp>
#include <levee/clock.hpp>
#include <levee/conformance.hpp>
#include <levee/leveler.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/args.hpp"
#include "support/format.hpp"
#include "support/svg_chart.hpp"
#include "support/term_view.hpp"

namespace {

using steady = std::chrono::steady_clock;
using example_support::fmt;
using example_support::num;
using example_support::usage_error;
using std::chrono::nanoseconds;

// ---------------------------------------------------------------- flags ----

struct config {
  double rate = 1000.0;        // r: what the downstream sustains, jobs/s
  double base = 500.0;         // base load before and after the spike, jobs/s
  double spike = 4.0;          // arrivals during the spike = spike * rate
  double spike_seconds = 1.5;  // S
  double lead_seconds = 1.0;   // base load before the spike
  double tail_seconds = 1.0;   // base load after the formula's drain time
  std::size_t burst = 0;       // 0: rate / 100 (10 ms worth), at least 1
  std::size_t workers = 4;
  std::string strategy = "weighted_round_robin";
  std::string out;  // empty: spike_demo.svg in the current directory
  bool smoke = false;
  bool live = true;  // --no-live: plain lines even on a terminal
};

constexpr const char* strategy_names[] = {
    "round_robin",  "weighted_round_robin", "random",    "weighted_random",
    "least_loaded", "power_of_two",         "peak_ewma", "ring_hash",
    "maglev",       "rendezvous",           "jump_hash"};

void print_usage(std::ostream& os) {
  os << "usage: spike_demo [flags]\n"
        "\n"
        "A downstream limited to --rate jobs/s, three backends weighted 5:3:2, base load\n"
        "--base jobs/s and a spike of --spike x rate for --spike-seconds. levee::leveler\n"
        "queues the spike and drains it at the rate limit; a live view, a summary and an\n"
        "SVG chart show what happened.\n"
        "\n"
        "  --rate R            rate limit of the downstream, jobs/s        (default 1000)\n"
        "  --base L            base arrival rate, jobs/s, must be < R      (default 500)\n"
        "  --spike K           arrivals during the spike are K x R, K > 1  (default 4)\n"
        "  --spike-seconds S   length of the spike, seconds                (default 1.5)\n"
        "  --burst B           burst allowance of the rate gate, jobs      (default R/100)\n"
        "  --workers N         worker threads of the leveler               (default 4)\n"
        "  --strategy NAME     balancing strategy                          (default weighted_round_robin)\n"
        "                      one of:";
  for (const char* n : strategy_names) os << ' ' << n;
  os << "\n"
        "  --out PATH          where to write the SVG chart                (default ./spike_demo.svg)\n"
        "  --no-live           periodic plain lines even on a terminal\n"
        "  --smoke             a short scenario (~3 s) for CI\n"
        "  --help              this text\n"
        "\n"
        "Exit status: 0 when every claim of the summary holds, 1 when one does not, 2 on bad flags.\n";
}

// Returns nullopt when --help was given.
std::optional<config> parse_flags(int argc, char** argv) {
  using example_support::parse_number;
  config c;
  bool burst_given = false;
  example_support::arg_reader args(argc, argv);
  // --smoke first, since it changes the defaults the other flags override.
  if (args.has("--smoke")) {
    c.smoke = true;
    c.rate = 2000;
    c.base = 1000;
    c.spike = 3;
    c.spike_seconds = 0.4;
    c.lead_seconds = 0.3;
    c.tail_seconds = 0.3;
  }
  while (auto flag = args.next()) {
    const std::string& f = *flag;
    if (f == "--help" || f == "-h") return std::nullopt;
    if (f == "--smoke") continue;
    if (f == "--no-live") {
      c.live = false;
    } else if (f == "--rate") {
      c.rate = parse_number(f, args.value(), 0.0, 1e6);
    } else if (f == "--base") {
      c.base = parse_number(f, args.value(), -1e-300, 1e6);
    } else if (f == "--spike") {
      c.spike = parse_number(f, args.value(), 1.0, 1000.0);
    } else if (f == "--spike-seconds") {
      c.spike_seconds = parse_number(f, args.value(), 0.0, 60.0);
    } else if (f == "--burst") {
      c.burst = static_cast<std::size_t>(std::llround(parse_number(f, args.value(), 0.5, 1e6)));
      burst_given = true;
    } else if (f == "--workers") {
      c.workers = static_cast<std::size_t>(std::llround(parse_number(f, args.value(), 0.5, 64.0)));
    } else if (f == "--strategy") {
      c.strategy = args.value();
      if (std::find(std::begin(strategy_names), std::end(strategy_names), c.strategy) ==
          std::end(strategy_names))
        throw usage_error("--strategy: unknown strategy '" + c.strategy + "'");
    } else if (f == "--out") {
      c.out = args.value();
      if (c.out.empty()) throw usage_error("--out: empty path");
    } else {
      throw usage_error("unknown flag '" + f + "'");
    }
  }
  if (!burst_given) c.burst = std::max<std::size_t>(1, static_cast<std::size_t>(c.rate / 100.0));
  if (c.base >= c.rate) {
    std::ostringstream os;
    os << "--base " << c.base << " must be below --rate " << c.rate
       << ": a queue fed faster than it is drained never empties (the 'trailing behind' case)";
    throw usage_error(os.str());
  }
  if (c.spike * c.rate > 2e5)
    throw usage_error("--spike x --rate above 200000 jobs/s is beyond this demo's producer");
  const double backlog =
      std::max(0.0, (c.spike * c.rate - c.rate) * c.spike_seconds - static_cast<double>(c.burst));
  const double runtime = c.lead_seconds + c.spike_seconds + backlog / (c.rate - c.base) + c.tail_seconds;
  if (runtime > 600.0) {
    std::ostringstream os;
    os << "this scenario would run for " << std::lround(runtime)
       << " s (the backlog drains at rate - base = " << (c.rate - c.base) << " jobs/s); keep it under 600 s";
    throw usage_error(os.str());
  }
  return c;
}

// ------------------------------------------------------------- scenario ----

struct plan {
  double spike_begin = 0, spike_end = 0;  // seconds since start
  double backlog = 0;                     // B of the formula
  double drain = 0;                       // B / (r - base)
  double end = 0;                         // the producer stops here
  std::size_t total_jobs = 0;             // arrivals over [0, end)
  std::size_t capacity = 0;

  // Cumulative arrivals at t seconds: the integral of the arrival rate.
  [[nodiscard]] double arrivals_at(const config& c, double t) const {
    t = std::clamp(t, 0.0, end);
    const double before = std::min(t, spike_begin) * c.base;
    const double during = std::clamp(t - spike_begin, 0.0, spike_end - spike_begin) * c.spike * c.rate;
    const double after = std::max(0.0, t - spike_end) * c.base;
    return before + during + after;
  }
};

plan make_plan(const config& c) {
  plan p;
  p.spike_begin = c.lead_seconds;
  p.spike_end = c.lead_seconds + c.spike_seconds;
  p.backlog = std::max(0.0, (c.spike * c.rate - c.rate) * c.spike_seconds - static_cast<double>(c.burst));
  p.drain = p.backlog / (c.rate - c.base);
  p.end = p.spike_end + p.drain + c.tail_seconds;
  p.total_jobs = static_cast<std::size_t>(std::floor(p.arrivals_at(c, p.end)));
  std::size_t cap = 1024;
  while (static_cast<double>(cap) < 1.5 * p.backlog + 1024) cap *= 2;
  p.capacity = cap;
  return p;
}

struct backend_spec {
  const char* name;
  std::uint32_t weight;
  std::chrono::microseconds latency;  // simulated service time
};
constexpr backend_spec backends[] = {
    {"alpha", 5, std::chrono::microseconds(150)},
    {"beta", 3, std::chrono::microseconds(250)},
    {"gamma", 2, std::chrono::microseconds(400)},
};
constexpr std::size_t n_backends = std::size(backends);

struct job {
  std::uint64_t id = 0;
};

// Everything the threads record. Written by the producer and the handlers,
// read by the live view (counters) and after the run (the logs).
struct recorder {
  explicit recorder(std::size_t n) : arrival_ns(n, -1), dispatch_ns(n, -1) {}
  std::vector<std::int64_t> arrival_ns;   // by job id, written by the producer
  std::vector<std::int64_t> dispatch_ns;  // by dispatch order, written by handlers
  std::atomic<std::uint64_t> submitted{0};
  std::atomic<std::uint64_t> rejected{0};
  std::atomic<std::uint64_t> started{0};
  std::atomic<std::uint64_t> finished{0};
  std::atomic<std::uint64_t> per_backend[n_backends]{};
  std::atomic<std::int64_t> peak_depth{0};
  std::atomic<std::int64_t> drained_at_ns{-1};  // first time after the spike the queue was empty
};

// ------------------------------------------------------------ live view ----

struct live_sample {
  double t = 0;
  double arrived = 0, started = 0;
};

// The live view: redrawn in place on a terminal, one plain line per second
// (per half second in --smoke) otherwise.
class live_view {
 public:
  live_view(const config& c, const plan& p, example_support::terminal t) : c_(c), p_(p), t_(t) {}

  // eta: the leveler's own drain ETA (metrics().drain_eta), trailing: its
  // trailing_behind flag (arrivals keep pace with or outpace the drain).
  void update(const live_sample& s, std::int64_t depth, std::int64_t peak, std::optional<double> eta,
              bool trailing) {
    using example_support::bar;
    history_.push_back(s);
    // Rates over the trailing half second.
    std::size_t k = history_.size() - 1;
    while (k > 0 && s.t - history_[k - 1].t <= 0.5) --k;
    const live_sample& o = history_[k == history_.size() - 1 && k > 0 ? k - 1 : k];
    const double dt = std::max(1e-9, s.t - o.t);
    const double arr = (s.arrived - o.arrived) / dt, disp = (s.started - o.started) / dt;
    const double progress = s.started / static_cast<double>(std::max<std::size_t>(1, p_.total_jobs));
    const char* phase = s.t < p_.spike_begin ? "base load"
                        : s.t < p_.spike_end ? "SPIKE"
                        : depth > 1          ? "draining"
                                             : "steady";
    const std::string eta_text = trailing             ? "   trailing behind: arrivals outpace the limit"
                                 : eta && *eta > 0.05 ? fmt("   drain ETA %.1f s", *eta)
                                                      : std::string();
    const double depth_scale = std::max({p_.backlog, static_cast<double>(peak), 1.0});
    const double rate_scale = c_.spike * c_.rate;

    if (t_.tty) {
      const std::string hi = t_.bold(), off = t_.reset(), org = t_.orange(), blu = t_.cyan(),
                        mag = t_.magenta();
      frame_.draw({
          hi + "levee spike demo" + off + "   t = " + fmt("%5.1f s", s.t) + "   phase: " + hi + phase + off,
          "  arrivals " + org + bar(arr / rate_scale, 40, true) + off + fmt(" %7.0f/s", arr),
          "  dispatch " + blu + bar(disp / rate_scale, 40, true) + off + fmt(" %7.0f/s", disp) +
              fmt("   limit %.0f/s", c_.rate),
          "  queue    " + mag + bar(static_cast<double>(depth) / depth_scale, 40, true) + off +
              fmt(" %7.0f", static_cast<double>(depth)) + fmt("   peak %.0f", static_cast<double>(peak)) +
              eta_text,
          "  progress " + bar(progress, 40, true) + fmt(" %5.1f%%", 100.0 * progress) +
              fmt("   %.0f", s.started) + fmt(" / %.0f jobs", static_cast<double>(p_.total_jobs)),
          "",
      });
    } else {
      const double every = c_.smoke ? 0.5 : 1.0;
      if (next_plain_ == 0.0) next_plain_ = every;
      if (s.t + 1e-9 < next_plain_) return;
      next_plain_ += every;
      std::printf(
          "[%5.1f s] %-9s arrivals %6.0f/s  dispatch %6.0f/s (limit %.0f/s)  queue %6lld %s  done "
          "%3.0f%%%s\n",
          s.t, phase, arr, disp, c_.rate, static_cast<long long>(depth),
          bar(static_cast<double>(depth) / depth_scale, 20, false).c_str(), 100.0 * progress,
          eta_text.c_str());
      std::fflush(stdout);
    }
  }

 private:
  const config& c_;
  const plan& p_;
  example_support::terminal t_;
  example_support::live_frame frame_;
  std::vector<live_sample> history_;
  double next_plain_ = 0.0;
};

// ------------------------------------------------------------ the chart ----

// The chart of a run: arrival and dispatch rate, queue depth, the spike as a
// band, the rate limit, the peak backlog and the moment the queue was empty.
example_support::time_chart make_chart(const config& c, const plan& p,
                                       const std::vector<std::int64_t>& arrivals,
                                       const std::vector<std::int64_t>& dispatches, double peak,
                                       double peak_t, double drained_t) {
  using example_support::time_chart;
  time_chart ch;
  ch.duration = p.end;
  const double bin = p.end > 6 ? 0.1 : 0.05;
  ch.lines.push_back({"arrival rate", "#e8710a", 2.0, example_support::rate_series(arrivals, bin, p.end)});
  ch.lines.push_back({"dispatch rate (to the backends)", "#1a73e8", 2.4,
                      example_support::rate_series(dispatches, bin, p.end)});
  ch.area = example_support::backlog_series(arrivals, dispatches, p.end);
  ch.area_label = "queue depth (right axis)";
  ch.area_max_hint = p.backlog;
  ch.highlight = time_chart::band{p.spike_begin, p.spike_end, "spike " + num(c.spike) + "\u00d7"};
  ch.limit_line = time_chart::limit{c.rate, p.spike_end, "rate limit " + num(c.rate) + "/s"};
  ch.peak = time_chart::point{
      peak_t, peak,
      "peak backlog " + num(std::round(peak)) + " jobs (formula " + num(std::round(p.backlog)) + ")"};
  if (drained_t >= 0)
    ch.vline = time_chart::marker{
        drained_t, "queue empty again",
        "after " + fmt("%.1f", drained_t - p.spike_end) + " s (formula " + fmt("%.1f", p.drain) + " s)"};
  return ch;
}

// ------------------------------------------------------------- the run ----

// Largest number of timestamps (sorted, ns) inside any half-open window of w ns.
std::size_t max_in_window(const std::vector<std::int64_t>& sorted_ns, std::int64_t w) {
  std::size_t best = 0, lo = 0;
  for (std::size_t hi = 0; hi < sorted_ns.size(); ++hi) {
    while (sorted_ns[hi] - sorted_ns[lo] >= w) ++lo;
    best = std::max(best, hi - lo + 1);
  }
  return best;
}

// Exact peak of (arrived by t) - (dispatched by t) over all event times.
std::pair<std::size_t, double> exact_peak(const std::vector<std::int64_t>& arr,
                                          const std::vector<std::int64_t>& disp) {
  std::size_t ia = 0, id = 0, best = 0;
  double when = 0;
  while (ia < arr.size()) {
    if (id < disp.size() && disp[id] < arr[ia]) {
      ++id;
      continue;
    }
    ++ia;
    if (ia - std::min(ia, id) > best) {
      best = ia - std::min(ia, id);
      when = static_cast<double>(arr[ia - 1]) * 1e-9;
    }
  }
  return {best, when};
}

// The first dispatch at or after the spike's end that left nothing behind it:
// the queue was empty again. Dispatch k (0-based, in time order) empties the
// queue when no more than k + 1 jobs had arrived before it. Seconds since
// start, or -1 if the queue never emptied. Both logs sorted, ns since start.
double drained_time(const std::vector<std::int64_t>& arrivals, const std::vector<std::int64_t>& dispatches,
                    double spike_end) {
  const auto spike_end_ns = static_cast<std::int64_t>(spike_end * 1e9);
  for (std::size_t k = 0; k < dispatches.size(); ++k) {
    if (dispatches[k] < spike_end_ns) continue;
    const auto arrived = static_cast<std::size_t>(
        std::lower_bound(arrivals.begin(), arrivals.end(), dispatches[k]) - arrivals.begin());
    if (arrived <= k + 1) return static_cast<double>(dispatches[k]) * 1e-9;
  }
  return -1.0;
}

// Dispatches per second over [from, to] seconds: (n - 1) / (last - first) of
// the dispatches inside, or 0 with fewer than two.
double rate_between(const std::vector<std::int64_t>& dispatches, double from, double to) {
  const auto lo =
      std::lower_bound(dispatches.begin(), dispatches.end(), static_cast<std::int64_t>(from * 1e9));
  const auto hi = std::upper_bound(dispatches.begin(), dispatches.end(), static_cast<std::int64_t>(to * 1e9));
  if (hi - lo < 2) return 0.0;
  return static_cast<double>(hi - lo - 1) / (static_cast<double>(*(hi - 1) - *lo) * 1e-9);
}

// While the queue holds a backlog, dispatches are paced by the rate gate
// alone: from a little after the spike starts (its burst spent) to a little
// before the queue is empty again.
std::pair<double, double> backlog_window(const config& c, const plan& p, double drained_t) {
  const double from = p.spike_begin + 2.0 * static_cast<double>(c.burst) / c.rate + 0.01;
  const double to = (drained_t >= 0 ? drained_t : p.end) - 0.01;
  return {from, to};
}

struct check {
  std::string what;
  bool ok;
};

// The same scenario in virtual time: simulation mode (no worker threads) on
// levee::manual_clock, arrivals in the same 1 ms ticks as the real producer.
// Nothing here depends on the machine's speed or load, so the formulas are
// checked to within a tick, and the drain rate to within 0.1% of the limit.
template <class Strategy>
void replay_in_virtual_time(const config& c, const plan& p, const std::string& strategy_name,
                            std::vector<check>& checks) {
  using leveler_t = levee::leveler<job, Strategy, levee::manual_clock>;
  levee::manual_clock clk;
  const auto t0 = clk.now();
  typename leveler_t::options o;
  o.workers = 0;  // simulation mode
  o.capacity = p.capacity;
  o.rate = levee::rate::per_second(c.rate);
  o.burst = c.burst;
  std::vector<std::int64_t> arrivals, dispatches;
  arrivals.reserve(p.total_jobs);
  dispatches.reserve(p.total_jobs);
  std::uint64_t per_backend[n_backends] = {};
  leveler_t lev(o, clk);
  for (std::size_t i = 0; i < n_backends; ++i)
    (void)lev.add_backend(
        [&, i](job&) {
          dispatches.push_back((clk.now() - t0).count());
          ++per_backend[i];
        },
        levee::backend_options{backends[i].weight, 0, 0});

  std::uint64_t next = 0, refused = 0;
  for (std::int64_t tick = 0;; ++tick) {
    const auto now = t0 + std::chrono::milliseconds(tick);
    lev.run_until(now);
    const double t = static_cast<double>(tick) * 1e-3;
    const auto target =
        std::min<std::uint64_t>(p.total_jobs, static_cast<std::uint64_t>(p.arrivals_at(c, t)));
    for (; next < target; ++next) {
      arrivals.push_back((now - t0).count());
      if (!lev.try_submit(job{next}, {.key = next})) ++refused;
    }
    if (next >= p.total_jobs) break;
  }
  lev.drain();  // in simulation mode: runs the clock from event to event until nothing is outstanding
  const levee::metrics_snapshot m = lev.metrics();

  const auto [peak, peak_t] = exact_peak(arrivals, dispatches);
  const double drained_t = drained_time(arrivals, dispatches, p.spike_end);
  const double drain_time = drained_t >= 0 ? drained_t - p.spike_end : -1.0;
  const auto [from, to] = backlog_window(c, p, drained_t);
  const double rate = rate_between(dispatches, from, to);
  const double tick_arrivals = c.spike * c.rate * 1e-3;  // spike arrivals per 1 ms tick
  const double peak_tol = 2.0 * tick_arrivals + 2.0;
  const double drain_tol = 0.002 + 2.0 / c.rate;

  std::printf("\nvirtual time (the same scenario in simulation mode on levee::manual_clock, %.2f s of it)\n",
              static_cast<double>((clk.now() - t0).count()) * 1e-9);
  std::printf("  jobs          %s submitted, %s refused, %s succeeded, %s dead-lettered\n",
              num(static_cast<double>(next)).c_str(), num(static_cast<double>(refused)).c_str(),
              num(static_cast<double>(m.succeeded)).c_str(),
              num(static_cast<double>(m.dead_lettered.total())).c_str());
  checks.push_back({"virtual time: every job accepted and succeeded",
                    refused == 0 && m.succeeded == next && m.dead_lettered.total() == 0});
  std::printf("  drain rate    %.2f/s while the backlog lasted (%.2f s to %.2f s); limit %s/s  (%+.3f%%)\n",
              rate, from, to, num(c.rate).c_str(), 100.0 * (rate / c.rate - 1.0));
  checks.push_back({"virtual time: the backlog drained at the rate limit (within 0.1%)",
                    std::fabs(rate / c.rate - 1.0) <= 0.001});
  std::printf("  peak depth    %s jobs at t = %.3f s; formula %s  (tolerance %s: two ticks of arrivals)\n",
              num(static_cast<double>(peak)).c_str(), peak_t, num(std::round(p.backlog)).c_str(),
              num(std::round(peak_tol)).c_str());
  checks.push_back({"virtual time: peak depth matches the formula",
                    std::fabs(static_cast<double>(peak) - p.backlog) <= peak_tol});
  if (drain_time >= 0)
    std::printf("  drain time    %.4f s after the spike; formula %.4f s  (%+.4f s, tolerance %.4f s)\n",
                drain_time, p.drain, drain_time - p.drain, drain_tol);
  else
    std::printf("  drain time    the queue never emptied after the spike\n");
  checks.push_back({"virtual time: drain time matches the formula",
                    drain_time >= 0 && std::fabs(drain_time - p.drain) <= drain_tol});
  using tp = levee::manual_clock::time_point;
  std::vector<tp> times;
  times.reserve(dispatches.size());
  for (std::int64_t ns : dispatches) times.emplace_back(nanoseconds(ns));
  const levee::rate r = levee::rate::per_second(c.rate);
  const levee::conformance_report strict = levee::check_conformance(times, r, c.burst);
  const bool tight = c.burst < 2 || !levee::check_conformance(times, r, c.burst - 1).ok;
  std::printf("  envelope      check_conformance, b = %zu: %zu violations; with b - 1: %s\n", c.burst,
              strict.violations, tight ? "violated (the burst was used)" : "no violation");
  checks.push_back(
      {"virtual time: no window exceeded b + r*w, and the full burst was used", strict.ok && tight});
  double wsum = 0;
  for (const auto& b : backends) wsum += static_cast<double>(b.weight);
  bool shares_ok = true;
  std::printf("  backends     ");
  for (std::size_t i = 0; i < n_backends; ++i) {
    const double share =
        static_cast<double>(per_backend[i]) / static_cast<double>(std::max<std::uint64_t>(1, m.succeeded));
    std::printf(" %s %.1f%%", backends[i].name, 100.0 * share);
    shares_ok = shares_ok && std::fabs(share - static_cast<double>(backends[i].weight) / wsum) <=
                                 (strategy_name == "weighted_random" ? 0.03 : 0.01);
  }
  std::printf("\n");
  if (strategy_name == "weighted_round_robin" || strategy_name == "weighted_random")
    checks.push_back({"virtual time: backend shares follow the weights 5:3:2", shares_ok});
}

template <class Strategy>
int run_demo(const config& c, const std::string& strategy_name) {
  const plan p = make_plan(c);
  const example_support::terminal tm = example_support::detect_terminal(c.live);
  recorder rec(p.total_jobs);

  std::printf(
      "levee spike demo: a downstream limited to %s jobs/s (burst %zu) behind 3 backends weighted 5:3:2,\n"
      "strategy %s, %zu worker threads, queue capacity %zu.\n"
      "Scenario: base load %s jobs/s, a %sx spike (%s jobs/s) for %s s at t = %s s.\n"
      "Formulas: peak backlog B = (%s - %s) x %s - %zu = %s jobs; drain time B / (r - base) = %.2f s.\n"
      "Runs for about %.1f s.\n\n",
      num(c.rate).c_str(), c.burst, strategy_name.c_str(), c.workers, p.capacity, num(c.base).c_str(),
      num(c.spike).c_str(), num(c.spike * c.rate).c_str(), num(c.spike_seconds).c_str(),
      num(c.lead_seconds).c_str(), num(c.spike * c.rate).c_str(), num(c.rate).c_str(),
      num(c.spike_seconds).c_str(), c.burst, num(std::round(p.backlog)).c_str(), p.drain, p.end);
  std::fflush(stdout);

  using leveler_t = levee::leveler<job, Strategy>;
  typename leveler_t::options o;
  o.capacity = p.capacity;
  o.overflow = levee::overflow_policy::block;
  o.rate = levee::rate::per_second(c.rate);
  o.burst = c.burst;
  o.workers = c.workers;
  std::atomic<std::uint64_t> dead_lettered{0};
  o.dead_letter = [&dead_lettered](job&&, levee::dead_letter_reason, std::exception_ptr) {
    dead_lettered.fetch_add(1, std::memory_order_acq_rel);
  };

  const auto t0 = steady::now();
  const auto since = [t0](steady::time_point t) {
    return std::chrono::duration_cast<nanoseconds>(t - t0).count();
  };
  const auto spike_end_ns = static_cast<std::int64_t>(p.spike_end * 1e9);

  leveler_t lev(o);
  for (std::size_t i = 0; i < n_backends; ++i) {
    lev.add_backend(
        [&rec, &since, i, spike_end_ns](job&) {
          const std::int64_t now = since(steady::now());
          const std::uint64_t k = rec.started.fetch_add(1, std::memory_order_acq_rel);
          if (k < rec.dispatch_ns.size()) rec.dispatch_ns[k] = now;
          rec.per_backend[i].fetch_add(1, std::memory_order_relaxed);
          if (now >= spike_end_ns && rec.drained_at_ns.load(std::memory_order_relaxed) < 0) {
            const std::uint64_t accepted =
                rec.submitted.load(std::memory_order_acquire) - rec.rejected.load(std::memory_order_acquire);
            if (accepted <= k + 1) {  // nothing left behind this job: the backlog is gone
              std::int64_t none = -1;
              rec.drained_at_ns.compare_exchange_strong(none, now, std::memory_order_acq_rel);
            }
          }
          std::this_thread::sleep_for(backends[i].latency);  // the backend's work
          rec.finished.fetch_add(1, std::memory_order_release);
        },
        levee::backend_options{backends[i].weight, 0, 0});
  }

  std::thread producer([&] {
    std::uint64_t next = 0;
    auto tick = t0;
    for (;;) {
      const auto now = steady::now();
      const double t = static_cast<double>(since(now)) * 1e-9;
      const auto target =
          std::min<std::uint64_t>(p.total_jobs, static_cast<std::uint64_t>(p.arrivals_at(c, t)));
      const std::int64_t now_ns = since(now);
      for (; next < target; ++next) {
        rec.arrival_ns[next] = now_ns;
        rec.submitted.fetch_add(1, std::memory_order_release);
        // The key matters to hashing strategies only.
        auto r = lev.submit(job{next}, {.key = next});
        if (!r) rec.rejected.fetch_add(1, std::memory_order_release);
      }
      if (next >= p.total_jobs) return;
      tick += std::chrono::milliseconds(1);
      std::this_thread::sleep_until(tick);
    }
  });

  // The live view runs on this thread until every accepted job has finished.
  live_view view(c, p, tm);
  const double give_up = p.end * 1.5 + 5.0;
  bool timed_out = false;
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(tm.tty ? 80 : 50));
    const double t = static_cast<double>(since(steady::now())) * 1e-9;
    const auto submitted = rec.submitted.load(std::memory_order_acquire);
    const auto rejected = rec.rejected.load(std::memory_order_acquire);
    const auto started = rec.started.load(std::memory_order_acquire);
    const auto depth = static_cast<std::int64_t>(submitted - rejected) - static_cast<std::int64_t>(started);
    std::int64_t peak = rec.peak_depth.load(std::memory_order_relaxed);
    if (depth > peak) rec.peak_depth.store(peak = depth, std::memory_order_relaxed);
    const levee::metrics_snapshot m = lev.metrics();
    std::optional<double> eta;
    if (m.drain_eta) eta = std::chrono::duration<double>(*m.drain_eta).count();
    view.update({t, static_cast<double>(submitted), static_cast<double>(started)},
                std::max<std::int64_t>(0, depth), peak, eta, m.trailing_behind);
    const auto done =
        rec.finished.load(std::memory_order_acquire) + dead_lettered.load(std::memory_order_acquire);
    if (submitted == p.total_jobs && done >= submitted - rejected) break;
    if (t > give_up) {
      timed_out = true;
      break;
    }
  }
  if (timed_out) lev.stop();  // unblocks the producer; the rest goes to the dead-letter sink as cancelled
  producer.join();
  if (!timed_out) lev.drain();
  const double elapsed = static_cast<double>(since(steady::now())) * 1e-9;
  const levee::metrics_snapshot final_metrics = lev.metrics();

  // ---------------------------------------------------------- summary ----
  std::vector<std::int64_t> arrivals = rec.arrival_ns;
  std::vector<std::int64_t> dispatches(
      rec.dispatch_ns.begin(), rec.dispatch_ns.begin() + static_cast<std::ptrdiff_t>(std::min<std::uint64_t>(
                                                             rec.started.load(), rec.dispatch_ns.size())));
  std::sort(dispatches.begin(), dispatches.end());
  const auto submitted = rec.submitted.load();
  const auto rejected = rec.rejected.load();
  const auto accepted = submitted - rejected;
  const auto started = rec.started.load();
  const auto dead = dead_lettered.load();
  const auto [peak, peak_t] = exact_peak(arrivals, dispatches);
  const double drained_t =
      rec.drained_at_ns.load() >= 0 ? static_cast<double>(rec.drained_at_ns.load()) * 1e-9 : -1.0;
  const double drain_time = drained_t >= 0 ? drained_t - p.spike_end : -1.0;

  std::vector<check> checks;
  auto add = [&](bool ok, std::string what) { checks.push_back({std::move(what), ok}); };
  std::printf("\nsummary (%.1f s)\n", elapsed);
  std::printf("  accepted      %s of %s submitted, %s rejected (capacity %zu >= formula backlog)\n",
              num(static_cast<double>(accepted)).c_str(), num(static_cast<double>(submitted)).c_str(),
              num(static_cast<double>(rejected)).c_str(), p.capacity);
  add(rejected == 0 && submitted == p.total_jobs, "every submitted job was accepted");
  std::printf(
      "  dispatched    %s, dead-lettered %s, lost %lld\n", num(static_cast<double>(started)).c_str(),
      num(static_cast<double>(dead)).c_str(),
      static_cast<long long>(accepted) - static_cast<long long>(started) - static_cast<long long>(dead));
  add(!timed_out && started == accepted && dead == 0, "every accepted job was dispatched, none lost");
  std::printf(
      "  leveler       metrics(): accepted %s, succeeded %s, dead-lettered %s; queue dwell p50 %.2f s, "
      "p99 %.2f s, max %.2f s (B / r = %.2f s)\n",
      num(static_cast<double>(final_metrics.accepted)).c_str(),
      num(static_cast<double>(final_metrics.succeeded)).c_str(),
      num(static_cast<double>(final_metrics.dead_lettered.total())).c_str(),
      std::chrono::duration<double>(final_metrics.dwell_time.p50()).count(),
      std::chrono::duration<double>(final_metrics.dwell_time.p99()).count(),
      std::chrono::duration<double>(final_metrics.dwell_time.max()).count(), p.backlog / c.rate);
  add(final_metrics.accepted == accepted && final_metrics.succeeded == started,
      "the leveler's own counters agree with the handlers'");

  const double peak_tol = 0.05 * p.backlog + 2.0 * static_cast<double>(c.burst) + 0.005 * c.spike * c.rate;
  std::printf(
      "  peak depth    %s jobs at t = %.2f s; formula (K*r - r) * S - b = %s  (%+.1f%%, tolerance %s)\n",
      num(static_cast<double>(peak)).c_str(), peak_t, num(std::round(p.backlog)).c_str(),
      p.backlog > 0 ? 100.0 * (static_cast<double>(peak) - p.backlog) / p.backlog : 0.0,
      num(std::round(peak_tol)).c_str());
  add(std::fabs(static_cast<double>(peak) - p.backlog) <= peak_tol, "peak depth matches the formula");

  const double drain_tol = 0.05 * p.drain + 0.15;
  if (drain_time >= 0)
    std::printf(
        "  drain time    %.2f s after the spike; formula B / (r - base) = %.2f s  (%+.2f s, tolerance %.2f "
        "s)\n",
        drain_time, p.drain, drain_time - p.drain, drain_tol);
  else
    std::printf("  drain time    the queue never emptied after the spike\n");
  if (c.smoke && drain_time > p.drain + drain_tol) {
    // The smoke run is CI's: on a shared 2-vCPU machine its workers can be
    // starved for a second, which makes the drain late but breaks no
    // promise. Draining early (faster than the rate) or never still fails.
    std::printf(
        "  (late drain: reported, not failed, in --smoke; the workers did not get the CPU to keep the "
        "rate)\n");
    add(true, "drain time not earlier than the formula (smoke: lateness tolerated)");
  } else {
    add(drain_time >= 0 && std::fabs(drain_time - p.drain) <= drain_tol, "drain time matches the formula");
  }

  {
    const auto [from, to] = backlog_window(c, p, drained_t);
    const double rate = rate_between(dispatches, from, to);
    std::printf("  drain rate    %.1f/s while the backlog lasted (%.2f s to %.2f s); limit %s/s  (%+.2f%%)\n",
                rate, from, to, num(c.rate).c_str(), 100.0 * (rate / c.rate - 1.0));
    // Reported, not checked: in real time a starved machine drains slower
    // (no promise broken) and the envelope below already bounds it from
    // above; the virtual-time replay checks the pace exactly.
    (void)rate;
  }

  // Max window rate seen by the backends, against the envelope b + r*w.
  for (double w : {0.01, 0.1, 1.0}) {
    const std::size_t m = max_in_window(dispatches, static_cast<std::int64_t>(w * 1e9));
    const double limit = static_cast<double>(c.burst) + c.rate * w;
    std::printf("  max window    %5.0f ms: %s jobs (%s/s); envelope b + r*w = %s\n", w * 1000,
                num(static_cast<double>(m)).c_str(), num(static_cast<double>(m) / w).c_str(),
                num(limit).c_str());
  }

  // The envelope, checked with levee::check_conformance on the times the
  // handlers started. Those readings trail the rate gate's decisions by a
  // scheduling delay that varies (threads get preempted), which can squeeze
  // two dispatches closer together than the gate let them go: the claim is
  // therefore checked with one timer slack of jitter allowed, 2 ms worth of
  // extra permits; the strict count is shown as well.
  {
    using tp = std::chrono::time_point<steady, nanoseconds>;
    std::vector<tp> times;
    times.reserve(dispatches.size());
    for (std::int64_t ns : dispatches) times.emplace_back(nanoseconds(ns));
    const levee::rate r = levee::rate::per_second(c.rate);
    const auto slack = static_cast<std::uint64_t>(std::ceil(c.rate * 0.002));
    const levee::conformance_report strict = levee::check_conformance(times, r, c.burst);
    const levee::conformance_report jitter = levee::check_conformance(times, r, c.burst + slack);
    std::printf(
        "  envelope      check_conformance, b = %zu: %zu violations (strict, on handler start times); "
        "b + %llu (2 ms of timer slack): %zu violations\n",
        c.burst, strict.violations, static_cast<unsigned long long>(slack), jitter.violations);
    if (!strict.ok)
      std::printf("                worst strict window: %zu dispatches in %.3f ms where %llu are allowed\n",
                  strict.worst.count, static_cast<double>(strict.worst.length.count()) / 1e6,
                  static_cast<unsigned long long>(strict.worst.allowed));
    add(jitter.ok, "no window exceeded b + r*w (allowing one timer slack of jitter)");
  }

  std::printf("  backends     ");
  double wsum = 0;
  for (const auto& b : backends) wsum += static_cast<double>(b.weight);
  const bool weighted = strategy_name == "weighted_round_robin" || strategy_name == "weighted_random";
  bool shares_ok = true;
  for (std::size_t i = 0; i < n_backends; ++i) {
    const double share = static_cast<double>(rec.per_backend[i].load()) /
                         static_cast<double>(std::max<std::uint64_t>(1, started));
    const double want = static_cast<double>(backends[i].weight) / wsum;
    std::printf(" %s (w=%u) %.1f%%", backends[i].name, backends[i].weight, 100.0 * share);
    shares_ok = shares_ok && std::fabs(share - want) <= (strategy_name == "weighted_random" ? 0.03 : 0.01);
  }
  std::printf("\n");
  if (weighted) add(shares_ok, "backend shares follow the weights 5:3:2");

  // The chart.
  std::string path = c.out;
  if (path.empty())
    path = c.smoke ? (std::filesystem::temp_directory_path() / "spike_demo_smoke.svg").string()
                   : "spike_demo.svg";
  example_support::time_chart chart =
      make_chart(c, p, arrivals, dispatches, static_cast<double>(peak), peak_t, drained_t);
  chart.title = "levee: a " + num(c.spike) + "\u00d7 traffic spike, leveled to " + num(c.rate) + " jobs/s";
  chart.subtitle = "peak backlog " + num(static_cast<double>(peak)) + " jobs, drained in " +
                   fmt("%.1f s", drain_time) + " (formula " + fmt("%.1f s", p.drain) + "), " +
                   num(static_cast<double>(started)) + " of " + num(static_cast<double>(accepted)) +
                   " jobs dispatched, 0 lost";
  chart.footer = "spike_demo: 3 backends weighted 5:3:2 (" + strategy_name + "), burst " +
                 std::to_string(c.burst) + ", " + std::to_string(c.workers) + " worker threads, base load " +
                 num(c.base) + " jobs/s; measured in real time, rates in " + (p.end > 6 ? "100" : "50") +
                 " ms bins";
  try {
    example_support::write_svg(path, chart);
    std::printf("  chart         written to %s\n", std::filesystem::absolute(path).string().c_str());
  } catch (const std::exception& e) {
    std::printf("  chart         NOT written: %s\n", e.what());
    add(false, "the chart was written");
  }

  replay_in_virtual_time<Strategy>(c, p, strategy_name, checks);

  bool all = true;
  std::printf("\nchecks\n");
  for (const auto& ck : checks) {
    std::printf("  [%s] %s\n", ck.ok ? " ok " : "FAIL", ck.what.c_str());
    all = all && ck.ok;
  }
  std::printf("%s\n", all ? "all claims hold" : "SOME CLAIMS DO NOT HOLD");
  return all ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<config> cfg;
  try {
    cfg = parse_flags(argc, argv);
  } catch (const usage_error& e) {
    std::cerr << "spike_demo: " << e.what() << "\n(try --help)\n";
    return 2;
  }
  if (!cfg) {
    print_usage(std::cout);
    return 0;
  }
  try {
    const std::string& n = cfg->strategy;
    if (n == "round_robin") return run_demo<levee::round_robin>(*cfg, n);
    if (n == "weighted_round_robin") return run_demo<levee::weighted_round_robin>(*cfg, n);
    if (n == "random") return run_demo<levee::random>(*cfg, n);
    if (n == "weighted_random") return run_demo<levee::weighted_random>(*cfg, n);
    if (n == "least_loaded") return run_demo<levee::least_loaded>(*cfg, n);
    if (n == "power_of_two") return run_demo<levee::power_of_two>(*cfg, n);
    if (n == "peak_ewma") return run_demo<levee::peak_ewma>(*cfg, n);
    if (n == "ring_hash") return run_demo<levee::ring_hash>(*cfg, n);
    if (n == "maglev") return run_demo<levee::maglev>(*cfg, n);
    if (n == "rendezvous") return run_demo<levee::rendezvous>(*cfg, n);
    if (n == "jump_hash") return run_demo<levee::jump_hash>(*cfg, n);
  } catch (const std::exception& e) {
    std::cerr << "spike_demo: " << e.what() << "\n";
    return 1;
  }
  return 2;
}
