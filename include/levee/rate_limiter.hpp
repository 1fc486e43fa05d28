// levee/rate_limiter.hpp - levee::rate (an exact rational rate) and
// levee::rate_limiter, a lock-free GCRA limiter on one 64-bit atomic.
//
// Semantics (the envelope). A limiter with rate r and burst b admits at most
//     b + floor(r * w)
// permits in every CLOSED window [t, t + w] of admission times, for every
// w >= 0. "Admission time" is the `now` that try_acquire(n, now) was called
// with (or the clock reading that acquire() used, which it returns), and the
// ready_at() of a reservation. burst b is the bucket size: the largest number
// of permits that can be admitted at one instant; a fresh limiter is full.
// Mapping to other conventions: x/time `b` = levee burst; GCRA
// tau = b * emission interval (governor's `tau + T` style off-by-one does not
// apply); redis-cell `max_burst` = b - 1.
//
// Why stale or out-of-order `now` cannot over-admit: the state is the
// theoretical arrival time (TAT). Every admission replaces TAT with
// max(TAT, now) + n*T by compare-and-swap, so TAT never decreases because of
// an admission, and an admission happens only if the new TAT <= now + b*T.
// For the admissions in [t, t + w] the TAT after the last of them is then
// >= t + N*T and <= t + w + b*T, so N <= b + floor(w / T), whatever order the
// `now` values arrive in. A stale `now` only makes its own admission harder.
//
// Representation. TAT is kept in units of 2^-F ns, modulo 2^64 (like TCP
// sequence numbers), so any absolute clock value works and uptime is
// unbounded; the lowest bit of the word is a configuration parity flipped by
// every set_rate/set_burst, so an admission computed with the old
// configuration fails its CAS (time values are even). The emission interval
// T is P/C ns exactly (levee::rate); in units it is ceil(P * 2^F / C),
// rounded UP so that rounding can never admit more than the envelope. F is
// chosen once at construction from the initial rate (F = 0 for intervals
// >= ~68 s, else 4..8): the relative error of T is <= 2^-24 for rates up to
// ~1e7/s, and 0 for every interval that is a whole number of 1/16 ns
// (per_second(n) for n dividing 1e9, every(d), ...). Rates set later with
// set_rate() use the same F.
// Limits: TAT may run at most H = 2^(61-F) ns ahead of `now` (73 years at
// F = 0, 4.5 years at F = 4, 104 days at F = 8), burst * T must be <= H / 2,
// and a caller-supplied `now` must not be older than H relative to the
// newest one (older is treated as "idle", i.e. as a fresh time). Idle periods
// of any length are fine: besides the state word the limiter keeps the
// "era" (now / H) of its latest write, and a state two or more eras old is
// known to be in the past even where the ring alone would be ambiguous.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <levee/clock.hpp>
#include <levee/detail/cache.hpp>
#include <levee/detail/time.hpp>
#include <levee/detail/wait.hpp>
#include <limits>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

namespace levee {

namespace detail {
__extension__ typedef unsigned __int128 uint128;
__extension__ typedef __int128 int128;

[[noreturn]] inline void throw_invalid(const char* what, long double value) {
  throw std::invalid_argument(std::string(what) + " (got " + std::to_string(value) + ")");
}
[[noreturn]] inline void throw_invalid_u(const char* what, std::uint64_t value) {
  throw std::invalid_argument(std::string(what) + " (got " + std::to_string(value) + ")");
}
}  // namespace detail

// An exact rate: count() permits per period(). The emission interval is the
// rational period()/count() ns; the fraction is kept reduced.
class rate {
 public:
  // n permits per `period`. n == 0, n >= 2^63 or period <= 0 throw std::invalid_argument.
  template <std::integral I>
  static constexpr rate per(I n, std::chrono::nanoseconds period) {
    if constexpr (std::is_signed_v<I>) {
      if (n < 0)
        detail::throw_invalid("levee::rate::per: permit count must be > 0", static_cast<long double>(n));
    }
    const auto count = static_cast<std::uint64_t>(n);
    if (count == 0) detail::throw_invalid_u("levee::rate::per: permit count must be > 0", 0);
    if (count > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      detail::throw_invalid_u("levee::rate::per: permit count must be < 2^63", count);
    if (period.count() <= 0)
      detail::throw_invalid("levee::rate::per: period must be > 0 ns",
                            static_cast<long double>(period.count()));
    const auto p = static_cast<std::uint64_t>(period.count());
    const std::uint64_t g = std::gcd(count, p);
    return rate(count / g, p / g);
  }

  // n permits per second, exactly.
  template <std::integral I>
  static constexpr rate per_second(I n) {
    if constexpr (std::is_signed_v<I>) {
      if (n <= 0)
        detail::throw_invalid("levee::rate::per_second: rate must be > 0", static_cast<long double>(n));
    }
    if (n == 0) detail::throw_invalid_u("levee::rate::per_second: rate must be > 0", 0);
    return per(n, std::chrono::seconds(1));
  }

  // n permits per second for a fractional n (> 0, finite). Integral values are
  // exact; others are converted to a fraction whose relative error is < 2^-60.
  static rate per_second(double n) {
    if (!std::isfinite(n) || !(n > 0.0))
      detail::throw_invalid("levee::rate::per_second: rate must be finite and > 0",
                            static_cast<long double>(n));
    if (n == std::floor(n) && n <= 9007199254740992.0)
      return per(static_cast<std::uint64_t>(n), std::chrono::seconds(1));
    const double interval_ns = 1e9 / n;
    if (!(interval_ns < 0x1p62))
      detail::throw_invalid("levee::rate::per_second: rate too low (emission interval must be < 2^62 ns)",
                            static_cast<long double>(n));
    // count = 2^k, period = round(interval * 2^k) with the period just below 2^62.
    int e = 0;
    (void)std::frexp(interval_ns, &e);  // interval in [2^(e-1), 2^e)
    const int k = std::min(62, 61 - e);
    const double period = std::ldexp(interval_ns, k);
    return per(std::uint64_t{1} << k,
               std::chrono::nanoseconds(static_cast<std::int64_t>(std::llround(period))));
  }

  // One permit per `interval` (> 0).
  static constexpr rate every(std::chrono::nanoseconds interval) {
    if (interval.count() <= 0)
      detail::throw_invalid("levee::rate::every: interval must be > 0 ns",
                            static_cast<long double>(interval.count()));
    return per(1, interval);
  }

  [[nodiscard]] constexpr std::uint64_t count() const noexcept { return count_; }
  [[nodiscard]] constexpr std::chrono::nanoseconds period() const noexcept {
    return std::chrono::nanoseconds(static_cast<std::int64_t>(period_));
  }
  // For metrics and printing only (a double loses exactness).
  [[nodiscard]] double per_second_value() const noexcept {
    return static_cast<double>(count_) * 1e9 / static_cast<double>(period_);
  }
  // period / count rounded to the nearest ns, for display (at least 1 ns... or 0 above 2e9/s).
  [[nodiscard]] std::chrono::nanoseconds emission_interval() const noexcept {
    return std::chrono::nanoseconds(static_cast<std::int64_t>((period_ + count_ / 2) / count_));
  }

  [[nodiscard]] friend constexpr bool operator==(const rate& a, const rate& b) noexcept {
    return a.count_ == b.count_ && a.period_ == b.period_;
  }

 private:
  constexpr rate(std::uint64_t count, std::uint64_t period_ns) noexcept : count_(count), period_(period_ns) {}
  std::uint64_t count_;
  std::uint64_t period_;  // ns, > 0, < 2^63
};

// A lock-free GCRA rate limiter (see the top of this header for the exact
// envelope and the representation). Thread-safe: every member may be called
// concurrently. Not copyable or movable (waiters may sleep on it).
template <clock Clock = std::chrono::steady_clock>
class rate_limiter {
 public:
  using clock_type = Clock;
  using time_point = typename Clock::time_point;
  using duration = typename Clock::duration;

  // A claim on n future permits (see reserve()). Move-only. Must not outlive its limiter.
  class reservation {
   public:
    reservation() noexcept = default;
    reservation(reservation&& o) noexcept { *this = std::move(o); }
    reservation& operator=(reservation&& o) noexcept {
      owner_ = std::exchange(o.owner_, nullptr);
      end_ = o.end_;
      cost_ = o.cost_;
      epoch_ = o.epoch_;
      ready_ = o.ready_;
      ok_ = std::exchange(o.ok_, false);
      return *this;
    }
    reservation(const reservation&) = delete;
    reservation& operator=(const reservation&) = delete;
    ~reservation() = default;  // an abandoned reservation keeps its permits (they are not refunded)

    // False when the reservation was refused (it would have pushed the
    // limiter's schedule beyond its horizon, see the header comment).
    [[nodiscard]] bool ok() const noexcept { return ok_; }
    explicit operator bool() const noexcept { return ok_; }
    // When the permits are admitted (<= the reserving `now` if they were available at once).
    [[nodiscard]] time_point ready_at() const noexcept { return ready_; }
    // max(0, ready_at() - now).
    [[nodiscard]] duration delay_from(time_point now) const noexcept {
      return ready_ > now ? ready_ - now : duration::zero();
    }
    // Gives the permits back and returns true iff nothing was admitted or
    // reserved, and the limiter was not reconfigured, since this reservation
    // (so no later reservation depends on it); otherwise returns false and
    // refunds nothing. Either way the reservation is spent (ok() == false).
    // Memory ordering: the refund is one CAS on the limiter's state.
    bool cancel() noexcept {
      if (!ok_) return false;
      ok_ = false;
      if (owner_ == nullptr || cost_ == 0) return false;
      return owner_->refund(end_, cost_, epoch_);
    }

   private:
    friend class rate_limiter;
    rate_limiter* owner_ = nullptr;
    std::uint64_t end_ = 0;   // TAT right after this reservation
    std::uint64_t cost_ = 0;  // ticks
    std::uint64_t epoch_ = 0;
    time_point ready_{};
    bool ok_ = false;
  };

  // burst == 0, or burst * emission interval beyond the horizon (2^61 ticks),
  // throws std::invalid_argument.
  explicit rate_limiter(rate r, std::uint64_t burst = 1, Clock c = Clock{})
      : bits_(pick_bits(r)),
        shift_(bits_ + 1),
        era_shift_(61 - bits_),
        clock_(std::move(c)),
        sleeper_(clock_) {
    if (burst == 0) detail::throw_invalid_u("levee::rate_limiter: burst must be >= 1", 0);
    const std::uint64_t t = interval_ticks(r, bits_, "levee::rate_limiter");
    const std::uint64_t tau = checked_tau(burst, t, "levee::rate_limiter");
    interval_.store(t, std::memory_order_relaxed);
    tau_.store(tau, std::memory_order_relaxed);
    burst_.store(burst, std::memory_order_relaxed);
    rate_ = r;
    // One horizon in the past: the limiter starts full.
    const time_point now = clock_.now();
    tat_.store(to_ticks(now) - horizon, std::memory_order_relaxed);
    era_.store(era_of(now), std::memory_order_relaxed);
  }
  rate_limiter(const rate_limiter&) = delete;
  rate_limiter& operator=(const rate_limiter&) = delete;

  // Admits n permits now (reading the clock) if the envelope allows it.
  // Non-blocking, lock-free. n == 0 returns true; n > burst() returns false.
  [[nodiscard]] bool try_acquire(std::uint64_t n = 1) { return try_acquire(n, clock_.now()); }

  // Admits n permits at the caller-supplied time `now`. `now` may be stale or
  // out of order across threads; the envelope still holds (header comment).
  // Memory ordering: an acquire load and one acq_rel CAS on the state, plus
  // reads of the read-mostly era and configuration; an admission publishes
  // nothing else (use your own synchronisation for data). A caller that
  // loses a CAS to another thread pauses briefly before it retries.
  [[nodiscard]] bool try_acquire(std::uint64_t n, time_point now) {
    if (n == 0) return true;
    const std::uint64_t nt = to_ticks(now);
    const std::int64_t e = era_of(now);
    std::uint64_t cur = tat_.load(std::memory_order_acquire);
    for (;;) {
      // The configuration (seqlock, see load_config) and the era in one
      // branch: the fast path runs only while no set_rate/set_burst is being
      // written and `now` lies in the era of the latest state write (then the
      // state cannot be ancient and there is no era to note). Everything else
      // goes to try_acquire_slow, out of line, so this loop makes no call and
      // keeps its values in registers.
      const std::uint64_t s = seq_.load(std::memory_order_acquire);
      const std::uint64_t interval = interval_.load(std::memory_order_acquire);
      const std::uint64_t tau = tau_.load(std::memory_order_acquire);
      const std::int64_t era = era_.load(std::memory_order_acquire);
      if (((s & 1U) | (seq_.load(std::memory_order_relaxed) ^ s) | static_cast<std::uint64_t>(e ^ era)) != 0)
          [[unlikely]]
        return try_acquire_slow(n, nt, e);
      // n > burst <=> n * interval > tau, since tau == burst * interval exactly.
      std::uint64_t cost = 0;
      if (__builtin_mul_overflow(n, interval, &cost) || cost > tau) return false;
      // ahead_of() inline: how far TAT (parity bit cleared) is ahead of now;
      // "behind" means the TAT is in the past and the admission starts at now.
      const std::uint64_t d = (cur & ~std::uint64_t{1}) - nt;
      const bool behind = d > horizon;
      if ((behind ? 0 : d) > tau - cost) return false;
      // max(TAT, now) + cost, keeping the parity bit: the same value as
      // nt + ahead + cost + parity in try_acquire_slow.
      const std::uint64_t next = (behind ? nt + (cur & 1U) : cur) + cost;
      if (tat_.compare_exchange_strong(cur, next, std::memory_order_acq_rel, std::memory_order_acquire))
        return true;
      // Another admission won the race. Back off before re-reading the
      // state: the winner then keeps the cache line for its next admissions
      // instead of the cores trading the line on every attempt (measured on
      // two cores that really run in parallel: about half the time per
      // admission; without contention this never runs). The value the failed
      // CAS returned would be stale after the pause, so the state is re-read.
      for (int i = 0; i < contention_backoff; ++i) detail::cpu_relax();
      cur = tat_.load(std::memory_order_acquire);
    }
  }

  // The earliest time t at which try_acquire(n, t) succeeds given the current
  // state (no side effect); at most the current clock time when available now.
  // n > burst() throws std::invalid_argument; n == 0 returns now.
  [[nodiscard]] time_point available_at(std::uint64_t n = 1) const { return available_at(n, clock_.now()); }
  [[nodiscard]] time_point available_at(std::uint64_t n, time_point now) const {
    if (n == 0) return now;
    const config c = load_config();
    if (n > c.burst) throw_too_many("levee::rate_limiter::available_at", n, c.burst);
    const std::uint64_t ahead =
        ahead_at(tat_.load(std::memory_order_acquire) & ~std::uint64_t{1}, to_ticks(now), era_of(now));
    const std::uint64_t cost = n * c.interval;
    if (ahead + cost <= c.tau) return now;
    return detail::saturating_add(now, ticks_to_duration(ahead + cost - c.tau));
  }

  // Claims n permits now and returns when they are admitted (ready_at()).
  // Later requests queue behind it, so reservations are served in order and a
  // large n is never starved by small requests. Lock-free, never blocks.
  // n > burst() throws std::invalid_argument; a reservation that would put
  // the schedule more than 2^62 ticks ahead is refused (ok() == false).
  // Memory ordering: as try_acquire.
  [[nodiscard]] reservation reserve(std::uint64_t n = 1) { return reserve(n, clock_.now()); }
  [[nodiscard]] reservation reserve(std::uint64_t n, time_point now) {
    reservation r;
    r.owner_ = this;
    r.ready_ = now;
    if (n == 0) {
      r.ok_ = true;
      return r;
    }
    const std::uint64_t nt = to_ticks(now);
    const std::int64_t e = era_of(now);
    std::uint64_t cur = tat_.load(std::memory_order_acquire);
    for (;;) {
      const config c = load_config();
      if (n > c.burst) throw_too_many("levee::rate_limiter::reserve", n, c.burst);
      const std::uint64_t cost = n * c.interval;
      const std::uint64_t parity = cur & 1U;
      const std::uint64_t ahead = ahead_at(cur - parity, nt, e);
      if (ahead + cost > horizon) return r;  // refused
      // The admission time ready_at() is a whole clock tick. The schedule
      // continues from that rounded time, not from the exact one: otherwise
      // two reservations' ready_at() could be floor(T) apart when T is not a
      // whole number of ticks, one more permit in that window than the
      // envelope allows. (Each wait is at most one tick longer.)
      std::uint64_t late = ahead + cost > c.tau ? ahead + cost - c.tau : 0;
      if (late != 0) late = (late + tick_units() - 1) / tick_units() * tick_units();
      const std::uint64_t next = late != 0 ? nt + c.tau + late + parity : nt + ahead + cost + parity;
      note_era(e);
      if (tat_.compare_exchange_strong(cur, next, std::memory_order_acq_rel, std::memory_order_acquire)) {
        r.end_ = next;
        r.cost_ = next - parity - nt - ahead;  // a refund restores max(TAT, now) exactly
        r.epoch_ = c.epoch;
        r.ok_ = true;
        if (late != 0) r.ready_ = detail::saturating_add(now, ticks_to_duration(late));
        return r;
      }
    }
  }

  // Blocks until n permits are admitted and returns the admission time (the
  // clock reading try_acquire succeeded with). Sleeps until the absolute time
  // available_at(n) on a levee::sleeper (never a chain of relative sleeps),
  // re-evaluating when woken by set_rate()/set_burst(); with a real clock and
  // set_spin_limit(s) > 0 the end of each wait (the OS's recent wake-up
  // lateness plus a margin, at most s) is spent busy-waiting instead of
  // sleeping: exact pacing with burst 1, at the cost of that much CPU per
  // wait. The admission time is always a fresh clock reading taken at or
  // after the due time, never the due time itself: with burst 1 a late
  // wake-up therefore delays the rest of the schedule (that is what burst 1
  // promises); a burst of a few ms of the rate absorbs it instead. Waiters
  // are not FIFO: use reserve() for ordered service.
  // n > burst() throws std::invalid_argument (also if burst is lowered below
  // n while waiting). There is no close(): for a cancellable wait use
  // try_acquire_until() or reserve() with your own interruptible sleep.
  // Memory ordering: as try_acquire.
  time_point acquire(std::uint64_t n = 1) {
    time_point now = clock_.now();
    for (;;) {
      const std::uint64_t ticket = sleeper_.ticket();  // before the decision: no lost wake-up
      if (try_acquire(n, now)) return now;
      // wait_until returns the clock reading that ended the wait: used as is,
      // the admission is not delayed by one more clock read after a spin.
      now = wait_until(available_at(n, now), now, ticket);
    }
  }

  // Like acquire(), but gives up and returns false as soon as the permits
  // cannot be admitted by `deadline` under the current state and
  // configuration (without sleeping until the deadline in that case).
  // n > burst() throws std::invalid_argument.
  [[nodiscard]] bool try_acquire_until(std::uint64_t n, time_point deadline) {
    for (;;) {
      const std::uint64_t ticket = sleeper_.ticket();
      const time_point now = clock_.now();
      if (try_acquire(n, now)) return true;
      const time_point at = available_at(n, now);
      if (at > deadline || now >= deadline) return false;
      wait_until(at, now, ticket);
    }
  }
  template <class Rep, class Per>
  [[nodiscard]] bool try_acquire_for(std::uint64_t n, std::chrono::duration<Rep, Per> timeout) {
    return try_acquire_until(n, detail::deadline_after<Clock>(clock_.now(), timeout));
  }
  // One permit.
  [[nodiscard]] bool try_acquire_until(time_point deadline) { return try_acquire_until(1, deadline); }
  template <class Rep, class Per>
  [[nodiscard]] bool try_acquire_for(std::chrono::duration<Rep, Per> timeout) {
    return try_acquire_for(1, timeout);
  }

  // Changes the rate atomically. The current debt is kept in permits (the
  // number of permits available now is unchanged), so lowering the rate
  // allows no catch-up burst and raising it refills faster from now on.
  // Outstanding reservations keep their ready times but can no longer be
  // refunded. Sleeping acquire() callers wake and re-evaluate.
  // Throws std::invalid_argument if burst() * interval exceeds the horizon.
  // Memory ordering: writers serialise on a mutex; the state change is one
  // CAS inside a seqlock write, so an admission sees either the old
  // configuration and state or the new ones, never a mix.
  void set_rate(rate r) {
    {
      std::lock_guard lock(config_mutex_);
      const std::uint64_t t_new = interval_ticks(r, bits_, "levee::rate_limiter::set_rate");
      const std::uint64_t b = burst_.load(std::memory_order_relaxed);
      const std::uint64_t tau_new = checked_tau(b, t_new, "levee::rate_limiter::set_rate");
      const std::uint64_t t_old = interval_.load(std::memory_order_relaxed);
      begin_write();
      rewrite_tat([&](std::uint64_t ahead, std::uint64_t kept, std::uint64_t nt) {
        if (ahead == 0) return kept;
        // keep the debt in permits: ahead * t_new / t_old, rounded up to an even unit
        const auto scaled = static_cast<detail::uint128>(ahead) * t_new;
        const auto ahead_new =
            static_cast<std::uint64_t>(std::min<detail::uint128>((scaled + t_old - 1) / t_old, horizon));
        return nt + ahead_new + (ahead_new & 1U);
      });
      interval_.store(t_new, std::memory_order_release);
      tau_.store(tau_new, std::memory_order_release);
      epoch_.store(epoch_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
      end_write();
      rate_ = r;
    }
    sleeper_.notify_all();
  }

  // Changes the burst atomically. The bucket keeps its level: lowering the
  // burst caps the permits available now at the new burst (a debt owed by
  // reservations stays owed, in permits); raising it keeps the number of
  // permits available now, and the extra capacity fills at the rate. So no
  // sequence of set_burst/set_rate calls without admissions takes a permit
  // away: if one was available, one still is (available_at(1) stays now).
  // Sleeping acquire() callers wake and re-evaluate. burst == 0 or a burst
  // beyond the horizon throws std::invalid_argument. Memory ordering: as set_rate.
  void set_burst(std::uint64_t burst) {
    if (burst == 0) detail::throw_invalid_u("levee::rate_limiter::set_burst: burst must be >= 1", 0);
    {
      std::lock_guard lock(config_mutex_);
      const std::uint64_t t = interval_.load(std::memory_order_relaxed);
      const std::uint64_t tau_new = checked_tau(burst, t, "levee::rate_limiter::set_burst");
      const std::uint64_t tau_old = tau_.load(std::memory_order_relaxed);
      begin_write();
      rewrite_tat([&](std::uint64_t ahead, std::uint64_t kept, std::uint64_t nt) {
        // the permits available now (tau - ahead, possibly negative) are kept
        if (tau_new > tau_old) return nt + std::min(ahead + (tau_new - tau_old), horizon);
        if (ahead == 0) return kept;
        // min(available, new burst): the schedule moves back by the burst
        // removed, never before now. Without this a lower-then-raise cycle
        // would add (tau_old - tau_new) of debt without any admission.
        const std::uint64_t removed = tau_old - tau_new;
        return nt + (ahead > removed ? ahead - removed : 0);
      });
      burst_.store(burst, std::memory_order_release);
      tau_.store(tau_new, std::memory_order_release);
      epoch_.store(epoch_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
      end_write();
    }
    sleeper_.notify_all();
  }

  [[nodiscard]] rate get_rate() const {
    std::lock_guard lock(config_mutex_);
    return rate_;
  }
  [[nodiscard]] std::uint64_t burst() const noexcept { return load_config().burst; }

  // Permits that try_acquire could admit at `now` (0..burst()); a snapshot.
  [[nodiscard]] std::uint64_t available(time_point now) const noexcept {
    const config c = load_config();
    const std::uint64_t ahead =
        ahead_at(tat_.load(std::memory_order_acquire) & ~std::uint64_t{1}, to_ticks(now), era_of(now));
    return ahead >= c.tau ? 0 : (c.tau - ahead) / c.interval;
  }
  [[nodiscard]] std::uint64_t available() const { return available(clock_.now()); }

  // Real clocks only: busy-wait for at most the last `limit` before a due
  // time instead of sleeping through it (0, the default, always sleeps). The
  // limiter learns how late the OS wakes its sleepers and spins only that
  // long plus a quarter and 2 us (it starts from 2 us: the first late
  // wake-up teaches it, at the price of that one wait ending late). See acquire().
  void set_spin_limit(std::chrono::nanoseconds limit) noexcept {
    spin_ns_.store(std::max<std::int64_t>(0, limit.count()), std::memory_order_relaxed);
  }

  [[nodiscard]] const Clock& get_clock() const noexcept { return clock_; }
  // Fractional bits F of the internal time unit (2^-F ns); see the header comment.
  [[nodiscard]] unsigned resolution_bits() const noexcept { return bits_; }

 private:
  static constexpr std::uint64_t horizon = std::uint64_t{1} << 62;  // max ticks TAT may run ahead of now
  static constexpr std::uint64_t tau_max = std::uint64_t{1} << 61;
  // CPU pauses after a lost CAS in try_acquire (~2 us on a CPU whose pause
  // takes ~30 ns, e.g. AMD Zen 4/5 and Intel since Skylake; less on older ones).
  static constexpr int contention_backoff = 64;
  static constexpr std::int64_t spin_margin_ns = 2000;  // spin window beyond the learned wake-up lateness

  struct config {
    std::uint64_t interval;
    std::uint64_t tau;
    std::uint64_t burst;
    std::uint64_t epoch;
  };

  static unsigned pick_bits(const rate& r) noexcept {
    const double t_ns = static_cast<double>(r.period().count()) / static_cast<double>(r.count());
    if (t_ns >= 0x1p36) return 0;
    const int lg = t_ns >= 1.0 ? static_cast<int>(std::floor(std::log2(t_ns))) : 0;
    return static_cast<unsigned>(std::clamp(24 - lg, 4, 8));
  }
  // The interval in ticks: units of 2^-bits ns, times 2 (the parity bit).
  static std::uint64_t interval_ticks(const rate& r, unsigned bits, const char* fn) {
    const detail::uint128 num = static_cast<detail::uint128>(static_cast<std::uint64_t>(r.period().count()))
                                << bits;
    const detail::uint128 t = 2 * ((num + r.count() - 1) / r.count());
    if (t > tau_max)
      throw std::invalid_argument(
          std::string(fn) + ": emission interval too long for this limiter's resolution (" +
          std::to_string(r.period().count()) + " ns / " + std::to_string(r.count()) + ")");
    return static_cast<std::uint64_t>(t);
  }
  static std::uint64_t checked_tau(std::uint64_t burst, std::uint64_t interval, const char* fn) {
    if (burst > tau_max / interval)
      throw std::invalid_argument(std::string(fn) +
                                  ": burst * emission interval exceeds the limiter's horizon (burst " +
                                  std::to_string(burst) + ")");
    return burst * interval;
  }
  [[noreturn]] static void throw_too_many(const char* fn, std::uint64_t n, std::uint64_t burst) {
    throw std::invalid_argument(std::string(fn) + ": n = " + std::to_string(n) + " exceeds burst " +
                                std::to_string(burst) + " and can never be admitted");
  }

  [[nodiscard]] std::uint64_t to_ticks(time_point t) const noexcept {
    // Saturating for clocks coarser than ns (a no-op for ns clocks): an
    // extreme time point must not overflow the conversion.
    const auto ns = detail::saturating_ceil<std::chrono::nanoseconds>(t.time_since_epoch()).count();
    return static_cast<std::uint64_t>(ns) << shift_;
  }
  // One tick of the clock's duration in units (at least one ns).
  [[nodiscard]] std::uint64_t tick_units() const noexcept {
    const auto ns =
        std::max<std::int64_t>(1, std::chrono::ceil<std::chrono::nanoseconds>(duration(1)).count());
    return static_cast<std::uint64_t>(ns) << shift_;
  }
  [[nodiscard]] duration ticks_to_duration(std::uint64_t ticks) const noexcept {
    const std::uint64_t ns = (ticks + (std::uint64_t{1} << shift_) - 1) >> shift_;
    return std::chrono::ceil<duration>(std::chrono::nanoseconds(static_cast<std::int64_t>(ns)));
  }
  // Era = now >> (61 - F) ns, i.e. one horizon per era. A state last written
  // two or more eras ago (at a `now` within the documented staleness) lies in
  // the past whatever its bits say: this keeps a limiter left idle for longer
  // than the ring can tell (3 horizons) from reading as "far ahead".
  [[nodiscard]] std::int64_t era_of(time_point t) const noexcept {
    return detail::saturating_ceil<std::chrono::nanoseconds>(t.time_since_epoch()).count() >> era_shift_;
  }
  [[nodiscard]] bool is_ancient(std::int64_t era) const noexcept {
    return era - era_.load(std::memory_order_acquire) >= 2;
  }
  [[nodiscard]] std::uint64_t ahead_at(std::uint64_t tat, std::uint64_t now_ticks,
                                       std::int64_t era) const noexcept {
    return is_ancient(era) ? 0 : ahead_of(tat, now_ticks);
  }
  void note_era(std::int64_t era) noexcept {
    if (era > era_.load(std::memory_order_relaxed)) era_.store(era, std::memory_order_relaxed);
  }
  // try_acquire while a configuration write is in progress or `now` is in
  // another era than the latest state write: the general loop (seqlock read
  // that waits for the writer, ancient-state check, era note).
  [[gnu::noinline, gnu::cold]] bool try_acquire_slow(std::uint64_t n, std::uint64_t nt, std::int64_t e) {
    std::uint64_t cur = tat_.load(std::memory_order_acquire);
    for (;;) {
      const config c = load_config();
      if (n > c.burst) return false;
      const std::uint64_t cost = n * c.interval;
      const std::uint64_t parity = cur & 1U;
      const std::uint64_t ahead = ahead_at(cur - parity, nt, e);
      if (ahead + cost > c.tau) return false;
      note_era(e);  // before the CAS, whose release publishes it with the new state
      if (tat_.compare_exchange_strong(cur, nt + ahead + cost + parity, std::memory_order_acq_rel,
                                       std::memory_order_acquire))
        return true;
    }
  }
  // How far (ticks) the TAT is ahead of now: 0 if it is in the past, or so far
  // ahead (> horizon) that it can only be a state left idle for >= 2^63 ticks
  // (or a `now` staler than the documented limit).
  // Replaces TAT (under config_mutex_, between begin_write and end_write)
  // with next_tat(ahead, kept, now_ticks), where `kept` is what a
  // reconfiguration that moves nothing keeps (idle_base), and flips the
  // parity bit so that admissions computed with the old configuration fail
  // their CAS.
  template <class F>
  void rewrite_tat(F&& next_tat) {
    const time_point now = clock_.now();
    const std::uint64_t nt = to_ticks(now);
    const std::int64_t e = era_of(now);
    std::uint64_t cur = tat_.load(std::memory_order_acquire);
    for (;;) {
      const std::uint64_t parity = cur & 1U;
      const bool ancient = is_ancient(e);
      const std::uint64_t ahead = ancient ? 0 : ahead_of(cur - parity, nt);
      const std::uint64_t next = next_tat(ahead, idle_base(cur - parity, nt, ancient), nt);
      note_era(e);
      if (tat_.compare_exchange_strong(cur, next + (parity ^ 1U), std::memory_order_acq_rel,
                                       std::memory_order_acquire))
        return;
    }
  }
  // The TAT a reconfiguration keeps when it moves nothing: TAT itself, or,
  // when TAT lies a horizon or more behind now (or the state is ancient), one
  // horizon behind now. The write notes the current era; a TAT left further
  // back could otherwise read as "ahead" on the ring within the next era.
  // Decisions for every `now` within the documented staleness (>= now - H)
  // are unchanged: both values are at or behind it.
  [[nodiscard]] static std::uint64_t idle_base(std::uint64_t tat, std::uint64_t now_ticks,
                                               bool ancient) noexcept {
    if (ancient) return now_ticks - horizon;
    const std::uint64_t d = tat - now_ticks;
    return (d > horizon && now_ticks - tat >= horizon) ? now_ticks - horizon : tat;
  }
  [[nodiscard]] static std::uint64_t ahead_of(std::uint64_t tat, std::uint64_t now_ticks) noexcept {
    const std::uint64_t d = tat - now_ticks;
    return (d <= horizon) ? d : 0;
  }

  // Seqlock read of the configuration (written rarely, under config_mutex_).
  // No fences (ThreadSanitizer does not model them): the data loads are
  // acquire, so the second sequence load cannot move before them, and a
  // reader that sees any new value synchronises with its release store and
  // therefore sees the odd sequence number stored before it.
  [[nodiscard]] config load_config() const noexcept {
    for (;;) {
      const std::uint64_t s = seq_.load(std::memory_order_acquire);
      if ((s & 1U) == 0) {
        config c{interval_.load(std::memory_order_acquire), tau_.load(std::memory_order_acquire),
                 burst_.load(std::memory_order_acquire), epoch_.load(std::memory_order_acquire)};
        if (seq_.load(std::memory_order_relaxed) == s) return c;
      }
      std::this_thread::yield();
    }
  }
  void begin_write() noexcept { seq_.fetch_add(1, std::memory_order_acq_rel); }
  void end_write() noexcept { seq_.fetch_add(1, std::memory_order_release); }

  bool refund(std::uint64_t end, std::uint64_t cost, std::uint64_t epoch) noexcept {
    if (load_config().epoch != epoch) return false;
    std::uint64_t expected = end;
    return tat_.compare_exchange_strong(expected, end - cost, std::memory_order_acq_rel,
                                        std::memory_order_relaxed);
  }

  // Waits until `at` (or a set_rate/set_burst after `ticket`) and returns a
  // clock reading taken when the wait ended.
  time_point wait_until(time_point at, time_point now, std::uint64_t ticket) {
    if constexpr (!waitable_clock<Clock>) {
      const std::int64_t limit = spin_ns_.load(std::memory_order_relaxed);
      if (limit > 0) {
        // Sleep until `window` before the due time, then busy-wait. The
        // window is the recent OS wake-up lateness plus a quarter and 2 us,
        // at most the spin limit: a sleep that overshoots by L needs only
        // about L of spinning to end on time, so the CPU spent follows the
        // machine's timer slack and load rather than the configured limit.
        const std::int64_t late = wake_late_ns_.load(std::memory_order_relaxed);
        const auto window = std::chrono::ceil<duration>(
            std::chrono::nanoseconds(std::min(limit, late + late / 4 + spin_margin_ns)));
        if (at - now > window) {
          const time_point target = at - window;
          if (!sleeper_.sleep_until(target, ticket)) return clock_.now();
          const time_point woke = clock_.now();
          note_wake_lateness(std::chrono::duration_cast<std::chrono::nanoseconds>(woke - target).count(),
                             limit);
          if (woke >= at) return woke;
        }
        // Busy-wait, not yield: on a loaded machine sched_yield can hand the
        // CPU away for a whole time slice, which is exactly the lateness the
        // spin is meant to avoid. The clock read (~20-50 ns) paces the loop;
        // the CPU pause is left out in the last microsecond so that the due
        // time is seen within about one clock read.
        for (unsigned i = 0;; ++i) {
          const time_point t = clock_.now();
          if (t >= at) return t;
          if ((i & 255U) == 255U && sleeper_.ticket() != ticket) return t;
          if (at - t > std::chrono::microseconds(1)) detail::cpu_relax();
        }
      }
    }
    (void)now;
    sleeper_.sleep_until(at, ticket);
    return clock_.now();
  }

  // The wake-up lateness estimate: a maximum that decays by 1/64 per wake-up,
  // so one late wake-up widens the spin window for the next ~50 waits.
  void note_wake_lateness(std::int64_t late_ns, std::int64_t limit) noexcept {
    const std::int64_t old = wake_late_ns_.load(std::memory_order_relaxed);
    const std::int64_t decayed = old - old / 64;
    wake_late_ns_.store(std::clamp<std::int64_t>(std::max(late_ns, decayed), 0, limit),
                        std::memory_order_relaxed);
  }

  alignas(detail::false_sharing_range) std::atomic<std::uint64_t> tat_{0};
  alignas(detail::false_sharing_range) std::atomic<std::uint64_t> seq_{0};
  std::atomic<std::uint64_t> interval_{1};
  std::atomic<std::uint64_t> tau_{1};
  std::atomic<std::uint64_t> burst_{1};
  std::atomic<std::uint64_t> epoch_{0};
  const unsigned bits_;               // F
  const unsigned shift_;              // F + 1: ticks are 2^-(F+1) ns, time values even
  const unsigned era_shift_;          // 61 - F
  std::atomic<std::int64_t> era_{0};  // era of the latest state write (see era_of)
  std::atomic<std::int64_t> spin_ns_{0};
  std::atomic<std::int64_t> wake_late_ns_{0};  // see note_wake_lateness
  rate rate_ = rate::per_second(1);
  mutable std::mutex config_mutex_;
  [[no_unique_address]] Clock clock_;
  sleeper<Clock> sleeper_;
};

}  // namespace levee
