// levee/clock.hpp - the clock concept, levee::manual_clock, and an
// interruptible sleeper that works with any levee clock.
#pragma once

#include <atomic>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <levee/detail/time.hpp>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <type_traits>

namespace levee {

// A levee clock: what every time-reading component takes as its `Clock`
// template parameter. std::chrono::steady_clock and system_clock satisfy it
// (their static now() is callable on an instance); so does manual_clock.
// Components store a Clock by value and call clock.now(): a clock with state
// (manual_clock) must therefore be a cheap handle whose copies share that state.
template <class C>
concept clock = std::copy_constructible<C> && requires(const C& c) {
  typename C::rep;
  typename C::period;
  typename C::duration;
  typename C::time_point;
  { c.now() } -> std::same_as<typename C::time_point>;
};

// A clock that can block a thread until a time point of its own (manual_clock).
// Clocks that are not waitable are assumed to advance with real time.
template <class C>
concept waitable_clock = clock<C> && requires(const C& c, typename C::time_point tp) {
  // Blocks until now() >= tp or stop() returns true; stop is re-checked after
  // every notify_waiters() and every change of the clock's time.
  {
    c.wait_until(tp, [] { return false; })
    } -> std::same_as<bool>;
  c.notify_waiters();
};

// A thread-safe, manually driven clock for tests and simulations.
// Copies share one time line: pass a copy to a component, advance the original.
// Time starts at time_point{} (zero) unless given. set() may move time
// backwards (useful to test out-of-order clocks); advance() requires d >= 0.
//
// Memory ordering: now() is an acquire load and advance()/set() release
// stores, so everything a thread did before advancing is visible to a thread
// that reads the new time.
class manual_clock {
 public:
  using rep = std::int64_t;
  using period = std::nano;
  using duration = std::chrono::nanoseconds;
  using time_point = std::chrono::time_point<manual_clock, duration>;
  static constexpr bool is_steady = false;

  manual_clock() : state_(std::make_shared<state>()) {}
  explicit manual_clock(time_point start) : manual_clock() {
    state_->ns.store(start.time_since_epoch().count());
  }

  [[nodiscard]] time_point now() const noexcept {
    return time_point(duration(state_->ns.load(std::memory_order_acquire)));
  }

  // Moves time forward by d (d < 0 is a programming error and throws).
  void advance(duration d) {
    if (d < duration::zero()) throw std::invalid_argument("levee::manual_clock::advance: negative duration");
    {
      std::lock_guard lock(state_->mutex);
      state_->ns.fetch_add(d.count(), std::memory_order_release);
    }
    state_->cv.notify_all();
  }
  template <class Rep, class Per>
  void advance(std::chrono::duration<Rep, Per> d) {
    advance(std::chrono::duration_cast<duration>(d));
  }

  // Sets the time to t, forwards or backwards.
  void set(time_point t) {
    {
      std::lock_guard lock(state_->mutex);
      state_->ns.store(t.time_since_epoch().count(), std::memory_order_release);
    }
    state_->cv.notify_all();
  }

  // Blocks until now() >= tp (returns true) or stop() returns true (returns
  // false). stop is evaluated under the clock's lock after every advance(),
  // set() and notify_waiters(); it must not call back into this clock.
  template <class Stop>
  bool wait_until(time_point tp, Stop&& stop) const {
    std::unique_lock lock(state_->mutex);
    // Counted under the lock: once waiters_approx() shows this thread, any
    // later advance()/set()/notify_waiters() re-evaluates its predicate.
    state_->waiters.fetch_add(1, std::memory_order_relaxed);
    for (;;) {
      if (now() >= tp || stop()) {
        state_->waiters.fetch_sub(1, std::memory_order_relaxed);
        return now() >= tp;
      }
      state_->cv.wait(lock);
    }
  }

  // Threads inside wait_until() on this clock's time line (any copy). Racy:
  // a snapshot for tests, e.g. to wait until a thread is blocked on the
  // clock before advancing it, so that the wake-up path is really exercised.
  [[nodiscard]] std::size_t waiters_approx() const noexcept {
    return state_->waiters.load(std::memory_order_relaxed);
  }

  // Wakes every wait_until so it re-checks its stop predicate.
  void notify_waiters() const {
    { std::lock_guard lock(state_->mutex); }
    state_->cv.notify_all();
  }

  [[nodiscard]] friend bool operator==(const manual_clock& a, const manual_clock& b) noexcept {
    return a.state_ == b.state_;
  }

 private:
  struct state {
    std::atomic<std::int64_t> ns{0};
    std::atomic<std::size_t> waiters{0};
    std::mutex mutex;
    std::condition_variable cv;
  };
  std::shared_ptr<state> state_;
};

static_assert(clock<manual_clock>, "manual_clock must satisfy levee::clock");
static_assert(waitable_clock<manual_clock>, "manual_clock must satisfy levee::waitable_clock");
static_assert(clock<std::chrono::steady_clock>, "steady_clock must satisfy levee::clock");

// An interruptible sleep for blocking slow paths (rate_limiter::acquire,
// leveler workers). sleep_until(tp) returns true when the clock reached tp and
// false when notify_all() was called after the sleep began. With a real clock
// it parks on a condition variable with an absolute deadline (never a chain of
// relative sleeps); with a waitable_clock it waits on that clock.
//
// Memory ordering: notify_all() happens-before the return of every
// sleep_until that it interrupts.
template <clock Clock>
class sleeper {
 public:
  explicit sleeper(Clock c = Clock{}) : clock_(std::move(c)) {}
  sleeper(const sleeper&) = delete;
  sleeper& operator=(const sleeper&) = delete;

  bool sleep_until(typename Clock::time_point tp) { return sleep_until(tp, ticket()); }

  // The current notification count. Take a ticket BEFORE evaluating whatever
  // decides the deadline, then call sleep_until(tp, ticket): a notify_all()
  // that happened after the ticket was taken makes it return false at once
  // (no lost wake-up between the decision and the sleep).
  [[nodiscard]] std::uint64_t ticket() const noexcept { return generation_.load(std::memory_order_acquire); }

  // Returns true when the clock reached tp, false if notify_all() was called
  // after `seen` was taken (see ticket()).
  bool sleep_until(typename Clock::time_point tp, std::uint64_t seen) {
    if constexpr (waitable_clock<Clock>) {
      return clock_.wait_until(tp, [&] { return generation_.load(std::memory_order_acquire) != seen; });
    } else {
      std::unique_lock lock(mutex_);
      for (;;) {
        if (generation_.load(std::memory_order_relaxed) != seen) return false;
        const typename Clock::time_point now = clock_.now();
        if (now >= tp) return true;
        // A due time beyond detail::far_future_limit (time_point::max() and
        // the like) is "never": wait without a deadline rather than let the
        // condition variable convert it between clocks and overflow.
        if (std::chrono::duration<double>(tp.time_since_epoch()) -
                std::chrono::duration<double>(now.time_since_epoch()) >
            detail::far_future_limit)
          cv_.wait(lock);
        else
          cv_.wait_until(lock, tp);
      }
    }
  }

  template <class Rep, class Per>
  bool sleep_for(std::chrono::duration<Rep, Per> d) {
    return sleep_until(detail::deadline_after<Clock>(clock_.now(), d));
  }

  // Interrupts every sleep_until in progress.
  void notify_all() {
    if constexpr (waitable_clock<Clock>) {
      generation_.fetch_add(1, std::memory_order_acq_rel);
      clock_.notify_waiters();
    } else {
      {
        std::lock_guard lock(mutex_);
        generation_.fetch_add(1, std::memory_order_relaxed);
      }
      cv_.notify_all();
    }
  }

  [[nodiscard]] const Clock& get_clock() const noexcept { return clock_; }

 private:
  [[no_unique_address]] Clock clock_;
  std::atomic<std::uint64_t> generation_{0};
  std::mutex mutex_;
  std::condition_variable cv_;
};

}  // namespace levee
