// levee/redis/shared_rate_gate.hpp - levee::redis::shared_rate_gate, a rate
// gate (levee::rate_gate) whose permits come from a fleet-wide GCRA on a
// Redis key (levee/redis/gcra.hpp), so that N processes together keep one
// rate.
//
// How: one refill thread per gate owns the connection. When the local stock
// is about to run out and someone wants permits, it reserves `batch` (k)
// tokens in one round trip; the server schedules them in the fleet's GCRA and
// says when each becomes valid. The thread stores their valid-from times in
// a ring (converted to the local clock by adding each offset to the time the
// reply was received, never earlier than the server's reading). Workers
// spend tokens from the ring with one compare-and-swap on a local counter: no
// worker thread ever touches the network or waits for the refill thread.
//
// Envelope. Let N be the number of processes sharing the key, r its rate, b
// its burst, k the batch and h the lease. Every token is spent at or after
// its valid-from time and at most h after it (later it expires), and a
// process never holds more than k valid unspent tokens (older ones expire),
// so the admissions of the whole fleet hold, in every closed window of
// length w,
//     at most  b + floor(r * w) + min(N * k, b + floor(r * h)) + jitter
// where jitter is r times the spread of the reply delays (the time from the
// server's TIME to the client reading its clock after the reply), typically
// one token or two. A process that dies wastes at most the tokens it
// reserved (<= k plus the ones not yet valid, all within h).
//
// Failure policy (Redis unreachable, timed out, or replying errors): never a
// stall. Tokens already granted stay spendable until they expire; then
//  - fail_closed: nothing more is admitted until a round trip succeeds;
//  - local_fallback: a local levee::rate_limiter at rate / N (burst
//    ceil(b / N)) admits in the meantime (fleet_size = N must be right for
//    the fleet to stay near its rate).
// The refill thread retries every retry_interval. A server that loses the
// key (restart without persistence, failover to a replica that had not seen
// the last write) starts the schedule afresh: the fleet may then admit up to
// one more burst plus what the processes hold.
//
// Clock: any levee::clock that advances with real time (the network does);
// only differences between its readings are used, so an offset from other
// processes' clocks changes nothing.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <levee/clock.hpp>
#include <levee/detail/time.hpp>
#include <levee/rate_gate.hpp>
#include <levee/rate_limiter.hpp>
#include <levee/redis/connection.hpp>
#include <levee/redis/gcra.hpp>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

namespace levee::redis {

enum class failure_policy {
  fail_closed,     // admit nothing new while Redis is unreachable
  local_fallback,  // admit at rate / fleet_size locally while Redis is unreachable
};

struct shared_rate_gate_options {
  connection_options connection;                             // the refill thread's connection
  std::string key;                                           // the fleet's GCRA key (non-empty)
  levee::rate rate = levee::rate::per_second(1000);          // fleet-wide
  std::uint64_t burst = 1;                                   // fleet-wide, >= 1
  std::uint64_t batch = 64;                                  // k: tokens per round trip, >= 1
  std::chrono::nanoseconds lease = std::chrono::seconds(1);  // h: horizon and token lifetime, > 0
  // Refill when the stock runs out within this time (covers the round trip
  // and the refill thread's wake-up).
  std::chrono::nanoseconds lead = std::chrono::milliseconds(5);
  failure_policy on_failure = failure_policy::fail_closed;
  std::uint64_t fleet_size = 1;                   // N, for the local fallback's share (>= 1)
  std::chrono::milliseconds retry_interval{100};  // between attempts while Redis fails (> 0)
};

struct shared_rate_gate_metrics {
  std::uint64_t round_trips = 0;          // reservations attempted (successful or not)
  std::uint64_t tokens_granted = 0;       // by the server
  std::uint64_t tokens_spent = 0;         // admitted from the stock
  std::uint64_t tokens_expired = 0;       // dropped unspent (older than the lease, or beyond k held)
  std::uint64_t errors = 0;               // failed round trips
  std::uint64_t fallback_admissions = 0;  // permits admitted by the local fallback
  std::uint64_t noscript_reloads = 0;
  std::chrono::nanoseconds max_round_trip{0};
  bool degraded = false;  // the last round trip failed
};

template <clock Clock = std::chrono::steady_clock>
class shared_rate_gate {
 public:
  using clock_type = Clock;
  using time_point = typename Clock::time_point;
  using duration = typename Clock::duration;

  // Starts the refill thread (which connects; a server that is down is the
  // failure policy's case, not an error here). Throws std::invalid_argument
  // for a bad option (naming it), or if the rate, burst, batch and lease do
  // not fit the script's exact arithmetic (see gcra.hpp).
  explicit shared_rate_gate(shared_rate_gate_options o, Clock c = Clock{})
      : opts_(validate(std::move(o))),
        cfg_(opts_.rate, opts_.burst, opts_.lease, opts_.batch),
        clock_(std::move(c)),
        capacity_(std::bit_ceil(2 * opts_.batch + 2)),
        mask_(capacity_ - 1),
        ring_(std::make_unique<std::atomic<std::int64_t>[]>(capacity_)),
        poll_(std::clamp<std::int64_t>(opts_.rate.emission_interval().count(), 50'000, 1'000'000)) {
    if (opts_.on_failure == failure_policy::local_fallback) {
      const std::uint64_t share_burst = (opts_.burst + opts_.fleet_size - 1) / opts_.fleet_size;
      fallback_.emplace(levee::rate::per(opts_.rate.count(),
                                         opts_.rate.period() * static_cast<std::int64_t>(opts_.fleet_size)),
                        std::max<std::uint64_t>(share_burst, 1), clock_);
    }
    thread_ = std::thread([this] { refill_main(); });
  }
  shared_rate_gate(const shared_rate_gate&) = delete;
  shared_rate_gate& operator=(const shared_rate_gate&) = delete;
  // Stops the refill thread (waits for a round trip in progress, at most the command timeout).
  ~shared_rate_gate() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  // Admits n permits at `now` from the stock (or the local fallback while
  // degraded) or nothing. Non-blocking, lock-free in the stock path; never
  // touches the network. A failure for lack of stock asks the refill thread
  // for more. n > batch can never succeed from the stock.
  // Memory ordering: one acq_rel CAS on the spent counter; the valid-from
  // times are published by the refill thread with a release store of the
  // issued counter, read here with acquire.
  [[nodiscard]] bool try_acquire(std::uint64_t n, time_point now) {
    if (n == 0) return true;
    note_demand();
    const std::int64_t t = ns(now);
    const std::int64_t h = opts_.lease.count();
    std::uint64_t s = spent_.load(std::memory_order_acquire);
    for (;;) {
      const std::uint64_t iss = issued_.load(std::memory_order_acquire);
      // Expire: tokens valid for longer than the lease, and the oldest valid
      // ones beyond the k a process may hold.
      std::uint64_t skip = 0;
      while (s + skip < iss) {
        const std::int64_t v = slot(s + skip);
        const bool stale = v <= t && t - v > h;
        const bool over = iss - (s + skip) > opts_.batch && slot(s + skip + opts_.batch) <= t;
        if (!stale && !over) break;
        ++skip;
      }
      if (skip != 0) {
        if (spent_.compare_exchange_strong(s, s + skip, std::memory_order_acq_rel,
                                           std::memory_order_acquire)) {
          expired_.fetch_add(skip, std::memory_order_relaxed);
          s += skip;
        }
        continue;
      }
      if (iss - s < n) {
        wake_refill();
        return fallback_admit(n, now);  // only an empty stock falls back
      }
      if (slot(s + n - 1) > t) return false;
      if (spent_.compare_exchange_strong(s, s + n, std::memory_order_acq_rel, std::memory_order_acquire)) {
        spent_count_.fetch_add(n, std::memory_order_relaxed);
        if (iss - s == n) wake_refill();  // that was the last one
        return true;
      }
    }
  }
  [[nodiscard]] bool try_acquire(std::uint64_t n = 1) { return try_acquire(n, clock_.now()); }

  // When n permits are expected to be available: the valid-from time of the
  // n-th stocked token, or (no such token) now plus a polling interval of
  // one emission interval clamped to [50 us, 1 ms] (the refill is under way).
  // While degraded with a local fallback, the fallback's estimate when sooner.
  // Admits nothing; but asking counts as demand: a stock short of n tokens
  // wakes the refill thread, as a failed try_acquire does (a scheduler that
  // asks before it tries - the leveler - would otherwise poll an empty stock
  // that nobody refills).
  [[nodiscard]] time_point available_at(std::uint64_t n, time_point now) const {
    if (n == 0) return now;
    const std::uint64_t s = spent_.load(std::memory_order_acquire);
    const std::uint64_t iss = issued_.load(std::memory_order_acquire);
    time_point at = levee::detail::saturating_add(now, poll_);
    if (iss - s < n) {
      note_demand();
      wake_refill();
    } else {
      const std::int64_t v = slot(s + n - 1);
      const std::int64_t t = ns(now);
      at = v <= t ? now : levee::detail::saturating_add(now, std::chrono::nanoseconds(v - t));
    }
    if (fallback_ && degraded_.load(std::memory_order_acquire) && n <= fallback_->burst())
      at = std::min(at, fallback_->available_at(n, now));
    return at;
  }
  [[nodiscard]] time_point available_at(std::uint64_t n = 1) const { return available_at(n, clock_.now()); }

  // The most permits this process can be admitted at one instant: min(burst, batch).
  [[nodiscard]] std::uint64_t burst() const noexcept { return std::min(opts_.burst, opts_.batch); }
  // The fleet-wide rate (this process gets a share of it).
  [[nodiscard]] levee::rate get_rate() const noexcept { return opts_.rate; }

  [[nodiscard]] const shared_rate_gate_options& options() const noexcept { return opts_; }
  [[nodiscard]] const Clock& get_clock() const noexcept { return clock_; }

  // A snapshot of the counters (each read individually).
  [[nodiscard]] shared_rate_gate_metrics metrics() const {
    shared_rate_gate_metrics m;
    m.round_trips = round_trips_.load(std::memory_order_relaxed);
    m.tokens_granted = granted_.load(std::memory_order_relaxed);
    m.tokens_spent = spent_count_.load(std::memory_order_relaxed);
    m.tokens_expired = expired_.load(std::memory_order_relaxed);
    m.errors = errors_.load(std::memory_order_relaxed);
    m.fallback_admissions = fallback_count_.load(std::memory_order_relaxed);
    m.noscript_reloads = noscript_.load(std::memory_order_relaxed);
    m.max_round_trip = std::chrono::nanoseconds(max_rtt_.load(std::memory_order_relaxed));
    m.degraded = degraded_.load(std::memory_order_relaxed);
    return m;
  }

 private:
  static shared_rate_gate_options validate(shared_rate_gate_options o) {
    if (o.key.empty()) throw std::invalid_argument("levee::redis::shared_rate_gate: key must not be empty");
    if (o.burst == 0) throw std::invalid_argument("levee::redis::shared_rate_gate: burst must be >= 1");
    if (o.batch == 0) throw std::invalid_argument("levee::redis::shared_rate_gate: batch must be >= 1");
    if (o.batch > (std::uint64_t{1} << 20))
      throw std::invalid_argument("levee::redis::shared_rate_gate: batch must be <= 2^20");
    if (o.lease.count() <= 0)
      throw std::invalid_argument("levee::redis::shared_rate_gate: lease must be > 0");
    if (o.lead.count() < 0) throw std::invalid_argument("levee::redis::shared_rate_gate: lead must be >= 0");
    if (o.fleet_size == 0)
      throw std::invalid_argument("levee::redis::shared_rate_gate: fleet_size must be >= 1");
    if (o.retry_interval.count() <= 0)
      throw std::invalid_argument("levee::redis::shared_rate_gate: retry_interval must be > 0");
    return o;
  }

  [[nodiscard]] static std::int64_t ns(time_point t) noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  }
  [[nodiscard]] std::int64_t slot(std::uint64_t i) const noexcept {
    return ring_[i & mask_].load(std::memory_order_relaxed);
  }

  void note_demand() const noexcept {
    if (!demand_.load(std::memory_order_relaxed)) demand_.store(true, std::memory_order_relaxed);
  }
  void wake_refill() const {
    if (!wanted_.exchange(true, std::memory_order_acq_rel)) {
      std::lock_guard lock(mutex_);
      cv_.notify_one();
    }
  }
  bool fallback_admit(std::uint64_t n, time_point now) {
    if (!fallback_ || !degraded_.load(std::memory_order_acquire)) return false;
    if (!fallback_->try_acquire(n, now)) return false;
    fallback_count_.fetch_add(n, std::memory_order_relaxed);
    return true;
  }

  // The refill thread: reserves k tokens when the stock runs out within
  // `lead` and there was demand since the last grant, or when a worker found
  // it empty.
  void refill_main() {
    std::optional<connection> conn;
    std::unique_lock lock(mutex_);
    while (!stop_) {
      const std::uint64_t s = spent_.load(std::memory_order_acquire);
      const std::uint64_t iss = issued_.load(std::memory_order_acquire);
      bool due = wanted_.load(std::memory_order_acquire);
      // Until when to sleep if not due: the time the stock runs out within
      // `lead` (if that is still ahead), else until a worker asks.
      std::chrono::nanoseconds sleep = opts_.lease;
      if (!due && iss != s) {
        const std::int64_t wake_at = slot(iss - 1) - opts_.lead.count();
        const std::int64_t t = ns(clock_.now());
        if (t >= wake_at)
          due = demand_.load(std::memory_order_relaxed);  // without demand, wait for a worker to ask
        else
          sleep = std::chrono::nanoseconds(wake_at - t);
      }
      if (due && iss - s > capacity_ - opts_.batch) {
        // No room in the ring: the stock is far from empty (more than k
        // tokens unspent); look again when some may have been spent.
        wanted_.store(false, std::memory_order_release);
        due = false;
        sleep = std::min<std::chrono::nanoseconds>(sleep, std::chrono::milliseconds(1));
      }
      if (!due) {
        cv_.wait_for(lock, sleep, [&] { return stop_ || wanted_.load(std::memory_order_acquire); });
        continue;
      }
      lock.unlock();
      const bool ok = reserve(conn);
      lock.lock();
      if (!ok && !stop_) cv_.wait_for(lock, opts_.retry_interval, [&] { return stop_; });
    }
  }

  // One round trip. Returns false on failure (counted; degraded).
  bool reserve(std::optional<connection>& conn) {
    wanted_.store(false, std::memory_order_release);
    demand_.store(false, std::memory_order_relaxed);
    round_trips_.fetch_add(1, std::memory_order_relaxed);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      if (!conn) conn.emplace(opts_.connection);
      const std::uint64_t before = conn->noscript_reloads();
      const gcra_grant g = gcra_reserve(*conn, opts_.key, cfg_, opts_.batch);
      const time_point received = clock_.now();
      noscript_.fetch_add(conn->noscript_reloads() - before, std::memory_order_relaxed);
      const auto rtt =
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0);
      if (rtt.count() > max_rtt_.load(std::memory_order_relaxed))
        max_rtt_.store(rtt.count(), std::memory_order_relaxed);
      store(g, received);
      degraded_.store(false, std::memory_order_release);
      return true;
    } catch (const std::exception&) {
      // io_error (connection lost, timeout) or an error reply: the failure policy applies.
      errors_.fetch_add(1, std::memory_order_relaxed);
      degraded_.store(true, std::memory_order_release);
      if (conn && !conn->connected()) conn.reset();
      return false;
    }
  }

  // Appends a grant's valid-from times (non-decreasing: a later grant's
  // token is never stored earlier than the previous one) and publishes them.
  void store(const gcra_grant& g, time_point received) {
    if (g.granted == 0) return;
    const std::uint64_t iss = issued_.load(std::memory_order_relaxed);
    std::int64_t floor = iss == 0 ? std::numeric_limits<std::int64_t>::min() : slot(iss - 1);
    const std::int64_t base = ns(received);
    for (std::uint64_t j = 1; j <= g.granted; ++j) {
      const std::int64_t v = std::max(floor, base + static_cast<std::int64_t>(cfg_.offset_ns(g.ahead, j)));
      ring_[(iss + j - 1) & mask_].store(v, std::memory_order_relaxed);
      floor = v;
    }
    granted_.fetch_add(g.granted, std::memory_order_relaxed);
    issued_.store(iss + g.granted, std::memory_order_release);
  }

  const shared_rate_gate_options opts_;
  const gcra_config cfg_;
  [[no_unique_address]] Clock clock_;
  const std::uint64_t capacity_;  // ring slots (power of two, >= 2k + 2)
  const std::uint64_t mask_;
  std::unique_ptr<std::atomic<std::int64_t>[]> ring_;  // valid-from, local clock ns
  const std::chrono::nanoseconds poll_;
  std::optional<levee::rate_limiter<Clock>> fallback_;

  alignas(detail::false_sharing_range) std::atomic<std::uint64_t> spent_{0};
  alignas(detail::false_sharing_range) std::atomic<std::uint64_t> issued_{0};
  mutable std::atomic<bool> wanted_{false};
  alignas(detail::false_sharing_range) mutable std::atomic<bool> demand_{false};
  std::atomic<bool> degraded_{false};
  alignas(detail::false_sharing_range) std::atomic<std::uint64_t> spent_count_{0};
  std::atomic<std::uint64_t> expired_{0};
  std::atomic<std::uint64_t> fallback_count_{0};
  std::atomic<std::uint64_t> round_trips_{0};
  std::atomic<std::uint64_t> granted_{0};
  std::atomic<std::uint64_t> errors_{0};
  std::atomic<std::uint64_t> noscript_{0};
  std::atomic<std::int64_t> max_rtt_{0};

  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

static_assert(rate_gate<shared_rate_gate<>>, "levee::redis::shared_rate_gate must model levee::rate_gate");

}  // namespace levee::redis
