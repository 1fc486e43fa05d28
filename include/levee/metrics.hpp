// levee/metrics.hpp - what levee::leveler reports about itself: a plain-value
// snapshot (counters, gauges, dwell/service-time histograms, rate estimates)
// and its rendering in the Prometheus text exposition format.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <levee/detail/metrics_histogram.hpp>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace levee {

// One non-empty bucket of a histogram: `count` values v with lower <= v <= upper.
struct histogram_bucket {
  std::chrono::nanoseconds lower{};
  std::chrono::nanoseconds upper{};
  std::uint64_t count = 0;
};

// A distribution of durations (queue dwell time or service time).
// Buckets are log-linear: values below 32 ns are exact and every other bucket
// is at most 1/32 of its lower bound wide, so quantile() overestimates the
// true quantile by less than 3.2% (and never exceeds max()).
class histogram_snapshot {
 public:
  histogram_snapshot() = default;

  // Builds a snapshot from raw counts (used by the leveler; public so tests
  // and other components can build one).
  explicit histogram_snapshot(const detail::metrics_histogram_counts& c) : count_(c.count) {
    using layout = detail::metrics_histogram_layout;
    sum_ = to_ns(c.sum);
    if (c.count != 0) {
      min_ = to_ns(c.min);
      max_ = to_ns(c.max);
    }
    for (std::size_t i = 0; i < layout::bucket_count; ++i) {
      if (c.buckets[i] == 0) continue;
      buckets_.push_back({to_ns(layout::lower_of(i)), to_ns(layout::upper_of(i)), c.buckets[i]});
    }
  }

  [[nodiscard]] std::uint64_t count() const noexcept { return count_; }
  [[nodiscard]] std::chrono::nanoseconds sum() const noexcept { return sum_; }
  [[nodiscard]] std::chrono::nanoseconds min() const noexcept { return min_; }
  [[nodiscard]] std::chrono::nanoseconds max() const noexcept { return max_; }
  [[nodiscard]] std::chrono::nanoseconds mean() const noexcept {
    return count_ == 0 ? std::chrono::nanoseconds{0}
                       : std::chrono::nanoseconds{sum_.count() / static_cast<std::int64_t>(count_)};
  }
  [[nodiscard]] const std::vector<histogram_bucket>& buckets() const noexcept { return buckets_; }

  // The smallest recorded-bucket bound x such that at least q*count() values
  // are <= x, clamped to [min(), max()]. 0 when empty.
  // Throws std::invalid_argument unless 0 <= q <= 1.
  [[nodiscard]] std::chrono::nanoseconds quantile(double q) const {
    if (!(q >= 0.0 && q <= 1.0))
      throw std::invalid_argument("levee::histogram_snapshot::quantile: q must be in [0, 1], got " +
                                  std::to_string(q));
    if (count_ == 0) return std::chrono::nanoseconds{0};
    auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count_)));
    rank = std::clamp<std::uint64_t>(rank, 1, count_);
    std::uint64_t seen = 0;
    for (const auto& b : buckets_) {
      seen += b.count;
      if (seen >= rank) return std::clamp(b.upper, min_, max_);
    }
    return max_;
  }
  [[nodiscard]] std::chrono::nanoseconds p50() const { return quantile(0.50); }
  [[nodiscard]] std::chrono::nanoseconds p90() const { return quantile(0.90); }
  [[nodiscard]] std::chrono::nanoseconds p99() const { return quantile(0.99); }

 private:
  static std::chrono::nanoseconds to_ns(std::uint64_t v) noexcept {
    constexpr auto cap = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    return std::chrono::nanoseconds{static_cast<std::int64_t>(std::min(v, cap))};
  }

  std::uint64_t count_ = 0;
  std::chrono::nanoseconds sum_{0};
  std::chrono::nanoseconds min_{0};
  std::chrono::nanoseconds max_{0};
  std::vector<histogram_bucket> buckets_;
};

// Submissions refused at the door, by submit_status.
struct rejection_counts {
  std::uint64_t full = 0;                 // queue full (try_submit, reject policy, or block from a handler)
  std::uint64_t closed = 0;               // after close() / stop()
  std::uint64_t would_miss_deadline = 0;  // deadline-aware admission
  std::uint64_t timeout = 0;              // submit_for / submit_until ran out of time
  std::uint64_t flow_full = 0;            // fair ingress: the flow held max_queued_per_flow jobs
  [[nodiscard]] std::uint64_t total() const noexcept {
    return full + closed + would_miss_deadline + timeout + flow_full;
  }
};

// Jobs handed to the dead-letter sink, by dead_letter_reason.
struct dead_letter_counts {
  std::uint64_t failed = 0;     // last attempt failed and no retry was allowed
  std::uint64_t expired = 0;    // found past its deadline at dispatch; not run
  std::uint64_t dropped = 0;    // evicted by the drop_oldest overflow policy
  std::uint64_t cancelled = 0;  // not started when stop() was called
  std::uint64_t shed = 0;       // fair ingress: shed by a band's CoDel sojourn control; not run
  [[nodiscard]] std::uint64_t total() const noexcept { return failed + expired + dropped + cancelled + shed; }
};

// One backend as seen by the leveler.
struct backend_metrics {
  std::uint64_t id = 0;
  double weight = 0;
  std::uint32_t tier = 0;
  std::size_t in_flight = 0;      // leases held right now
  std::size_t max_in_flight = 0;  // 0 = unlimited
  std::uint64_t started = 0;      // handler invocations on this backend
  std::uint64_t succeeded = 0;
  std::uint64_t failed = 0;
  std::chrono::nanoseconds latency_ewma{0};
  bool ejected = false;  // outlier ejection in effect
  bool healthy = true;   // as set by set_healthy()
};

// One priority band of a fair ingress (leveler options.fairness).
struct band_metrics {
  std::size_t band = 0;           // index in fairness.bands
  std::uint64_t depth = 0;        // jobs queued in the band (sorted into its flows, not yet taken)
  std::uint64_t dispatched = 0;   // jobs taken from the band for dispatch
  std::uint64_t shed = 0;         // jobs shed by the band's CoDel to the dead-letter sink (reason shed)
  bool dropping = false;          // the band's CoDel is in its dropping state
  histogram_snapshot dwell_time;  // enqueued -> taken from the fair queue, of jobs taken
};

// The flow table of a fair ingress. Flows are not labels anywhere: their
// number is unbounded (one per tenant key).
struct flow_metrics {
  std::uint64_t active = 0;     // flow states held (queued, in flight, or idle within the TTL)
  std::uint64_t idle = 0;       // of which idle (expire after fairness.flow_ttl)
  std::uint64_t created = 0;    // since construction
  std::uint64_t expired = 0;    // since construction
  std::size_t table_bytes = 0;  // estimate of the flow table's memory
  std::uint64_t in_door = 0;    // jobs accepted and not yet sorted into a band
};

// A point-in-time view of a leveler. Counters are monotonic since
// construction; gauges are sampled when metrics() runs (each value is
// individually consistent, the set is not an atomic snapshot).
struct metrics_snapshot {
  // --- counters
  std::uint64_t submitted = 0;  // submit attempts (accepted + rejected)
  std::uint64_t accepted = 0;
  rejection_counts rejected;
  std::uint64_t started = 0;    // handler invocations, retries included
  std::uint64_t succeeded = 0;  // jobs that ended successfully (final state)
  std::uint64_t failed = 0;     // handler invocations that failed (threw or returned failure)
  std::uint64_t retried = 0;    // failures that were scheduled for another attempt
  std::uint64_t retries_denied_by_budget = 0;
  dead_letter_counts dead_lettered;
  std::uint64_t dead_letter_sink_errors = 0;  // exceptions thrown by the dead-letter sink (swallowed)
  // Attempts that ran past their attempt timeout: asynchronous ones failed
  // with attempt_errc::timeout, synchronous ones are counted when they
  // return (their result stands).
  std::uint64_t attempt_timeouts = 0;
  std::uint64_t abandoned = 0;         // asynchronous attempts whose completion was destroyed unfired
  std::uint64_t late_completions = 0;  // completions fired after their attempt timed out (ignored)

  // --- gauges
  std::size_t queue_depth = 0;  // jobs accepted and not started: in the ingress queue or a worker's batch
                                // (approximate under concurrency)
  std::size_t queue_capacity = 0;
  std::size_t retry_pending = 0;       // failed jobs waiting for their backoff to elapse
  std::size_t in_flight = 0;           // attempts running now: synchronous handlers running, and
                                       // asynchronous attempts started and not finished
  std::uint64_t outstanding = 0;       // accepted jobs not yet in a final state
  std::uint64_t outstanding_peak = 0;  // high-water mark of outstanding (exact in simulation mode,
                                       // sampled every 64th acceptance with worker threads)
  std::optional<double> rate_limit;    // permits per second; nullopt = no rate gate
  std::uint64_t burst = 0;
  std::optional<std::size_t> concurrency_limit;  // nullopt = no concurrency gate
  std::size_t workers = 0;                       // 0 = simulation mode
  std::size_t ejected_backends = 0;
  std::vector<backend_metrics> backends;
  std::vector<band_metrics> bands;    // fair ingress only (empty with the FIFO ingress)
  std::optional<flow_metrics> flows;  // fair ingress only
  bool closed = false;
  bool stopped = false;

  // --- histograms
  histogram_snapshot dwell_time;    // ready (enqueued, or retry backoff elapsed) -> handler start
  histogram_snapshot service_time;  // handler start -> handler return

  // --- rate estimates (per second, over the last second of the leveler's clock)
  double arrival_rate = 0;   // submit attempts per second
  double dispatch_rate = 0;  // handler starts per second
  double drain_rate = 0;     // the rate limit when set, otherwise the measured dispatch rate
  // Time until the backlog is gone at the current drain and arrival rates:
  // backlog / (drain_rate - arrival_rate); zero when there is no backlog,
  // nullopt when the backlog is not shrinking (see trailing_behind).
  std::optional<std::chrono::nanoseconds> drain_eta = std::chrono::nanoseconds{0};
  // True when there is a backlog and arrivals keep pace with or outpace the
  // drain rate: the queue is "always trailing behind".
  bool trailing_behind = false;
};

namespace detail {

inline void metrics_check_prefix(std::string_view prefix) {
  auto ok_first = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
  };
  auto ok_rest = [&](char c) { return ok_first(c) || (c >= '0' && c <= '9'); };
  bool ok =
      !prefix.empty() && ok_first(prefix.front()) && std::all_of(prefix.begin() + 1, prefix.end(), ok_rest);
  if (!ok)
    throw std::invalid_argument("levee::to_prometheus: prefix \"" + std::string(prefix) +
                                "\" is not a valid Prometheus metric name prefix ([a-zA-Z_:][a-zA-Z0-9_:]*)");
}

inline std::string metrics_number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  const int n = std::snprintf(buf, sizeof buf, "%.17g", v);
  return std::string(buf, static_cast<std::size_t>(n));
}

inline std::string metrics_seconds(std::chrono::nanoseconds d) {
  return metrics_number(static_cast<double>(d.count()) / 1e9);
}

class metrics_writer {
 public:
  explicit metrics_writer(std::string_view prefix) : prefix_(prefix) {}

  void family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += "# HELP ";
    out_ += prefix_;
    out_ += '_';
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += prefix_;
    out_ += '_';
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }
  void sample(std::string_view name, std::string_view labels, const std::string& value) {
    out_ += prefix_;
    out_ += '_';
    out_ += name;
    if (!labels.empty()) {
      out_ += '{';
      out_ += labels;
      out_ += '}';
    }
    out_ += ' ';
    out_ += value;
    out_ += '\n';
  }
  void sample(std::string_view name, std::string_view labels, std::uint64_t value) {
    sample(name, labels, std::to_string(value));
  }
  void counter(std::string_view name, std::string_view help, std::uint64_t value) {
    family(name, "counter", help);
    sample(name, {}, value);
  }
  void gauge(std::string_view name, std::string_view help, const std::string& value) {
    family(name, "gauge", help);
    sample(name, {}, value);
  }
  void summary(std::string_view name, std::string_view help, const histogram_snapshot& h) {
    family(name, "summary", help);
    // An empty summary has no quantiles: Prometheus' convention is NaN (as
    // its own client libraries export), never 0, which would read as "fast".
    auto q = [&](double v) { return h.count() == 0 ? std::string("NaN") : metrics_seconds(h.quantile(v)); };
    sample(name, "quantile=\"0.5\"", q(0.5));
    sample(name, "quantile=\"0.9\"", q(0.9));
    sample(name, "quantile=\"0.99\"", q(0.99));
    sample(std::string(name) + "_sum", {}, metrics_seconds(h.sum()));
    sample(std::string(name) + "_count", {}, h.count());
  }
  // The samples of one summary with labels (the family was written).
  void labelled_summary(std::string_view name, const std::string& labels, const histogram_snapshot& h) {
    auto q = [&](double v) { return h.count() == 0 ? std::string("NaN") : metrics_seconds(h.quantile(v)); };
    sample(name, labels + ",quantile=\"0.5\"", q(0.5));
    sample(name, labels + ",quantile=\"0.9\"", q(0.9));
    sample(name, labels + ",quantile=\"0.99\"", q(0.99));
    sample(std::string(name) + "_sum", labels, metrics_seconds(h.sum()));
    sample(std::string(name) + "_count", labels, h.count());
  }
  std::string take() { return std::move(out_); }

 private:
  std::string_view prefix_;
  std::string out_;
};

}  // namespace detail

// Renders a snapshot in the Prometheus text exposition format (version 0.0.4):
// one "# HELP"/"# TYPE" pair per metric family, counters with a _total
// suffix, durations in seconds, histograms as summaries (quantiles 0.5, 0.9,
// 0.99 plus _sum and _count; the quantiles of an empty summary are NaN) with
// the maximum as a separate gauge, the closed and stopped flags as 0/1
// gauges, per-backend gauges labelled backend="<id>", and with a fair
// ingress per-band series labelled band="<index>" plus flow-table gauges
// (flows are never labels: their number is unbounded).
// Throws std::invalid_argument if prefix is not a valid metric-name prefix.
[[nodiscard]] inline std::string to_prometheus(const metrics_snapshot& m, std::string_view prefix = "levee") {
  detail::metrics_check_prefix(prefix);
  using detail::metrics_number;
  using detail::metrics_seconds;
  detail::metrics_writer w(prefix);

  w.counter("jobs_submitted_total", "Submit attempts (accepted plus rejected).", m.submitted);
  w.counter("jobs_accepted_total", "Jobs accepted into the leveler.", m.accepted);
  w.family("jobs_rejected_total", "counter", "Submissions refused at the door, by reason.");
  w.sample("jobs_rejected_total", "reason=\"full\"", m.rejected.full);
  w.sample("jobs_rejected_total", "reason=\"closed\"", m.rejected.closed);
  w.sample("jobs_rejected_total", "reason=\"would_miss_deadline\"", m.rejected.would_miss_deadline);
  w.sample("jobs_rejected_total", "reason=\"timeout\"", m.rejected.timeout);
  w.sample("jobs_rejected_total", "reason=\"flow_full\"", m.rejected.flow_full);
  w.counter("jobs_started_total", "Handler invocations, retries included.", m.started);
  w.counter("jobs_succeeded_total", "Jobs that ended successfully.", m.succeeded);
  w.counter("jobs_failed_total", "Handler invocations that failed.", m.failed);
  w.counter("jobs_retried_total", "Failures scheduled for another attempt.", m.retried);
  w.counter("retries_denied_by_budget_total", "Retries refused by the retry budget.",
            m.retries_denied_by_budget);
  w.family("jobs_dead_lettered_total", "counter", "Jobs handed to the dead-letter sink, by reason.");
  w.sample("jobs_dead_lettered_total", "reason=\"failed\"", m.dead_lettered.failed);
  w.sample("jobs_dead_lettered_total", "reason=\"expired\"", m.dead_lettered.expired);
  w.sample("jobs_dead_lettered_total", "reason=\"dropped\"", m.dead_lettered.dropped);
  w.sample("jobs_dead_lettered_total", "reason=\"cancelled\"", m.dead_lettered.cancelled);
  w.sample("jobs_dead_lettered_total", "reason=\"shed\"", m.dead_lettered.shed);
  w.counter("dead_letter_sink_errors_total", "Exceptions thrown by the dead-letter sink.",
            m.dead_letter_sink_errors);
  w.counter("attempt_timeouts_total", "Attempts that ran past their attempt timeout.", m.attempt_timeouts);
  w.counter("attempts_abandoned_total", "Asynchronous attempts whose completion was destroyed unfired.",
            m.abandoned);
  w.counter("late_completions_total", "Completions fired after their attempt timed out.", m.late_completions);

  w.gauge("queue_depth", "Jobs waiting in the ingress queue.", std::to_string(m.queue_depth));
  w.gauge("queue_capacity", "Capacity of the ingress queue.", std::to_string(m.queue_capacity));
  w.gauge("retry_pending", "Failed jobs waiting for their backoff.", std::to_string(m.retry_pending));
  w.gauge("in_flight", "Attempts running now (synchronous and asynchronous).", std::to_string(m.in_flight));
  w.gauge("outstanding", "Accepted jobs not yet in a final state.", std::to_string(m.outstanding));
  w.gauge("outstanding_peak", "High-water mark of outstanding jobs.", std::to_string(m.outstanding_peak));
  if (m.rate_limit) {
    w.gauge("rate_limit_per_second", "Configured dispatch rate.", metrics_number(*m.rate_limit));
    w.gauge("rate_limit_burst", "Configured dispatch burst.", std::to_string(m.burst));
  }
  if (m.concurrency_limit)
    w.gauge("concurrency_limit", "Current concurrency limit.", std::to_string(*m.concurrency_limit));
  w.gauge("workers", "Worker threads (0 = simulation mode).", std::to_string(m.workers));
  w.gauge("backends", "Registered backends.", std::to_string(m.backends.size()));
  w.gauge("backends_ejected", "Backends currently ejected as outliers.", std::to_string(m.ejected_backends));

  if (!m.backends.empty()) {
    auto label = [](const backend_metrics& b) { return "backend=\"" + std::to_string(b.id) + "\""; };
    w.family("backend_in_flight", "gauge", "Jobs running on a backend.");
    for (const auto& b : m.backends) w.sample("backend_in_flight", label(b), b.in_flight);
    w.family("backend_weight", "gauge", "Weight of a backend.");
    for (const auto& b : m.backends) w.sample("backend_weight", label(b), metrics_number(b.weight));
    w.family("backend_ejected", "gauge", "1 if a backend is ejected as an outlier.");
    for (const auto& b : m.backends)
      w.sample("backend_ejected", label(b), std::uint64_t{b.ejected ? 1u : 0u});
    w.family("backend_latency_ewma_seconds", "gauge", "Latency EWMA of a backend.");
    for (const auto& b : m.backends)
      w.sample("backend_latency_ewma_seconds", label(b), metrics_seconds(b.latency_ewma));
    w.family("backend_started_total", "counter", "Handler invocations on a backend.");
    for (const auto& b : m.backends) w.sample("backend_started_total", label(b), b.started);
    w.family("backend_failed_total", "counter", "Failed handler invocations on a backend.");
    for (const auto& b : m.backends) w.sample("backend_failed_total", label(b), b.failed);
  }

  if (!m.bands.empty()) {
    auto label = [](const band_metrics& b) { return "band=\"" + std::to_string(b.band) + "\""; };
    w.family("band_depth", "gauge", "Jobs queued in a band of the fair ingress.");
    for (const auto& b : m.bands) w.sample("band_depth", label(b), b.depth);
    w.family("band_dispatched_total", "counter", "Jobs taken from a band for dispatch.");
    for (const auto& b : m.bands) w.sample("band_dispatched_total", label(b), b.dispatched);
    w.family("band_shed_total", "counter", "Jobs shed by a band's CoDel (dead-lettered as shed).");
    for (const auto& b : m.bands) w.sample("band_shed_total", label(b), b.shed);
    w.family("band_dropping", "gauge", "1 while a band's CoDel is in its dropping state.");
    for (const auto& b : m.bands) w.sample("band_dropping", label(b), std::uint64_t{b.dropping ? 1u : 0u});
    w.family("band_dwell_seconds", "summary", "Time from enqueued to taken from the band.");
    for (const auto& b : m.bands) w.labelled_summary("band_dwell_seconds", label(b), b.dwell_time);
  }
  if (m.flows) {
    w.gauge("flows_active", "Flow states held by the fair ingress.", std::to_string(m.flows->active));
    w.gauge("flows_idle", "Idle flow states waiting for their TTL.", std::to_string(m.flows->idle));
    w.counter("flows_created_total", "Flow states created.", m.flows->created);
    w.counter("flows_expired_total", "Idle flow states expired after their TTL.", m.flows->expired);
    w.gauge("flow_table_bytes", "Estimated memory of the flow table.", std::to_string(m.flows->table_bytes));
  }

  w.summary("queue_dwell_seconds", "Time from ready (enqueued or backoff elapsed) to handler start.",
            m.dwell_time);
  w.gauge("queue_dwell_max_seconds", "Largest queue dwell time.", metrics_seconds(m.dwell_time.max()));
  w.summary("service_seconds", "Handler run time.", m.service_time);
  w.gauge("service_max_seconds", "Largest handler run time.", metrics_seconds(m.service_time.max()));

  w.gauge("arrival_rate_per_second", "Submit attempts per second over the last second.",
          metrics_number(m.arrival_rate));
  w.gauge("dispatch_rate_per_second", "Handler starts per second over the last second.",
          metrics_number(m.dispatch_rate));
  w.gauge("drain_rate_per_second", "Rate at which the backlog drains.", metrics_number(m.drain_rate));
  w.gauge("drain_eta_seconds", "Estimated time until the backlog is gone (+Inf when it is not shrinking).",
          m.drain_eta ? metrics_seconds(*m.drain_eta) : std::string("+Inf"));
  w.gauge("trailing_behind", "1 when arrivals keep pace with or outpace the drain rate while backlogged.",
          m.trailing_behind ? "1" : "0");
  w.gauge("closed", "1 after close() or stop().", m.closed ? "1" : "0");
  w.gauge("stopped", "1 after stop().", m.stopped ? "1" : "0");
  return w.take();
}

}  // namespace levee
