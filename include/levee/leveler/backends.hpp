// levee/leveler/backends.hpp - where a job runs: the backend handlers
// (type-erased), their per-backend outcome counters, and the balancer that
// picks one for each job, preferring backends a retried job has not failed
// on yet.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <levee/balance.hpp>
#include <levee/clock.hpp>
#include <levee/detail/cache.hpp>
#include <levee/leveler/job.hpp>
#include <levee/metrics.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace levee::detail {

// A backend's handler, type-erased. Synchronous handlers are run by
// invoke(); asynchronous ones (async_job_handler) are started by start()
// with the attempt's completion.
template <class Job>
struct job_handler_base {
  virtual ~job_handler_base() = default;
  virtual handler_result invoke(Job& job) = 0;
  virtual void start(Job& job, completion&& done) = 0;
  [[nodiscard]] virtual bool async() const noexcept = 0;
};

template <class Job, class H>
struct job_handler_impl final : job_handler_base<Job> {
  explicit job_handler_impl(H h) : fn(std::move(h)) {}
  handler_result invoke(Job& job) override {
    if constexpr (async_job_handler<H, Job>) {
      return handler_result::failure();  // never called: async() is true
    } else {
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
  }
  void start(Job& job, completion&& done) override {
    if constexpr (async_job_handler<H, Job>) std::invoke(fn, job, std::move(done));
  }
  [[nodiscard]] bool async() const noexcept override { return async_job_handler<H, Job>; }
  H fn;
};

// Outcome counters of one backend as seen by one stats shard (ledger.hpp):
// a worker's slot is written by that worker only, so two workers finishing
// jobs on the same backend never share a cache line.
struct alignas(false_sharing_range) backend_counters {
  std::atomic<std::uint64_t> started{0};
  std::atomic<std::uint64_t> succeeded{0};
  std::atomic<std::uint64_t> failed{0};
};

template <class Job>
struct backend_record {
  explicit backend_record(std::size_t shards)
      : counters(std::make_unique<backend_counters[]>(shards)), shard_count(shards) {}
  std::uint64_t id = 0;
  std::unique_ptr<job_handler_base<Job>> handler;
  bool async = false;                            // handler->async(), read without a virtual call
  std::chrono::nanoseconds timeout{0};           // per-attempt timeout; 0 = none
  std::unique_ptr<backend_counters[]> counters;  // one per stats shard
  std::size_t shard_count;

  [[nodiscard]] std::uint64_t sum(std::atomic<std::uint64_t> backend_counters::*field) const noexcept {
    std::uint64_t n = 0;
    for (std::size_t i = 0; i < shard_count; ++i) n += (counters[i].*field).load(std::memory_order_relaxed);
    return n;
  }
};

// The clock the leveler gives its balancer: the leveler's clock, except that
// inside a `scope` on the current thread now() returns the time the leveler
// has just read (a worker reads the clock once per job and the balancer's
// lease feedback reuses it instead of reading it again).
template <clock C>
class cached_clock {
 public:
  using rep = typename C::rep;
  using period = typename C::period;
  using duration = typename C::duration;
  using time_point = typename C::time_point;

  cached_clock() = default;
  explicit cached_clock(C c) : base_(std::move(c)) {}

  [[nodiscard]] time_point now() const {
    const time_point* t = slot_;
    return t != nullptr ? *t : base_.now();
  }

  class scope {
   public:
    explicit scope(time_point t) noexcept : value_(t), prev_(slot_) { slot_ = &value_; }
    ~scope() { slot_ = prev_; }
    scope(const scope&) = delete;
    scope& operator=(const scope&) = delete;

   private:
    time_point value_;
    const time_point* prev_;
  };

 private:
  [[no_unique_address]] C base_{};
  static inline thread_local const time_point* slot_ = nullptr;
};

template <class Job, strategy Strategy, clock Clock>
class backend_stage {
 public:
  using record = backend_record<Job>;
  using balancer_type = levee::balancer<Strategy, cached_clock<Clock>, std::shared_ptr<record>>;
  using lease = typename balancer_type::lease;

  backend_stage(Strategy s, const health_options& h, std::size_t shards, Clock c)
      : balancer_(std::move(s), h, cached_clock<Clock>(std::move(c))), shards_(shards) {}

  // Blocking: briefly, while the balancer publishes its new snapshot (it
  // waits for picks in progress, never for running jobs).
  // `timeout`: the backend's attempt timeout (0 = none).
  template <class H>
  backend_id add(H&& handler, backend_options bo, std::chrono::nanoseconds timeout) {
    auto b = std::make_shared<record>(shards_);
    b->handler = std::make_unique<job_handler_impl<Job, std::decay_t<H>>>(std::forward<H>(handler));
    b->async = b->handler->async();
    b->timeout = timeout;
    std::lock_guard lock(mutex_);
    const backend_id id = next_id_++;
    b->id = id;
    balancer_.add_backend(id, b, bo);
    registry_.emplace(id, std::move(b));
    if (bo.max_in_flight != 0) limits_.store(true, std::memory_order_relaxed);
    return id;
  }
  bool remove(backend_id id) {
    std::lock_guard lock(mutex_);
    if (registry_.erase(id) == 0) return false;
    (void)balancer_.remove_backend(id);
    return true;
  }
  bool set_weight(backend_id id, std::uint32_t weight) { return balancer_.set_weight(id, weight); }
  bool set_max_in_flight(backend_id id, std::size_t max_in_flight) {
    if (max_in_flight != 0) limits_.store(true, std::memory_order_relaxed);
    return balancer_.set_max_in_flight(id, max_in_flight);
  }
  bool set_healthy(backend_id id, bool healthy) { return balancer_.set_healthy(id, healthy); }
  [[nodiscard]] std::size_t count() const {
    std::lock_guard lock(mutex_);
    return registry_.size();
  }
  // Some backend has (or had) a max_in_flight: completions must wake workers.
  [[nodiscard]] bool has_limits() const noexcept { return limits_.load(std::memory_order_relaxed); }

  // A backend for this job at `now`, reusing `kept` (balancer::try_pick_keeping).
  // A retry prefers backends the job has not failed on; when none of those is
  // eligible (all tried, ejected, unhealthy or saturated) it falls back to any
  // eligible backend rather than stall.
  template <class Env>
  std::optional<lease> pick(const Env& env, rng& random, std::optional<lease>& kept,
                            typename Clock::time_point now) {
    typename cached_clock<Clock>::scope at_now(now);
    pick_request req;
    if (env.has_key) req.key = env.key;
    req.random = &random;
    if (env.failure && !env.failure->failed_on.empty()) {
      const auto& tried = env.failure->failed_on;
      req.exclude = std::span<const backend_id>(tried.data(), tried.size());
      if (auto l = balancer_.try_pick_keeping(req, kept)) return l;
      req.exclude = {};
    }
    return balancer_.try_pick_keeping(req, kept);
  }

  // True if no job could be dispatched now or later without a call from
  // outside: no backend, or none can be picked while no worker holds one and
  // none is only temporarily ejected (every one marked unhealthy with
  // set_healthy(false), beyond panic). Only meaningful with no attempt running.
  [[nodiscard]] bool none_can_ever_run(std::uint64_t seed) {
    {
      std::lock_guard lock(mutex_);
      if (registry_.empty()) return true;
      for (const auto& st : balancer_.stats())
        if (st.in_flight != 0 || st.ejected) return false;
    }
    rng random(seed);
    pick_request req;
    req.random = &random;
    return !balancer_.try_pick(req).has_value();
  }

  void collect(metrics_snapshot& m) const {
    std::lock_guard lock(mutex_);
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
      if (auto it = registry_.find(st.id); it != registry_.end()) {
        // started first: a job counted as finished was counted as started.
        b.started = it->second->sum(&backend_counters::started);
        b.succeeded = it->second->sum(&backend_counters::succeeded);
        b.failed = it->second->sum(&backend_counters::failed);
        b.started = std::max(b.started, b.succeeded + b.failed);
        b.in_flight = static_cast<std::size_t>(b.started - b.succeeded - b.failed);
      }
      if (b.ejected) ++m.ejected_backends;
      m.backends.push_back(b);
    }
    std::sort(m.backends.begin(), m.backends.end(),
              [](const backend_metrics& a, const backend_metrics& b) { return a.id < b.id; });
  }

 private:
  balancer_type balancer_;
  std::size_t shards_;
  mutable std::mutex mutex_;  // the registry and the id counter
  std::unordered_map<backend_id, std::shared_ptr<record>> registry_;
  backend_id next_id_ = 1;
  std::atomic<bool> limits_{false};
};

}  // namespace levee::detail
