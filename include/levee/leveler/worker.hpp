// levee/leveler/worker.hpp - the consumer side: the dispatch step, read top
// to bottom (take -> expire -> gates -> pick -> run -> outcome -> retry or
// dead letter), the worker loop, and the batches workers take from the
// queue and steal from each other. leveler_core holds every stage; the
// facade (leveler.hpp) owns one and the simulation (simulation.hpp) drives
// the same dispatch step from the calling thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <levee/clock.hpp>
#include <levee/concurrency_limiter.hpp>
#include <levee/detail/cache.hpp>
#include <levee/detail/rng.hpp>
#include <levee/detail/time.hpp>
#include <levee/detail/wait.hpp>
#include <levee/leveler/attempts.hpp>
#include <levee/leveler/backends.hpp>
#include <levee/leveler/batch.hpp>
#include <levee/leveler/gates.hpp>
#include <levee/leveler/ingress.hpp>
#include <levee/leveler/job.hpp>
#include <levee/leveler/ledger.hpp>
#include <levee/leveler/retries.hpp>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

namespace levee::detail {

// What a dispatch step did, and when it is worth trying again.
enum class progress { progressed, idle, wait_rate, wait_capacity };
template <class TimePoint>
struct progress_result {
  progress kind = progress::idle;
  TimePoint until = TimePoint::max();
};

// Every stage of one leveler, and the dispatch step over them. Options is
// leveler::options (validated by the facade); RateGate the rate gate's type.
template <class Job, strategy Strategy, clock Clock, class Options, rate_gate RateGate = rate_limiter<Clock>>
class leveler_core {
 public:
  using time_point = typename Clock::time_point;
  using envelope_type = envelope<Job, time_point>;
  using backends_type = backend_stage<Job, Strategy, Clock>;
  using lease = typename backends_type::lease;
  using step_result = progress_result<time_point>;
  using attempt_type = attempt<leveler_core>;

  // Batching (see take_batch): at most this many jobs per claim, and only
  // after a job that ran shorter than the limit.
  static constexpr std::size_t batch_max = 32;
  static constexpr std::int64_t batch_service_limit_ns = 5000;
  [[nodiscard]] static constexpr std::size_t max_capacity() noexcept {
    return ingress_stage<Job, Clock>::max_capacity;
  }

  // The state of one dispatching thread: a worker, or the simulation driver.
  struct context {
    context(std::uint64_t seed, stats_shard& s) : random(seed), shard(&s) {}
    std::optional<envelope_type> held;          // taken, waiting for a gate
    job_batch<envelope_type, batch_max> batch;  // taken together, not started yet (see take_batch)
    std::int64_t last_service_ns = 0;           // of the last job this context ran
    // The lease of the job this context ran last, kept (feedback recorded)
    // while it keeps finding work: the next pick reuses it when it lands on
    // the same backend (balancer::try_pick_keeping). Released whenever the
    // context stops progressing.
    std::optional<lease> kept;
    rng random;  // backoff jitter and the strategy's draws (deterministic per seed in simulation)
    stats_shard* shard;
  };

  leveler_core(Options o, Clock c, Strategy s)
      : opts(std::move(o)),
        clock(c),
        ledger(opts.workers, opts.dead_letter, c),
        ingress(opts.capacity, opts.overflow == overflow_policy::block, opts.fairness, c),
        gates(opts.rate, opts.burst, opts.gate, opts.max_concurrency, opts.adaptive, c),
        backends(std::move(s), opts.health, opts.workers + 1, c),
        budget(opts.retry.budget_ratio, opts.retry.min_retries_per_second),
        work(c),
        start_ns(to_ns(c.now())),
        default_timeout(opts.attempt_timeout
                            ? saturating_ceil<std::chrono::nanoseconds>(*opts.attempt_timeout)
                            : std::chrono::nanoseconds{0}),
        shared_random(opts.seed ^ 0x9e3779b97f4a7c15ULL),
        sim(opts.seed, ledger.shard(0)) {
    // Batches only where dispatch is immediate and FIFO eviction is not promised (see take_batch).
    batching = opts.workers != 0 && !gates.has_rate() && !gates.has_concurrency() &&
               opts.overflow != overflow_policy::drop_oldest;
    if (!gates.has_concurrency()) async_limit.emplace(opts.max_async_in_flight);
    ctxs.reserve(opts.workers);
    for (std::size_t i = 0; i < opts.workers; ++i) {
      ctxs.push_back(std::make_unique<context>(opts.seed + 1 + i, ledger.shard(i + 1)));
      if (batching) ctxs.back()->batch.enable();
    }
  }
  leveler_core(const leveler_core&) = delete;
  leveler_core& operator=(const leveler_core&) = delete;

  // Inside a handler or the sink of this leveler on this thread (ledger.hpp).
  [[nodiscard]] bool inside() const noexcept { return inside_leveler.owner == this; }
  [[nodiscard]] bool inside_sink() const noexcept {
    return inside_leveler.owner == this && inside_leveler.sink;
  }

  // Accepted jobs not yet in a final state. Final states are counted with
  // release after the acceptance, so reading them (acquire) before the
  // acceptance count never yields done > accepted.
  [[nodiscard]] std::uint64_t outstanding() const noexcept {
    const std::uint64_t done = ledger.finished();
    const std::uint64_t accepted = ingress.accepted_total();
    return accepted > done ? accepted - done : 0;
  }
  // Jobs taken into workers' batches and not started (they count as queued).
  [[nodiscard]] std::size_t batched() const noexcept {
    std::size_t n = 0;
    for (const auto& c : ctxs) n += c->batch.size_approx();
    return n;
  }

  template <class J>
  void dead_letter(stats_shard& s, J&& env, dead_letter_reason why) noexcept {
    // A job in its final state frees its flow's in-flight slot (fair ingress).
    if (env.flow_slot) [[unlikely]] {
      if (ingress.on_attempt_end(env, clock.now())) work.notify();
    }
    ledger.dead_letter(this, s, std::forward<J>(env), why);
  }

  // ------------------------------------------------------ the dispatch step
  // One scheduling decision at time `now` for context c: take a job (due
  // retries first, then the queue), expire it, or pass it through the gates
  // and run it. The gates are ordered so that no rate token is spent unless
  // the job is dispatched at `now`: a side-effect-free rate check, then the
  // concurrency permit, then the backend lease, then the token itself.
  step_result try_progress(context& c, time_point now) {
    expire_attempts(now);
    // take. The job is taken into a local: c.held only holds a job while it
    // waits at a gate (never while its handler runs, so a stop() from that
    // handler cannot cancel it), and the common case - popped and dispatched
    // at once - moves the envelope only out of the queue.
    std::optional<envelope_type> taken;
    if (c.held) {
      taken.emplace(std::move(*c.held));
      c.held.reset();
    } else if (auto r = retries.pop_due(to_ns(now))) {
      taken.emplace(std::move(*r));
    } else if ((taken = c.batch.take(true))) {
    } else if (batch_allowed(c) && c.batch.refillable() && (taken = take_batch(c, now))) {
    } else {
      // A fair ingress may shed jobs on the way (CoDel) and may hold its
      // jobs back until `ready_at` (per-flow rate or in-flight limit).
      time_point ready_at = time_point::max();
      std::size_t shed = 0;
      taken = ingress.pop(now, shed_into(c, shed), ready_at);
      if (!taken && batching) taken = steal(c);
      if (!taken) {
        if (shed != 0) return {progress::progressed, now};  // final states reached: drain() may be done
        c.kept.reset();
        const auto nr = retries.next_ns();
        return {progress::idle,
                std::min(ready_at, nr == retries.none ? time_point::max() : from_ns<time_point>(nr))};
      }
    }
    envelope_type& env = *taken;
    // expire. Workers pass the previous job's end time as `now` to save a
    // clock read; a job with a deadline gets a fresh one, so that it is never
    // dispatched after its deadline.
    if constexpr (!waitable_clock<Clock>) {
      if (env.deadline != time_point::max() && &c != &sim) now = clock.now();
    }
    if (env.deadline < now) {
      dead_letter(*c.shard, std::move(env), dead_letter_reason::expired);
      return {progress::progressed, now};
    }
    // gates, pick.
    auto hold = [&](progress k, time_point until) {
      c.kept.reset();
      c.held.emplace(std::move(env));
      return step_result{k, until};
    };
    if (gates.has_rate()) {
      const time_point at = gates.next_token(now);
      if (at > now) return hold(progress::wait_rate, at);
    }
    std::optional<permit> held_permit;
    if (gates.has_concurrency()) {
      auto p = gates.try_permit();
      if (!p) return hold(progress::wait_capacity, time_point::max());
      held_permit.emplace(std::move(p));
    }
    std::optional<lease> picked = backends.pick(env, c.random, c.kept, now);
    if (!picked) return hold(progress::wait_capacity, time_point::max());
    // An asynchronous attempt's state is allocated before the token is
    // spent: out of memory, the job waits instead.
    void* storage = nullptr;
    if (picked->payload()->async) {
      // Without a concurrency gate, asynchronous attempts are bounded by
      // options.max_async_in_flight.
      if (!held_permit) {
        auto p = async_limit->try_acquire();
        if (!p) {
          picked.reset();
          return hold(progress::wait_capacity, time_point::max());
        }
        held_permit.emplace(std::move(p));
      }
      try {
        attempts.reserve_one();
        storage = ::operator new(sizeof(attempt_type));
      } catch (const std::bad_alloc&) {
        picked.reset();
        return hold(progress::wait_capacity, time_point::max());
      }
    }
    if (gates.has_rate() && !gates.take_token(now)) {
      ::operator delete(storage);
      return hold(progress::wait_rate, gates.next_token(now));
    }
    // run (or start), outcome.
    if (storage != nullptr)
      return {progress::progressed,
              start_async(c, storage, std::move(env), std::move(*picked), std::move(held_permit), now)};
    return {progress::progressed, run(c, std::move(env), std::move(*picked), std::move(held_permit), now)};
  }

  // The attempt's start: counted, sampled, and (first attempts) deposited in
  // the retry budget.
  void begin_attempt(stats_shard& s, envelope_type& env, const backend_record<Job>& backend,
                     time_point start) noexcept {
    const std::int64_t begin_ns = to_ns(start);
    s.inc(s.started);
    s.inc(backend.counters[s.index].started);
    s.record(s.dwell, static_cast<std::uint64_t>(std::max<std::int64_t>(0, begin_ns - to_ns(env.ready))));
    s.count_dispatch(begin_ns);
    if (env.attempts == 0 && opts.retry.max_attempts > 1) budget.deposit(begin_ns);
    ++env.attempts;
  }
  // The attempt timeout for a backend (its own, else options.attempt_timeout; 0 = none).
  [[nodiscard]] std::chrono::nanoseconds attempt_timeout(const backend_record<Job>& backend) const noexcept {
    return backend.timeout.count() != 0 ? backend.timeout : default_timeout;
  }

  // Runs one synchronous attempt, settles its outcome and returns the time it ended.
  time_point run(context& c, envelope_type&& env, lease&& lease_in, std::optional<permit>&& held_permit,
                 time_point start) {
    lease l = std::move(lease_in);
    stats_shard& s = *c.shard;
    const auto& backend = l.payload();
    begin_attempt(s, env, *backend, start);
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
    const time_point end =
        gates.has_rate() || env.deadline != time_point::max() ? clock.now() : measure_now(clock);
    const auto service = std::max(std::chrono::nanoseconds{0},
                                  std::chrono::duration_cast<std::chrono::nanoseconds>(end - start));
    c.last_service_ns = service.count();
    // A running call cannot be taken back: past its timeout it is counted,
    // and its result stands.
    if (const auto t = attempt_timeout(*backend); t.count() != 0 && service > t) s.inc(s.timeouts);
    finish_attempt(s, &c.random, std::move(env), std::move(l), held_permit, service, end, std::move(result),
                   &c.kept);
    return end;
  }

  // Settles a finished attempt (synchronous or asynchronous): outcome
  // counters, the backend's feedback, the permit, the adaptive sample, then
  // the final state or a retry. `keep` (synchronous attempts on a worker)
  // keeps the lease for the next pick; otherwise the lease is released.
  // `random` null: the shared generator (asynchronous settlement on any thread).
  void finish_attempt(stats_shard& s, rng* random, envelope_type&& env, lease&& l,
                      std::optional<permit>& held_permit, std::chrono::nanoseconds service, time_point end,
                      handler_result&& result, std::optional<lease>* keep) {
    const bool async = keep == nullptr;
    s.record(s.service, static_cast<std::uint64_t>(service.count()));
    const backend_id id = l.id();
    // Per-backend outcome counters while the lease still keeps the backend
    // alive; then the feedback.
    const auto& backend = l.payload();
    s.inc(result.ok() ? backend->counters[s.index].succeeded : backend->counters[s.index].failed);
    {
      typename cached_clock<Clock>::scope at_end(end);
      l.record(result.ok() ? outcome::success : outcome::failure, service);
    }
    if (keep != nullptr) {
      keep->emplace(std::move(l));
    } else {
      lease done = std::move(l);
    }
    const bool had_permit = held_permit.has_value();
    if (held_permit) held_permit->release();
    if (gates.is_adaptive())
      gates.on_sample(service, static_cast<std::size_t>(ledger.in_flight()), !result.ok());
    if (async) {
      ledger.async_settled();
    } else {
      s.in_flight.store(s.in_flight.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
    }
    // A fair ingress's flow in-flight slot (max_in_flight_per_flow) is held
    // from the job's take to its final state, retries and their backoff
    // included: freed here on success, by dead_letter() otherwise.
    const bool flow_freed = result.ok() && ingress.on_attempt_end(env, end);
    // Somebody may wait for the permit, the backend slot or the flow slot just released.
    if (flow_freed || had_permit || backends.has_limits()) work.notify();

    if (result.ok()) {
      s.inc(s.succeeded, std::memory_order_release);
      ledger.finish_one(s);
      return;
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
    retry_or_dead_letter(s, random, std::move(env), end);
  }

  // ------------------------------------------------ asynchronous attempts
  // Starts an asynchronous attempt in `storage` (allocated for it): the job
  // moves into the attempt (a stable address until it is settled), the
  // handler starts the work with the attempt's completion, and the attempt
  // stays in flight until the completion fires or its timeout passes (see
  // attempts.hpp). Returns the next decision's "now".
  time_point start_async(context& c, void* storage, envelope_type&& env, lease&& l,
                         std::optional<permit>&& held_permit, time_point start) {
    stats_shard& s = *c.shard;
    c.kept.reset();
    const auto backend = l.payload();  // keeps the handler alive while it starts the work
    begin_attempt(s, env, *backend, start);
    const auto t = attempt_timeout(*backend);
    const std::int64_t deadline =
        t.count() != 0 ? to_ns(saturating_add(start, t)) : attempt_type::no_deadline;
    ledger.async_started();
    async_live.fetch_add(1, std::memory_order_relaxed);
    auto* a = ::new (storage) attempt_type(*this, async_shared, std::move(env), std::move(l),
                                           std::move(held_permit), start, deadline);
    attempts.add(*a);
    // stop() requests stop on the attempts it finds; this one may be later.
    if (stopping.load(std::memory_order_seq_cst)) a->request_stop();
    std::exception_ptr thrown;
    {
      inside_scope mark(this, false);
      try {
        backend->handler->start(a->env->job, attempt_access::make(a));
      } catch (...) {
        thrown = std::current_exception();
      }
    }
    (void)a->handler_returned(std::move(thrown));
    a->release();  // the starting worker's reference
    return gates.has_rate() ? clock.now() : measure_now(clock);
  }

  // Settles an asynchronous attempt, on whichever thread finished it (the
  // completion's, a worker after an inline completion, or the thread that
  // saw its timeout). The last thing it touches in the leveler is
  // async_live, which the destructor waits for.
  void settle_async(attempt_type& a, handler_result&& result, bool timed_out, bool abandoned) noexcept {
    stats_shard& s = ledger.door_shard();
    attempts.remove(a);
    if (timed_out) s.inc(s.timeouts);
    if (abandoned) s.inc(s.abandoned);
    envelope_type env = std::move(*a.env);
    a.env.reset();
    // A real reading where retry scheduling depends on it (as in run()).
    const time_point end =
        gates.has_rate() || env.deadline != time_point::max() ? clock.now() : measure_now(clock);
    const auto service = std::max(std::chrono::nanoseconds{0},
                                  std::chrono::duration_cast<std::chrono::nanoseconds>(end - a.start));
    lease l = std::move(*a.held_lease);
    a.held_lease.reset();
    std::optional<permit> p = std::move(a.held_permit);
    a.held_permit.reset();
    finish_attempt(s, nullptr, std::move(env), std::move(l), p, service, end, std::move(result), nullptr);
    a.release();  // the registry's reference
    async_live.fetch_sub(1, std::memory_order_release);
  }

  // Fails every attempt whose timeout has passed (attempts.hpp).
  void expire_attempts(time_point now) noexcept {
    const std::int64_t now_ns = to_ns(now);
    if (attempts.next_ns() > now_ns) return;
    std::vector<attempt_type*> due;
    try {
      due = attempts.take_due(now_ns);
    } catch (const std::bad_alloc&) {
      return;  // retried at the next step
    }
    for (attempt_type* a : due) {
      (void)a->time_out();
      a->release();
    }
  }
  // stop(): asks every attempt in flight to stop (outside the registry's
  // lock: stop callbacks may fire completions).
  void request_stop_attempts() {
    for (attempt_type* a : attempts.all()) {
      a->request_stop();
      a->release();
    }
  }
  // When the next attempt times out (time_point::max(): none).
  [[nodiscard]] time_point next_attempt_timeout() const noexcept {
    const std::int64_t n = attempts.next_ns();
    return n == attempt_registry<attempt_type>::none ? time_point::max() : from_ns<time_point>(n);
  }

  // retry or dead letter: a failed attempt is retried after its backoff when
  // attempts, the deadline and the budget allow it (see retry_policy).
  void retry_or_dead_letter(stats_shard& s, rng* random, envelope_type&& env, time_point now) {
    if (stopping.load(std::memory_order_acquire)) {
      dead_letter(s, std::move(env), dead_letter_reason::cancelled);
      return;
    }
    if (env.attempts >= opts.retry.max_attempts) {
      dead_letter(s, std::move(env), dead_letter_reason::failed);
      return;
    }
    const auto wait = [&] {
      if (random != nullptr)
        return backoff(opts.retry.base_backoff, opts.retry.max_backoff, env.attempts, *random);
      std::lock_guard lock(shared_random_mutex);
      return backoff(opts.retry.base_backoff, opts.retry.max_backoff, env.attempts, shared_random);
    }();
    const time_point ready = saturating_add(now, wait);
    if (ready > env.deadline) {
      dead_letter(s, std::move(env), dead_letter_reason::failed);
      return;
    }
    if (!budget.try_withdraw(to_ns(now))) {
      s.inc(s.budget_denied);
      dead_letter(s, std::move(env), dead_letter_reason::failed);
      return;
    }
    s.inc(s.retried);
    env.ready = ready;
    retries.push(std::move(env), to_ns(ready));
    // stop() may have swept the retry heap between our check and the push.
    if (stopping.load(std::memory_order_seq_cst)) {
      for (auto& e : retries.take_all()) dead_letter(s, std::move(e), dead_letter_reason::cancelled);
      return;
    }
    work.notify_one();
  }

  // The fair ingress's shed sink for context c: each job CoDel sheds goes to
  // the dead-letter sink as `shed` (counted in n).
  auto shed_into(context& c, std::size_t& n) noexcept {
    return [this, &c, &n](envelope_type&& e) noexcept {
      ++n;
      dead_letter(*c.shard, std::move(e), dead_letter_reason::shed);
    };
  }

  // ------------------------------------------------------------- batches
  // A worker draining a deep queue of short jobs would otherwise claim the
  // queue's head once per job, and with several workers that cache line
  // moves between cores on every claim. So, where dispatch is immediate (no
  // rate or concurrency gate, no backend max_in_flight, not drop_oldest,
  // which promises to evict the oldest queued job) and this worker's last
  // job took < batch_service_limit, a worker takes up to batch_max jobs with
  // one claim into its batch and runs them in order. Any worker that finds
  // the queue empty takes from another worker's batch (steal) before it
  // idles, and a refill of more than one job wakes a parked worker, so a job
  // is never stranded behind a slow handler while a worker is free. Batched
  // jobs count in queue_depth and are cancelled by stop() like queued ones.
  [[nodiscard]] bool batch_allowed(const context& c) const noexcept {
    return batching && c.last_service_ns < batch_service_limit_ns && !backends.has_limits();
  }
  std::optional<envelope_type> take_batch(context& c, time_point now) {
    std::size_t shed = 0;
    const std::size_t n = c.batch.refill([&](auto out, std::size_t max) noexcept {
      return ingress.pop_bulk(out, max, now, shed_into(c, shed));
    });
    if (n == 0) {
      if (shed != 0) ledger.quiet().notify();  // shed jobs reached final states: drain() may be done
      return std::nullopt;
    }
    if (n > 1) work.notify_one();
    return c.batch.take(true);  // empty only if other workers took all n already
  }
  std::optional<envelope_type> steal(const context& c) {
    const std::size_t w = ctxs.size();
    if (w < 2) return std::nullopt;
    const std::size_t self = c.shard->index - 1;
    for (std::size_t k = 1; k < w; ++k)
      if (auto e = ctxs[(self + k) % w]->batch.take(false)) return e;
    return std::nullopt;
  }

  // ---------------------------------------------------------- the workers
  void start_workers() {
    threads.reserve(opts.workers);
    for (std::size_t i = 0; i < opts.workers; ++i) {
      threads.emplace_back([this, i] { worker_main(i); });
      ++launched;
    }
  }

  void worker_main(std::size_t index) {
    context& c = *ctxs[index];
    int idle_spins = 0;
    bool busy = false;  // progressed since drain() waiters were last woken
    time_point now = clock.now();
    while (!stopping.load(std::memory_order_acquire)) {
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
        ledger.quiet().notify();
      }
      if (r.kind == progress::idle && idle_spins < max_idle_spins) {
        ++idle_spins;
        std::this_thread::yield();
        now = clock.now();
        continue;
      }
      const auto ticket = work.prepare();
      if (stopping.load(std::memory_order_seq_cst)) {
        work.cancel();
        break;
      }
      now = clock.now();
      r = try_progress(c, now);
      if (r.kind == progress::progressed) {
        work.cancel();
        idle_spins = 0;
        busy = true;
        now = r.until;
        continue;
      }
      // Backends also become eligible with time (ejection expiry), which
      // nobody notifies: re-check a held job at least every capacity_poll.
      if (r.kind == progress::wait_capacity) {
        r.until = saturating_add(now, capacity_poll);
        ledger.quiet().notify();  // the destructor checks whether anything can still run
      }
      work.wait_until(ticket, std::min(r.until, next_attempt_timeout()));
      now = clock.now();
    }
    c.kept.reset();
    if (c.held) {
      dead_letter(*c.shard, std::move(*c.held), dead_letter_reason::cancelled);
      c.held.reset();
    }
    while (auto e = c.batch.take(true)) dead_letter(*c.shard, std::move(*e), dead_letter_reason::cancelled);
    // The worker's last action (stop() waits for the count, then joins).
    exited.fetch_add(1, std::memory_order_acq_rel);
    ledger.quiet().notify_always();
  }

  // stop(): every job not started - queued, in a batch, held by the
  // simulation, waiting for a retry - to the sink as `cancelled`, in the
  // calling thread. Each is taken out before the sink runs (a sink may call
  // stop() again).
  void cancel_not_started() {
    auto& s = ledger.door_shard();
    std::optional<envelope_type> held;
    if (opts.workers == 0) {
      sim.kept.reset();
      held.swap(sim.held);
    }
    if (held) dead_letter(s, std::move(*held), dead_letter_reason::cancelled);
    // The queue is closed: no new position can be claimed, but a push that
    // claimed one before close() may still be publishing (try_pop reports
    // empty until it does), so loop on the claimed count, not on try_pop.
    while (ingress.size_approx() != 0) {
      if (ingress.take_all(
              [&](envelope_type&& e) { dead_letter(s, std::move(e), dead_letter_reason::cancelled); }) == 0)
        std::this_thread::yield();
    }
    // Jobs in workers' batches were not started either (a worker refilling
    // concurrently cancels what it took when it sees `stopping`).
    for (auto& w : ctxs)
      while (auto e = w->batch.take(false)) dead_letter(s, std::move(*e), dead_letter_reason::cancelled);
    for (auto& e : retries.take_all()) dead_letter(s, std::move(e), dead_letter_reason::cancelled);
  }

  static constexpr int max_idle_spins = 16;
  static constexpr std::chrono::milliseconds capacity_poll{20};

  // ---------------------------------------------------------------- state
  const Options opts;
  Clock clock;
  ledger_stage<Job, Clock> ledger;
  ingress_stage<Job, Clock> ingress;
  gate_stage<Clock, RateGate> gates;
  backends_type backends;
  retry_heap<envelope_type> retries;
  retry_budget budget;
  clock_event<Clock> work;  // workers: job, retry, capacity, backend, rate change, stop
  std::int64_t start_ns;

  std::atomic<bool> closed{false};
  std::atomic<bool> stopping{false};
  std::atomic<bool> stopped{false};
  bool batching = false;

  // Asynchronous attempts (attempts.hpp): in flight, their timeouts, the
  // count of settlements not fully returned (the destructor waits for it),
  // what outlives the leveler, and the default bound on them without a
  // concurrency gate.
  std::chrono::nanoseconds default_timeout{0};
  attempt_registry<attempt_type> attempts;
  std::atomic<std::size_t> async_live{0};
  std::shared_ptr<attempt_shared> async_shared = std::make_shared<attempt_shared>();
  std::optional<concurrency_limiter> async_limit;
  sim_events posted;               // simulation mode: leveler::post_at
  std::mutex shared_random_mutex;  // guards shared_random (backoff draws of asynchronous settlements)
  rng shared_random;

  std::vector<std::unique_ptr<context>> ctxs;  // one per worker
  context sim;                                 // the simulation driver's
  step_result sim_wait{};                      // where the last simulation step stopped
  std::vector<std::thread> threads;
  std::size_t launched = 0;            // worker threads started (by the constructor only)
  std::atomic<std::size_t> exited{0};  // workers that returned from worker_main
  std::mutex threads_mutex;            // guards `threads` while stop() takes them to join
};

}  // namespace levee::detail
