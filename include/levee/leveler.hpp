// levee/leveler.hpp - levee::leveler, the rate-limited consumer scheduler:
// a bounded ingress queue that absorbs spikes, drained through a deadline
// check, a GCRA rate gate on an absolute schedule, a concurrency gate (fixed
// or adaptive) and a balancing strategy over backends, with retries
// (exponential backoff, full jitter, retry budget), a dead-letter sink,
// close/drain/stop, metrics and a deterministic simulation mode.
//
//   levee::leveler<job>::options o;
//   o.capacity = 20'000;
//   o.rate = levee::rate::per_second(1000);
//   o.workers = 4;
//   levee::leveler<job> lev(o, [](job& j) { call_downstream(j); });
//   if (auto r = lev.try_submit(make_job()); !r) log(to_string(r.status));
//   lev.close();
//   lev.drain();
//
// What happens to an accepted job: it is handled successfully, or it reaches
// the dead-letter sink exactly once with a reason (failed after its last
// attempt, expired before dispatch, dropped by the drop_oldest policy,
// cancelled by stop()). A rejected submission hands the job back.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <levee/adaptive_limit.hpp>
#include <levee/balance.hpp>
#include <levee/clock.hpp>
#include <levee/concurrency_limiter.hpp>
#include <levee/detail/leveler_support.hpp>
#include <levee/detail/time.hpp>
#include <levee/detail/tsc_clock.hpp>
#include <levee/metrics.hpp>
#include <levee/mpmc_queue.hpp>
#include <levee/rate_limiter.hpp>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace levee {

// What submit() does when the ingress queue is full.
enum class overflow_policy {
  block,        // wait for room (backpressure); never from a handler of the same leveler (see submit)
  reject,       // return submit_status::full with the job
  drop_oldest,  // evict the oldest queued job to the dead-letter sink (reason dropped) and enqueue
};

enum class submit_status {
  accepted,
  full,                 // no room (try_submit, reject policy, or a blocking submit from a handler)
  closed,               // close() or stop() was called
  would_miss_deadline,  // deadline-aware admission predicted dispatch after the job's deadline
  timeout,              // submit_for / submit_until found no room in time
};

enum class dead_letter_reason {
  failed,     // the last allowed attempt failed (or a retry was refused by the budget or the deadline)
  expired,    // found past its deadline at dispatch; the handler never ran for this attempt
  dropped,    // evicted from a full queue by overflow_policy::drop_oldest
  cancelled,  // not started when stop() was called
};

[[nodiscard]] constexpr std::string_view to_string(overflow_policy p) noexcept {
  switch (p) {
    case overflow_policy::block:
      return "block";
    case overflow_policy::reject:
      return "reject";
    case overflow_policy::drop_oldest:
      return "drop_oldest";
  }
  return "unknown";
}
[[nodiscard]] constexpr std::string_view to_string(submit_status s) noexcept {
  switch (s) {
    case submit_status::accepted:
      return "accepted";
    case submit_status::full:
      return "full";
    case submit_status::closed:
      return "closed";
    case submit_status::would_miss_deadline:
      return "would_miss_deadline";
    case submit_status::timeout:
      return "timeout";
  }
  return "unknown";
}
[[nodiscard]] constexpr std::string_view to_string(dead_letter_reason r) noexcept {
  switch (r) {
    case dead_letter_reason::failed:
      return "failed";
    case dead_letter_reason::expired:
      return "expired";
    case dead_letter_reason::dropped:
      return "dropped";
    case dead_letter_reason::cancelled:
      return "cancelled";
  }
  return "unknown";
}

// The result of a submission. On anything but `accepted`, `job` holds the
// job handed back to the caller; on `accepted` it is empty.
template <class Job>
struct [[nodiscard]] submit_result {
  submit_status status = submit_status::accepted;
  std::optional<Job> job;

  [[nodiscard]] bool accepted() const noexcept { return status == submit_status::accepted; }
  explicit operator bool() const noexcept { return accepted(); }
};

// What a handler may return instead of void: success, or failure with an
// optional error (handed to the dead-letter sink if the job runs out of
// attempts). Throwing from a handler is the same as returning failure with
// the thrown exception. A handler returning bool reports success with true.
class handler_result {
 public:
  [[nodiscard]] static handler_result success() noexcept { return handler_result(true, nullptr); }
  [[nodiscard]] static handler_result failure(std::exception_ptr error = nullptr) noexcept {
    return handler_result(false, std::move(error));
  }
  template <class E>
  requires(!std::same_as<std::decay_t<E>, std::exception_ptr> &&
           !std::same_as<std::decay_t<E>, std::nullptr_t>) [[nodiscard]] static handler_result
      failure(E&& error) {
    return handler_result(false, std::make_exception_ptr(std::forward<E>(error)));
  }

  [[nodiscard]] bool ok() const noexcept { return ok_; }
  [[nodiscard]] const std::exception_ptr& error() const noexcept { return error_; }

 private:
  handler_result(bool ok, std::exception_ptr e) noexcept : ok_(ok), error_(std::move(e)) {}
  bool ok_;
  std::exception_ptr error_;
};

// Retries: a failed job is attempted again after a full-jitter exponential
// backoff, uniform in [0, min(max_backoff, base_backoff * 2^(retry-1))], on a
// backend it has not failed on yet (if any), as long as
//  - it has made fewer than max_attempts attempts (1 = never retry),
//  - the retry would start before the job's deadline, and
//  - the retry budget allows it: over a sliding 10 s window, retries <=
//    min_retries_per_second * 10 + budget_ratio * first attempts.
// Otherwise it goes to the dead-letter sink as `failed` with the last error.
// Retries are opt-in (max_attempts = 1) because only idempotent jobs may be
// retried safely.
struct retry_policy {
  std::uint32_t max_attempts = 1;
  std::chrono::nanoseconds base_backoff = std::chrono::milliseconds{10};
  std::chrono::nanoseconds max_backoff = std::chrono::seconds{1};
  double budget_ratio = 0.2;
  std::uint32_t min_retries_per_second = 10;
};

namespace detail {

template <class Job>
struct leveler_handler_base {
  virtual ~leveler_handler_base() = default;
  virtual handler_result invoke(Job& job) = 0;
};

template <class Job, class H>
struct leveler_handler final : leveler_handler_base<Job> {
  explicit leveler_handler(H h) : fn(std::move(h)) {}
  handler_result invoke(Job& job) override {
    using R = std::invoke_result_t<H&, Job&>;
    if constexpr (std::is_void_v<R>) {
      std::invoke(fn, job);
      return handler_result::success();
    } else if constexpr (std::same_as<R, bool>) {
      return std::invoke(fn, job) ? handler_result::success() : handler_result::failure();
    } else {
      return handler_result(std::invoke(fn, job));
    }
  }
  H fn;
};

// Outcome counters of one backend as seen by one stats shard (see the
// leveler's stats_shard): a worker's slot is written by that worker only, so
// two workers finishing jobs on the same backend never share a cache line.
struct alignas(false_sharing_range) leveler_backend_counters {
  std::atomic<std::uint64_t> started{0};
  std::atomic<std::uint64_t> succeeded{0};
  std::atomic<std::uint64_t> failed{0};
};

template <class Job>
struct leveler_backend {
  explicit leveler_backend(std::size_t shards)
      : counters(std::make_unique<leveler_backend_counters[]>(shards)), shard_count(shards) {}
  std::uint64_t id = 0;
  std::unique_ptr<leveler_handler_base<Job>> handler;
  std::unique_ptr<leveler_backend_counters[]> counters;  // one per stats shard
  std::size_t shard_count;

  [[nodiscard]] std::uint64_t started() const noexcept {
    std::uint64_t n = 0;
    for (std::size_t i = 0; i < shard_count; ++i) n += counters[i].started.load(std::memory_order_relaxed);
    return n;
  }
  [[nodiscard]] std::uint64_t succeeded() const noexcept {
    std::uint64_t n = 0;
    for (std::size_t i = 0; i < shard_count; ++i) n += counters[i].succeeded.load(std::memory_order_relaxed);
    return n;
  }
  [[nodiscard]] std::uint64_t failed() const noexcept {
    std::uint64_t n = 0;
    for (std::size_t i = 0; i < shard_count; ++i) n += counters[i].failed.load(std::memory_order_relaxed);
    return n;
  }
};

// The most worker threads a leveler accepts (options.workers).
inline constexpr std::size_t leveler_max_workers = 1024;

inline std::size_t leveler_default_workers() noexcept {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : std::min<std::size_t>(n, leveler_max_workers);
}

}  // namespace detail

// A backend handler: callable with Job&, returning void, bool or handler_result.
template <class H, class Job>
concept job_handler = std::move_constructible<std::decay_t<H>> && std::invocable < std::decay_t<H>
&, Job& > &&(std::is_void_v<std::invoke_result_t<std::decay_t<H>&, Job&>> ||
             std::same_as<std::invoke_result_t<std::decay_t<H>&, Job&>, bool> ||
             std::convertible_to<std::invoke_result_t<std::decay_t<H>&, Job&>, handler_result>);

// ---------------------------------------------------------------------------
// leveler<Job, Strategy, Clock>
//
// Threads: with options.workers > 0, that many worker threads run handlers.
// With workers == 0 the leveler is a deterministic simulation: nothing runs
// until step() / run_until() / drain() is called, and with levee::manual_clock
// a whole spike-and-drain scenario runs exactly in milliseconds of real time.
// Without rate and concurrency gates, workers claim short queued jobs in
// batches of up to 32 and idle workers take from other workers' batches
// (see take_batch); queue_depth counts batched jobs as queued.
//
// Job requirements: nothrow move constructible (jobs move through a
// lock-free queue and batches that cannot undo a half-done move) and
// destructible. Nothing else: jobs need not be copyable, assignable or
// default constructible (a struct holding a reference is fine).
//
// Thread safety: every member function may be called from any thread
// concurrently, except step()/run_until() (one driving thread at a time) and
// the destructor. Inside the leveler - on a thread running one of its
// handlers or its dead-letter sink - the same rules hold for both: submit
// never waits (a full queue returns `full`; from the sink, drop_oldest does
// not evict either), drain() throws std::logic_error, and stop() cancels
// without waiting for the workers; metrics() and close() work as anywhere.
//
// Lifecycle, three different operations:
//  - close(): stop accepting; queued jobs and retries still run.
//  - drain(): wait until every accepted job reached its final state (retries
//    included). It does not close: jobs accepted meanwhile are waited for too.
//  - stop(): close, hand every job not yet started (queued, batched by a
//    worker, waiting for a gate, or waiting for a retry) to the dead-letter
//    sink as `cancelled`, wait for running handlers, join the workers.
//    stop_for/stop_until bound the wait for running handlers.
//
// Shutdown (the destructor) always returns, provided every running handler
// does. With workers it calls close(), then waits while accepted jobs can
// still make progress (queued, held at a gate, waiting for a rate token or a
// retry timer), then stop(). Jobs that can never run - no backend, or every
// backend out of rotation by set_healthy(false) (beyond panic), with no
// handler running - go to the dead-letter sink as `cancelled` instead of
// being waited for. A slow rate is progress:
// the destructor waits for it; call stop() or stop_for() first to cancel
// instead. In simulation mode (workers == 0) the destructor is stop(): it
// runs nothing more and cancels every job not yet run.
// ---------------------------------------------------------------------------
template <class Job, strategy Strategy = levee::round_robin, clock Clock = std::chrono::steady_clock>
class leveler {
  static_assert(std::is_move_constructible_v<Job>, "levee::leveler: Job must be move constructible");
  static_assert(
      std::is_nothrow_move_constructible_v<Job>,
      "levee::leveler: Job must be nothrow move constructible (jobs move through a lock-free queue)");

 public:
  using job_type = Job;
  using strategy_type = Strategy;
  using clock_type = Clock;
  using duration = typename Clock::duration;
  using time_point = typename Clock::time_point;
  using balancer_type = levee::balancer<Strategy, detail::leveler_cached_clock<Clock>,
                                        std::shared_ptr<detail::leveler_backend<Job>>>;
  using dead_letter_sink = std::function<void(Job&&, dead_letter_reason, std::exception_ptr)>;

  // Per-job options: an affinity key for key-based strategies (ring_hash,
  // maglev, rendezvous, jump_hash) and an absolute deadline on the
  // leveler's clock (the job is never dispatched after it).
  struct job_options {
    // (Default member initializers: designated initializers may name any
    // subset, {.key = k} or {.deadline = d}, without -Wmissing-field-initializers.)
    std::optional<std::uint64_t> key{};
    std::optional<time_point> deadline{};
  };

  struct options {
    std::size_t capacity = 1024;                        // ingress queue capacity (exact)
    overflow_policy overflow = overflow_policy::block;  // what submit() does when full
    bool deadline_admission = true;                     // refuse jobs predicted to miss their deadline
    std::optional<levee::rate> rate;                    // dispatch rate; nullopt = no rate gate
    std::uint64_t burst = 0;          // 0 = auto: ceil(rate * 5 ms), at least 2 (see jitter_reserve)
    std::size_t max_concurrency = 0;  // fixed concurrency gate; 0 = none
    std::optional<typename levee::adaptive_limit<>::options>
        adaptive;  // adaptive gate (exclusive with max_concurrency)
    // 0 = simulation mode; at most 1024 (default: the hardware threads, capped there).
    std::size_t workers = detail::leveler_default_workers();
    levee::retry_policy retry;
    // Relative to submission, for jobs without a deadline; one too large for
    // the clock (nanoseconds::max()) means no deadline.
    std::optional<duration> default_deadline;
    dead_letter_sink dead_letter;          // empty: dead-lettered jobs are destroyed (still counted)
    levee::health_options health;          // outlier ejection of backends
    std::uint64_t seed = 0x6c65766565ULL;  // backoff jitter (and strategy RNG where it has one)
  };

  // Throws std::invalid_argument naming the option for a bad one (capacity 0
  // or beyond the queue's limit, workers > 1024, a rate or burst the rate
  // gate cannot represent, negative or
  // inverted backoffs, max_attempts 0, budget_ratio < 0 or NaN, non-positive
  // default_deadline, both max_concurrency and adaptive set).
  explicit leveler(options o, Clock c = Clock{}, Strategy s = Strategy{})
      : opts_(validate(std::move(o))),
        clock_(c),
        queue_(opts_.capacity),
        balancer_(std::move(s), opts_.health, detail::leveler_cached_clock<Clock>(c)),
        budget_(opts_.retry.budget_ratio, opts_.retry.min_retries_per_second),
        arrivals_(rate_slot, rate_slots),
        work_(c),
        space_(c),
        quiet_(c),
        start_ns_(to_ns(c.now())),
        sim_ctx_(opts_.seed) {
    if (opts_.rate) make_limiter(*opts_.rate, c);
    if (opts_.adaptive) {
      adaptive_.emplace(*opts_.adaptive);
      concurrency_.emplace(adaptive_->limit());
    } else if (opts_.max_concurrency != 0) {
      concurrency_.emplace(opts_.max_concurrency);
    }
    shards_ = std::make_unique<stats_shard[]>(opts_.workers + 1);
    for (std::size_t i = 0; i <= opts_.workers; ++i) shards_[i].index = i;
    sim_ctx_.shard = &shards_[0];
    // Batches only where dispatch is immediate and FIFO eviction is not promised (see take_batch).
    batching_ =
        opts_.workers != 0 && !limiter_ && !concurrency_ && opts_.overflow != overflow_policy::drop_oldest;
    threads_.reserve(opts_.workers);
    ctxs_.reserve(opts_.workers);
    for (std::size_t i = 0; i < opts_.workers; ++i) {
      ctxs_.push_back(std::make_unique<worker_ctx>(opts_.seed + 1 + i));
      ctxs_.back()->shard = &shards_[i + 1];
      if (batching_) ctxs_.back()->batch.enable();
      shards_[i + 1].exclusive = true;
    }
    try {
      for (std::size_t i = 0; i < opts_.workers; ++i) {
        threads_.emplace_back([this, i] { worker_main(i); });
        ++launched_;
      }
    } catch (...) {
      stop();
      throw;
    }
  }

  // A leveler with a single backend: `handler` handles every job.
  template <class H>
  requires job_handler<H, Job> leveler(options o, H&& handler, Clock c = Clock{}, Strategy s = Strategy{})
      : leveler(std::move(o), std::move(c), std::move(s)) {
    add_backend(std::forward<H>(handler));
  }

  leveler(const leveler&) = delete;
  leveler& operator=(const leveler&) = delete;

  // See "Shutdown" in the class comment: close(), finish what can still run,
  // cancel the rest, stop(). Always returns (unless a handler never does).
  ~leveler() {
    close();
    if (opts_.workers != 0) settle();
    stop();
  }

  // ------------------------------------------------------------ backends --

  // Registers a backend (ids are assigned by the leveler, from 1); jobs may
  // be dispatched to it at once. weight 0 throws std::invalid_argument.
  // Blocking: briefly, while the balancer publishes its new snapshot (it
  // waits for picks in progress, never for running jobs). Wakes workers
  // waiting for a backend.
  // Memory ordering: the handler's construction happens-before its first call.
  template <class H>
  requires job_handler<H, Job> backend_id add_backend(H&& handler, backend_options bo = {}) {
    auto b = std::make_shared<detail::leveler_backend<Job>>(opts_.workers + 1);
    b->handler = std::make_unique<detail::leveler_handler<Job, std::decay_t<H>>>(std::forward<H>(handler));
    std::lock_guard lock(backends_mutex_);
    const backend_id id = next_backend_id_++;
    b->id = id;
    balancer_.add_backend(id, b, bo);
    backends_.emplace(id, std::move(b));
    if (bo.max_in_flight != 0) backend_limits_.store(true, std::memory_order_relaxed);
    work_.notify_always();
    return id;
  }

  // Removes a backend: no new job is dispatched to it; jobs running on it
  // finish normally (the handler lives until they did). Returns false if
  // there is no such backend. With no backend left, jobs wait in the queue
  // for add_backend(). Blocking: as add_backend.
  bool remove_backend(backend_id id) {
    std::lock_guard lock(backends_mutex_);
    if (backends_.erase(id) == 0) return false;
    (void)balancer_.remove_backend(id);
    return true;
  }

  // Run-time reconfiguration of a backend (see levee::balancer); false if
  // there is no such backend. Weight 0 throws std::invalid_argument.
  // Blocking: briefly, while the balancer publishes a new snapshot.
  bool set_weight(backend_id id, std::uint32_t weight) {
    const bool ok = balancer_.set_weight(id, weight);
    work_.notify_always();
    return ok;
  }
  bool set_max_in_flight(backend_id id, std::size_t max_in_flight) {
    if (max_in_flight != 0) backend_limits_.store(true, std::memory_order_relaxed);
    const bool ok = balancer_.set_max_in_flight(id, max_in_flight);
    work_.notify_always();
    return ok;
  }
  bool set_healthy(backend_id id, bool healthy) {
    const bool ok = balancer_.set_healthy(id, healthy);
    work_.notify_always();
    return ok;
  }

  [[nodiscard]] std::size_t backend_count() const {
    std::lock_guard lock(backends_mutex_);
    return backends_.size();
  }

  // ---------------------------------------------------------- submitting --

  // Never blocks and never evicts (the overflow policy is not applied):
  // accepted, or full / closed / would_miss_deadline with the job handed back.
  //
  // Memory ordering: an accepted job's submission happens-before the start of
  // its handler (and of the dead-letter sink call for it).
  [[nodiscard]] submit_result<Job> try_submit(Job job) {
    return submit_impl(std::move(job), {}, overflow_policy::reject, no_limit());
  }
  [[nodiscard]] submit_result<Job> try_submit(Job job, std::uint64_t key) {
    return submit_impl(std::move(job), job_options{key, std::nullopt}, overflow_policy::reject, no_limit());
  }
  [[nodiscard]] submit_result<Job> try_submit(Job job, time_point deadline) {
    return submit_impl(std::move(job), job_options{std::nullopt, deadline}, overflow_policy::reject,
                       no_limit());
  }
  [[nodiscard]] submit_result<Job> try_submit(Job job, std::uint64_t key, time_point deadline) {
    return submit_impl(std::move(job), job_options{key, deadline}, overflow_policy::reject, no_limit());
  }
  [[nodiscard]] submit_result<Job> try_submit(Job job, const job_options& jo) {
    return submit_impl(std::move(job), jo, overflow_policy::reject, no_limit());
  }

  // Applies options.overflow when the queue is full:
  //  - block: waits for room without a time limit (until close()/stop(),
  //    which return `closed`; or until the job's own deadline passes, which
  //    returns would_miss_deadline). It never waits, returning `full` at once
  //    with the job handed back, when called from inside the leveler (a
  //    handler or the sink: waiting could park every worker) and in
  //    simulation mode (only the driving thread frees room, by stepping).
  //  - reject: as try_submit.
  //  - drop_oldest: evicts the oldest queued job(s) to the dead-letter sink
  //    with reason `dropped` (in the calling thread) until this one fits.
  //    From the sink it does not evict (a sink re-submitting what it was
  //    handed could evict forever): a full queue returns `full`.
  // Blocking: parks on a condition variable (no CPU) while waiting for room;
  // woken by every dequeue, close() and stop().
  // Memory ordering: as try_submit.
  [[nodiscard]] submit_result<Job> submit(Job job, const job_options& jo = {}) {
    return submit_impl(std::move(job), jo, opts_.overflow, no_limit());
  }
  [[nodiscard]] submit_result<Job> submit(Job job, std::uint64_t key) {
    return submit(std::move(job), job_options{key, std::nullopt});
  }
  [[nodiscard]] submit_result<Job> submit(Job job, time_point deadline) {
    return submit(std::move(job), job_options{std::nullopt, deadline});
  }
  [[nodiscard]] submit_result<Job> submit(Job job, std::uint64_t key, time_point deadline) {
    return submit(std::move(job), job_options{key, deadline});
  }

  // As submit(), but a `block` wait gives up with `timeout` after `timeout`
  // (resp. at `until`, a time on the leveler's clock; not the job's deadline).
  // A timeout too large for the clock (hours::max()) means no time limit.
  template <class Rep, class Per>
  [[nodiscard]] submit_result<Job> submit_for(Job job, std::chrono::duration<Rep, Per> timeout,
                                              const job_options& jo = {}) {
    return submit_until(std::move(job), detail::deadline_after<Clock>(clock_.now(), timeout), jo);
  }
  [[nodiscard]] submit_result<Job> submit_until(Job job, time_point until, const job_options& jo = {}) {
    return submit_impl(std::move(job), jo, opts_.overflow, until);
  }

  // ----------------------------------------------------------- lifecycle --

  // Stops accepting: every later submission returns `closed`; blocked
  // submitters return `closed`. Queued jobs and retries still run. Idempotent.
  // Blocking: none.
  // Memory ordering: close() happens-before every submission it refuses.
  void close() {
    closed_.store(true, std::memory_order_seq_cst);
    space_.notify_always();
    work_.notify_always();
  }

  [[nodiscard]] bool is_closed() const noexcept { return closed_.load(std::memory_order_acquire); }

  // Waits until every accepted job has reached its final state (succeeded or
  // dead-lettered), retries included. Does not close the leveler.
  // Blocking: parks (no CPU) until the outstanding count reaches zero. In
  // simulation mode (no workers) it drives the simulation instead: it steps
  // and, if the clock can be set (manual_clock), moves it to each next event;
  // with another clock it sleeps until the next event. It throws
  // std::logic_error if jobs are outstanding but no event can ever move them
  // (no backend, or every backend saturated). Throws std::logic_error when
  // called from a handler of this leveler.
  // Memory ordering: the final state of every job (handler return, sink
  // call) happens-before drain() returns.
  void drain() { (void)drain_until(time_point::max()); }

  // As drain(), giving up at `until` / after `timeout`; true if drained. A
  // timeout too large for the clock (hours::max()) means no time limit.
  template <class Rep, class Per>
  [[nodiscard]] bool drain_for(std::chrono::duration<Rep, Per> timeout) {
    return drain_until(detail::deadline_after<Clock>(clock_.now(), timeout));
  }
  [[nodiscard]] bool drain_until(time_point until) {
    if (inside())
      throw std::logic_error(
          "levee::leveler::drain: called from a handler or the dead-letter sink of the same leveler (would "
          "wait for itself)");
    if (opts_.workers == 0) return simulate_until(until, true);
    for (;;) {
      if (outstanding() == 0) return true;
      const auto ticket = quiet_.prepare();
      if (outstanding() == 0) {
        quiet_.cancel();
        return true;
      }
      if (until != time_point::max() && clock_.now() >= until) {
        quiet_.cancel();
        return false;
      }
      quiet_.wait_until(ticket, until);
    }
  }

  // Closes, then hands every job not yet started to the dead-letter sink as
  // `cancelled` (in the calling thread, and in workers for the job each one
  // holds), waits for running handlers to return and joins the workers. A job
  // whose running attempt fails after stop() began is dead-lettered as
  // `cancelled` with that error instead of being retried. Idempotent; any
  // number of threads may call it at once, and each returns only after every
  // worker has exited.
  // Called from inside the leveler (a handler or the dead-letter sink), it
  // closes and cancels but does not wait: its own worker cannot exit before
  // it returns. The workers then finish their running handlers and exit; the
  // next stop() from outside (or the destructor) waits for them and joins.
  // Blocking: until every running handler returned (never holds a lock while
  // waiting). Memory ordering: every worker's last action happens-before
  // stop() returns (when not called from inside the leveler).
  void stop() { (void)stop_until(time_point::max()); }

  // As stop(), but waits for running handlers only until `until` / for
  // `timeout` (on the leveler's clock); true if every worker has exited (and
  // was joined), false otherwise (the jobs not started are cancelled either
  // way; a later stop() or the destructor waits for the rest). From inside
  // the leveler it never waits and returns true only in simulation mode.
  template <class Rep, class Per>
  [[nodiscard]] bool stop_for(std::chrono::duration<Rep, Per> timeout) {
    return stop_until(detail::deadline_after<Clock>(clock_.now(), timeout));
  }
  [[nodiscard]] bool stop_until(time_point until) {
    closed_.store(true, std::memory_order_seq_cst);
    stopping_.store(true, std::memory_order_seq_cst);
    queue_.close();
    space_.notify_always();
    work_.notify_always();
    // Jobs not yet started are cancelled before waiting for running handlers
    // (workers may pop concurrently: each job is taken by exactly one
    // thread); the second sweep catches what workers left behind.
    cancel_everything_queued();
    stopped_.store(true, std::memory_order_release);
    if (inside()) return opts_.workers == 0;
    for (;;) {
      if (exited_.load(std::memory_order_acquire) == launched_) break;
      const auto ticket = quiet_.prepare();
      if (exited_.load(std::memory_order_acquire) == launched_) {
        quiet_.cancel();
        break;
      }
      if (until != time_point::max() && clock_.now() >= until) {
        quiet_.cancel();
        return false;
      }
      quiet_.wait_until(ticket, until);
    }
    // Every worker has run its last action; joining only reclaims the threads
    // (one caller takes them: no lock is held while joining).
    std::vector<std::thread> exited;
    {
      std::lock_guard lock(stop_mutex_);
      exited.swap(threads_);
    }
    for (auto& t : exited)
      if (t.joinable()) t.join();
    cancel_everything_queued();
    quiet_.notify_always();
    return true;
  }

  // ----------------------------------------------------- simulation mode --

  // Dispatches everything that can be dispatched at the clock's current time
  // (handlers run in the calling thread) and returns how many jobs reached
  // dispatch (handler run or dead-lettered as expired). Only in simulation
  // mode (workers == 0); otherwise throws std::logic_error.
  std::size_t step() {
    require_simulation("step");
    std::size_t n = 0;
    while (!stopping_.load(std::memory_order_acquire)) {
      const auto r = try_progress(sim_ctx_, clock_.now());
      if (r.kind != progress::progressed) {
        sim_wait_ = r;
        break;
      }
      ++n;
    }
    return n;
  }

  // Runs the simulation up to time t: steps, moves the clock to the next
  // event (token due, retry due) while it is <= t, and finally sets the clock
  // to t (never backwards). Requires a settable clock such as manual_clock.
  // Returns the number of jobs that reached dispatch.
  std::size_t run_until(time_point t) requires requires(Clock& c, time_point tp) { c.set(tp); }
  {
    require_simulation("run_until");
    std::size_t n = 0;
    simulate(t, false, n);
    if (clock_.now() < t) clock_.set(t);
    return n;
  }

  // Simulation mode: the time of the next event the last step() stopped at
  // (a rate token for the job at the head, or the next retry becoming due
  // when nothing else is waiting), or nullopt if it waits for nothing timed
  // (idle, or for a backend / concurrency slot).
  [[nodiscard]] std::optional<time_point> next_event() const {
    if (sim_wait_.kind == progress::progressed || sim_wait_.kind == progress::wait_capacity)
      return std::nullopt;
    if (sim_wait_.until == time_point::max()) return std::nullopt;
    return sim_wait_.until;
  }

  // ------------------------------------------------------ configuration --

  // Changes the dispatch rate / burst at run time (future windows follow the
  // new values). Throws std::logic_error if the leveler has no rate gate.
  void set_rate(levee::rate r) {
    require_limiter("set_rate").set_rate(r);
    work_.notify_always();
  }
  void set_burst(std::uint64_t b) {
    require_limiter("set_burst").set_burst(b);
    auto_burst_.store(0, std::memory_order_relaxed);  // an explicit burst has no jitter reserve
    work_.notify_always();
  }
  // Changes a fixed concurrency limit. Throws std::logic_error without one
  // (or when the limit is adaptive).
  void set_concurrency_limit(std::size_t limit) {
    if (!concurrency_ || is_adaptive())
      throw std::logic_error(
          "levee::leveler::set_concurrency_limit: the leveler has no fixed concurrency limit");
    concurrency_->set_limit(limit);
    work_.notify_always();
  }

  [[nodiscard]] const options& get_options() const noexcept { return opts_; }
  [[nodiscard]] const Clock& get_clock() const noexcept { return clock_; }
  // Accepted jobs not yet in a final state (queued, held at a gate, running,
  // or waiting for a retry). Exact when quiescent; a hint under concurrency.
  [[nodiscard]] std::uint64_t outstanding() const noexcept {
    std::uint64_t done = 0;
    for (std::size_t i = 0; i <= opts_.workers; ++i) done += shards_[i].finished();
    // Final states are counted with release after the acceptance, so
    // reading them (acquire) before `accepted` never yields done > accepted.
    const std::uint64_t accepted = accepted_total();
    return accepted > done ? accepted - done : 0;
  }

  // ------------------------------------------------------------- metrics --

  // A snapshot of counters, gauges, histograms and rate estimates (see
  // levee/metrics.hpp). Allocates; takes the backend registry's and the
  // balancer's mutexes briefly; never waits for jobs. Callable from handlers.
  // Memory ordering: final-state counters are read with acquire before the
  // acceptance counters, so succeeded + dead_lettered <= accepted always holds
  // in a snapshot; other fields are individually (not jointly) consistent.
  [[nodiscard]] metrics_snapshot metrics() const;

 private:
  // ------------------------------------------------------------- types --
  static constexpr std::int64_t no_retry = std::numeric_limits<std::int64_t>::max();
  static constexpr std::chrono::nanoseconds rate_slot{std::chrono::milliseconds{100}};
  static constexpr std::size_t rate_slots = 12;

  // What a failed attempt leaves behind; allocated on the first failure only.
  struct failure_state {
    std::vector<backend_id> failed_on;
    std::exception_ptr last_error;
  };

  // Out of line: an envelope is destroyed several times per job on its way
  // (queue slot, batch, dispatch), almost always without a failure_state,
  // and GCC 12 does not inline a unique_ptr destructor that inlines this.
  struct failure_deleter {
    [[gnu::noinline]] void operator()(failure_state* p) const noexcept { delete p; }
  };

  // A job and its bookkeeping, as it travels through the queue. Kept small:
  // with a pointer-sized Job an envelope and the queue's stamp share one
  // cache line, so a submit and a dispatch touch one line of the ring.
  // Move-assignable even when Job is not (the retry heap and optionals assign
  // envelopes): the assignment destroys the job and move-constructs the new
  // one in place, which cannot throw (Job is nothrow move constructible).
  struct envelope {
    Job job;
    std::uint64_t key = 0;
    time_point deadline = time_point::max();
    time_point ready{};  // enqueued, or retry backoff elapsed
    std::uint32_t attempts = 0;
    bool has_key = false;
    std::unique_ptr<failure_state, failure_deleter> failure;

    envelope(Job&& j, std::uint64_t k, time_point dl, time_point rd, bool hk) noexcept
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

  // The ingress queue's limit, and what fits in memory with room to spare.
  static constexpr std::size_t max_capacity = std::min<std::size_t>(
      std::size_t{1} << 40, static_cast<std::size_t>(PTRDIFF_MAX) / (2 * sizeof(envelope) + 64));

  // See take_batch.
  static constexpr std::size_t batch_max = 32;
  static constexpr std::int64_t batch_service_limit_ns = 5000;

  static_assert(std::is_nothrow_move_constructible_v<envelope>,
                "levee: batches need envelopes that move without throwing");

  struct retry_item {
    std::int64_t ready_ns;
    std::uint64_t seq;
    envelope env;
  };

  // Statistics of one worker (written by that worker only: plain
  // load/store, no read-modify-write) or, for shard 0, of every other thread
  // (simulation driver, submitters evicting with drop_oldest, stop()).
  struct alignas(detail::false_sharing_range) stats_shard {
    bool exclusive = false;
    std::atomic<std::uint64_t> started{0}, succeeded{0}, failed{0}, retried{0}, budget_denied{0};
    std::atomic<std::uint64_t> dl_failed{0}, dl_expired{0}, dl_dropped{0}, dl_cancelled{0}, sink_errors{0};
    std::atomic<std::size_t> in_flight{0};
    detail::metrics_histogram dwell, service;
    detail::leveler_window_counter dispatches{rate_slot, rate_slots};

    std::size_t index = 0;  // position in shards_ (and in each backend's counters)
    void inc(std::atomic<std::uint64_t>& a, std::memory_order o = std::memory_order_relaxed) noexcept {
      if (exclusive) {
        a.store(a.load(std::memory_order_relaxed) + 1, o);
      } else {
        a.fetch_add(1, o);
      }
    }
    [[nodiscard]] std::uint64_t finished() const noexcept {
      return succeeded.load(std::memory_order_acquire) + dl_failed.load(std::memory_order_acquire) +
             dl_expired.load(std::memory_order_acquire) + dl_dropped.load(std::memory_order_acquire) +
             dl_cancelled.load(std::memory_order_acquire);
    }
    void count_dispatch(std::int64_t now_ns) noexcept {
      if (exclusive) {
        dispatches.add_exclusive(now_ns);
      } else {
        dispatches.add(now_ns);
      }
    }
    void record(detail::metrics_histogram& h, std::uint64_t v) noexcept {
      if (exclusive) {
        h.record_exclusive(v);
      } else {
        h.record(v);
      }
    }
  };

  struct worker_ctx {
    explicit worker_ctx(std::uint64_t seed) : rng(seed), pick_rng(seed ^ 0x9e3779b97f4a7c15ULL) {}
    std::optional<envelope> held;  // popped, waiting for a gate
    detail::leveler_batch<envelope, batch_max>
        batch;                         // taken from the queue together, not started yet (see take_batch)
    std::int64_t last_service_ns = 0;  // of the last job this context ran
    // The lease of the job this context ran last, kept (feedback recorded)
    // while it keeps finding work: the next pick reuses it when it lands on
    // the same backend (balancer::try_pick_keeping). Released whenever the
    // context stops progressing.
    std::optional<typename balancer_type::lease> kept;
    detail::leveler_rng rng;  // backoff jitter
    levee::rng pick_rng;      // the strategy's randomness (deterministic per seed in simulation)
    stats_shard* shard = nullptr;
  };

  enum class progress { progressed, idle, wait_rate, wait_capacity };
  struct progress_result {
    progress kind = progress::idle;
    time_point until = time_point::max();
  };

  // ------------------------------------------------------- validation --
  static options validate(options o) {
    if (o.capacity == 0) throw std::invalid_argument("levee::leveler: options.capacity must be > 0, got 0");
    if (o.capacity > max_capacity)
      throw std::invalid_argument("levee::leveler: options.capacity must be <= " +
                                  std::to_string(max_capacity) + ", got " + std::to_string(o.capacity));
    if (o.workers > detail::leveler_max_workers)
      throw std::invalid_argument(
          "levee::leveler: options.workers must be <= " + std::to_string(detail::leveler_max_workers) +
          ", got " + std::to_string(o.workers));
    if (o.retry.max_attempts == 0)
      throw std::invalid_argument("levee::leveler: options.retry.max_attempts must be >= 1, got 0");
    if (o.retry.base_backoff.count() < 0)
      throw std::invalid_argument("levee::leveler: options.retry.base_backoff must be >= 0, got " +
                                  std::to_string(o.retry.base_backoff.count()) + " ns");
    if (o.retry.max_backoff < o.retry.base_backoff)
      throw std::invalid_argument(
          "levee::leveler: options.retry.max_backoff (" + std::to_string(o.retry.max_backoff.count()) +
          " ns) must be >= base_backoff (" + std::to_string(o.retry.base_backoff.count()) + " ns)");
    if (!(o.retry.budget_ratio >= 0.0) || std::isinf(o.retry.budget_ratio))
      throw std::invalid_argument("levee::leveler: options.retry.budget_ratio must be finite and >= 0, got " +
                                  std::to_string(o.retry.budget_ratio));
    if (o.default_deadline && *o.default_deadline <= duration::zero())
      throw std::invalid_argument(
          "levee::leveler: options.default_deadline must be > 0, got " +
          std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(*o.default_deadline).count()) +
          " ns");
    if (o.adaptive && o.max_concurrency != 0)
      throw std::invalid_argument("levee::leveler: set either options.max_concurrency (" +
                                  std::to_string(o.max_concurrency) + ") or options.adaptive, not both");
    return o;
  }

  // Enough credit to absorb ~5 ms of wake-up lateness (timer slack is
  // ~50-100 us, scheduling delays on a loaded machine several ms; 2 ms
  // measured short by 1-2% under load): a late worker dispatches the missed
  // tokens as a catch-up batch, so the long-run rate stays exact. With burst
  // 1 every late wake-up would be lost time.
  static std::uint64_t auto_burst(const levee::rate& r) {
    const double per_5ms = r.per_second_value() / 200.0;
    return std::max<std::uint64_t>(2, static_cast<std::uint64_t>(std::ceil(per_5ms)));
  }
  // With the automatic burst b, the gate itself admits at most b minus the
  // tokens of 100 us, and at least one token when b > 2: a handler starts a
  // little after its admission (and workers run in parallel), and this
  // reserve keeps the times handlers start - what a downstream sees - within
  // b + r x w as long as those delays differ by at most 100 us (by at most
  // one interval at rates below 10k/s). Always < b / 2.
  static std::uint64_t jitter_reserve(const levee::rate& r) {
    if (auto_burst(r) <= 2) return 0;
    return std::max<std::uint64_t>(1,
                                   static_cast<std::uint64_t>(std::floor(r.per_second_value() / 10'000.0)));
  }

  // The rate gate; a rate or burst the limiter refuses is reported as the
  // option that caused it.
  void make_limiter(const levee::rate& r, const Clock& c) {
    const std::uint64_t b = opts_.burst != 0 ? opts_.burst : auto_burst(r) - jitter_reserve(r);
    try {
      limiter_.emplace(r, b, c);
    } catch (const std::invalid_argument& e) {
      bool rate_ok = true;
      try {
        rate_limiter<Clock> probe(r, 1, c);
      } catch (const std::invalid_argument&) {
        rate_ok = false;
      }
      throw std::invalid_argument(
          std::string("levee::leveler: options.") +
          (rate_ok ? "burst (" + std::to_string(opts_.burst) + ")" : std::string("rate")) +
          " is not usable: " + e.what());
    }
    if (opts_.burst == 0) auto_burst_.store(auto_burst(r), std::memory_order_relaxed);
  }

  void require_simulation(const char* fn) const {
    if (opts_.workers != 0)
      throw std::logic_error(
          std::string("levee::leveler::") + fn +
          ": only in simulation mode (options.workers == 0), workers = " + std::to_string(opts_.workers));
  }
  auto& require_limiter(const char* fn) {
    if (!limiter_)
      throw std::logic_error(std::string("levee::leveler::") + fn +
                             ": the leveler has no rate gate (options.rate)");
    return *limiter_;
  }

  // ------------------------------------------------------------ time --
  static std::int64_t to_ns(time_point t) noexcept {
    return detail::saturating_ceil<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  }
  static time_point from_ns(std::int64_t ns) noexcept {
    return time_point(std::chrono::duration_cast<duration>(std::chrono::nanoseconds{ns}));
  }
  static constexpr time_point no_limit() noexcept { return time_point::max(); }

  // The time for measurements only (queue dwell, service time, rate
  // windows): on steady_clock an extrapolation of the CPU's time-stamp
  // counter, within 1 us of the real clock (typically ~20 ns) at a third of the cost (see
  // detail/tsc_clock.hpp); the clock itself otherwise. Deadline checks and
  // the rate gate always read the clock.
  [[nodiscard]] time_point measure_now() const {
    if constexpr (std::is_same_v<Clock, std::chrono::steady_clock>) {
      return detail::measurement_now();
    } else {
      return clock_.now();
    }
  }

  // "Called from inside the leveler": set on a thread while it runs a handler
  // or the dead-letter sink of this leveler (one marker for both, so both
  // follow the same rules: a blocking submit never waits, drain() throws,
  // stop() does not wait for workers). `sink` is true while the sink runs: a
  // drop_oldest submit from the sink never evicts (it could evict forever).
  struct inside_marker {
    const leveler* owner = nullptr;
    bool sink = false;
  };
  static inline thread_local inside_marker inside_{};
  class inside_scope {
   public:
    inside_scope(const leveler* owner, bool sink) noexcept : prev_(inside_) { inside_ = {owner, sink}; }
    ~inside_scope() { inside_ = prev_; }
    inside_scope(const inside_scope&) = delete;
    inside_scope& operator=(const inside_scope&) = delete;

   private:
    inside_marker prev_;
  };
  [[nodiscard]] bool inside() const noexcept { return inside_.owner == this; }
  [[nodiscard]] bool inside_sink() const noexcept { return inside_.owner == this && inside_.sink; }

  // ---------------------------------------------------------- submit --
  // Every accepted job is pushed into the ingress queue exactly once (retries
  // go to the retry heap), so the queue's push count is the acceptance count:
  // no counter of its own to increment per submit. A push counts from the
  // moment it claims its slot, before a worker can pop the job; a job's
  // final state is counted with release after the worker acquired the slot,
  // so a reader that acquires the final-state counters first and this count
  // second never sees more jobs finished than accepted.
  [[nodiscard]] std::uint64_t accepted_total() const noexcept { return queue_.push_count(); }
  [[nodiscard]] std::uint64_t submitted_total() const noexcept {
    return accepted_total() + door_.rejected_full.load(std::memory_order_relaxed) +
           door_.rejected_closed.load(std::memory_order_relaxed) +
           door_.rejected_deadline.load(std::memory_order_relaxed) +
           door_.rejected_timeout.load(std::memory_order_relaxed);
  }

  submit_result<Job> reject(Job&& job, submit_status s) {
    auto& door = door_;
    switch (s) {
      case submit_status::full:
        door.rejected_full.fetch_add(1, std::memory_order_relaxed);
        break;
      case submit_status::closed:
        door.rejected_closed.fetch_add(1, std::memory_order_relaxed);
        break;
      case submit_status::would_miss_deadline:
        door.rejected_deadline.fetch_add(1, std::memory_order_relaxed);
        break;
      case submit_status::timeout:
        door.rejected_timeout.fetch_add(1, std::memory_order_relaxed);
        break;
      case submit_status::accepted:
        break;
    }
    return submit_result<Job>{s, std::optional<Job>(std::move(job))};
  }

  // Predicted dispatch time of a job entering now, from the backlog and the
  // rate gate's schedule (GCRA: the k-th next token is due at available_at(k)
  // for k <= burst, then one emission interval apart).
  [[nodiscard]] bool admissible(time_point deadline, time_point now) const {
    if (deadline < now) return false;
    if (!limiter_) return true;
    // Everything accepted and not yet running is ahead of this job: queued,
    // held by a worker at a gate, or waiting for a retry (conservative: a
    // retry may become due after this job's dispatch).
    const std::uint64_t out = outstanding();
    const std::uint64_t running = in_flight_total();
    const std::uint64_t ahead = out > running ? out - running : 0;
    const std::uint64_t k = ahead + 1;
    // set_burst() may lower the burst between reading it and asking for the
    // k-th token (available_at(n) refuses n > burst): read again and retry.
    for (;;) {
      const std::uint64_t b = std::max<std::uint64_t>(limiter_->burst(), 1);
      time_point at;
      try {
        at = limiter_->available_at(std::min(k, b), now);
      } catch (const std::invalid_argument&) {
        continue;
      }
      if (k > b) {
        // Saturates: a far-away prediction must refuse the job, never wrap around.
        const auto T = detail::saturating_ceil<duration>(limiter_->get_rate().emission_interval());
        at = detail::saturating_add(at, detail::saturating_mul(T, static_cast<double>(k - b)));
      }
      return std::max(at, now) <= deadline;
    }
  }

  // High-water mark of outstanding(): exact in simulation mode; with worker
  // threads sampled at every 64th acceptance (reading every worker's
  // counters on each submission would make producers and workers contend).
  void track_peak() noexcept {
    // The push count is on the line this submit's push just wrote.
    if (opts_.workers != 0 && (accepted_total() & 63) != 0) return;
    const std::uint64_t now_out = outstanding();
    std::uint64_t peak = outstanding_peak_.load(std::memory_order_relaxed);
    while (now_out > peak &&
           !outstanding_peak_.compare_exchange_weak(peak, now_out, std::memory_order_relaxed)) {
    }
  }
  // A job reached its final state (already counted in shard s). Workers do
  // not wake drain() per job: they do it when they run out of work (see
  // worker_main), which is the only time the count can have reached zero
  // for good. Other threads wake it directly.
  void finish_one(const stats_shard& s) {
    if (!s.exclusive) quiet_.notify();
  }

  // A job evicted by drop_oldest reaches the sink only once the job that
  // evicted it is in (or refused): a sink that re-submits what it is handed
  // then finds the queue full instead of taking the slot freed for that job.
  struct evicted_job {
    leveler* self;
    std::optional<envelope> env;
    void flush() noexcept {
      if (!env) return;
      std::optional<envelope> e;
      e.swap(env);
      self->dead_letter(self->door_shard(), std::move(*e), dead_letter_reason::dropped);
    }
    ~evicted_job() { flush(); }
  };

  submit_result<Job> submit_impl(Job&& job, const job_options& jo, overflow_policy policy, time_point until) {
    // Without a deadline, `now` only stamps the job (dwell) and counts the arrival.
    const time_point now = jo.deadline || opts_.default_deadline ? clock_.now() : measure_now();
    arrivals_.observe(to_ns(now), [&] { return submitted_total(); });
    if (closed_.load(std::memory_order_seq_cst)) return reject(std::move(job), submit_status::closed);
    time_point deadline = time_point::max();
    if (jo.deadline) {
      deadline = *jo.deadline;
    } else if (opts_.default_deadline) {
      deadline = detail::saturating_add(now, *opts_.default_deadline);
    }
    if (deadline != time_point::max()) {
      if (opts_.deadline_admission ? !admissible(deadline, now) : deadline < now)
        return reject(std::move(job), submit_status::would_miss_deadline);
    }
    envelope env(std::move(job), jo.key.value_or(0), deadline, now, jo.key.has_value());
    // The acceptance is counted by the push itself (see accepted_total).
    auto refuse = [&](submit_status st) { return reject(std::move(env.job), st); };
    evicted_job evicted{this, std::nullopt};
    int spins = 0;
    for (;;) {
      if (push(env)) {
        work_.notify_one();
        track_peak();
        return submit_result<Job>{submit_status::accepted, std::nullopt};
      }
      if (queue_.is_closed() || closed_.load(std::memory_order_seq_cst)) return refuse(submit_status::closed);
      if (policy == overflow_policy::reject) return refuse(submit_status::full);
      if (policy == overflow_policy::drop_oldest && !inside_sink()) {
        evicted.flush();  // a racing producer took the slot freed last time
        evicted.env = pop_queue();
        continue;
      }
      // block (or drop_oldest from the sink)
      if (inside() || opts_.workers == 0) return refuse(submit_status::full);
      const time_point limit = std::min(until, deadline);
      // A full queue usually frees a slot within a dequeue or two: yield a
      // few times before parking (parking per slot would cost a context
      // switch per job when producers outrun the workers).
      if (spins < max_submit_spins) {
        ++spins;
        std::this_thread::yield();
        if (limit == time_point::max() || clock_.now() < limit) continue;
      }
      const auto ticket = space_.prepare();
      if (push(env)) {
        space_.cancel();
        work_.notify_one();
        track_peak();
        return submit_result<Job>{submit_status::accepted, std::nullopt};
      }
      if (queue_.is_closed() || closed_.load(std::memory_order_seq_cst)) {
        space_.cancel();
        continue;  // reported as closed above
      }
      if (limit != time_point::max() && clock_.now() >= limit) {
        space_.cancel();
        return refuse(deadline <= until ? submit_status::would_miss_deadline : submit_status::timeout);
      }
      space_.wait_until(ticket, limit);
    }
  }

  // ---------------------------------------------------------- queue io --
  // Batching. A worker draining a deep queue of short jobs would otherwise
  // claim the queue's head once per job, and with several workers that
  // cache line moves between cores on every claim (measured: about a third
  // of the per-job cost with 2 workers and an empty handler). So, where
  // dispatch is immediate (no rate or concurrency gate, no backend
  // max_in_flight, not drop_oldest, which promises to evict the oldest
  // queued job) and this worker's last job took < batch_service_limit, a
  // worker takes up to batch_max jobs with one claim into its batch and runs
  // them in order. Any worker that finds the queue empty takes from another
  // worker's batch (steal) before it idles, and a refill of more than one
  // job wakes a parked worker, so a job is never stranded behind a slow
  // handler while a worker is free. Batched jobs count in queue_depth and
  // are cancelled by stop() like queued ones.
  [[nodiscard]] bool batch_allowed(const worker_ctx& c) const noexcept {
    return batching_ && c.last_service_ns < batch_service_limit_ns &&
           !backend_limits_.load(std::memory_order_relaxed);
  }
  std::optional<envelope> take_batch(worker_ctx& c) {
    const std::size_t n =
        c.batch.refill([&](auto out, std::size_t max) noexcept { return queue_.try_pop_bulk(out, max); });
    if (n == 0) return std::nullopt;
    if (opts_.overflow == overflow_policy::block) space_.notify();
    if (n > 1) work_.notify_one();
    return c.batch.take(true);  // empty only if other workers took all n already
  }
  std::optional<envelope> steal(const worker_ctx& c) {
    const std::size_t w = ctxs_.size();
    if (w < 2) return std::nullopt;
    const std::size_t self = c.shard->index - 1;
    for (std::size_t k = 1; k < w; ++k)
      if (auto e = ctxs_[(self + k) % w]->batch.take(false)) return e;
    return std::nullopt;
  }
  bool push(envelope& env) { return queue_.try_push(std::move(env)); }
  std::optional<envelope> pop_queue() {
    auto e = queue_.try_pop();
    // Only a submit() under overflow_policy::block ever waits for room: with
    // another policy the per-pop fence of notify() is skipped.
    if (e && opts_.overflow == overflow_policy::block) space_.notify();
    return e;
  }

  void push_retry(envelope&& env, std::int64_t ready_ns) {
    std::lock_guard lock(retry_mutex_);
    retries_.push_back(retry_item{ready_ns, retry_seq_++, std::move(env)});
    std::push_heap(retries_.begin(), retries_.end(), retry_later);
    retry_count_.store(retries_.size(), std::memory_order_relaxed);
    next_retry_ns_.store(retries_.front().ready_ns, std::memory_order_release);
  }
  static bool retry_later(const retry_item& a, const retry_item& b) noexcept {
    return a.ready_ns != b.ready_ns ? a.ready_ns > b.ready_ns : a.seq > b.seq;
  }
  std::optional<envelope> pop_due_retry(std::int64_t now_ns) {
    if (next_retry_ns_.load(std::memory_order_acquire) > now_ns) return std::nullopt;
    std::lock_guard lock(retry_mutex_);
    if (retries_.empty() || retries_.front().ready_ns > now_ns) return std::nullopt;
    std::pop_heap(retries_.begin(), retries_.end(), retry_later);
    envelope env = std::move(retries_.back().env);
    retries_.pop_back();
    retry_count_.store(retries_.size(), std::memory_order_relaxed);
    next_retry_ns_.store(retries_.empty() ? no_retry : retries_.front().ready_ns, std::memory_order_release);
    return env;
  }

  // ------------------------------------------------------- final states --
  stats_shard& door_shard() noexcept { return shards_[0]; }
  static stats_shard& shard_of(const worker_ctx& c) noexcept { return *c.shard; }

  void dead_letter(stats_shard& s, envelope&& env, dead_letter_reason reason) noexcept {
    switch (reason) {
      case dead_letter_reason::failed:
        s.inc(s.dl_failed, std::memory_order_release);
        break;
      case dead_letter_reason::expired:
        s.inc(s.dl_expired, std::memory_order_release);
        break;
      case dead_letter_reason::dropped:
        s.inc(s.dl_dropped, std::memory_order_release);
        break;
      case dead_letter_reason::cancelled:
        s.inc(s.dl_cancelled, std::memory_order_release);
        break;
    }
    if (opts_.dead_letter) {
      inside_scope mark(this, true);
      try {
        opts_.dead_letter(std::move(env.job), reason, env.last_error());
      } catch (...) {
        s.inc(s.sink_errors);
      }
    }
    finish_one(s);
  }

  void cancel_everything_queued() {
    auto& s = door_shard();
    // Taken out before the sink runs: a sink may call stop() again.
    std::optional<envelope> held;
    if (opts_.workers == 0) {
      sim_ctx_.kept.reset();
      held.swap(sim_ctx_.held);
    }
    if (held) dead_letter(s, std::move(*held), dead_letter_reason::cancelled);
    // The queue is closed: no new position can be claimed, but a push that
    // claimed one before close() may still be publishing (try_pop reports
    // empty until it does), so loop on the claimed count, not on try_pop.
    while (queue_.size_approx() != 0) {
      if (auto e = queue_.try_pop()) {
        dead_letter(s, std::move(*e), dead_letter_reason::cancelled);
      } else {
        std::this_thread::yield();
      }
    }
    // Jobs in workers' batches were not started either (a worker refilling
    // concurrently cancels what it took when it sees stopping_).
    for (auto& w : ctxs_)
      while (auto e = w->batch.take(false)) dead_letter(s, std::move(*e), dead_letter_reason::cancelled);
    std::vector<retry_item> pending;
    {
      std::lock_guard lock(retry_mutex_);
      pending.swap(retries_);
      retry_count_.store(0, std::memory_order_relaxed);
      next_retry_ns_.store(no_retry, std::memory_order_release);
    }
    std::sort(pending.begin(), pending.end(),
              [](const retry_item& a, const retry_item& b) { return retry_later(b, a); });
    for (auto& r : pending) dead_letter(s, std::move(r.env), dead_letter_reason::cancelled);
  }

  // ----------------------------------------------------------- dispatch --

  // One scheduling decision at time `now` for context c: take a job (due
  // retries first, then the queue), expire it, or pass it through the gates
  // and run it. The gates are ordered so that no rate token is spent unless
  // the job is dispatched at `now`: a side-effect-free rate check, then the
  // concurrency permit, then the backend lease, then the token itself.
  progress_result try_progress(worker_ctx& c, time_point now) {
    const std::int64_t now_ns = to_ns(now);
    // The job is taken into a local: c.held only holds a job while it waits
    // at a gate (never while its handler runs, so a stop() from that handler
    // cannot cancel it), and the common case - popped and dispatched at once
    // - moves the envelope only out of the queue.
    std::optional<envelope> taken;
    if (c.held) {
      taken.emplace(std::move(*c.held));
      c.held.reset();
    } else if (auto r = pop_due_retry(now_ns)) {
      taken.emplace(std::move(*r));
    } else if ((taken = c.batch.take(true))) {
    } else if (batch_allowed(c) && c.batch.refillable() && (taken = take_batch(c))) {
    } else {
      taken = pop_queue();
      if (!taken && batching_) taken = steal(c);
      if (!taken) {
        c.kept.reset();
        const auto nr = next_retry_ns_.load(std::memory_order_acquire);
        return {progress::idle, nr == no_retry ? time_point::max() : from_ns(nr)};
      }
    }
    envelope& env = *taken;
    // Workers pass the previous job's end time as `now` to save a clock
    // read; a job with a deadline gets a fresh one, so that it is never
    // dispatched after its deadline.
    if constexpr (!waitable_clock<Clock>) {
      if (env.deadline != time_point::max() && &c != &sim_ctx_) now = clock_.now();
    }
    if (env.deadline < now) {
      dead_letter(shard_of(c), std::move(env), dead_letter_reason::expired);
      return {progress::progressed, now};
    }
    auto hold = [&](progress k, time_point until) {
      c.kept.reset();
      c.held.emplace(std::move(env));
      return progress_result{k, until};
    };
    if (limiter_) {
      const time_point at = limiter_->available_at(1, now);
      if (at > now) return hold(progress::wait_rate, at);
    }
    std::optional<levee::permit> permit;
    if (concurrency_) {
      auto p = concurrency_->try_acquire();
      if (!p) return hold(progress::wait_capacity, time_point::max());
      permit.emplace(std::move(p));
    }
    std::optional<typename balancer_type::lease> lease;
    {
      typename detail::leveler_cached_clock<Clock>::scope at_now(now);
      lease = pick(c, env);
    }
    if (!lease) return hold(progress::wait_capacity, time_point::max());
    if (limiter_ && !limiter_->try_acquire(1, now))
      return hold(progress::wait_rate, limiter_->available_at(1, now));
    return {progress::progressed, run(c, std::move(env), std::move(*lease), std::move(permit), now)};
  }

  // A retry prefers backends the job has not failed on. When none of those
  // is eligible right now (all tried, ejected, unhealthy or saturated) it
  // falls back to any eligible backend rather than stall.
  std::optional<typename balancer_type::lease> pick(worker_ctx& c, const envelope& env) {
    pick_request req;
    if (env.has_key) req.key = env.key;
    req.random = &c.pick_rng;
    if (env.failure && !env.failure->failed_on.empty()) {
      const auto& tried = env.failure->failed_on;
      req.exclude = std::span<const backend_id>(tried.data(), tried.size());
      if (auto l = balancer_.try_pick_keeping(req, c.kept)) return l;
      req.exclude = {};
    }
    return balancer_.try_pick_keeping(req, c.kept);
  }

  // Runs one attempt and returns the time it ended.
  time_point run(worker_ctx& c, envelope&& env, typename balancer_type::lease&& lease_in,
                 std::optional<levee::permit>&& permit, time_point start) {
    typename balancer_type::lease lease = std::move(lease_in);
    stats_shard& s = shard_of(c);
    const std::int64_t start_ns = to_ns(start);
    const auto& backend = lease.payload();
    s.inc(s.started);
    s.inc(backend->counters[s.index].started);
    s.record(s.dwell, static_cast<std::uint64_t>(std::max<std::int64_t>(0, start_ns - to_ns(env.ready))));
    s.count_dispatch(start_ns);
    if (env.attempts == 0 && opts_.retry.max_attempts > 1) budget_.deposit(start_ns);
    ++env.attempts;
    s.in_flight.store(s.in_flight.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);

    handler_result result = handler_result::success();
    {
      inside_scope mark(this, false);
      try {
        result = backend->handler->invoke(env.job);
      } catch (...) {
        result = handler_result::failure(std::current_exception());
      }
    }
    // `end` is also the next decision's "now": a real reading when a rate
    // gate or this job's deadline (retry scheduling) depends on it.
    const time_point end = limiter_ || env.deadline != time_point::max() ? clock_.now() : measure_now();
    const auto service = std::max(std::chrono::nanoseconds{0},
                                  std::chrono::duration_cast<std::chrono::nanoseconds>(end - start));
    s.record(s.service, static_cast<std::uint64_t>(service.count()));
    c.last_service_ns = service.count();
    const backend_id id = lease.id();
    // Per-backend outcome counters while the lease still keeps the backend
    // alive; then the feedback, and the lease is kept for the next pick
    // (released when this context runs out of work; see worker_ctx::kept).
    s.inc(result.ok() ? backend->counters[s.index].succeeded : backend->counters[s.index].failed);
    {
      typename detail::leveler_cached_clock<Clock>::scope at_end(end);
      lease.record(result.ok() ? outcome::success : outcome::failure, service);
    }
    c.kept.emplace(std::move(lease));
    if (permit) permit->release();
    if (adaptive_) {
      // One sample per completed attempt: its latency, the attempts in flight
      // (itself included) and whether it failed (a failure counts as a drop:
      // a struggling downstream must make the limit shrink).
      adaptive_->on_sample(service, static_cast<std::size_t>(in_flight_total()), !result.ok());
      concurrency_->set_limit(adaptive_->limit());
    }
    s.in_flight.store(s.in_flight.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
    // Somebody may wait for the permit or the backend slot just released.
    if (concurrency_ || backend_limits_.load(std::memory_order_relaxed)) work_.notify();

    if (result.ok()) {
      s.inc(s.succeeded, std::memory_order_release);
      finish_one(s);
      return end;
    }
    s.inc(s.failed);
    try {
      if (!env.failure) env.failure.reset(new failure_state());
      env.failure->last_error = result.error();
      auto& tried = env.failure->failed_on;
      if (std::find(tried.begin(), tried.end(), id) == tried.end()) tried.push_back(id);
    } catch (const std::bad_alloc&) {
      // Out of memory for the bookkeeping: the retry may land on the same
      // backend, and the error may be lost; the job itself is not.
    }
    retry_or_dead_letter(c, s, std::move(env), end);
    return end;
  }

  [[nodiscard]] std::uint64_t in_flight_total() const noexcept {
    std::uint64_t n = 0;
    for (std::size_t i = 0; i <= opts_.workers; ++i)
      n += shards_[i].in_flight.load(std::memory_order_relaxed);
    return n;
  }

  void retry_or_dead_letter(worker_ctx& c, stats_shard& s, envelope&& env, time_point now) {
    if (stopping_.load(std::memory_order_acquire)) {
      dead_letter(s, std::move(env), dead_letter_reason::cancelled);
      return;
    }
    if (env.attempts >= opts_.retry.max_attempts) {
      dead_letter(s, std::move(env), dead_letter_reason::failed);
      return;
    }
    const auto delay =
        detail::leveler_backoff(opts_.retry.base_backoff, opts_.retry.max_backoff, env.attempts, c.rng);
    const time_point ready = detail::saturating_add(now, delay);
    if (ready > env.deadline) {
      dead_letter(s, std::move(env), dead_letter_reason::failed);
      return;
    }
    if (!budget_.try_withdraw(to_ns(now))) {
      s.inc(s.budget_denied);
      dead_letter(s, std::move(env), dead_letter_reason::failed);
      return;
    }
    s.inc(s.retried);
    env.ready = ready;
    push_retry(std::move(env), to_ns(ready));
    // stop() may have swept the retry heap between our check and the push.
    if (stopping_.load(std::memory_order_seq_cst)) {
      std::vector<retry_item> pending;
      {
        std::lock_guard lock(retry_mutex_);
        pending.swap(retries_);
        retry_count_.store(0, std::memory_order_relaxed);
        next_retry_ns_.store(no_retry, std::memory_order_release);
      }
      for (auto& r : pending) dead_letter(s, std::move(r.env), dead_letter_reason::cancelled);
      return;
    }
    work_.notify_one();
  }

  // ------------------------------------------------------------ workers --
  void worker_main(std::size_t index) {
    worker_ctx& c = *ctxs_[index];
    stats_shard& s = shards_[index + 1];
    int idle_spins = 0;
    bool busy = false;  // progressed since drain() waiters were last woken
    time_point now = clock_.now();
    while (!stopping_.load(std::memory_order_acquire)) {
      auto r = try_progress(c, now);
      if (r.kind == progress::progressed) {
        idle_spins = 0;
        busy = true;
        now = r.until;  // the end of the job just run: still "now" for the next decision
        continue;
      }
      if (r.kind == progress::idle && busy) {
        // Out of work: the outstanding count may have reached zero with
        // this worker's last final state. Memory ordering: the final-state
        // counters were stored with release before this notify's fence.
        busy = false;
        quiet_.notify();
      }
      if (r.kind == progress::idle && idle_spins < max_idle_spins) {
        ++idle_spins;
        std::this_thread::yield();
        now = clock_.now();
        continue;
      }
      const auto ticket = work_.prepare();
      if (stopping_.load(std::memory_order_seq_cst)) {
        work_.cancel();
        break;
      }
      now = clock_.now();
      r = try_progress(c, now);
      if (r.kind == progress::progressed) {
        work_.cancel();
        idle_spins = 0;
        busy = true;
        now = r.until;
        continue;
      }
      // Backends also become eligible with time (ejection expiry), which
      // nobody notifies: re-check a held job at least every capacity_poll.
      if (r.kind == progress::wait_capacity) {
        r.until = detail::saturating_add(now, capacity_poll);
        quiet_.notify();  // the destructor checks whether anything can still run (see settle)
      }
      work_.wait_until(ticket, r.until);
      now = clock_.now();
    }
    c.kept.reset();
    if (c.held) {
      dead_letter(s, std::move(*c.held), dead_letter_reason::cancelled);
      c.held.reset();
    }
    while (auto e = c.batch.take(true)) dead_letter(s, std::move(*e), dead_letter_reason::cancelled);
    // The worker's last action (stop() waits for the count, then joins).
    exited_.fetch_add(1, std::memory_order_acq_rel);
    quiet_.notify_always();
  }
  static constexpr int max_idle_spins = 16;
  static constexpr int max_submit_spins = 64;
  static constexpr std::chrono::milliseconds capacity_poll{20};

  // The destructor's drain: waits while accepted jobs can still make
  // progress, and returns when none is outstanding or nothing can ever run
  // them (see stuck). Woken by workers going idle or parking at a gate.
  void settle() {
    for (;;) {
      if (outstanding() == 0 || stopping_.load(std::memory_order_acquire)) return;
      const auto ticket = quiet_.prepare();
      if (outstanding() == 0 || stopping_.load(std::memory_order_acquire) || stuck()) {
        quiet_.cancel();
        return;
      }
      quiet_.wait_until(ticket, time_point::max());
    }
  }
  // True if no queued, held or retrying job can ever be dispatched without a
  // call from outside: no handler is running and no worker holds a backend,
  // no backend is only temporarily ejected, and there is no backend or none
  // can be picked (every one marked unhealthy with set_healthy(false),
  // beyond panic).
  [[nodiscard]] bool stuck() {
    if (in_flight_total() != 0) return false;
    {
      std::lock_guard lock(backends_mutex_);
      if (backends_.empty()) return true;
      for (const auto& st : balancer_.stats())
        if (st.in_flight != 0 || st.ejected) return false;
    }
    levee::rng random(opts_.seed);
    pick_request req;
    req.random = &random;
    return !balancer_.try_pick(req).has_value();
  }

  // -------------------------------------------------------- simulation --

  // Steps and advances time (or sleeps) to each next event until no job is
  // outstanding (drain) or the next event lies after `until`.
  bool simulate_until(time_point until, bool until_drained) {
    std::size_t n = 0;
    return simulate(until, until_drained, n);
  }
  bool simulate(time_point until, bool until_drained, std::size_t& n) {
    for (;;) {
      const std::size_t k = step();
      n += k;
      if (until_drained && outstanding() == 0) return true;
      if (stopping_.load(std::memory_order_acquire)) return outstanding() == 0;
      const auto next = next_event();
      if (!next) {
        if (until_drained && sim_wait_.kind != progress::idle)
          throw std::logic_error(
              "levee::leveler::drain: jobs are outstanding but can never be dispatched "
              "(no backend, or every backend is saturated)");
        if (until_drained && outstanding() != 0)
          throw std::logic_error("levee::leveler::drain: jobs are outstanding but nothing can move them");
        return outstanding() == 0;
      }
      if (*next > until) return outstanding() == 0;
      const time_point now = clock_.now();
      if (*next <= now && k == 0) return outstanding() == 0;  // no progress possible
      if (*next > now) {
        if constexpr (requires(Clock & ck, time_point tp) { ck.set(tp); }) {
          clock_.set(*next);
        } else {
          sleeper<Clock> zz(clock_);
          (void)zz.sleep_until(*next);
        }
      }
    }
  }

  // ------------------------------------------------------------ members --
  options opts_;
  Clock clock_;
  mpmc_queue<envelope> queue_;
  balancer_type balancer_;
  std::optional<rate_limiter<Clock>> limiter_;
  std::optional<concurrency_limiter> concurrency_;
  std::optional<adaptive_limit<>> adaptive_;  // thread-safe on its own
  [[nodiscard]] bool is_adaptive() const noexcept { return adaptive_.has_value(); }
  detail::leveler_retry_budget budget_;
  detail::leveler_arrival_log arrivals_;
  std::atomic<std::uint64_t> auto_burst_{
      0};  // the automatic burst b while in use (see jitter_reserve), else 0

  mutable std::mutex backends_mutex_;
  std::unordered_map<backend_id, std::shared_ptr<detail::leveler_backend<Job>>> backends_;
  backend_id next_backend_id_ = 1;

  std::mutex retry_mutex_;
  std::vector<retry_item> retries_;
  std::uint64_t retry_seq_ = 0;
  std::atomic<std::size_t> retry_count_{0};
  std::atomic<std::int64_t> next_retry_ns_{no_retry};

  struct alignas(detail::false_sharing_range) door_counters {
    // (accepted: the ingress queue's push count, see accepted_total)
    std::atomic<std::uint64_t> rejected_full{0}, rejected_closed{0}, rejected_deadline{0},
        rejected_timeout{0};
  } door_;
  std::atomic<std::uint64_t> outstanding_peak_{0};
  bool batching_ = false;
  std::atomic<bool> backend_limits_{false};  // some backend has max_in_flight: completions must wake workers
  std::atomic<bool> closed_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> stopped_{false};
  std::size_t launched_ = 0;            // worker threads started (set by the constructor only)
  std::atomic<std::size_t> exited_{0};  // workers that returned from worker_main
  std::mutex stop_mutex_;               // guards threads_ while stop() takes them to join

  detail::leveler_event<Clock> work_;   // workers: job, retry, capacity, backend, rate change, stop
  detail::leveler_event<Clock> space_;  // blocked submitters: a slot was freed, close, stop
  detail::leveler_event<Clock> quiet_;  // drain(): outstanding reached zero
  std::int64_t start_ns_;

  std::unique_ptr<stats_shard[]> shards_;  // [0]: non-worker threads and simulation; [i+1]: worker i
  std::vector<std::unique_ptr<worker_ctx>> ctxs_;
  worker_ctx sim_ctx_;
  progress_result sim_wait_{};
  std::vector<std::thread> threads_;
};

template <class Job, strategy Strategy, clock Clock>
metrics_snapshot leveler<Job, Strategy, Clock>::metrics() const {
  metrics_snapshot m;
  const time_point now = clock_.now();
  const std::int64_t now_ns = to_ns(now);

  detail::metrics_histogram_counts dwell, service;
  for (std::size_t i = 0; i <= opts_.workers; ++i) {
    const stats_shard& s = shards_[i];
    m.started += s.started.load(std::memory_order_relaxed);
    m.succeeded += s.succeeded.load(std::memory_order_acquire);
    m.failed += s.failed.load(std::memory_order_relaxed);
    m.retried += s.retried.load(std::memory_order_relaxed);
    m.retries_denied_by_budget += s.budget_denied.load(std::memory_order_relaxed);
    m.dead_lettered.failed += s.dl_failed.load(std::memory_order_acquire);
    m.dead_lettered.expired += s.dl_expired.load(std::memory_order_acquire);
    m.dead_lettered.dropped += s.dl_dropped.load(std::memory_order_acquire);
    m.dead_lettered.cancelled += s.dl_cancelled.load(std::memory_order_acquire);
    m.dead_letter_sink_errors += s.sink_errors.load(std::memory_order_relaxed);
    s.dwell.add_to(dwell);
    s.service.add_to(service);
  }
  m.dwell_time = histogram_snapshot(dwell);
  m.service_time = histogram_snapshot(service);
  // Read after the final-state counters, which were read with acquire (they
  // are incremented with release after the job's acceptance), so a snapshot
  // never shows more jobs finished than accepted.
  m.accepted = accepted_total();
  m.rejected.full = door_.rejected_full.load(std::memory_order_relaxed);
  m.rejected.closed = door_.rejected_closed.load(std::memory_order_relaxed);
  m.rejected.would_miss_deadline = door_.rejected_deadline.load(std::memory_order_relaxed);
  m.rejected.timeout = door_.rejected_timeout.load(std::memory_order_relaxed);
  m.submitted = m.accepted + m.rejected.total();

  m.queue_depth = queue_.size_approx();
  for (const auto& c : ctxs_) m.queue_depth += c->batch.size_approx();
  m.queue_capacity = opts_.capacity;
  m.retry_pending = retry_count_.load(std::memory_order_relaxed);
  m.in_flight = static_cast<std::size_t>(in_flight_total());
  m.outstanding = outstanding();
  m.outstanding_peak = outstanding_peak_.load(std::memory_order_relaxed);
  if (limiter_) {
    m.rate_limit = limiter_->get_rate().per_second_value();
    const std::uint64_t automatic = auto_burst_.load(std::memory_order_relaxed);
    m.burst = automatic != 0 ? automatic : limiter_->burst();
  }
  if (concurrency_) m.concurrency_limit = concurrency_->limit();
  m.workers = opts_.workers;
  m.closed = closed_.load(std::memory_order_acquire);
  m.stopped = stopped_.load(std::memory_order_acquire);

  {
    std::lock_guard lock(backends_mutex_);
    for (const auto& st : balancer_.stats()) {
      backend_metrics b;
      b.id = st.id;
      b.weight = static_cast<double>(st.weight);
      b.tier = static_cast<std::uint32_t>(st.tier);
      // Lease counts include workers between two jobs on this backend (see
      // balancer::try_pick_keeping); the leveler's own counters are exact.
      b.in_flight = 0;
      b.max_in_flight = st.max_in_flight;
      b.latency_ewma = std::chrono::duration_cast<std::chrono::nanoseconds>(st.latency_ewma);
      b.ejected = st.ejected;
      b.healthy = st.healthy;
      if (auto it = backends_.find(st.id); it != backends_.end()) {
        // started first: a job counted as finished was counted as started.
        b.started = it->second->started();
        b.succeeded = it->second->succeeded();
        b.failed = it->second->failed();
        b.started = std::max(b.started, b.succeeded + b.failed);
        b.in_flight = static_cast<std::size_t>(b.started - b.succeeded - b.failed);
      }
      if (b.ejected) ++m.ejected_backends;
      m.backends.push_back(b);
    }
  }
  std::sort(m.backends.begin(), m.backends.end(),
            [](const backend_metrics& a, const backend_metrics& b) { return a.id < b.id; });

  // Rates over the last second (10 whole 100 ms slots plus the current one),
  // never over more time than the leveler has existed.
  auto per_second = [&](const detail::leveler_window_counter& w) {
    const auto s = w.sum(now_ns, 10);
    std::int64_t span = std::min(s.span_ns, now_ns - start_ns_);
    if (span <= 0) return 0.0;
    return static_cast<double>(s.count) * 1e9 / static_cast<double>(span);
  };
  {
    const auto a = arrivals_.sum(now_ns, 10, m.submitted);
    const std::int64_t span = std::min(a.span_ns, now_ns - start_ns_);
    m.arrival_rate = span > 0 ? static_cast<double>(a.count) * 1e9 / static_cast<double>(span) : 0.0;
  }
  m.dispatch_rate = 0;
  for (std::size_t i = 0; i <= opts_.workers; ++i) m.dispatch_rate += per_second(shards_[i].dispatches);
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

}  // namespace levee
