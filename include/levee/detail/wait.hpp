// levee/detail/wait.hpp - spin-then-park building blocks: a CPU pause, a
// parking primitive on a 32-bit word (futex on Linux, a striped
// mutex/condition_variable table elsewhere) with absolute deadlines on real
// clocks, an event count whose notify costs one load when nobody waits, and
// clock_event: that event count with timed waits on any levee clock.
#pragma once

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <thread>
#include <type_traits>

#include "../clock.hpp"
#include "time.hpp"

#if defined(__linux__)
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <ctime>
#else
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#endif

// ThreadSanitizer does not model fences or membarrier(): code that relies
// on them takes a read-modify-write path instead when this is 1.
#if defined(__SANITIZE_THREAD__)
#define LEVEE_DETAIL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LEVEE_DETAIL_TSAN 1
#endif
#endif
#ifndef LEVEE_DETAIL_TSAN
#define LEVEE_DETAIL_TSAN 0
#endif

namespace levee::detail {

// One spin-wait hint: lets the sibling hyper-thread run and keeps a spinning
// core from flooding the memory system with speculative loads.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  // The builtin (GCC, clang) rather than _mm_pause(): <immintrin.h> costs
  // every includer as much compile time as <chrono>.
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  __asm__ __volatile__("yield");
#endif
}

static_assert(
    sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
        std::atomic<std::uint32_t>::is_always_lock_free,
    "levee parks threads on std::atomic<uint32_t> words: they must be plain lock-free 32-bit words");

// A deadline resolved to something the parking primitive understands: none
// (wait until woken), or an absolute time on CLOCK_MONOTONIC / CLOCK_REALTIME.
struct park_deadline {
  enum class kind { none, monotonic, realtime, expired } k = kind::none;
  std::int64_t sec = 0;
  std::int64_t nsec = 0;
};

template <class Clock, class Duration>
[[nodiscard]] park_deadline to_park_deadline(const std::chrono::time_point<Clock, Duration>& tp) {
  using namespace std::chrono;
  // In double seconds: subtracting time points of different durations in
  // their common type could overflow (e.g. hours::max() in nanoseconds).
  const auto remaining =
      duration<double>(tp.time_since_epoch()) - duration<double>(Clock::now().time_since_epoch());
  if (remaining <= duration<double>::zero()) return {park_deadline::kind::expired, 0, 0};
  if (remaining > far_future_limit) return {};
  auto absolute = [](auto since_epoch, park_deadline::kind k) {
    const auto ns = ceil<nanoseconds>(since_epoch);
    const auto s = floor<seconds>(ns);
    return park_deadline{k, static_cast<std::int64_t>(s.count()),
                         static_cast<std::int64_t>((ns - s).count())};
  };
  if constexpr (std::is_same_v<Clock, steady_clock>) {
    // libstdc++ and libc++ implement steady_clock with CLOCK_MONOTONIC.
    return absolute(tp.time_since_epoch(), park_deadline::kind::monotonic);
  } else if constexpr (std::is_same_v<Clock, system_clock>) {
    return absolute(tp.time_since_epoch(), park_deadline::kind::realtime);
  } else {
    // Any other clock: wait for the remaining time measured on steady_clock;
    // the caller re-checks Clock::now() after waking.
    const auto steady_tp = steady_clock::now() + ceil<nanoseconds>(remaining);
    return absolute(steady_tp.time_since_epoch(), park_deadline::kind::monotonic);
  }
}

#if defined(__linux__)

inline std::uint32_t* futex_word(std::atomic<std::uint32_t>& word) noexcept {
  return reinterpret_cast<std::uint32_t*>(&word);
}

// Blocks while word == expected, until woken or the deadline. May return
// spuriously; the caller re-checks its condition.
inline void park(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                 const park_deadline& d = {}) noexcept {
  if (d.k == park_deadline::kind::expired) return;
  if (d.k == park_deadline::kind::none) {
    syscall(SYS_futex, futex_word(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
    return;
  }
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(d.sec);
  ts.tv_nsec = static_cast<long>(d.nsec);
  const int op =
      FUTEX_WAIT_BITSET_PRIVATE | (d.k == park_deadline::kind::realtime ? FUTEX_CLOCK_REALTIME : 0);
  syscall(SYS_futex, futex_word(word), op, expected, &ts, nullptr, FUTEX_BITSET_MATCH_ANY);
}

inline void unpark(std::atomic<std::uint32_t>& word, int count) noexcept {
  syscall(SYS_futex, futex_word(word), FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0);
}

#else

// Portable fallback: a striped table of mutex + condition_variable pairs.
struct park_bucket {
  std::mutex mutex;
  std::condition_variable cv;
};
inline park_bucket& bucket_for(const void* address) noexcept {
  static park_bucket table[64];
  return table[std::hash<const void*>{}(address) % 64];
}

inline void park(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                 const park_deadline& d = {}) noexcept {
  using namespace std::chrono;
  if (d.k == park_deadline::kind::expired) return;
  park_bucket& b = bucket_for(&word);
  std::unique_lock lock(b.mutex);
  if (word.load(std::memory_order_seq_cst) != expected) return;
  if (d.k == park_deadline::kind::none) {
    b.cv.wait(lock);
  } else if (d.k == park_deadline::kind::realtime) {
    b.cv.wait_until(lock, system_clock::time_point(
                              duration_cast<system_clock::duration>(seconds(d.sec) + nanoseconds(d.nsec))));
  } else {
    b.cv.wait_until(lock, steady_clock::time_point(
                              duration_cast<steady_clock::duration>(seconds(d.sec) + nanoseconds(d.nsec))));
  }
}

inline void unpark(std::atomic<std::uint32_t>& word, int) noexcept {
  park_bucket& b = bucket_for(&word);
  { std::lock_guard lock(b.mutex); }
  b.cv.notify_all();
}

#endif

// ---- asymmetric fence --------------------------------------------------------
//
// The event count below needs a StoreLoad fence between a notifier's store
// of its condition and its load of the waiter count, and between a waiter's
// announcement and its re-check. On Linux the waiter side pays for both with
// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED): every running thread of the
// process passes a full barrier before it returns, so the notifier side only
// needs a compiler barrier. Elsewhere (or if registration fails) both sides
// use seq_cst operations instead.

#if defined(__linux__)
inline bool register_asymmetric_fence() noexcept {
  return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
}
#else
inline bool register_asymmetric_fence() noexcept { return false; }
#endif

// True if heavy_fence() is available; registers the process on first call.
[[nodiscard]] inline bool asymmetric_fence_available() noexcept {
  static const bool ok = register_asymmetric_fence();
  return ok;
}

// Test hook: when set, queues constructed afterwards use the symmetric
// (seq_cst) event-count protocol even where the asymmetric fence exists, so
// that both code paths are exercised.
inline std::atomic<bool> force_symmetric_fence{false};

// How a blocking operation waits before it parks: `spins` retries with a CPU
// pause, then `yields` retries after std::this_thread::yield(). The spin
// phase should outlast one cross-core hand-off even on a virtual machine
// whose vCPUs are slow to see each other's writes: a waiter that falls into
// the yield phase pays a system call per retry, more than the wait itself.
// Defaults measured with bench_queue on a 2-core KVM guest (benchmarks/README.md).
struct wait_tuning {
  unsigned spins = 64;
  unsigned yields = 128;
};
// Test/benchmark hooks: tuning used by queues constructed afterwards.
inline std::atomic<unsigned> wait_tuning_spins{wait_tuning{}.spins};
inline std::atomic<unsigned> wait_tuning_yields{wait_tuning{}.yields};
[[nodiscard]] inline wait_tuning current_wait_tuning() noexcept {
  return {wait_tuning_spins.load(), wait_tuning_yields.load()};
}

// The cheap side: orders this thread's memory accesses against a concurrent
// heavy_fence() in another thread. Only a compiler barrier.
inline void light_fence() noexcept { std::atomic_signal_fence(std::memory_order_seq_cst); }

// The expensive side (a system call that interrupts the CPUs running this
// process's other threads). Only valid if asymmetric_fence_available().
inline void heavy_fence() noexcept {
#if defined(__linux__)
  syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
#endif
}

// An event count (Dekker-style announce / re-check / park), in one of two
// modes fixed by the owner: `asymmetric` (requires asymmetric_fence_available())
// or symmetric seq_cst.
//
// Waiter:   key = prepare_wait(asym); if (condition holds) cancel_wait(); else wait(key, deadline);
// Notifier: publish the condition (asymmetric: release store + light_fence();
//           symmetric: seq_cst store or RMW), then notify_one(asym)/notify_all(asym).
//
// No lost wake-up. Symmetric: prepare_wait's seq_cst increment, the
// waiter's seq_cst re-check, the notifier's seq_cst store and its seq_cst load
// of the waiter count lie in the single total order S, so either the load sees
// the waiter or the re-check sees the condition. Asymmetric: the waiter's
// heavy_fence() after its increment makes every other thread pass a full
// barrier; if the notifier's load comes after that point it sees the
// increment, otherwise its earlier store is visible to the re-check. A
// notifier that sees a waiter bumps the epoch the waiter parks on, so the
// futex compare fails or the wake finds it.
// When nobody waits, notify_one() is a single load (relaxed in asymmetric mode).
class event_count {
 public:
  [[nodiscard]] std::uint32_t prepare_wait(bool asymmetric) noexcept {
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    if (asymmetric) heavy_fence();
    return epoch_.load(std::memory_order_seq_cst);
  }
  void cancel_wait() noexcept { waiters_.fetch_sub(1, std::memory_order_relaxed); }
  // Parks until notified, the deadline, or spuriously; always deregisters.
  void wait(std::uint32_t key, const park_deadline& d = {}) noexcept {
    park(epoch_, key, d);
    waiters_.fetch_sub(1, std::memory_order_relaxed);
  }
  void notify_one(bool asymmetric) noexcept {
    if (load_waiters(asymmetric) != 0) [[unlikely]] {
      epoch_.fetch_add(1, std::memory_order_seq_cst);
      unpark(epoch_, 1);
    }
  }
  void notify_all(bool asymmetric) noexcept {
    if (load_waiters(asymmetric) != 0) [[unlikely]] {
      epoch_.fetch_add(1, std::memory_order_seq_cst);
      unpark(epoch_, INT_MAX);
    }
  }
  // Wakes everyone even if the count looks zero (used by close()).
  void notify_all_unconditionally() noexcept {
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    unpark(epoch_, INT_MAX);
  }
  [[nodiscard]] std::uint32_t waiters() const noexcept { return waiters_.load(std::memory_order_relaxed); }
  // The waiter count read with an RMW (for ThreadSanitizer, which does not model fences).
  [[nodiscard]] std::uint32_t waiters_rmw() noexcept {
    return waiters_.fetch_add(0, std::memory_order_acq_rel);
  }
  // True once a notification was published after prepare_wait() returned key.
  [[nodiscard]] bool notified_since(std::uint32_t key) const noexcept {
    return epoch_.load(std::memory_order_acquire) != key;
  }

 private:
  std::uint32_t load_waiters(bool asymmetric) const noexcept {
    return asymmetric ? waiters_.load(std::memory_order_relaxed) : waiters_.load(std::memory_order_seq_cst);
  }
  std::atomic<std::uint32_t> waiters_{0};
  std::atomic<std::uint32_t> epoch_{0};
};

// The event count with timed waits on the owner's clock: "something
// changed, look again" for conditions published with ordinary (even relaxed)
// stores. Usage by a waiter:
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
// With a real clock on Linux the barrier pair is asymmetric (heavy_fence on
// the waiter, who is about to park anyway; light_fence on the notifier);
// otherwise both sides use seq_cst fences. ThreadSanitizer does not model
// fences, so under TSan the notifier reads the count with an acq_rel RMW
// (RMWs on the count are totally ordered: whichever comes second
// synchronises with the first).
// Waiting: on a waitable_clock (manual_clock) through the clock, which wakes
// the waiter when its time moves or notify() is called; otherwise parked on
// the epoch word with an absolute deadline (see to_park_deadline).
// Spurious returns are possible; callers loop.
template <clock Clock>
class clock_event {
 public:
  using time_point = typename Clock::time_point;

  explicit clock_event(Clock c)
      : clock_(std::move(c)),
        asymmetric_(!waitable_clock<Clock> && !LEVEE_DETAIL_TSAN && asymmetric_fence_available() &&
                    !force_symmetric_fence.load(std::memory_order_relaxed)) {}
  clock_event(const clock_event&) = delete;
  clock_event& operator=(const clock_event&) = delete;

  [[nodiscard]] std::uint32_t prepare() noexcept {
    const std::uint32_t key = count_.prepare_wait(asymmetric_);
#if !LEVEE_DETAIL_TSAN
    if (!asymmetric_) std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
    return key;
  }
  void cancel() noexcept { count_.cancel_wait(); }

  // Blocks until notified after prepare() returned `key`, or the clock
  // reaches tp (time_point::max(): no time limit); always deregisters.
  void wait_until(std::uint32_t key, time_point tp) {
    if constexpr (waitable_clock<Clock>) {
      (void)clock_.wait_until(tp, [&] { return count_.notified_since(key); });
      count_.cancel_wait();
    } else {
      count_.wait(key, tp == time_point::max() ? park_deadline{} : to_park_deadline(tp));
    }
  }

  // Wakes every waiter, if there is one.
  void notify() noexcept {
    if (anyone_waiting()) notify_always();
  }
  // Wakes at least one waiter, if there is one (all of them on a waitable clock).
  void notify_one() noexcept {
    if (!anyone_waiting()) return;
    if constexpr (waitable_clock<Clock>) {
      notify_always();
    } else {
      count_.notify_one(false);
    }
  }
  // Wakes every waiter even if the count looks zero.
  void notify_always() noexcept {
    count_.notify_all_unconditionally();
    if constexpr (waitable_clock<Clock>) clock_.notify_waiters();
  }

 private:
  [[nodiscard]] bool anyone_waiting() noexcept {
    if (asymmetric_) {
      light_fence();
      return count_.waiters() != 0;
    }
#if LEVEE_DETAIL_TSAN
    return count_.waiters_rmw() != 0;
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return count_.waiters() != 0;
#endif
  }

  [[no_unique_address]] Clock clock_;
  const bool asymmetric_;
  event_count count_;
};

}  // namespace levee::detail
