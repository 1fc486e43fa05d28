// levee/leveler/ingress.hpp - producer -> queue: the envelope a job travels
// in, the bounded ingress queue, the overflow policies (block, reject,
// drop_oldest), deadline admission, and arrival accounting.
//
// Every accepted job is pushed into the ingress queue exactly once (retries
// go to the retry heap), so the queue's push count is the acceptance count:
// no counter of its own to increment per submit. A push counts from the
// moment it claims its slot, before a worker can pop the job.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <levee/balance/backend_set.hpp>
#include <levee/clock.hpp>
#include <levee/detail/cache.hpp>
#include <levee/detail/time.hpp>
#include <levee/detail/time_window.hpp>
#include <levee/detail/wait.hpp>
#include <levee/leveler/job.hpp>
#include <levee/leveler/ledger.hpp>
#include <levee/mpmc_queue.hpp>
#include <memory>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace levee::detail {

// What a failed attempt leaves behind; allocated on the first failure only.
struct failure_state {
  std::vector<backend_id> failed_on;
  std::exception_ptr last_error;
};

// Out of line: an envelope is destroyed several times per job on its way
// (queue slot, batch, dispatch), almost always without a failure_state; an
// inlined delete would make every one of those destructors large.
struct failure_deleter {
  [[gnu::noinline]] void operator()(failure_state* p) const noexcept { delete p; }
};

// A job and its bookkeeping, as it travels through the queue. Kept small:
// with a pointer-sized Job an envelope and the queue's stamp share one cache
// line, so a submit and a dispatch touch one line of the ring.
// Move-assignable even when Job is not (the retry heap and optionals assign
// envelopes): the assignment destroys the job and move-constructs the new
// one in place, which cannot throw (Job is nothrow move constructible).
template <class Job, class TimePoint>
struct envelope {
  Job job;
  std::uint64_t key = 0;
  TimePoint deadline = TimePoint::max();
  TimePoint ready{};  // enqueued, or retry backoff elapsed
  std::uint32_t attempts = 0;
  bool has_key = false;
  std::unique_ptr<failure_state, failure_deleter> failure;

  envelope(Job&& j, std::uint64_t k, TimePoint dl, TimePoint rd, bool hk) noexcept
      : job(std::move(j)), key(k), deadline(dl), ready(rd), has_key(hk) {}
  envelope(envelope&&) noexcept = default;
  envelope& operator=(envelope&& o) noexcept {
    if (this == &o) return *this;
    if constexpr (std::is_nothrow_move_assignable_v<Job>) {
      job = std::move(o.job);
    } else {
      std::destroy_at(std::addressof(job));
      std::construct_at(std::addressof(job), std::move(o.job));
    }
    key = o.key;
    deadline = o.deadline;
    ready = o.ready;
    attempts = o.attempts;
    has_key = o.has_key;
    failure = std::move(o.failure);
    return *this;
  }
  ~envelope() = default;

  [[nodiscard]] std::exception_ptr last_error() const { return failure ? failure->last_error : nullptr; }
};

template <class Job, clock Clock>
class ingress_stage {
 public:
  using time_point = typename Clock::time_point;
  using envelope_type = envelope<Job, time_point>;
  static_assert(std::is_nothrow_move_constructible_v<envelope_type>,
                "levee: envelopes must move without throwing (queue, batches)");

  // The queue's limit, and what fits in memory with room to spare.
  static constexpr std::size_t max_capacity = std::min<std::size_t>(
      std::size_t{1} << 40, static_cast<std::size_t>(PTRDIFF_MAX) / (2 * sizeof(envelope_type) + 64));

  ingress_stage(std::size_t capacity, bool notify_space, Clock c)
      : queue_(capacity), arrivals_(rate_slot, rate_slots), space_(c), notify_space_(notify_space) {}

  // The door (see leveler::submit for the contract). Core: the leveler's
  // dispatch core (worker.hpp), for the clock, the options, the gates'
  // forecast, the ledger and the workers' event.
  template <class Core>
  submit_result<Job> submit(Core& c, Job&& job, const job_options<Clock>& jo, overflow_policy policy,
                            time_point until) {
    // Without a deadline, `now` only stamps the job (dwell) and counts the arrival.
    const time_point now = jo.deadline || c.opts.default_deadline ? c.clock.now() : measure_now(c.clock);
    arrivals_.observe(to_ns(now), [&] { return submitted_total(); });
    if (c.closed.load(std::memory_order_seq_cst)) return reject(std::move(job), submit_status::closed);
    time_point deadline = time_point::max();
    if (jo.deadline) {
      deadline = *jo.deadline;
    } else if (c.opts.default_deadline) {
      deadline = saturating_add(now, *c.opts.default_deadline);
    }
    if (deadline != time_point::max()) {
      if (c.opts.deadline_admission ? !admissible(c, deadline, now) : deadline < now)
        return reject(std::move(job), submit_status::would_miss_deadline);
    }
    envelope_type env(std::move(job), jo.key.value_or(0), deadline, now, jo.key.has_value());
    auto refuse = [&](submit_status st) { return reject(std::move(env.job), st); };
    evicted_job<Core> evicted{c, std::nullopt};
    int spins = 0;
    for (;;) {
      if (queue_.try_push(std::move(env))) return accepted(c);
      if (queue_.is_closed() || c.closed.load(std::memory_order_seq_cst))
        return refuse(submit_status::closed);
      if (policy == overflow_policy::reject) return refuse(submit_status::full);
      if (policy == overflow_policy::drop_oldest && !c.inside_sink()) {
        evicted.flush();  // a racing producer took the slot freed last time
        evicted.env = pop();
        continue;
      }
      // block (or drop_oldest from the sink): never from inside the leveler,
      // never in simulation mode (only the driving thread frees room).
      if (c.inside() || c.opts.workers == 0) return refuse(submit_status::full);
      const time_point limit = std::min(until, deadline);
      // A full queue usually frees a slot within a dequeue or two: yield a
      // few times before parking (parking per slot would cost a context
      // switch per job when producers outrun the workers).
      if (spins < max_submit_spins) {
        ++spins;
        std::this_thread::yield();
        if (limit == time_point::max() || c.clock.now() < limit) continue;
      }
      const auto ticket = space_.prepare();
      if (queue_.try_push(std::move(env))) {
        space_.cancel();
        return accepted(c);
      }
      if (queue_.is_closed() || c.closed.load(std::memory_order_seq_cst)) {
        space_.cancel();
        continue;  // reported as closed above
      }
      if (limit != time_point::max() && c.clock.now() >= limit) {
        space_.cancel();
        return refuse(deadline <= until ? submit_status::would_miss_deadline : submit_status::timeout);
      }
      space_.wait_until(ticket, limit);
    }
  }

  // A worker's single pop; wakes a blocked submitter when one may wait.
  std::optional<envelope_type> pop() {
    auto e = queue_.try_pop();
    if (e && notify_space_) space_.notify();
    return e;
  }
  // Up to `max` jobs with one claim into *out++ (see worker.hpp's batches).
  template <class Out>
  std::size_t pop_bulk(Out out, std::size_t max) noexcept {
    const std::size_t n = queue_.try_pop_bulk(out, max);
    if (n != 0 && notify_space_) space_.notify();
    return n;
  }
  // stop(): no push can start any more; one may still be publishing.
  void close() noexcept { queue_.close(); }
  // Wakes blocked submitters (close, stop).
  void wake_submitters() noexcept { space_.notify_always(); }

  [[nodiscard]] std::size_t size_approx() const noexcept { return queue_.size_approx(); }
  [[nodiscard]] std::uint64_t accepted_total() const noexcept { return queue_.push_count(); }
  [[nodiscard]] std::uint64_t submitted_total() const noexcept {
    std::uint64_t n = accepted_total();
    for (const auto& c : door_.rejected) n += c.load(std::memory_order_relaxed);
    return n;
  }

  // The door's part of a metrics snapshot. Read after the final-state
  // counters (see ledger.hpp), so a snapshot never shows more jobs finished
  // than accepted.
  void collect(metrics_snapshot& m, std::int64_t now_ns, std::int64_t start_ns) const {
    m.accepted = accepted_total();
    m.rejected.full = rejected(submit_status::full);
    m.rejected.closed = rejected(submit_status::closed);
    m.rejected.would_miss_deadline = rejected(submit_status::would_miss_deadline);
    m.rejected.timeout = rejected(submit_status::timeout);
    m.submitted = m.accepted + m.rejected.total();
    m.queue_depth = queue_.size_approx();
    m.outstanding_peak = outstanding_peak_.load(std::memory_order_relaxed);
    m.arrival_rate =
        ledger_stage<Job, Clock>::per_second(arrivals_.sum(now_ns, 10, m.submitted), now_ns - start_ns);
  }

 private:
  static constexpr int max_submit_spins = 64;

  // A job evicted by drop_oldest reaches the sink only once the job that
  // evicted it is in (or refused): a sink that re-submits what it is handed
  // then finds the queue full instead of taking the slot freed for that job.
  template <class Core>
  struct evicted_job {
    Core& c;
    std::optional<envelope_type> env;
    void flush() noexcept {
      if (!env) return;
      std::optional<envelope_type> e;
      e.swap(env);
      c.ledger.dead_letter(&c, c.ledger.door_shard(), std::move(*e), dead_letter_reason::dropped);
    }
    ~evicted_job() { flush(); }
  };

  template <class Core>
  submit_result<Job> accepted(Core& c) {
    c.work.notify_one();
    track_peak(c);
    return submit_result<Job>{submit_status::accepted, std::nullopt};
  }

  submit_result<Job> reject(Job&& job, submit_status s) {
    door_.rejected[static_cast<std::size_t>(s)].fetch_add(1, std::memory_order_relaxed);
    return submit_result<Job>{s, std::optional<Job>(std::move(job))};
  }
  [[nodiscard]] std::uint64_t rejected(submit_status s) const noexcept {
    return door_.rejected[static_cast<std::size_t>(s)].load(std::memory_order_relaxed);
  }

  // Deadline admission: the predicted dispatch time of a job entering now is
  // the gate's forecast for the k-th next token, k = the jobs ahead of it
  // (accepted and not yet running: queued, held at a gate, or waiting for a
  // retry - conservative, a retry may become due after this job) plus one.
  template <class Core>
  [[nodiscard]] bool admissible(const Core& c, time_point deadline, time_point now) const {
    if (deadline < now) return false;
    if (!c.gates.has_rate()) return true;
    const std::uint64_t out = c.outstanding();
    const std::uint64_t running = c.ledger.in_flight();
    const std::uint64_t ahead = out > running ? out - running : 0;
    return std::max(c.gates.forecast(ahead + 1, now), now) <= deadline;
  }

  // High-water mark of outstanding(): exact in simulation mode; with worker
  // threads sampled at every 64th acceptance (reading every worker's
  // counters on each submission would make producers and workers contend).
  template <class Core>
  void track_peak(const Core& c) noexcept {
    // The push count is on the line this submit's push just wrote.
    if (c.opts.workers != 0 && (accepted_total() & 63) != 0) return;
    const std::uint64_t now_out = c.outstanding();
    std::uint64_t peak = outstanding_peak_.load(std::memory_order_relaxed);
    while (now_out > peak &&
           !outstanding_peak_.compare_exchange_weak(peak, now_out, std::memory_order_relaxed)) {
    }
  }

  mpmc_queue<envelope_type> queue_;
  struct alignas(false_sharing_range) door_counters {
    std::atomic<std::uint64_t> rejected[5]{};  // by submit_status (accepted: the queue's push count)
  } door_;
  window_log arrivals_;
  clock_event<Clock> space_;  // blocked submitters: a slot was freed, close, stop
  const bool notify_space_;   // only overflow_policy::block ever waits for room
  std::atomic<std::uint64_t> outstanding_peak_{0};
};

}  // namespace levee::detail
