// levee/leveler.hpp - levee::leveler, the rate-limited consumer scheduler.
//
//   producers --submit(job, {.key, .deadline, .flow, .band, .cost})-->
//             ingress: bounded queue, FIFO or fair (options.fairness)       leveler/ingress.hpp
//                                  |               overflow policy, deadline admission
//                   workers (or step() in simulation)                       leveler/worker.hpp, batch.hpp
//                                  |                                        leveler/simulation.hpp
//          deadline -> rate gate -> concurrency gate                        leveler/gates.hpp
//                                  |
//               strategy.pick(backends, key) -> handler runs the job        leveler/backends.hpp
//                                  |
//   outcome -> feedback (strategy, health, adaptive limit), metrics         leveler/ledger.hpp
//        failure -> retry after backoff (+jitter, within a budget)          leveler/retries.hpp
//   exhausted / expired / dropped / cancelled / shed -> dead-letter sink    leveler/ledger.hpp
//
//   levee::leveler<job>::options o;
//   o.capacity = 20'000;
//   o.rate = levee::rate::per_second(1000);
//   o.workers = 4;
//   levee::leveler<job> lev(o, [](job& j) { call_downstream(j); });
//   if (auto r = lev.try_submit(make_job(), {.key = user_id}); !r) log(to_string(r.status));
//   lev.close();
//   lev.drain();
//
// What happens to an accepted job: it is handled successfully, or it reaches
// the dead-letter sink exactly once with a reason (failed after its last
// attempt, expired before dispatch, dropped by the drop_oldest policy,
// cancelled by stop(), shed by the fair ingress's CoDel). A rejected
// submission hands the job back.
//
// Asynchronous handlers (levee::completion, leveler/completion.hpp): a
// handler callable as void(Job&, levee::completion) starts the work (an I/O
// call) and returns at once; the attempt ends when the completion fires,
// from any thread. Meanwhile the job stays at a stable address and the
// attempt holds its permit and backend lease, so two workers keep thousands
// of calls in flight. Synchronous and asynchronous backends may be mixed.
//  - In flight: metrics().in_flight counts synchronous handlers running and
//    asynchronous attempts started and not finished. They are bounded by the
//    concurrency gate (max_concurrency or adaptive), a backend's
//    max_in_flight, and, without a concurrency gate, by
//    options.max_async_in_flight (default 1,000) for asynchronous attempts.
//  - Timeouts: options.attempt_timeout (or backend_options::attempt_timeout)
//    from the attempt's start. An asynchronous attempt still unfinished then
//    fails with std::system_error(attempt_errc::timeout) and is retried or
//    dead-lettered per options.retry; its completion's stop_token() is
//    requested; a completion fired later is ignored and counted in
//    metrics().late_completions. A synchronous call cannot be taken back: one
//    that returns after its timeout is counted in metrics().attempt_timeouts
//    and its result stands (it gets no stop token).
//  - A completion destroyed unfired fails its attempt with
//    attempt_errc::abandoned (counted in metrics().abandoned).
//  - Timeouts are detected by the workers (they park until the next one is
//    due), by stop() once the workers are gone, and in simulation mode by
//    the simulation's clock; post_at() lets a simulated handler finish its
//    attempt at a virtual time.
//
// Job requirements: nothrow move constructible (jobs move through a
// lock-free queue and batches that cannot undo a half-done move) and
// destructible. Nothing else: jobs need not be copyable, assignable or
// default constructible (a struct holding a reference is fine).
//
// Threads: options.workers worker threads run handlers; with 0 the leveler
// is a deterministic simulation driven by step() / run_until() / drain().
// Every member function may be called from any thread
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
//    and asynchronous attempts included). It does not close: jobs accepted
//    meanwhile are waited for too.
//  - stop(): close, hand every job not yet started (queued, batched by a
//    worker, waiting for a gate, or waiting for a retry) to the dead-letter
//    sink as `cancelled`, request stop on asynchronous attempts in flight,
//    wait for running handlers and for those attempts' completions (or
//    timeouts), join the workers. An attempt that fails after stop() began
//    is dead-lettered as `cancelled`. stop_for/stop_until bound the wait.
//
// Shutdown (the destructor) always returns, provided every running handler
// does and every asynchronous attempt finishes (its completion fires or is
// destroyed, or its timeout passes). With workers it calls close(), then waits while accepted jobs can
// still make progress (queued, held at a gate, waiting for a rate token or a
// retry timer), then stop(). Jobs that can never run - no backend, or every
// backend out of rotation by set_healthy(false) (beyond panic), with no
// handler running - go to the dead-letter sink as `cancelled` instead of
// being waited for. A slow rate is progress: the destructor waits for it;
// call stop() or stop_for() first to cancel instead. In simulation mode
// (workers == 0) the destructor is stop(): it runs nothing more and cancels
// every job not yet run.
//
// Maximum durations: a duration or time point too large for the clock (hours::max())
// means "no limit" wherever one is taken (submit_for, drain_for, stop_for, default_deadline, max_backoff).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <levee/adaptive_limit.hpp>
#include <levee/balance.hpp>
#include <levee/clock.hpp>
#include <levee/detail/time.hpp>
#include <levee/leveler/job.hpp>
#include <levee/leveler/simulation.hpp>
#include <levee/leveler/worker.hpp>
#include <levee/metrics.hpp>
#include <levee/rate_gate.hpp>
#include <levee/rate_limiter.hpp>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace levee {

namespace detail {
// The most worker threads a leveler accepts (options.workers).
inline constexpr std::size_t leveler_max_workers = 1024;
inline std::size_t leveler_default_workers() noexcept {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : std::min<std::size_t>(n, leveler_max_workers);
}
}  // namespace detail

// RateGate: the type of the rate gate (levee/rate_gate.hpp) whose clock_type
// is Clock. The default, a local levee::rate_limiter, is built from
// options.rate and options.burst; any gate may instead be handed in as
// options.gate (shared, e.g. by several levelers, or a fleet-wide
// levee::redis::shared_rate_gate that only the user can build).
template <class Job, strategy Strategy = levee::round_robin, clock Clock = std::chrono::steady_clock,
          rate_gate RateGate = levee::rate_limiter<Clock>>
class leveler {
  static_assert(
      std::is_same_v<typename RateGate::clock_type, Clock>,
      "levee::leveler: RateGate::clock_type must be the leveler's Clock (the gate is asked with the "
      "leveler's time)");
  static_assert(std::is_nothrow_move_constructible_v<Job>,
                "levee::leveler: Job must be nothrow move constructible (jobs move through a lock-free "
                "queue and batches that cannot undo a half-done move)");

 public:
  using job_type = Job;
  using strategy_type = Strategy;
  using clock_type = Clock;
  using rate_gate_type = RateGate;
  using duration = typename Clock::duration;
  using time_point = typename Clock::time_point;
  using dead_letter_sink = std::function<void(Job&&, dead_letter_reason, std::exception_ptr)>;
  using job_options = levee::job_options<Clock>;

  struct options {
    std::size_t capacity = 1024;                        // ingress queue capacity (exact)
    overflow_policy overflow = overflow_policy::block;  // what submit() does when full
    bool deadline_admission = true;                     // refuse jobs predicted to miss their deadline
    std::optional<levee::rate> rate;                    // dispatch rate; nullopt = no rate gate
    std::uint64_t burst = 0;  // 0 = auto: ceil(rate * 5 ms), at least 2 (see gates.hpp)
    // A rate gate built by the caller, used instead of building one from
    // rate/burst (which must then be unset). The leveler shares it: the gate
    // lives as long as its last owner, and other users of it pace with it.
    std::shared_ptr<RateGate> gate;
    std::size_t max_concurrency = 0;                                    // fixed concurrency gate; 0 = none
    std::optional<typename levee::adaptive_limit<>::options> adaptive;  // exclusive with max_concurrency
    // 0 = simulation mode; at most 1024 (default: the hardware threads, capped there).
    std::size_t workers = detail::leveler_default_workers();
    levee::retry_policy retry;
    // Relative to submission, for jobs without a deadline (too large for the clock: none).
    std::optional<duration> default_deadline;
    // Per attempt, from its start (a backend's backend_options::attempt_timeout
    // overrides it): an asynchronous attempt not finished by then fails with
    // attempt_errc::timeout; a synchronous one is counted (see "Asynchronous
    // handlers" above). nullopt: none.
    std::optional<duration> attempt_timeout;
    // Without a concurrency gate (max_concurrency, adaptive), asynchronous
    // attempts in flight are bounded by this (>= 1).
    std::size_t max_async_in_flight = 1000;
    dead_letter_sink dead_letter;          // empty: dead-lettered jobs are destroyed (still counted)
    levee::health_options health;          // outlier ejection of backends
    std::uint64_t seed = 0x6c65766565ULL;  // backoff jitter and the strategy's draws
    // The ingress discipline: nullopt = FIFO (the default); set = fair
    // (bands, flows, per-flow limits, CoDel; see levee::fairness_options and
    // "Sharing one leveler between tenants" in the README). Not with
    // overflow_policy::drop_oldest (a fair queue has no single oldest job).
    std::optional<levee::fairness_options> fairness;
  };

  // Throws std::invalid_argument naming the option for a bad one: capacity 0
  // or beyond the queue's limit, workers > 1024, a rate or burst the rate
  // gate cannot represent (or options.gate together with rate or burst, or a
  // rate for a RateGate the leveler cannot build), negative or inverted backoffs, max_attempts 0,
  // budget_ratio < 0 or NaN, non-positive default_deadline, both
  // max_concurrency and adaptive set; with fairness: drop_oldest, capacity
  // >= 2^32 - 1, and any bad fairness option (bands: 1..8, strict ones
  // first, weight >= 1, CoDel target/interval > 0; quantum, flow_burst >= 1;
  // flow_ttl >= 0; weight and weights both set).
  explicit leveler(options o, Clock c = Clock{}, Strategy s = Strategy{})
      : core_(validate(std::move(o)), std::move(c), std::move(s)) {
    try {
      core_.start_workers();
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

  // See "Shutdown" above.
  ~leveler() {
    close();
    if (core_.opts.workers != 0) settle();
    stop();
    // A completion that settled the last attempts may still be returning
    // from the leveler's code (stop() saw its final state, not its return).
    while (core_.async_live.load(std::memory_order_acquire) != 0) std::this_thread::yield();
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
    if (bo.attempt_timeout.count() < 0)
      throw std::invalid_argument("levee::leveler::add_backend: attempt_timeout must be >= 0, got " +
                                  std::to_string(bo.attempt_timeout.count()) + " ns");
    const backend_id id = core_.backends.add(std::forward<H>(handler), bo, bo.attempt_timeout);
    core_.work.notify_always();
    return id;
  }
  // Removes a backend: no new job is dispatched to it; jobs running on it
  // finish normally (the handler lives until they did). False if there is no
  // such backend. With no backend left, jobs wait in the queue for
  // add_backend(). Blocking: as add_backend.
  bool remove_backend(backend_id id) { return core_.backends.remove(id); }
  // Run-time reconfiguration of a backend (see levee::balancer); false if
  // there is no such backend. Weight 0 throws std::invalid_argument.
  // Blocking: briefly, while the balancer publishes a new snapshot.
  bool set_weight(backend_id id, std::uint32_t weight) { return wake(core_.backends.set_weight(id, weight)); }
  bool set_max_in_flight(backend_id id, std::size_t max_in_flight) {
    return wake(core_.backends.set_max_in_flight(id, max_in_flight));
  }
  bool set_healthy(backend_id id, bool healthy) { return wake(core_.backends.set_healthy(id, healthy)); }
  [[nodiscard]] std::size_t backend_count() const { return core_.backends.count(); }

  // ---------------------------------------------------------- submitting --
  // Never blocks and never evicts (the overflow policy is not applied):
  // accepted, or full / flow_full / closed / would_miss_deadline with the job
  // handed back. With options.fairness: flow_full when the job's flow holds
  // fairness.max_queued_per_flow jobs; std::invalid_argument (the job is
  // destroyed, nothing accepted) for job_options.band >= fairness.bands.size(),
  // cost 0, or cost > flow_burst with a flow rate.
  // Locks on the submit path: none with the FIFO. With fairness: none for a
  // job without a deadline and without max_queued_per_flow (one CAS on the
  // fair queue's occupancy and a lock-free push into its door); one of 64
  // striped mutexes with max_queued_per_flow; the fair queue's scheduler
  // mutex (shared with the workers' takes) for deadline admission of a job
  // with a deadline.
  // Memory ordering: an accepted job's submission happens-before the start of
  // its handler (and of the dead-letter sink call for it).
  [[nodiscard]] submit_result<Job> try_submit(Job job, const job_options& jo = {}) {
    return core_.ingress.submit(core_, std::move(job), jo, overflow_policy::reject, time_point::max());
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
  // Blocking: parks (no CPU) while waiting for room; woken by every dequeue,
  // close() and stop(). Memory ordering: as try_submit.
  [[nodiscard]] submit_result<Job> submit(Job job, const job_options& jo = {}) {
    return core_.ingress.submit(core_, std::move(job), jo, core_.opts.overflow, time_point::max());
  }
  // As submit(), but a `block` wait gives up with `timeout` after `timeout`
  // (resp. at `until`, a time on the leveler's clock; not the job's deadline).
  // A timeout too large for the clock (hours::max()) means no time limit.
  template <class Rep, class Per>
  [[nodiscard]] submit_result<Job> submit_for(Job job, std::chrono::duration<Rep, Per> timeout,
                                              const job_options& jo = {}) {
    return submit_until(std::move(job), detail::deadline_after<Clock>(core_.clock.now(), timeout), jo);
  }
  [[nodiscard]] submit_result<Job> submit_until(Job job, time_point until, const job_options& jo = {}) {
    return core_.ingress.submit(core_, std::move(job), jo, core_.opts.overflow, until);
  }

  // ----------------------------------------------------------- lifecycle --
  // Stops accepting: every later submission returns `closed`; blocked
  // submitters return `closed`. Queued jobs and retries still run. Idempotent.
  // Blocking: none. Memory ordering: close() happens-before every submission
  // it refuses.
  void close() {
    core_.closed.store(true, std::memory_order_seq_cst);
    core_.ingress.wake_submitters();
    core_.work.notify_always();
  }
  [[nodiscard]] bool is_closed() const noexcept { return core_.closed.load(std::memory_order_acquire); }

  // Waits until every accepted job has reached its final state (succeeded or
  // dead-lettered), retries and asynchronous attempts included. Does not
  // close the leveler. In simulation mode, asynchronous attempts whose
  // completions are held outside the simulation (not posted) are waited for
  // in real time.
  // Blocking: parks (no CPU) until the outstanding count reaches zero. In
  // simulation mode it drives the simulation instead: it steps and, if the
  // clock can be set (manual_clock), moves it to each next event; with
  // another clock it sleeps until the next event. It throws std::logic_error
  // if jobs are outstanding but no event can ever move them (no backend, or
  // every backend saturated), and when called from inside the leveler.
  // Memory ordering: the final state of every job (handler return, sink
  // call) happens-before drain() returns.
  void drain() { (void)drain_until(time_point::max()); }
  // As drain(), giving up at `until` / after `timeout`; true if drained. A
  // timeout too large for the clock (hours::max()) means no time limit.
  template <class Rep, class Per>
  [[nodiscard]] bool drain_for(std::chrono::duration<Rep, Per> timeout) {
    return drain_until(detail::deadline_after<Clock>(core_.clock.now(), timeout));
  }
  [[nodiscard]] bool drain_until(time_point until) {
    if (core_.inside())
      throw std::logic_error(
          "levee::leveler::drain: called from a handler or the dead-letter sink of the same leveler (would "
          "wait for itself)");
    std::size_t n = 0;
    if (core_.opts.workers == 0) return detail::simulate(core_, until, true, n);
    return wait_quiet(until, [&] { return core_.outstanding() == 0; });
  }

  // Closes, then hands every job not yet started to the dead-letter sink as
  // `cancelled` (in the calling thread, and in workers for the job each one
  // holds), requests stop on asynchronous attempts in flight (their
  // completions' stop tokens), waits for running handlers to return and
  // joins the workers, then waits for the asynchronous attempts to finish
  // (completion fired or destroyed, or timeout passed; in simulation mode
  // the events posted for later are dropped first). A job
  // whose running attempt fails after stop() began is dead-lettered as
  // `cancelled` with that error instead of being retried. Idempotent; any
  // number of threads may call it at once, and each returns only after every
  // worker has exited. Called from inside the leveler (a handler or the
  // sink), it closes and cancels but does not wait: its own worker cannot
  // exit before it returns; the next stop() from outside (or the destructor)
  // waits for the workers and joins them.
  // Blocking: until every running handler returned; never holds a lock while
  // waiting. Memory ordering: every worker's last action happens-before
  // stop() returns (when not called from inside the leveler).
  void stop() { (void)stop_until(time_point::max()); }
  // As stop(), but waits for running handlers only until `until` / for
  // `timeout`; true if every worker has exited (and was joined), false
  // otherwise (the jobs not started are cancelled either way; a later stop()
  // or the destructor waits for the rest). From inside the leveler it never
  // waits and returns true only in simulation mode.
  template <class Rep, class Per>
  [[nodiscard]] bool stop_for(std::chrono::duration<Rep, Per> timeout) {
    return stop_until(detail::deadline_after<Clock>(core_.clock.now(), timeout));
  }
  [[nodiscard]] bool stop_until(time_point until) {
    core_.closed.store(true, std::memory_order_seq_cst);
    core_.stopping.store(true, std::memory_order_seq_cst);
    core_.ingress.close();
    core_.ingress.wake_submitters();
    core_.work.notify_always();
    // Jobs not yet started are cancelled before waiting for running handlers
    // (workers may pop concurrently: each job is taken by exactly one
    // thread); the second sweep catches what workers left behind.
    core_.cancel_not_started();
    core_.request_stop_attempts();
    core_.stopped.store(true, std::memory_order_release);
    if (core_.inside()) return core_.opts.workers == 0;
    if (!wait_quiet(until, [&] { return core_.exited.load(std::memory_order_acquire) == core_.launched; }))
      return false;
    // Every worker has run its last action; joining only reclaims the
    // threads (one caller takes them: no lock is held while joining).
    std::vector<std::thread> done;
    {
      std::lock_guard lock(core_.threads_mutex);
      done.swap(core_.threads);
    }
    for (auto& t : done)
      if (t.joinable()) t.join();
    core_.cancel_not_started();
    core_.ledger.quiet().notify_always();
    return wait_async(until);
  }

  // ----------------------------------------------------- simulation mode --
  // Dispatches everything that can be dispatched at the clock's current time
  // (handlers run in the calling thread) and returns how many jobs reached
  // dispatch (handler run or dead-lettered as expired; with the fair
  // ingress, a take that only shed jobs counts as one). Only in simulation
  // mode (workers == 0); otherwise throws std::logic_error.
  std::size_t step() {
    require_simulation("step");
    return detail::sim_step(core_);
  }
  // Runs the simulation up to time t: steps, moves the clock to the next
  // event (token due, retry due) while it is <= t, and finally sets the clock
  // to t (never backwards). Requires a settable clock such as manual_clock.
  // Returns the number of jobs that reached dispatch.
  std::size_t run_until(time_point t) requires requires(Clock& c, time_point tp) { c.set(tp); }
  {
    require_simulation("run_until");
    std::size_t n = 0;
    detail::simulate(core_, t, false, n);
    if (core_.clock.now() < t) core_.clock.set(t);
    return n;
  }
  // Simulation mode only: runs fn() on the driving thread when the
  // simulation reaches time t (inside step(), run_until() and drain(); at
  // once in the next step if t has passed), in time order and FIFO among
  // equal times. The stand-in for I/O in a simulated scenario: an
  // asynchronous handler posts its completion for the virtual time its call
  // would end. stop() drops the events not yet run (a dropped completion
  // abandons its attempt). Thread-safe. Throws std::logic_error with workers.
  //   lev.add_backend([&](job& j, levee::completion done) {
  //     lev.post_at(lev.get_clock().now() + 100ms, [d = std::move(done)]() mutable { std::move(d).succeed();
  //     });
  //   });
  template <class F>
  requires std::invocable<F&> && std::move_constructible<F>
  void post_at(time_point t, F fn) {
    require_simulation("post_at");
    core_.posted.push(detail::to_ns(t), detail::unique_task(std::move(fn)));
  }

  // The time of the next event the last step() stopped at (a rate token for
  // the job at the head, or the next retry becoming due when nothing else is
  // waiting), or nullopt if it waits for nothing timed (idle, or for a
  // backend / concurrency slot).
  [[nodiscard]] std::optional<time_point> next_event() const { return detail::sim_next_event(core_); }

  // ------------------------------------------------------ configuration --
  // Changes the dispatch rate / burst at run time (future windows follow the
  // new values). Throws std::logic_error if the leveler has no rate gate.
  // Only for a RateGate that models levee::reconfigurable_rate_gate; a gate
  // handed in as options.gate changes for everyone sharing it.
  void set_rate(levee::rate r) requires reconfigurable_rate_gate<RateGate> {
    wake((core_.gates.set_rate(r, "set_rate"), true));
  }
  void set_burst(std::uint64_t b) requires reconfigurable_rate_gate<RateGate> {
    wake((core_.gates.set_burst(b, "set_burst"), true));
  }
  // Changes a fixed concurrency limit. Throws std::logic_error without one
  // (or when the limit is adaptive).
  void set_concurrency_limit(std::size_t limit) { wake((core_.gates.set_concurrency_limit(limit), true)); }

  [[nodiscard]] const options& get_options() const noexcept { return core_.opts; }
  [[nodiscard]] const Clock& get_clock() const noexcept { return core_.clock; }
  // Accepted jobs not yet in a final state (queued, held at a gate, running,
  // or waiting for a retry). Exact when quiescent; a hint under concurrency.
  [[nodiscard]] std::uint64_t outstanding() const noexcept { return core_.outstanding(); }

  // A snapshot of counters, gauges, histograms and rate estimates (see
  // levee/metrics.hpp). Allocates; takes the backend registry's and the
  // balancer's mutexes briefly; never waits for jobs. Callable from handlers.
  // Memory ordering: final-state counters are read with acquire before the
  // acceptance counters, so succeeded + dead_lettered <= accepted always holds
  // in a snapshot; other fields are individually (not jointly) consistent.
  [[nodiscard]] metrics_snapshot metrics() const { return detail::collect_metrics(core_); }

 private:
  using core_type = detail::leveler_core<Job, Strategy, Clock, options, RateGate>;

  static options validate(options o) {
    auto bad = [](const std::string& what) {
      throw std::invalid_argument("levee::leveler: options." + what);
    };
    if (o.capacity == 0) bad("capacity must be > 0, got 0");
    if (o.capacity > core_type::max_capacity())
      bad("capacity must be <= " + std::to_string(core_type::max_capacity()) + ", got " +
          std::to_string(o.capacity));
    if (o.workers > detail::leveler_max_workers)
      bad("workers must be <= " + std::to_string(detail::leveler_max_workers) + ", got " +
          std::to_string(o.workers));
    if (o.retry.max_attempts == 0) bad("retry.max_attempts must be >= 1, got 0");
    if (o.retry.base_backoff.count() < 0)
      bad("retry.base_backoff must be >= 0, got " + std::to_string(o.retry.base_backoff.count()) + " ns");
    if (o.retry.max_backoff < o.retry.base_backoff)
      bad("retry.max_backoff (" + std::to_string(o.retry.max_backoff.count()) +
          " ns) must be >= base_backoff (" + std::to_string(o.retry.base_backoff.count()) + " ns)");
    if (!(o.retry.budget_ratio >= 0.0) || std::isinf(o.retry.budget_ratio))
      bad("retry.budget_ratio must be finite and >= 0, got " + std::to_string(o.retry.budget_ratio));
    if (o.default_deadline && *o.default_deadline <= duration::zero())
      bad("default_deadline must be > 0, got " +
          std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(*o.default_deadline).count()) +
          " ns");
    if (o.attempt_timeout && *o.attempt_timeout <= duration::zero())
      bad("attempt_timeout must be > 0, got " +
          std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(*o.attempt_timeout).count()) +
          " ns");
    if (o.max_async_in_flight == 0) bad("max_async_in_flight must be >= 1, got 0");
    if (o.fairness && o.overflow == overflow_policy::drop_oldest)
      bad("overflow drop_oldest and options.fairness are exclusive (a fair queue has no single oldest job)");
    if (o.adaptive && o.max_concurrency != 0)
      bad("max_concurrency (" + std::to_string(o.max_concurrency) +
          ") and options.adaptive are exclusive: set one");
    return o;
  }

  void require_simulation(const char* fn) const {
    if (core_.opts.workers != 0)
      throw std::logic_error(std::string("levee::leveler::") + fn +
                             ": only in simulation mode (options.workers == 0), workers = " +
                             std::to_string(core_.opts.workers));
  }
  // Wakes the workers after a change that may let a held job through.
  bool wake(bool changed) {
    core_.work.notify_always();
    return changed;
  }

  // stop(): waits until no asynchronous attempt is in flight, failing those
  // whose timeout passes meanwhile (the workers have exited). Simulation
  // mode first drops the events posted for later (post_at): time does not
  // move any more, and a dropped completion abandons its attempt.
  bool wait_async(time_point until) {
    if (core_.opts.workers == 0) core_.posted.clear();
    for (;;) {
      core_.expire_attempts(core_.clock.now());
      if (core_.ledger.async_in_flight() == 0) return true;
      const time_point next = std::min(until, core_.next_attempt_timeout());
      if (!wait_quiet(next, [&] { return core_.ledger.async_in_flight() == 0; }) && next == until)
        return false;
    }
  }

  // Parks on the ledger's quiet event until done() or `until`; true if done().
  template <class Done>
  bool wait_quiet(time_point until, Done&& done) {
    auto& quiet = core_.ledger.quiet();
    for (;;) {
      if (done()) return true;
      const auto ticket = quiet.prepare();
      if (done()) {
        quiet.cancel();
        return true;
      }
      if (until != time_point::max() && core_.clock.now() >= until) {
        quiet.cancel();
        return false;
      }
      quiet.wait_until(ticket, until);
    }
  }

  // The destructor's drain: waits while accepted jobs can still make
  // progress; returns when none is outstanding or nothing can ever run them:
  // no handler is running and no backend can be picked now or later.
  // Workers wake it when they go idle or park at a gate.
  void settle() {
    (void)wait_quiet(time_point::max(), [&] {
      return core_.outstanding() == 0 || core_.stopping.load(std::memory_order_acquire) ||
             (core_.ledger.in_flight() == 0 && core_.backends.none_can_ever_run(core_.opts.seed));
    });
  }

  core_type core_;
};

}  // namespace levee
