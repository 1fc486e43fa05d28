// levee/detail/leveler_support.hpp - private helpers of levee::leveler:
// a parking event that works with any levee clock, a small RNG, a
// lock-free time-windowed counter, the retry budget and jittered backoff.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <levee/clock.hpp>
#include <levee/detail/cache.hpp>
#include <levee/detail/wait.hpp>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

namespace levee::detail {

// A worker's batch: up to N jobs taken from the ingress queue with one
// claim (mpmc_queue::try_pop_bulk), so that workers draining a deep queue of
// short jobs do not fight over the queue's head line once per job. The owner
// runs them in order; any other worker that finds the queue empty takes from
// the same front (take()), so a slow handler never strands the jobs behind
// it while another worker idles.
//
// Positions only grow (never reused), so a claim is one CAS on `front_` with
// no ABA: [front_, end_) are claimable, and a slot is refilled only after
// every position before end_ was both claimed and moved out (owner_done_ +
// stolen_done_ == end_).
// Only for T that moves without throwing (the leveler checks): a throwing
// move inside refill() or take() would lose the element (they are noexcept).
// Memory ordering: refill() writes the slots, then stores end_ with release;
// a claimer that acquires end_ > p sees position p's element. A thief moves
// its element out before its release increment of stolen_done_, which the
// owner acquires before it overwrites any slot.
template <class T, std::size_t N>
class leveler_batch {
  static_assert(N >= 2 && (N & (N - 1)) == 0, "levee: a batch holds a power of two >= 2 jobs");

 public:
  leveler_batch() = default;
  // The slots live on the heap, allocated only for a batch that is used: a
  // leveler of large jobs must not embed N of them.
  void enable() { slots_ = std::make_unique<std::optional<T>[]>(N); }
  leveler_batch(const leveler_batch&) = delete;
  leveler_batch& operator=(const leveler_batch&) = delete;

  // Owner only: true if every position was claimed and moved out, so
  // refill() may run.
  [[nodiscard]] bool refillable() const noexcept {
    const std::uint64_t e = end_.load(std::memory_order_relaxed);
    return front_.load(std::memory_order_relaxed) == e &&
           owner_done_ + stolen_done_.load(std::memory_order_acquire) == e;
  }

  // Owner only, when refillable() and enabled: pop(out, max) moves up to `max` <= N
  // elements into *out++ (an output iterator over T&&) and returns how many.
  // Returns the number added.
  template <class Pop>
  std::size_t refill(Pop&& pop) noexcept {
    const std::uint64_t e = end_.load(std::memory_order_relaxed);
    const std::size_t n = pop(inserter{this, e}, N);
    if (n != 0) end_.store(e + n, std::memory_order_release);
    return n;
  }

  // Owner or any other thread: claims the oldest element not yet claimed.
  // Lock-free (one CAS; retried only when another thread claimed first).
  [[nodiscard]] std::optional<T> take(bool owner) noexcept {
    std::uint64_t f = front_.load(std::memory_order_relaxed);
    for (;;) {
      if (f >= end_.load(std::memory_order_acquire)) return std::nullopt;
      if (front_.compare_exchange_weak(f, f + 1, std::memory_order_relaxed, std::memory_order_relaxed)) break;
    }
    std::optional<T>& slot = slots_[f % N];
    std::optional<T> out(std::move(*slot));
    slot.reset();
    if (owner) {
      ++owner_done_;
    } else {
      stolen_done_.fetch_add(1, std::memory_order_release);
    }
    return out;
  }

  // Claimable elements (exact when no claim or refill runs concurrently).
  [[nodiscard]] std::size_t size_approx() const noexcept {
    const std::uint64_t f = front_.load(std::memory_order_relaxed);
    const std::uint64_t e = end_.load(std::memory_order_relaxed);
    return e > f ? static_cast<std::size_t>(e - f) : 0;
  }

 private:
  struct inserter {
    using difference_type = std::ptrdiff_t;
    leveler_batch* b;
    std::uint64_t pos;
    inserter& operator*() noexcept { return *this; }
    inserter& operator=(T&& v) noexcept {
      b->slots_[pos % N].emplace(std::move(v));
      ++pos;
      return *this;
    }
    inserter& operator++() noexcept { return *this; }
    inserter& operator++(int) noexcept { return *this; }
  };

  alignas(false_sharing_range) std::atomic<std::uint64_t> front_{0};
  std::atomic<std::uint64_t> end_{0};
  std::uint64_t owner_done_ = 0;
  alignas(false_sharing_range) std::atomic<std::uint64_t> stolen_done_{0};
  std::unique_ptr<std::optional<T>[]> slots_;
};

// A "something changed, look again" event with a timed wait on the owner's
// clock. Usage by a waiter:
//   auto t = ev.prepare();          // announce the wait
//   if (condition()) ev.cancel();   // re-check after announcing
//   else ev.wait_until(t, deadline);
// and by a notifier: make the condition true, then ev.notify().
// notify() costs one load (and, without membarrier, one fence) when nobody
// waits.
//
// Memory ordering: prepare() is a seq_cst RMW on the waiter count followed by
// a full barrier; notify() passes a full barrier before reading the count. By
// the fence-fence rule either the notifier sees the waiter (and wakes it) or
// the waiter's re-check sees everything the notifier did before notify().
// On Linux with a real clock the barrier pair is asymmetric, as in
// mpmc_queue's event count (detail/wait.hpp): the waiter's membarrier()
// makes every running thread of the process pass a full barrier, so the
// notifier - a submit or a finished job, millions of times a second - needs
// only a compiler barrier, while the waiter, about to park anyway, pays the
// system call. Otherwise both sides use seq_cst fences.
// ThreadSanitizer does not model fences, so under TSan the notifier reads the
// count with an acq_rel RMW instead (equally correct: RMWs on the count are
// totally ordered, and whichever comes second synchronises with the first).
template <clock Clock>
class leveler_event {
 public:
  using time_point = typename Clock::time_point;

  explicit leveler_event(Clock c)
      : clock_(std::move(c)),
        asymmetric_(!waitable_clock<Clock> && !LEVEE_DETAIL_TSAN && asymmetric_fence_available() &&
                    !force_symmetric_fence.load(std::memory_order_relaxed)) {}
  leveler_event(const leveler_event&) = delete;
  leveler_event& operator=(const leveler_event&) = delete;

  [[nodiscard]] std::uint64_t prepare() noexcept {
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    if (asymmetric_) {
      heavy_fence();
    } else {
#if !LEVEE_DETAIL_TSAN
      std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
    }
    return generation_.load(std::memory_order_seq_cst);
  }

  void cancel() noexcept { waiters_.fetch_sub(1, std::memory_order_relaxed); }

  // Blocks until notify() is called after prepare() returned `ticket`, or the
  // clock reaches tp (time_point::max() = no time limit). Spurious returns
  // are possible; callers loop.
  void wait_until(std::uint64_t ticket, time_point tp) {
    if constexpr (waitable_clock<Clock>) {
      (void)clock_.wait_until(tp, [&] { return generation_.load(std::memory_order_acquire) != ticket; });
    } else {
      std::unique_lock lock(mutex_);
      while (generation_.load(std::memory_order_relaxed) == ticket) {
        if (tp == time_point::max()) {
          cv_.wait(lock);
        } else {
          if (clock_.now() >= tp) break;
          cv_.wait_until(lock, tp);
        }
      }
    }
    waiters_.fetch_sub(1, std::memory_order_relaxed);
  }

  void notify() {
    if (!anyone_waiting()) return;
    notify_always();
  }

  // Wakes at least one waiter (all of them with a waitable clock).
  void notify_one() {
    if (!anyone_waiting()) return;
    if constexpr (waitable_clock<Clock>) {
      notify_always();
    } else {
      {
        std::lock_guard lock(mutex_);
        generation_.fetch_add(1, std::memory_order_relaxed);
      }
      cv_.notify_one();
    }
  }

  void notify_always() {
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

 private:
  [[nodiscard]] bool anyone_waiting() noexcept {
    if (asymmetric_) {
      light_fence();
      return waiters_.load(std::memory_order_relaxed) != 0;
    }
#if LEVEE_DETAIL_TSAN
    return waiters_.fetch_add(0, std::memory_order_acq_rel) != 0;
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return waiters_.load(std::memory_order_relaxed) != 0;
#endif
  }

  [[no_unique_address]] Clock clock_;
  const bool asymmetric_;
  std::atomic<std::uint64_t> waiters_{0};
  std::atomic<std::uint64_t> generation_{0};
  std::mutex mutex_;
  std::condition_variable cv_;
};

// The clock the leveler gives its balancer: the leveler's clock, except that
// inside a `scope` on the current thread now() returns the time the leveler
// has just read (a worker reads the clock once per job and the balancer's
// lease feedback reuses it instead of reading it again).
template <clock C>
class leveler_cached_clock {
 public:
  using rep = typename C::rep;
  using period = typename C::period;
  using duration = typename C::duration;
  using time_point = typename C::time_point;

  leveler_cached_clock() = default;
  explicit leveler_cached_clock(C c) : base_(std::move(c)) {}

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

// splitmix64: a tiny seedable generator for backoff jitter.
class leveler_rng {
 public:
  explicit leveler_rng(std::uint64_t seed) noexcept : state_(seed) {}
  std::uint64_t next() noexcept {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n] (inclusive); the modulo bias is below n / 2^64,
  // negligible for the nanosecond ranges used here.
  std::uint64_t up_to(std::uint64_t n) noexcept {
    if (n == std::numeric_limits<std::uint64_t>::max()) return next();
    return next() % (n + 1);
  }

 private:
  std::uint64_t state_;
};

// Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^(retry-1))].
// retry counts from 1 (the first retry).
[[nodiscard]] inline std::chrono::nanoseconds leveler_backoff(std::chrono::nanoseconds base,
                                                              std::chrono::nanoseconds cap,
                                                              std::uint32_t retry,
                                                              leveler_rng& rng) noexcept {
  const auto b = static_cast<std::uint64_t>(std::max<std::int64_t>(base.count(), 0));
  const auto c = static_cast<std::uint64_t>(std::max<std::int64_t>(cap.count(), 0));
  std::uint64_t ceiling = b;
  for (std::uint32_t i = 1; i < retry && ceiling < c; ++i) ceiling = ceiling > c / 2 ? c : ceiling * 2;
  ceiling = std::min(ceiling, c);
  return std::chrono::nanoseconds{static_cast<std::int64_t>(rng.up_to(ceiling))};
}

// Counts events in time slots on a ring (slot i holds the events of epoch
// now/width == e with e % slots == i). Each slot packs a 24-bit epoch tag and
// a 40-bit count into one atomic word, so add() is one CAS and a stale slot is
// recognised without a separate reset.
class leveler_window_counter {
 public:
  leveler_window_counter(std::chrono::nanoseconds width, std::size_t slots)
      : width_(width.count()), slots_(slots) {}

  void add(std::int64_t now_ns, std::uint64_t n = 1) noexcept {
    const std::uint64_t e = epoch(now_ns);
    auto& s = slots_[e % slots_.size()];
    std::uint64_t cur = s.load(std::memory_order_relaxed);
    for (;;) {
      const std::uint64_t next = tag(cur) == (e & tag_mask) ? cur + n : ((e & tag_mask) << count_bits) | n;
      if (s.compare_exchange_weak(cur, next, std::memory_order_relaxed)) return;
    }
  }

  // As add(), for a counter written by one thread only: a plain load and
  // store instead of a CAS (readers still see whole words).
  // The writer remembers the current slot's time range, so consecutive adds
  // within one slot skip the division.
  void add_exclusive(std::int64_t now_ns, std::uint64_t n = 1) noexcept {
    if (now_ns < last_lo_ || now_ns >= last_hi_) {
      last_e_ = epoch(now_ns);
      last_lo_ = now_ns <= 0 ? std::numeric_limits<std::int64_t>::min()
                             : static_cast<std::int64_t>(last_e_) * width_;
      last_hi_ = static_cast<std::int64_t>(last_e_ + 1) * width_;
    }
    const std::uint64_t e = last_e_;
    auto& s = slots_[e % slots_.size()];
    const std::uint64_t cur = s.load(std::memory_order_relaxed);
    s.store(tag(cur) == (e & tag_mask) ? cur + n : ((e & tag_mask) << count_bits) | n,
            std::memory_order_relaxed);
  }

  // Events in the `full` whole slots before the current one, plus the current
  // (partial) slot. Also returns the covered span in nanoseconds.
  struct window_sum {
    std::uint64_t count = 0;
    std::int64_t span_ns = 0;
  };
  [[nodiscard]] window_sum sum(std::int64_t now_ns, std::size_t full) const noexcept {
    full = std::min(full, slots_.size() - 1);
    const std::uint64_t e = epoch(now_ns);
    window_sum r;
    for (std::size_t k = 0; k <= full && k <= e; ++k) {
      const std::uint64_t ek = e - k;
      const std::uint64_t v = slots_[ek % slots_.size()].load(std::memory_order_relaxed);
      if (tag(v) == (ek & tag_mask)) r.count += v & count_mask;
      r.span_ns +=
          (k == 0) ? std::max<std::int64_t>(now_ns, 0) - static_cast<std::int64_t>(e) * width_ : width_;
    }
    return r;
  }

  [[nodiscard]] std::int64_t width_ns() const noexcept { return width_; }

 private:
  static constexpr unsigned count_bits = 40;
  static constexpr std::uint64_t count_mask = (std::uint64_t{1} << count_bits) - 1;
  static constexpr std::uint64_t tag_mask = (std::uint64_t{1} << (64 - count_bits)) - 1;
  static std::uint64_t tag(std::uint64_t v) noexcept { return v >> count_bits; }
  std::uint64_t epoch(std::int64_t now_ns) const noexcept {
    return now_ns <= 0 ? 0 : static_cast<std::uint64_t>(now_ns / width_);
  }

  std::int64_t width_;
  std::vector<std::atomic<std::uint64_t>> slots_;
  // add_exclusive's cache: [last_lo_, last_hi_) maps to epoch last_e_.
  std::int64_t last_lo_ = 0;
  std::int64_t last_hi_ = 0;
  std::uint64_t last_e_ = 0;
};

// Arrival-rate estimation without a read-modify-write per submission: the
// submission counters are exact, so it is enough to know their value at the
// start of each time slot. For every slot this keeps the count at the first
// submission that saw the slot (no submission happened between the slot's
// start and that one, so that is the count at the slot's start). While the
// current slot is already recorded, observe() costs one relaxed load; the
// first submission of a slot takes a mutex (once per slot width).
class leveler_arrival_log {
 public:
  leveler_arrival_log(std::chrono::nanoseconds width, std::size_t slots)
      : width_(width.count()), obs_(slots) {}

  // `count()` returns the number of submissions before this one.
  template <class Count>
  void observe(std::int64_t now_ns, Count&& count) {
    if (now_ns < next_ns_.load(std::memory_order_relaxed)) [[likely]]
      return;
    std::lock_guard lock(mutex_);
    if (now_ns < next_ns_.load(std::memory_order_relaxed)) return;
    const std::uint64_t e = epoch(now_ns);
    obs_[e % obs_.size()] = observation{e, count(), true};
    next_ns_.store(static_cast<std::int64_t>(e + 1) * width_, std::memory_order_relaxed);
  }

  // Submissions since the start of the slot `full` slots before the current
  // one (total_now: the count now), and the time covered.
  struct window_sum {
    std::uint64_t count = 0;
    std::int64_t span_ns = 0;
  };
  [[nodiscard]] window_sum sum(std::int64_t now_ns, std::size_t full, std::uint64_t total_now) const {
    full = std::min(full, obs_.size() - 1);
    const std::uint64_t e = epoch(now_ns);
    const std::uint64_t first = e >= full ? e - full : 0;
    window_sum r;
    r.span_ns = std::max<std::int64_t>(now_ns, 0) - static_cast<std::int64_t>(first) * width_;
    std::lock_guard lock(mutex_);
    for (std::uint64_t k = first; k <= e; ++k) {
      const observation& o = obs_[k % obs_.size()];
      if (o.valid && o.epoch == k) {
        r.count = total_now >= o.count ? total_now - o.count : 0;
        break;
      }
    }
    return r;
  }

 private:
  struct observation {
    std::uint64_t epoch = 0;
    std::uint64_t count = 0;
    bool valid = false;
  };
  std::uint64_t epoch(std::int64_t now_ns) const noexcept {
    return now_ns <= 0 ? 0 : static_cast<std::uint64_t>(now_ns / width_);
  }
  std::int64_t width_;
  std::atomic<std::int64_t> next_ns_{std::numeric_limits<std::int64_t>::min()};
  mutable std::mutex mutex_;
  std::vector<observation> obs_;  // guarded by mutex_
};

// A retry budget in the style of tower's TpsBudget: over a sliding 10 s
// window, retries may not exceed min_per_second * 10 + ratio * first attempts.
// Deposit and withdrawal are each one CAS; the check-then-withdraw pair is
// not atomic, so concurrent retries may overshoot the budget by at most the
// number of threads racing (exact when driven by one thread, as in
// simulation mode).
class leveler_retry_budget {
 public:
  static constexpr std::chrono::seconds window{10};

  leveler_retry_budget(double ratio, std::uint32_t min_per_second)
      : ratio_(ratio),
        min_per_second_(min_per_second),
        deposits_(std::chrono::seconds{1}, 11),
        withdrawals_(std::chrono::seconds{1}, 11) {}

  void deposit(std::int64_t now_ns) noexcept { deposits_.add(now_ns); }

  [[nodiscard]] bool try_withdraw(std::int64_t now_ns) noexcept {
    const auto slots = static_cast<std::size_t>(window.count() - 1);
    const double allowed = static_cast<double>(min_per_second_) * static_cast<double>(window.count()) +
                           ratio_ * static_cast<double>(deposits_.sum(now_ns, slots).count);
    if (static_cast<double>(withdrawals_.sum(now_ns, slots).count) + 1.0 > allowed) return false;
    withdrawals_.add(now_ns);
    return true;
  }

 private:
  double ratio_;
  std::uint32_t min_per_second_;
  leveler_window_counter deposits_;
  leveler_window_counter withdrawals_;
};

}  // namespace levee::detail
