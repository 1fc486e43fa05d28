// levee/leveler/ingress.hpp - producer -> queue: the envelope a job travels
// in, the bounded ingress queue and its discipline (FIFO, or fair: see
// fairness_options), the overflow policies (block, reject, drop_oldest),
// deadline admission, and arrival accounting.
//
// Every accepted job is pushed into the ingress queue exactly once (retries
// go to the retry heap), so the queue's push count is the acceptance count:
// no counter of its own to increment per submit. A push counts from the
// moment it claims its slot, before a worker can pop the job.
//
// The discipline is chosen at construction: the FIFO (an mpmc_queue) by
// default, or a levee::fair_queue when options.fairness is set. Each
// operation tests which one once (a branch that always goes the same way);
// the FIFO path is otherwise unchanged.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <levee/balance/backend_set.hpp>
#include <levee/clock.hpp>
#include <levee/detail/cache.hpp>
#include <levee/detail/time.hpp>
#include <levee/detail/time_window.hpp>
#include <levee/detail/wait.hpp>
#include <levee/fair_queue.hpp>
#include <levee/leveler/job.hpp>
#include <levee/leveler/ledger.hpp>
#include <levee/mpmc_queue.hpp>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace levee {

// A fair ingress for a leveler shared by tenants (leveler options.fairness):
// jobs are queued by (band, flow) - job_options::band and ::flow - and taken
// for dispatch in the order of levee::fair_queue (see fair_queue.hpp for the
// algorithm): strict bands first, weighted bands by deficit round robin,
// flows inside a band by weighted deficit round robin (RFC 8290), per-flow
// limits, CoDel (RFC 8289) per band shedding to the dead-letter sink with
// reason `shed`, idle flow states expiring after flow_ttl.
//
// Guarantees, while the leveler's gates are the bottleneck:
//  - each backlogged flow of a band gets a share of the band's dispatches
//    proportional to its weight (cost-weighted: job_options::cost); a flow
//    with nothing queued takes no turn, so a lone flow gets the whole rate;
//  - a sparse flow (a job now and then) is dispatched at the next free
//    dispatch, not behind another flow's backlog;
//  - a strict band is served before every later band and never waits
//    behind them; an exempt band is never shed;
//  - a shed job reaches the dead-letter sink as `shed`, never silently.
// Not fair: retries (they bypass the ingress, from the retry heap) and jobs
// already taken by a worker (one per worker, held at a gate).
struct fairness_options {
  // 1..8 bands; strict bands first (see fair_band_options: strict, weight,
  // exempt, CoDel target and interval, overload cutoff, adaptive LIFO).
  std::vector<fair_band_options> bands = std::vector<fair_band_options>(1);
  std::uint32_t quantum = 1;  // cost units per weight per round robin turn, >= 1
  // Per-flow weight (>= 1; 0 counts as 1): a callback, or a table of the
  // flows that differ from 1 (one of the two, not both). Read when the flow's
  // state is created (first job, or first job after the state expired).
  // The callback runs under the fair queue's scheduler lock on a worker
  // thread: keep it cheap, do not call into the leveler.
  std::function<std::uint32_t(std::uint64_t flow, std::size_t band)> weight;
  std::unordered_map<std::uint64_t, std::uint32_t> weights;
  // Jobs one flow may have queued; more are refused with
  // submit_status::flow_full (the job handed back). 0 = unlimited.
  std::uint32_t max_queued_per_flow = 0;
  // Jobs of one flow taken and not yet in a final state (held at a gate, in
  // a batch, running, or waiting for a retry): a flow at the limit takes no
  // turn. 0 = unlimited.
  std::uint32_t max_in_flight_per_flow = 0;
  // Per-flow GCRA rate of dispatched cost (a state per flow, created on
  // first use); nullopt = none. flow_burst: its burst in cost units, >= 1.
  std::optional<rate> flow_rate;
  std::uint64_t flow_burst = 1;
  // An idle flow (nothing queued, nothing in flight) forgets its state this
  // long after it became idle (its weight is read again if it comes back).
  std::chrono::nanoseconds flow_ttl = std::chrono::seconds(30);
};

}  // namespace levee

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
  TimePoint ready{};       // enqueued, or retry backoff elapsed
  std::uint64_t flow = 0;  // fair ingress: job_options::flow
  std::uint32_t attempts = 0;
  std::uint8_t band = 0;  // fair ingress: job_options::band (< fair_queue's 8 bands)
  bool has_key = false;
  bool flow_slot = false;  // fair ingress: holds one of its flow's in-flight slots
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
    flow = o.flow;
    attempts = o.attempts;
    band = o.band;
    has_key = o.has_key;
    flow_slot = o.flow_slot;
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

  using fair_type = fair_queue<envelope_type, Clock>;

  // With `fairness`, the discipline is a fair_queue of `capacity` (the FIFO
  // ring then holds one slot, never used). Throws std::invalid_argument
  // naming the option for a bad fairness option.
  ingress_stage(std::size_t capacity, bool notify_space, const std::optional<fairness_options>& fairness,
                Clock c)
      : queue_(fairness ? 1 : capacity),
        fair_(make_fair(capacity, fairness, c)),
        arrivals_(rate_slot, rate_slots),
        space_(c),
        notify_space_(notify_space) {}

  [[nodiscard]] bool is_fair() const noexcept { return fair_ != nullptr; }
  [[nodiscard]] const fair_type* fair() const noexcept { return fair_.get(); }

  // The door (see leveler::submit for the contract). Core: the leveler's
  // dispatch core (worker.hpp), for the clock, the options, the gates'
  // forecast, the ledger and the workers' event.
  template <class Core>
  submit_result<Job> submit(Core& c, Job&& job, const job_options<Clock>& jo, overflow_policy policy,
                            time_point until) {
    if (fair_) [[unlikely]]
      check_fair(jo);
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
      if (c.opts.deadline_admission ? !admissible(c, jo, deadline, now) : deadline < now)
        return reject(std::move(job), submit_status::would_miss_deadline);
    }
    envelope_type env(std::move(job), jo.key.value_or(0), deadline, now, jo.key.has_value());
    if (fair_) [[unlikely]] {
      env.flow = jo.flow;
      env.band = static_cast<std::uint8_t>(jo.band);
    }
    auto refuse = [&](submit_status st) { return reject(std::move(env.job), st); };
    evicted_job<Core> evicted{c, std::nullopt};
    int spins = 0;
    for (;;) {
      if (const fair_push_status st = push(env, jo, now); st != fair_push_status::full) {
        if (st == fair_push_status::ok) return accepted(c);
        if (st == fair_push_status::flow_full) return refuse(submit_status::flow_full);
      }
      if (is_closed() || c.closed.load(std::memory_order_seq_cst)) return refuse(submit_status::closed);
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
      if (const fair_push_status st = push(env, jo, now); st != fair_push_status::full) {
        space_.cancel();
        if (st == fair_push_status::ok) return accepted(c);
        if (st == fair_push_status::flow_full) return refuse(submit_status::flow_full);
        continue;  // closed: reported above
      }
      if (is_closed() || c.closed.load(std::memory_order_seq_cst)) {
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

  // The FIFO's single pop (drop_oldest's eviction); wakes a blocked
  // submitter when one may wait.
  std::optional<envelope_type> pop() {
    auto e = queue_.try_pop();
    if (e && notify_space_) space_.notify();
    return e;
  }
  // A worker's take at `now`: the head of the FIFO, or the fair discipline's
  // next job. Fair only: jobs its CoDel sheds on the way go to shed(env&&)
  // (after the queue's lock is released); when jobs are queued but none may
  // go now (per-flow rate or in-flight limit), `ready_at` is lowered to the
  // time the earliest may (time_point::max(): when an attempt ends). A taken
  // job holds one of its flow's in-flight slots when that limit is set,
  // until on_attempt_end().
  template <class Shed>
  std::optional<envelope_type> pop(time_point now, Shed&& shed, time_point& ready_at) {
    if (!fair_) [[likely]]
      return pop();
    std::optional<envelope_type> e;
    bool freed = false;  // a shed job freed room too
    try {
      auto r = fair_->try_pop(now, [&](envelope_type&& v, const fair_item_info<time_point>&) noexcept {
        freed = true;
        shed(std::move(v));
      });
      if (r.status == fair_pop_status::waiting) ready_at = std::min(ready_at, r.ready_at);
      if (r.status == fair_pop_status::empty && fair_->flow_count() != 0) [[unlikely]]
        ready_at = std::min(ready_at, expire_idle_flows(now));
      if (r) {
        e.emplace(std::move(*r.value));
        e->flow_slot = track_in_flight_;
      }
    } catch (const std::bad_alloc&) {
      // No memory for a new flow's state: nothing was lost (the jobs stay
      // queued); try again a little later.
      ready_at = std::min(ready_at, saturating_add(now, std::chrono::milliseconds{1}));
    }
    if ((e || freed) && notify_space_) space_.notify();
    return e;
  }
  // Nothing is queued but flow states are held: expires a bounded number of
  // idle ones (a pop expires only a few, and with no traffic there is no
  // pop), and returns when to come back for more: the next expiry, or in
  // 1 ms while expired ones remain (so a worker never holds the lock long).
  time_point expire_idle_flows(time_point now) {
    (void)fair_->expire_idle(now, idle_expiry_batch);
    const time_point next = fair_->next_expiry();
    return next > now ? next : saturating_add(now, std::chrono::milliseconds{1});
  }

  // Up to `max` jobs with one claim (FIFO) or one lock (fair) into *out++
  // (see worker.hpp's batches); shed as for pop.
  template <class Out, class Shed>
  std::size_t pop_bulk(Out out, std::size_t max, time_point now, Shed&& shed) noexcept {
    std::size_t n = 0;
    bool freed = false;  // a shed job freed room too
    if (!fair_) [[likely]] {
      n = queue_.try_pop_bulk(out, max);
    } else {
      try {
        n = fair_
                ->try_pop_bulk(
                    now, max,
                    [&](envelope_type&& v, const fair_item_info<time_point>&) noexcept {
                      v.flow_slot = track_in_flight_;
                      *out++ = std::move(v);
                    },
                    [&](envelope_type&& v, const fair_item_info<time_point>&) noexcept {
                      freed = true;
                      shed(std::move(v));
                    })
                .count;
      } catch (const std::bad_alloc&) {
        n = 0;  // as pop: the jobs stay queued
      }
    }
    if ((n != 0 || freed) && notify_space_) space_.notify();
    return n;
  }
  // The final state of a job taken by pop/pop_bulk (succeeded, or handed to
  // the dead-letter sink): frees its flow's in-flight slot (idempotent).
  // True if a slot was freed: a worker may be waiting for it (the caller
  // wakes one).
  bool on_attempt_end(envelope_type& env, time_point now) {
    if (!env.flow_slot) [[likely]]
      return false;
    env.flow_slot = false;
    fair_->finished(env.flow, env.band, now);
    return true;
  }
  // stop(): takes every queued job into cancel(env&&) (called outside the
  // queue's lock); returns how many. A push still publishing is not taken:
  // call until size_approx() == 0.
  template <class Cancel>
  std::size_t take_all(Cancel&& cancel) {
    if (!fair_) [[likely]] {
      std::size_t n = 0;
      while (auto e = queue_.try_pop()) {
        cancel(std::move(*e));
        ++n;
      }
      return n;
    }
    std::vector<envelope_type> all;
    all.reserve(fair_->size_approx());
    (void)fair_->drain_all(
        [&](envelope_type&& v, const fair_item_info<time_point>&) noexcept { all.push_back(std::move(v)); });
    for (auto& e : all) cancel(std::move(e));
    return all.size();
  }
  // stop(): no push can start any more; one may still be publishing.
  void close() noexcept {
    queue_.close();
    if (fair_) fair_->close();
  }
  [[nodiscard]] bool is_closed() const noexcept { return fair_ ? fair_->is_closed() : queue_.is_closed(); }
  // Wakes blocked submitters (close, stop).
  void wake_submitters() noexcept { space_.notify_always(); }

  [[nodiscard]] std::size_t size_approx() const noexcept {
    return fair_ ? fair_->size_approx() : queue_.size_approx();
  }
  [[nodiscard]] std::uint64_t accepted_total() const noexcept {
    return fair_ ? fair_->push_count() : queue_.push_count();
  }
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
    m.rejected.flow_full = rejected(submit_status::flow_full);
    m.submitted = m.accepted + m.rejected.total();
    m.queue_depth = size_approx();
    if (fair_) {
      const fair_queue_metrics f = fair_->metrics();
      for (std::size_t b = 0; b < f.bands.size(); ++b) {
        const fair_band_metrics& fb = f.bands[b];
        m.bands.push_back(band_metrics{b, fb.depth, fb.dispatched, fb.shed, fb.dropping, fb.sojourn});
      }
      m.flows = flow_metrics{f.active_flows,  f.idle_flows,       f.flows_created,
                             f.flows_expired, f.flow_table_bytes, f.in_door};
    }
    m.outstanding_peak = outstanding_peak_.load(std::memory_order_relaxed);
    m.arrival_rate =
        ledger_stage<Job, Clock>::per_second(arrivals_.sum(now_ns, 10, m.submitted), now_ns - start_ns);
  }

 private:
  static constexpr int max_submit_spins = 64;
  static constexpr std::size_t idle_expiry_batch = 4096;

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
  //
  // Fair: the jobs ahead are those the discipline predicts it dispatches
  // first (fair_queue::estimate_wait: an upper bound in cost units, each job
  // costing at least one, so at least the jobs ahead) plus every accepted
  // job outside the queue and not running (held, batched, retries); and the
  // job's own flow rate may make it wait longer (flow_ready_at).
  template <class Core>
  [[nodiscard]] bool admissible(const Core& c, const job_options<Clock>& jo, time_point deadline,
                                time_point now) const {
    if (deadline < now) return false;
    if (fair_) [[unlikely]]
      return fair_admissible(c, jo, deadline, now);
    if (!c.gates.has_rate()) return true;
    const std::uint64_t out = c.outstanding();
    const std::uint64_t running = c.ledger.in_flight();
    const std::uint64_t ahead = out > running ? out - running : 0;
    return std::max(c.gates.forecast(ahead + 1, now), now) <= deadline;
  }
  template <class Core>
  [[nodiscard]] bool fair_admissible(const Core& c, const job_options<Clock>& jo, time_point deadline,
                                     time_point now) const {
    const auto e = fair_->estimate_wait(jo.flow, jo.band, jo.cost, now);
    time_point at = std::max(e.flow_ready_at, now);
    if (c.gates.has_rate()) {
      const std::uint64_t out = c.outstanding();
      const std::uint64_t running = c.ledger.in_flight();
      const std::uint64_t queued = fair_->size_approx();
      const std::uint64_t outside = out > running + queued ? out - running - queued : 0;
      const std::uint64_t k = std::min<std::uint64_t>(e.cost_ahead, std::uint64_t{1} << 62) + outside + 1;
      at = std::max(at, c.gates.forecast(k, now));
    }
    return at <= deadline;
  }

  // Job options a fair queue would refuse with an exception, checked before
  // the job is moved into an envelope.
  void check_fair(const job_options<Clock>& jo) const {
    if (jo.band >= fair_->band_count())
      throw std::invalid_argument(
          "levee::leveler::submit: job_options.band must be < fairness.bands.size() (" +
          std::to_string(fair_->band_count()) + "), got " + std::to_string(jo.band));
    if (jo.cost == 0)
      throw std::invalid_argument("levee::leveler::submit: job_options.cost must be >= 1, got 0");
    if (fair_->options().flow_rate && jo.cost > fair_->options().flow_burst)
      throw std::invalid_argument("levee::leveler::submit: job_options.cost (" + std::to_string(jo.cost) +
                                  ") must be <= fairness.flow_burst (" +
                                  std::to_string(fair_->options().flow_burst) + ") with a flow rate");
  }

  // One push attempt into the discipline; env is untouched unless ok.
  fair_push_status push(envelope_type& env, const job_options<Clock>& jo, time_point now) {
    if (fair_) [[unlikely]]
      return fair_->try_push(std::move(env), jo.flow, jo.band, jo.cost, now);
    return queue_.try_push(std::move(env)) ? fair_push_status::ok : fair_push_status::full;
  }

  static std::unique_ptr<fair_type> make_fair(std::size_t capacity, const std::optional<fairness_options>& f,
                                              const Clock& c) {
    if (!f) return nullptr;
    auto bad = [](const std::string& what) {
      throw std::invalid_argument("levee::leveler: options.fairness." + what);
    };
    if (f->weight && !f->weights.empty()) bad("weight and weights are exclusive: set one");
    fair_queue_options o;
    o.capacity = capacity;
    o.bands = f->bands;
    o.quantum = f->quantum;
    o.weight = f->weight;
    if (!f->weights.empty())
      o.weight = [table = f->weights](std::uint64_t flow, std::size_t) -> std::uint32_t {
        const auto it = table.find(flow);
        return it == table.end() ? 1U : it->second;
      };
    o.max_queued_per_flow = f->max_queued_per_flow;
    o.max_in_flight_per_flow = f->max_in_flight_per_flow;
    o.flow_rate = f->flow_rate;
    o.flow_burst = f->flow_burst;
    o.flow_ttl = f->flow_ttl;
    try {
      return std::make_unique<fair_type>(std::move(o), c);
    } catch (const std::invalid_argument& e) {
      // "levee::fair_queue: options.x ..." -> "levee::leveler: options.fairness.x ..."
      std::string what = e.what();
      const std::string from = "levee::fair_queue: options.";
      if (what.rfind(from, 0) == 0) what = what.substr(from.size());
      bad(what);
    }
    return nullptr;
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

  static_assert(static_cast<std::size_t>(submit_status::flow_full) == 5,
                "door_counters::rejected has one counter per submit_status: resize it with the enum");

  mpmc_queue<envelope_type> queue_;  // the FIFO discipline (one unused slot when fair)
  std::unique_ptr<fair_type> fair_;  // the fair discipline; null = FIFO
  bool track_in_flight_ = fair_ != nullptr && fair_->options().max_in_flight_per_flow != 0;
  struct alignas(false_sharing_range) door_counters {
    std::atomic<std::uint64_t> rejected[6]{};  // by submit_status (accepted: the queue's push count)
  } door_;
  window_log arrivals_;
  clock_event<Clock> space_;  // blocked submitters: a slot was freed, close, stop
  const bool notify_space_;   // only overflow_policy::block ever waits for room
  std::atomic<std::uint64_t> outstanding_peak_{0};
};

}  // namespace levee::detail
