// levee/leveler/ledger.hpp - the end of the flow: outcome counters, final
// states, the dead-letter sink, the outstanding count, the "quiet" event
// drain() waits on, and the metrics snapshot.
//
// Every accepted job reaches exactly one final state: succeeded, or handed to
// the dead-letter sink with a reason. Final states are counted per stats
// shard (one per worker, written by that worker only, plus shard 0 for every
// other thread) with release, after the job's acceptance; a reader that
// acquires the final-state counters first and the acceptance count second
// never sees more jobs finished than accepted.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <levee/clock.hpp>
#include <levee/detail/cache.hpp>
#include <levee/detail/metrics_histogram.hpp>
#include <levee/detail/time.hpp>
#include <levee/detail/time_window.hpp>
#include <levee/detail/tsc_clock.hpp>
#include <levee/detail/wait.hpp>
#include <levee/leveler/job.hpp>
#include <levee/metrics.hpp>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

namespace levee::detail {

// Clock readings in nanoseconds since the clock's epoch (saturating).
template <class TimePoint>
[[nodiscard]] std::int64_t to_ns(TimePoint t) noexcept {
  return saturating_ceil<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
template <class TimePoint>
[[nodiscard]] TimePoint from_ns(std::int64_t ns) noexcept {
  return TimePoint(std::chrono::duration_cast<typename TimePoint::duration>(std::chrono::nanoseconds{ns}));
}

// The time for measurements only (queue dwell, service time, rate windows):
// on steady_clock an extrapolation of the CPU's time-stamp counter (see
// detail/tsc_clock.hpp for its error bound), the clock itself otherwise.
// Deadline checks and the rate gate always read the clock.
template <class Clock>
[[nodiscard]] typename Clock::time_point measure_now(const Clock& c) {
  if constexpr (std::is_same_v<Clock, std::chrono::steady_clock>) {
    return measurement_now();
  } else {
    return c.now();
  }
}

// Rate estimates (arrivals, dispatches) use 100 ms slots: the last second is
// 10 whole slots plus the current one.
inline constexpr std::chrono::nanoseconds rate_slot{std::chrono::milliseconds{100}};
inline constexpr std::size_t rate_slots = 12;

// "Called from inside the leveler": set on a thread while it runs a handler
// or the dead-letter sink of a leveler (one marker for both, so both follow
// the same rules: a blocking submit never waits, drain() throws, stop() does
// not wait for workers). `sink` is true while the sink runs: a drop_oldest
// submit from the sink never evicts (it could evict forever).
struct inside_marker {
  const void* owner = nullptr;
  bool sink = false;
};
inline thread_local inside_marker inside_leveler{};

class inside_scope {
 public:
  inside_scope(const void* owner, bool sink) noexcept : prev_(inside_leveler) {
    inside_leveler = {owner, sink};
  }
  ~inside_scope() { inside_leveler = prev_; }
  inside_scope(const inside_scope&) = delete;
  inside_scope& operator=(const inside_scope&) = delete;

 private:
  inside_marker prev_;
};

static_assert(static_cast<std::size_t>(dead_letter_reason::shed) == 4,
              "stats_shard::dead has one counter per dead_letter_reason: resize it with the enum");

// Statistics of one worker (written by that worker only: plain load/store,
// no read-modify-write) or, for shard 0, of every other thread (simulation
// driver, submitters evicting with drop_oldest, stop()).
struct alignas(false_sharing_range) stats_shard {
  bool exclusive = false;
  std::atomic<std::uint64_t> started{0}, succeeded{0}, failed{0}, retried{0}, budget_denied{0};
  std::atomic<std::uint64_t> dead[5]{};  // by dead_letter_reason
  std::atomic<std::uint64_t> sink_errors{0}, timeouts{0}, abandoned{0};
  std::atomic<std::size_t> in_flight{0};  // synchronous attempts (asynchronous ones: ledger_stage)
  metrics_histogram dwell, service;
  window_counter dispatches{rate_slot, rate_slots};

  std::size_t index = 0;  // position in the ledger (and in each backend's counters)
  void inc(std::atomic<std::uint64_t>& a, std::memory_order o = std::memory_order_relaxed) noexcept {
    if (exclusive) {
      a.store(a.load(std::memory_order_relaxed) + 1, o);
    } else {
      a.fetch_add(1, o);
    }
  }
  [[nodiscard]] std::uint64_t finished() const noexcept {
    std::uint64_t n = succeeded.load(std::memory_order_acquire);
    for (const auto& d : dead) n += d.load(std::memory_order_acquire);
    return n;
  }
  void count_dispatch(std::int64_t now_ns) noexcept {
    if (exclusive) {
      dispatches.add_exclusive(now_ns);
    } else {
      dispatches.add(now_ns);
    }
  }
  void record(metrics_histogram& h, std::uint64_t v) noexcept {
    if (exclusive) {
      h.record_exclusive(v);
    } else {
      h.record(v);
    }
  }
};

template <class Job, clock Clock>
class ledger_stage {
 public:
  using dead_letter_sink = std::function<void(Job&&, dead_letter_reason, std::exception_ptr)>;

  // workers + 1 shards; `sink` (may be empty) must outlive the ledger.
  ledger_stage(std::size_t workers, const dead_letter_sink& sink, Clock c)
      : shards_(std::make_unique<stats_shard[]>(workers + 1)), count_(workers + 1), sink_(sink), quiet_(c) {
    for (std::size_t i = 0; i < count_; ++i) shards_[i].index = i;
    for (std::size_t i = 1; i < count_; ++i) shards_[i].exclusive = true;
  }

  [[nodiscard]] stats_shard& shard(std::size_t i) noexcept { return shards_[i]; }
  [[nodiscard]] const stats_shard& shard(std::size_t i) const noexcept { return shards_[i]; }
  [[nodiscard]] stats_shard& door_shard() noexcept { return shards_[0]; }
  [[nodiscard]] std::size_t shard_count() const noexcept { return count_; }

  [[nodiscard]] std::uint64_t finished() const noexcept {
    std::uint64_t done = 0;
    for (std::size_t i = 0; i < count_; ++i) done += shards_[i].finished();
    return done;
  }
  // Attempts running: synchronous handlers, and asynchronous attempts
  // started and not settled.
  [[nodiscard]] std::uint64_t in_flight() const noexcept {
    std::uint64_t n = async_in_flight();
    for (std::size_t i = 0; i < count_; ++i) n += shards_[i].in_flight.load(std::memory_order_relaxed);
    return n;
  }

  [[nodiscard]] std::uint64_t async_in_flight() const noexcept {
    return async_in_flight_.load(std::memory_order_acquire);
  }
  void async_started() noexcept { async_in_flight_.fetch_add(1, std::memory_order_relaxed); }
  void async_settled() noexcept { async_in_flight_.fetch_sub(1, std::memory_order_acq_rel); }

  // The final state `reason` for env (counted in s), then the sink with the
  // job and its last error; an exception from the sink is counted, never
  // propagated. `owner` marks the thread as inside the leveler meanwhile.
  template <class Env>
  void dead_letter(const void* owner, stats_shard& s, Env&& env, dead_letter_reason reason) noexcept {
    s.inc(s.dead[static_cast<std::size_t>(reason)], std::memory_order_release);
    if (sink_) {
      inside_scope mark(owner, true);
      try {
        sink_(std::move(env.job), reason, env.last_error());
      } catch (...) {
        s.inc(s.sink_errors);
      }
    }
    finish_one(s);
  }

  // A job reached its final state (already counted in shard s). Workers do
  // not wake drain() per job: they do it when they run out of work, the only
  // time the count can have reached zero for good. Other threads wake it
  // directly.
  void finish_one(const stats_shard& s) noexcept {
    if (!s.exclusive) quiet_.notify();
  }

  // drain(), stop() and the destructor wait here; workers notify it when they
  // go idle, park at a gate, or exit.
  [[nodiscard]] clock_event<Clock>& quiet() noexcept { return quiet_; }

  // The outcome part of a metrics snapshot: counters and histograms, summed
  // over the shards (final states read with acquire).
  void collect(metrics_snapshot& m) const {
    metrics_histogram_counts dwell, service;
    for (std::size_t i = 0; i < count_; ++i) {
      const stats_shard& s = shards_[i];
      m.started += s.started.load(std::memory_order_relaxed);
      m.succeeded += s.succeeded.load(std::memory_order_acquire);
      m.failed += s.failed.load(std::memory_order_relaxed);
      m.retried += s.retried.load(std::memory_order_relaxed);
      m.retries_denied_by_budget += s.budget_denied.load(std::memory_order_relaxed);
      auto dead = [&](dead_letter_reason r) {
        return s.dead[static_cast<std::size_t>(r)].load(std::memory_order_acquire);
      };
      m.dead_lettered.failed += dead(dead_letter_reason::failed);
      m.dead_lettered.expired += dead(dead_letter_reason::expired);
      m.dead_lettered.dropped += dead(dead_letter_reason::dropped);
      m.dead_lettered.cancelled += dead(dead_letter_reason::cancelled);
      m.dead_lettered.shed += dead(dead_letter_reason::shed);
      m.dead_letter_sink_errors += s.sink_errors.load(std::memory_order_relaxed);
      m.attempt_timeouts += s.timeouts.load(std::memory_order_relaxed);
      m.abandoned += s.abandoned.load(std::memory_order_relaxed);
      s.dwell.add_to(dwell);
      s.service.add_to(service);
    }
    m.dwell_time = histogram_snapshot(dwell);
    m.service_time = histogram_snapshot(service);
    m.in_flight = static_cast<std::size_t>(in_flight());
  }

  // Dispatches per second over the last second (never over more time than
  // since `start_ns`).
  [[nodiscard]] double dispatch_rate(std::int64_t now_ns, std::int64_t start_ns) const noexcept {
    double r = 0;
    for (std::size_t i = 0; i < count_; ++i)
      r += per_second(shards_[i].dispatches.sum(now_ns, 10), now_ns - start_ns);
    return r;
  }
  [[nodiscard]] static double per_second(window_sum s, std::int64_t since_start_ns) noexcept {
    const std::int64_t span = std::min(s.span_ns, since_start_ns);
    return span > 0 ? static_cast<double>(s.count) * 1e9 / static_cast<double>(span) : 0.0;
  }

 private:
  std::unique_ptr<stats_shard[]> shards_;  // [0]: non-worker threads and simulation; [i+1]: worker i
  std::size_t count_;
  const dead_letter_sink& sink_;
  clock_event<Clock> quiet_;
  std::atomic<std::uint64_t> async_in_flight_{0};
};

// The whole snapshot (leveler::metrics): each stage adds its part; the
// ledger's final states first (see the opening comment), then the door.
template <class Core>
[[nodiscard]] metrics_snapshot collect_metrics(const Core& core) {
  metrics_snapshot m;
  const std::int64_t now_ns = to_ns(core.clock.now());
  core.ledger.collect(m);
  core.ingress.collect(m, now_ns, core.start_ns);
  m.queue_depth += core.batched();
  m.queue_capacity = core.opts.capacity;
  m.retry_pending = core.retries.size();
  m.outstanding = core.outstanding();
  m.late_completions = core.async_shared->late.load(std::memory_order_relaxed);
  core.gates.collect(m);
  m.workers = core.opts.workers;
  m.closed = core.closed.load(std::memory_order_acquire);
  m.stopped = core.stopped.load(std::memory_order_acquire);
  core.backends.collect(m);
  m.dispatch_rate = core.ledger.dispatch_rate(now_ns, core.start_ns);
  // Draining at the gate's rate (or, without one, at the dispatch rate)
  // while arrivals continue: the backlog shrinks at the difference.
  m.drain_rate = m.rate_limit ? *m.rate_limit : m.dispatch_rate;
  const double backlog = static_cast<double>(m.queue_depth + m.retry_pending);
  if (backlog == 0) {
    m.drain_eta = std::chrono::nanoseconds{0};
  } else if (m.drain_rate > m.arrival_rate) {
    m.drain_eta =
        std::chrono::nanoseconds{static_cast<std::int64_t>(backlog / (m.drain_rate - m.arrival_rate) * 1e9)};
  } else {
    m.drain_eta = std::nullopt;
    m.trailing_behind = true;
  }
  return m;
}

}  // namespace levee::detail
