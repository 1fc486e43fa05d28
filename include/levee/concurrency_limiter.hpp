// levee/concurrency_limiter.hpp - levee::concurrency_limiter (at most L
// operations in flight) and its RAII levee::permit. For a limit that adapts
// to observed latency see levee/adaptive_limit.hpp.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <levee/detail/time.hpp>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

namespace levee {

class concurrency_limiter;

// One slot of a concurrency_limiter. Move-only; releases its slot when
// destroyed (also during stack unwinding, so a holder that throws never
// leaks a slot), on release(), or when assigned over. An empty permit
// (default-constructed, moved-from, released, or returned by a failed try)
// converts to false.
class permit {
 public:
  permit() noexcept = default;
  permit(permit&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)) {}
  permit& operator=(permit&& o) noexcept {
    if (this != &o) {
      release();
      owner_ = std::exchange(o.owner_, nullptr);
    }
    return *this;
  }
  permit(const permit&) = delete;
  permit& operator=(const permit&) = delete;
  ~permit() { release(); }

  explicit operator bool() const noexcept { return owner_ != nullptr; }
  // Returns the slot now (idempotent). Memory ordering: see concurrency_limiter.
  inline void release() noexcept;

 private:
  friend class concurrency_limiter;
  explicit permit(concurrency_limiter* owner) noexcept : owner_(owner) {}
  concurrency_limiter* owner_ = nullptr;
};

// At most limit() permits are outstanding at once. Thread-safe.
//
// Fast path: one CAS on the in-flight counter (lock-free); a mutex and a
// condition variable are touched only when somebody waits. Waiters are woken
// one per released slot; waiting is not FIFO (a barging try_acquire may take
// a freed slot first).
//
// Memory ordering: releasing a permit (release) happens-before the
// acquisition that reuses its slot (acquire), like a semaphore: whatever the
// previous holder wrote is visible to the next holder of that slot.
//
// close(): every blocked acquire returns an empty permit, and every later
// acquisition fails at once; permits already held stay valid and are
// released normally. The limiter must outlive all its permits.
class concurrency_limiter {
 public:
  // limit == 0 throws std::invalid_argument.
  explicit concurrency_limiter(std::size_t limit)
      : limit_(check_limit(limit, "levee::concurrency_limiter")) {}
  concurrency_limiter(const concurrency_limiter&) = delete;
  concurrency_limiter& operator=(const concurrency_limiter&) = delete;
  ~concurrency_limiter() = default;

  // Non-blocking, lock-free: a permit if in_flight() < limit(), else empty
  // (also empty after close()).
  [[nodiscard]] permit try_acquire() noexcept {
    if (closed_.load(std::memory_order_acquire)) return permit{};
    // seq_cst loads: a waiter's try after its waiters_ increment must not be
    // ordered before it (see release_one).
    std::size_t cur = in_flight_.load(std::memory_order_seq_cst);
    for (;;) {
      if (cur >= limit_.load(std::memory_order_seq_cst)) return permit{};
      if (in_flight_.compare_exchange_weak(cur, cur + 1, std::memory_order_seq_cst,
                                           std::memory_order_relaxed))
        return permit{this};
    }
  }

  // Blocks until a slot is free (parks on a condition variable, no spinning)
  // and returns its permit; returns an empty permit if closed before or
  // while waiting.
  [[nodiscard]] permit acquire() {
    if (permit p = try_acquire(); p || closed_.load(std::memory_order_acquire)) return p;
    std::unique_lock lock(mutex_);
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    for (;;) {
      if (permit p = try_acquire(); p || closed_.load(std::memory_order_acquire)) {
        waiters_.fetch_sub(1, std::memory_order_relaxed);
        return p;
      }
      cv_.wait(lock);
    }
  }

  // As acquire(), giving up (empty permit) at `deadline` (any std::chrono
  // clock). A deadline too far away to represent (time_point::max(), or
  // now + hours::max() through try_acquire_for) means no deadline; see
  // levee/detail/time.hpp.
  template <class C, class D>
  [[nodiscard]] permit try_acquire_until(const std::chrono::time_point<C, D>& deadline) {
    if (permit p = try_acquire(); p || closed_.load(std::memory_order_acquire)) return p;
    // In C's own duration, saturated: comparing with C::now() and waiting
    // can then not overflow a conversion.
    const auto d = detail::saturate_deadline(deadline);
    std::unique_lock lock(mutex_);
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    for (;;) {
      permit p = try_acquire();
      const auto now = C::now();
      if (p || closed_.load(std::memory_order_acquire) || now >= d) {
        waiters_.fetch_sub(1, std::memory_order_relaxed);
        return p;
      }
      if (std::chrono::duration<double>(d.time_since_epoch()) -
              std::chrono::duration<double>(now.time_since_epoch()) >
          detail::far_future_limit)
        cv_.wait(lock);  // "never": see detail::far_future_limit
      else
        cv_.wait_until(lock, d);
    }
  }
  template <class Rep, class Per>
  [[nodiscard]] permit try_acquire_for(const std::chrono::duration<Rep, Per>& timeout) {
    return try_acquire_until(
        detail::deadline_after<std::chrono::steady_clock>(std::chrono::steady_clock::now(), timeout));
  }

  // Threads currently blocked in acquire()/try_acquire_until()/_for() (or
  // about to block, or just woken). Racy: a snapshot for tests and
  // monitoring, e.g. to wait until a thread has parked.
  [[nodiscard]] std::size_t waiters_approx() const noexcept {
    return waiters_.load(std::memory_order_relaxed);
  }

  // Changes the limit. Raising it wakes waiters at once; lowering it lets
  // the permits already held finish (in_flight() may exceed limit() until
  // they are released). limit == 0 throws std::invalid_argument.
  void set_limit(std::size_t limit) {
    const std::size_t old = limit_.exchange(check_limit(limit, "levee::concurrency_limiter::set_limit"),
                                            std::memory_order_seq_cst);
    if (limit > old) wake_all();
  }
  [[nodiscard]] std::size_t limit() const noexcept { return limit_.load(std::memory_order_relaxed); }
  // A snapshot: may be stale by the time it is read.
  [[nodiscard]] std::size_t in_flight() const noexcept { return in_flight_.load(std::memory_order_relaxed); }

  // Wakes every waiter with an empty permit and fails later acquisitions (idempotent).
  void close() {
    closed_.store(true, std::memory_order_seq_cst);
    wake_all();
  }
  [[nodiscard]] bool is_closed() const noexcept { return closed_.load(std::memory_order_acquire); }

 private:
  friend class permit;

  static std::size_t check_limit(std::size_t limit, const char* fn) {
    if (limit == 0) throw std::invalid_argument(std::string(fn) + ": limit must be >= 1 (got 0)");
    return limit;
  }

  void release_one() noexcept {
    in_flight_.fetch_sub(1, std::memory_order_seq_cst);
    // seq_cst pairs with the waiter's seq_cst waiters_ increment before its
    // own try: either we see the waiter, or its try sees our decrement.
    if (waiters_.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard lock(mutex_); }
      cv_.notify_one();
    }
  }
  void wake_all() {
    { std::lock_guard lock(mutex_); }
    cv_.notify_all();
  }

  std::atomic<std::size_t> in_flight_{0};
  std::atomic<std::size_t> limit_;
  std::atomic<std::size_t> waiters_{0};
  std::atomic<bool> closed_{false};
  std::mutex mutex_;
  std::condition_variable cv_;
};

inline void permit::release() noexcept {
  if (concurrency_limiter* o = std::exchange(owner_, nullptr)) o->release_one();
}

}  // namespace levee
