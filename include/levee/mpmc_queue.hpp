// levee/mpmc_queue.hpp - a bounded multi-producer multi-consumer FIFO queue:
// lock-free fast path, exact capacity, blocking that spins briefly and then
// parks (costing one load when nobody waits), timeouts on both sides, and
// close/drain.
//
// Algorithm: a ring of `capacity` slots, each with a 64-bit stamp (Vyukov's
// bounded queue; position encoding after crossbeam's ArrayQueue). A position
// is `lap * one_lap + index` with one_lap = 2 * bit_ceil(capacity + 1), so
// any capacity >= 1 is exact and no division is needed: stepping past the
// last index jumps to the next lap. The bit `mark_bit` (= one_lap / 2) of
// the producers' position is the "closed" flag, set by one fetch_or, so a
// push either claims its position before close() or observes the flag.
//   push at tail t: slot[t].stamp == t means free for this lap -> CAS tail to
//     next(t), construct, store stamp t + 1 ("full").
//   pop at head h: slot[h].stamp == h + 1 means full -> CAS head to next(h),
//     move out, destroy, store stamp h + one_lap ("free for the next lap").
// Blocking operations run the same attempt, spin briefly, yield a few times,
// then park on an event count (detail/wait.hpp): a futex on Linux.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <levee/detail/cache.hpp>
#include <levee/detail/wait.hpp>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

namespace levee {

// Result of a timed operation.
//   ok      - the element was pushed / popped.
//   full    - try_push_for/until: the queue was full and the deadline had
//             already passed when the call started, so it did not wait.
//   empty   - try_pop_for/until: the same for an empty queue.
//   closed  - push: the queue is closed. pop: the queue is closed and drained.
//   timeout - the call waited and the deadline passed before it could proceed.
enum class queue_status { ok, full, empty, closed, timeout };

template <class T, class Allocator = std::allocator<T>>
class mpmc_queue {
  static_assert(std::is_object_v<T> && !std::is_const_v<T> && !std::is_volatile_v<T> && !std::is_array_v<T>,
                "levee::mpmc_queue<T>: T must be a non-const, non-volatile, non-array object type");
  // Checked before the move constructor: some compilers count a throwing
  // destructor as a throwing move construction, and report only the first.
  static_assert(std::is_nothrow_destructible_v<T>, "levee::mpmc_queue<T>: T's destructor must be noexcept");
  static_assert(
      std::is_nothrow_move_constructible_v<T>,
      "levee::mpmc_queue<T>: T's move constructor must be noexcept. A push claims its slot before the "
      "element is moved in and a pop releases its slot after moving it out; a throwing move there would "
      "leave a slot that can never be published. Make the move constructor noexcept or store "
      "std::unique_ptr<T> instead (copying and emplacing constructors may throw: they run before the "
      "slot is claimed)");

 public:
  using value_type = T;
  using allocator_type = Allocator;
  using size_type = std::size_t;

  // Creates an empty queue holding at most `capacity` elements (exactly: no
  // rounding). All storage is allocated here; no operation allocates later.
  // Throws std::invalid_argument for capacity 0, std::length_error for a
  // capacity whose storage cannot be represented, and whatever the allocator
  // throws (std::bad_alloc) when the storage cannot be allocated.
  explicit mpmc_queue(size_type capacity, const Allocator& alloc = Allocator())
      : consts_(checked_capacity(capacity), alloc) {
    slot* slots = slot_traits::allocate(consts_.alloc, consts_.capacity);
    if (reinterpret_cast<std::uintptr_t>(slots) % alignof(slot) != 0) {
      slot_traits::deallocate(consts_.alloc, slots, consts_.capacity);
      throw std::invalid_argument("levee::mpmc_queue: the allocator returned storage aligned to less than " +
                                  std::to_string(alignof(slot)) + " bytes");
    }
    for (std::uint64_t i = 0; i < consts_.capacity; ++i) ::new (static_cast<void*>(slots + i)) slot(i);
    consts_.slots = slots;
  }

  mpmc_queue(const mpmc_queue&) = delete;
  mpmc_queue& operator=(const mpmc_queue&) = delete;

  // Destroys every element still in the queue exactly once. No thread may be
  // inside any member function when the destructor starts.
  ~mpmc_queue() {
    std::uint64_t head = cons_.head.load(std::memory_order_relaxed);
    const std::uint64_t tail = prod_.tail.load(std::memory_order_relaxed) & ~consts_.mark_bit;
    while (head != tail) {
      consts_.slots[index_of(head)].ptr()->~T();
      head = next_position(head);
    }
    for (std::uint64_t i = 0; i < consts_.capacity; ++i) consts_.slots[i].~slot();
    slot_traits::deallocate(consts_.alloc, consts_.slots, consts_.capacity);
  }

  // ---- non-blocking ------------------------------------------------------
  //
  // The try_ operations never park. They return false when the queue is full
  // (push) / empty (pop) / closed, and may also return false *spuriously*,
  // i.e. although at that instant the queue is neither full nor empty, in
  // exactly one situation: the slot they need is held by a peer that has
  // claimed it but not finished. try_push: the oldest element's pop has
  // claimed it but not yet moved it out (try_push does not wait for it).
  // try_pop: the next element's push has claimed its slot but not yet
  // published it (try_pop re-checks for a short bounded spin, then gives
  // up). A thread preempted inside that window holds up its one slot: FIFO
  // order means pops cannot pass an unpublished slot (they report empty
  // until it is published, even if later elements are complete) and pushes
  // cannot pass an unreleased one once the ring wraps to it. No other slot,
  // and no thread that does not need that slot, is affected; no lock is held.
  //
  // Memory ordering: a successful push happens-before the pop that returns
  // its element; a pop's move-out happens-before the push that later reuses
  // the slot. A failed try_ has no ordering effect.

  // Moves/copies `value` in if there is room. On failure `value` is untouched.
  [[nodiscard]] bool try_push(const T& value) {
    if constexpr (std::is_nothrow_copy_constructible_v<T>) {
      return try_(push_op([&](void* p) noexcept { ::new (p) T(value); }));
    } else {
      T copy(value);  // may throw: before any slot is claimed
      return try_(push_op([&](void* p) noexcept { ::new (p) T(std::move(copy)); }));
    }
  }
  [[nodiscard]] bool try_push(T&& value) {
    return try_(push_op([&](void* p) noexcept { ::new (p) T(std::move(value)); }));
  }
  // Constructs T(args...) in place. If that constructor may throw, the
  // element is constructed first (rvalue args are then consumed even when
  // the push fails); otherwise args are untouched on failure.
  template <class... Args>
  requires std::is_constructible_v<T, Args&&...>
  [[nodiscard]] bool try_emplace(Args&&... args) {
    if constexpr (std::is_nothrow_constructible_v<T, Args&&...>) {
      return try_(push_op([&](void* p) noexcept { ::new (p) T(std::forward<Args>(args)...); }));
    } else {
      T tmp(std::forward<Args>(args)...);
      return try_(push_op([&](void* p) noexcept { ::new (p) T(std::move(tmp)); }));
    }
  }

  // Move-assigns the oldest element into `out`. On failure `out` is untouched.
  [[nodiscard]] bool try_pop(T& out) requires std::is_move_assignable_v<T> {
    return pop_into(out, [&](auto&& op) { return try_(op); });
  }
  [[nodiscard]] std::optional<T> try_pop() {
    std::optional<T> out;
    (void)try_(pop_op([&](T& x) noexcept { out.emplace(std::move(x)); }));
    return out;
  }

  // ---- blocking ----------------------------------------------------------
  //
  // Blocking: push waits while the queue is full, pop while it is empty (or
  // while the slot it needs is held by an unfinished peer, see above). A
  // waiting thread polls its slot with a CPU pause a few times, retries
  // after std::this_thread::yield() up to 128 times (on an idle machine that
  // is microseconds; under oversubscription it hands the CPU to the peer it
  // waits for), then parks on a futex and uses no CPU. When no thread is
  // parked, the wake-up check in every push/pop is one relaxed load.
  // Close: close() wakes every waiter; push then returns false, pop returns
  // the remaining elements and false / nullopt once the queue is closed and
  // empty.
  // Memory ordering: as for the try_ operations; in addition a pop that
  // reports "closed" happens-after the close() call.

  bool push(const T& value) {
    if constexpr (std::is_nothrow_copy_constructible_v<T>) {
      return block_push(push_op([&](void* p) noexcept { ::new (p) T(value); })) == queue_status::ok;
    } else {
      T copy(value);
      return block_push(push_op([&](void* p) noexcept { ::new (p) T(std::move(copy)); })) == queue_status::ok;
    }
  }
  // On false (closed) `value` is untouched.
  bool push(T&& value) {
    return block_push(push_op([&](void* p) noexcept { ::new (p) T(std::move(value)); })) == queue_status::ok;
  }
  template <class... Args>
  requires std::is_constructible_v<T, Args&&...>
  bool emplace(Args&&... args) {
    if constexpr (std::is_nothrow_constructible_v<T, Args&&...>) {
      return block_push(push_op([&](void* p) noexcept { ::new (p) T(std::forward<Args>(args)...); })) ==
             queue_status::ok;
    } else {
      T tmp(std::forward<Args>(args)...);
      return block_push(push_op([&](void* p) noexcept { ::new (p) T(std::move(tmp)); })) == queue_status::ok;
    }
  }

  // Returns false only when the queue is closed and drained.
  bool pop(T& out) requires std::is_move_assignable_v<T> {
    return pop_into(out, [&](auto&& op) { return block_pop(op) == queue_status::ok; });
  }
  // Returns std::nullopt only when the queue is closed and drained.
  std::optional<T> pop() {
    std::optional<T> out;
    (void)block_pop(pop_op([&](T& x) noexcept { out.emplace(std::move(x)); }));
    return out;
  }

  // ---- timed -------------------------------------------------------------
  //
  // Like push/pop, but give up at the deadline. Result (see queue_status):
  // ok; closed; full/empty if the deadline had already passed when the call
  // started and the first attempt failed (nothing was waited for);
  // timeout if the call waited and the deadline passed. Every failed attempt
  // is retried once more after the last wake-up, so an element that arrives
  // before the deadline is never missed because of a late wake-up.
  // `_for` measures on std::chrono::steady_clock. `_until` accepts any
  // clock: steady_clock and system_clock deadlines are handed to the kernel
  // as absolute times (system_clock follows wall-clock changes); for other
  // clocks the remaining time is waited on steady_clock and Clock::now() is
  // re-checked after every wake-up. Blocking, close, memory ordering: as for
  // push/pop; on a non-ok result `value` is untouched.

  template <class Rep, class Period>
  [[nodiscard]] queue_status try_push_for(T&& value, const std::chrono::duration<Rep, Period>& timeout) {
    return try_push_until(std::move(value), deadline_after(timeout));
  }
  template <class Rep, class Period>
  [[nodiscard]] queue_status try_push_for(const T& value, const std::chrono::duration<Rep, Period>& timeout) {
    return try_push_until(value, deadline_after(timeout));
  }
  template <class Clock, class Duration>
  [[nodiscard]] queue_status try_push_until(T&& value,
                                            const std::chrono::time_point<Clock, Duration>& deadline) {
    const auto d = detail::saturate_deadline(deadline);
    return block_push(push_op([&](void* p) noexcept { ::new (p) T(std::move(value)); }), &d);
  }
  template <class Clock, class Duration>
  [[nodiscard]] queue_status try_push_until(const T& value,
                                            const std::chrono::time_point<Clock, Duration>& deadline) {
    const auto d = detail::saturate_deadline(deadline);
    if constexpr (std::is_nothrow_copy_constructible_v<T>) {
      return block_push(push_op([&](void* p) noexcept { ::new (p) T(value); }), &d);
    } else {
      T copy(value);
      return block_push(push_op([&](void* p) noexcept { ::new (p) T(std::move(copy)); }), &d);
    }
  }

  template <class Rep, class Period>
  [[nodiscard]] queue_status try_pop_for(
      T& out, const std::chrono::duration<Rep, Period>& timeout) requires std::is_move_assignable_v<T> {
    return try_pop_until(out, deadline_after(timeout));
  }
  template <class Clock, class Duration>
  [[nodiscard]] queue_status try_pop_until(
      T& out,
      const std::chrono::time_point<Clock, Duration>& deadline) requires std::is_move_assignable_v<T> {
    queue_status status = queue_status::empty;
    const auto d = detail::saturate_deadline(deadline);
    (void)pop_into(out, [&](auto&& op) {
      status = block_pop(op, &d);
      return status == queue_status::ok;
    });
    return status;
  }

  // ---- bulk ----------------------------------------------------------------
  //
  // try_push_bulk claims up to `count` consecutive free slots with a single
  // CAS and constructs T(*first++) into each, in order; returns how many
  // elements it consumed from the range (0 if full or closed). Elements of
  // one call are consecutive in the queue's FIFO order. Use
  // std::make_move_iterator to move. Constructing T from *it must not throw
  // (checked); incrementing/dereferencing `first` must not throw.
  // Non-blocking, spurious failure and memory ordering: as for try_push.
  template <std::input_iterator It>
  requires std::is_nothrow_constructible_v<T, std::iter_reference_t<It>>
  [[nodiscard]] size_type try_push_bulk(It first, size_type count) {
    if (count == 0) return 0;
    std::uint64_t tail = prod_.tail.load(std::memory_order_relaxed);
    std::uint64_t n = 0;
    for (;;) {
      if (tail & consts_.mark_bit) return 0;
      n = 0;
      std::uint64_t pos = tail;
      while (n < count && slot_at(pos).stamp.load(std::memory_order_acquire) == pos) {
        ++n;
        pos = next_position(pos);
      }
      if (n == 0) {
        const std::uint64_t again = prod_.tail.load(std::memory_order_relaxed);
        if (again == tail) return 0;
        tail = again;
        continue;
      }
      if (prod_.tail.compare_exchange_weak(tail, pos, std::memory_order_relaxed, std::memory_order_relaxed))
        break;
    }
    std::uint64_t pos = tail;
    for (std::uint64_t i = 0; i < n; ++i, ++first) {
      slot& s = slot_at(pos);
      ::new (static_cast<void*>(s.storage)) T(*first);
      publish(s, pos + 1);
      pos = next_position(pos);
    }
    if (n == 1)
      prod_.not_empty.notify_one(consts_.asymmetric);
    else
      prod_.not_empty.notify_all(consts_.asymmetric);
    return static_cast<size_type>(n);
  }

  // try_pop_bulk claims up to `max_count` consecutive ready elements with a
  // single CAS and assigns them, oldest first, to *out++; returns how many.
  // If an assignment throws, the element being assigned and the rest of the
  // claimed batch are destroyed (lost), their slots are released, and the
  // exception propagates: the queue stays consistent.
  // Non-blocking, spurious failure and memory ordering: as for try_pop.
  template <class OutputIt>
  requires std::output_iterator<OutputIt, T&&>
  [[nodiscard]] size_type try_pop_bulk(OutputIt out, size_type max_count) {
    if (max_count == 0) return 0;
    std::uint64_t head = cons_.head.load(std::memory_order_relaxed);
    std::uint64_t n = 0;
    for (;;) {
      n = 0;
      std::uint64_t pos = head;
      while (n < max_count && slot_at(pos).stamp.load(std::memory_order_acquire) == pos + 1) {
        ++n;
        pos = next_position(pos);
      }
      if (n == 0) {
        const std::uint64_t again = cons_.head.load(std::memory_order_relaxed);
        if (again == head) return 0;
        head = again;
        continue;
      }
      if (cons_.head.compare_exchange_weak(head, pos, std::memory_order_relaxed, std::memory_order_relaxed))
        break;
    }
    std::uint64_t pos = head;
    std::uint64_t i = 0;
    try {
      for (; i < n; ++i) {
        slot& s = slot_at(pos);
        T* p = s.ptr();
        *out = std::move(*p);
        ++out;
        p->~T();
        publish(s, pos + consts_.one_lap);
        pos = next_position(pos);
      }
    } catch (...) {
      for (; i < n; ++i) {
        slot& s = slot_at(pos);
        s.ptr()->~T();
        publish(s, pos + consts_.one_lap);
        pos = next_position(pos);
      }
      cons_.not_full.notify_all(consts_.asymmetric);
      throw;
    }
    if (n == 1)
      cons_.not_full.notify_one(consts_.asymmetric);
    else
      cons_.not_full.notify_all(consts_.asymmetric);
    return static_cast<size_type>(n);
  }

  // ---- close and queries ---------------------------------------------------

  // Closes the queue: idempotent, never blocks. Every later push fails
  // (closed); elements already in the queue, and those of pushes that had
  // claimed a slot before close(), can still be popped; pops report closed
  // once the queue is drained. Wakes every parked thread, timed or not.
  // Memory ordering: a push either completes before close() (and its element
  // will be popped) or fails; close() happens-before every "closed" result.
  void close() noexcept {
    prod_.tail.fetch_or(consts_.mark_bit, std::memory_order_seq_cst);
    prod_.not_empty.notify_all_unconditionally();
    cons_.not_full.notify_all_unconditionally();
  }

  // True once close() has been called. Memory ordering: seq_cst load.
  [[nodiscard]] bool is_closed() const noexcept {
    return (prod_.tail.load(std::memory_order_seq_cst) & consts_.mark_bit) != 0;
  }

  // The exact maximum number of elements, as given to the constructor.
  [[nodiscard]] size_type capacity() const noexcept { return static_cast<size_type>(consts_.capacity); }

  // Threads parked (or about to park) in a blocking push or pop. Racy: a
  // snapshot for tests and monitoring, e.g. to wait until a thread has
  // parked before waking it.
  [[nodiscard]] std::size_t waiters_approx() const noexcept {
    return std::size_t{prod_.not_empty.waiters()} + std::size_t{cons_.not_full.waiters()};
  }

  // Number of claimed positions (elements pushed or being pushed, minus
  // those popped or being popped), in [0, capacity()]. Racy: only a hint
  // while other threads operate on the queue; exact when quiescent.
  [[nodiscard]] size_type size_approx() const noexcept {
    std::uint64_t tail = 0;
    std::uint64_t head = 0;
    for (;;) {
      tail = prod_.tail.load(std::memory_order_seq_cst);
      head = cons_.head.load(std::memory_order_seq_cst);
      if (prod_.tail.load(std::memory_order_seq_cst) == tail) break;
    }
    tail &= ~consts_.mark_bit;
    const std::uint64_t hix = index_of(head);
    const std::uint64_t tix = index_of(tail);
    if (hix < tix) return static_cast<size_type>(tix - hix);
    if (hix > tix) return static_cast<size_type>(consts_.capacity - hix + tix);
    return tail == head ? 0 : capacity();
  }

  // Number of elements pushed since construction: monotonic and exact. A
  // push counts from the moment it claims its position, which is before its
  // element can be popped; failed pushes never count.
  // Memory ordering: an acquire load of the producers' position.
  [[nodiscard]] std::uint64_t push_count() const noexcept {
    const std::uint64_t tail = prod_.tail.load(std::memory_order_acquire) & ~consts_.mark_bit;
    return (tail >> std::countr_zero(consts_.one_lap)) * consts_.capacity + index_of(tail);
  }

  [[nodiscard]] allocator_type get_allocator() const { return allocator_type(consts_.alloc); }

 private:
  // Slots are not padded: a slot is its stamp followed by room for one T, at
  // T's natural alignment, so several small slots share a cache line (four
  // 16-byte slots for an 8-byte T). Padding every slot to a line of its own
  // measured slower in bench_queue's try_ columns (a consumer that trails the
  // producer moves several elements per line transfer) and no faster in its
  // blocking columns (benchmarks/README.md).
  struct slot {
    explicit slot(std::uint64_t initial) noexcept : stamp(initial) {}
    T* ptr() noexcept { return std::launder(reinterpret_cast<T*>(storage)); }
    std::atomic<std::uint64_t> stamp;
    alignas(T) unsigned char storage[sizeof(T)];
  };
  using slot_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<slot>;
  using slot_traits = std::allocator_traits<slot_alloc>;

  enum class attempt { ok, would_block, busy, closed };

  static std::uint64_t checked_capacity(size_type capacity) {
    if (capacity == 0) throw std::invalid_argument("levee::mpmc_queue: capacity must be >= 1, got 0");
    constexpr std::uint64_t max_positions = std::uint64_t{1} << 40;  // keeps >= 2^22 laps of headroom
    const std::size_t max_alloc = std::min<std::size_t>(
        slot_traits::max_size(slot_alloc()), std::numeric_limits<std::ptrdiff_t>::max() / sizeof(slot));
    if (capacity > max_positions || capacity > max_alloc) {
      throw std::length_error("levee::mpmc_queue: capacity " + std::to_string(capacity) +
                              " is too large (storage for that many slots cannot be allocated)");
    }
    return static_cast<std::uint64_t>(capacity);
  }

  // Makes a slot's new state visible: the release half orders the element's
  // construction / move-out before it. The fence half pairs with the
  // waiter-side fence in detail::event_count (see there): a compiler barrier
  // when the asymmetric fence is available, else a seq_cst store.
  void publish(slot& s, std::uint64_t stamp) const noexcept {
    if (consts_.asymmetric) {
      s.stamp.store(stamp, std::memory_order_release);
      detail::light_fence();
    } else {
      s.stamp.store(stamp, std::memory_order_seq_cst);
    }
  }

  [[nodiscard]] std::uint64_t index_of(std::uint64_t pos) const noexcept {
    return pos & (consts_.mark_bit - 1);
  }
  [[nodiscard]] slot& slot_at(std::uint64_t pos) const noexcept { return consts_.slots[index_of(pos)]; }
  [[nodiscard]] std::uint64_t next_position(std::uint64_t pos) const noexcept {
    return index_of(pos) + 1 < consts_.capacity ? pos + 1 : (pos & ~(consts_.one_lap - 1)) + consts_.one_lap;
  }

  // One push attempt. `construct` runs only after the slot is claimed.
  template <class Construct>
  struct push_op_t {
    mpmc_queue* q;
    Construct construct;
    attempt operator()() noexcept { return q->push_attempt(construct); }
    attempt spin() noexcept { return q->push_attempt(construct); }
  };
  template <class Construct>
  push_op_t<Construct> push_op(Construct c) noexcept {
    return {this, c};
  }
  template <class Consume>
  struct pop_op_t {
    mpmc_queue* q;
    Consume consume;
    attempt operator()() noexcept { return q->template pop_attempt<true>(consume); }
    // For the spin phase: never reports closed (see pop_attempt).
    attempt spin() noexcept { return q->template pop_attempt<false>(consume); }
  };
  template <class Consume>
  pop_op_t<Consume> pop_op(Consume c) noexcept {
    return {this, c};
  }

  template <class Construct>
  attempt push_attempt(Construct& construct) noexcept {
    std::uint64_t tail = prod_.tail.load(std::memory_order_relaxed);
    for (;;) {
      if (tail & consts_.mark_bit) return attempt::closed;
      slot& s = slot_at(tail);
      // seq_cst (a plain load on x86-64, ldar on AArch64) rather than acquire:
      // a parked producer's re-check must be ordered after its announcement
      // in the event count (see detail::event_count).
      const std::uint64_t stamp = s.stamp.load(std::memory_order_seq_cst);
      if (stamp == tail) {
        // Relaxed CAS: the acquire half of the stamp load above already orders
        // our construction after the previous occupant's move-out.
        if (prod_.tail.compare_exchange_weak(tail, next_position(tail), std::memory_order_relaxed,
                                             std::memory_order_relaxed)) {
          construct(static_cast<void*>(s.storage));
          publish(s, tail + 1);
          prod_.not_empty.notify_one(consts_.asymmetric);
          return attempt::ok;
        }
      } else if (stamp + consts_.one_lap == tail + 1) {
        // The slot still holds the element pushed one lap ago: the queue is
        // full, or that element's pop is in flight. We do not read head to
        // tell the two apart: that would pull the consumers' line into every
        // failing push (both cases fail; see "spurious failure" above).
        return attempt::would_block;
      } else {
        // Our tail is stale: another producer claimed it already.
        tail = prod_.tail.load(std::memory_order_relaxed);
      }
    }
  }

  // One pop attempt. With CheckClosed, an empty slot costs a read of the
  // producers' position to tell "empty" (or "closed") from "a push is in
  // flight". Without it (the spin phase of a blocking pop), an empty slot is
  // reported as would_block at once: reading the producers' line on every
  // miss would move it to this core and make the next push fetch it back,
  // one extra line transfer per element while a consumer waits on a push.
  template <bool CheckClosed, class Consume>
  attempt pop_attempt(Consume& consume) noexcept {
    std::uint64_t head = cons_.head.load(std::memory_order_relaxed);
    for (;;) {
      slot& s = slot_at(head);
      const std::uint64_t stamp = s.stamp.load(std::memory_order_seq_cst);
      if (stamp == head + 1) {
        if (cons_.head.compare_exchange_weak(head, next_position(head), std::memory_order_relaxed,
                                             std::memory_order_relaxed)) {
          T* p = s.ptr();
          consume(*p);
          p->~T();
          publish(s, head + consts_.one_lap);
          cons_.not_full.notify_one(consts_.asymmetric);
          return attempt::ok;
        }
      } else if (stamp == head) {
        // Not yet written in this lap: empty, or a push is in flight.
        if constexpr (!CheckClosed) return attempt::would_block;
        const std::uint64_t tail = prod_.tail.load(std::memory_order_seq_cst);
        if ((tail & ~consts_.mark_bit) == head) {
          return (tail & consts_.mark_bit) ? attempt::closed : attempt::would_block;
        }
        return attempt::busy;
      } else {
        head = cons_.head.load(std::memory_order_relaxed);
      }
    }
  }

  // pop into an existing T&: direct move-assignment when it cannot throw;
  // otherwise move out into a temporary first so that the slot is released
  // before the (possibly throwing) assignment.
  template <class Run>
  bool pop_into(T& out, Run&& run) {
    if constexpr (std::is_nothrow_move_assignable_v<T>) {
      return run(pop_op([&](T& x) noexcept { out = std::move(x); }));
    } else {
      std::optional<T> tmp;
      if (!run(pop_op([&](T& x) noexcept { tmp.emplace(std::move(x)); }))) return false;
      out = std::move(*tmp);
      return true;
    }
  }

  template <class Op>
  bool try_(Op&& op) noexcept {
    for (unsigned spins = 0;; ++spins) {
      switch (op()) {
        case attempt::ok:
          return true;
        case attempt::busy:
          if (spins < busy_spin_limit) {
            detail::cpu_relax();
            continue;
          }
          return false;
        default:
          return false;
      }
    }
  }

  template <class Op, class Clock = std::chrono::steady_clock, class Duration = typename Clock::duration>
  queue_status block_push(Op&& op, const std::chrono::time_point<Clock, Duration>* deadline = nullptr) {
    return block_(op, cons_.not_full, queue_status::full, deadline, [this] { return push_ready(); });
  }
  template <class Op, class Clock = std::chrono::steady_clock, class Duration = typename Clock::duration>
  queue_status block_pop(Op&& op, const std::chrono::time_point<Clock, Duration>* deadline = nullptr) {
    return block_(op, prod_.not_empty, queue_status::empty, deadline, [this] { return pop_ready(); });
  }
  // Producers park on cons_.not_full (notified by pops); consumers on
  // prod_.not_empty (notified by pushes). These hints say whether the next
  // attempt would likely succeed (seq_cst: see the baton comment in block_).
  [[nodiscard]] bool push_ready() const noexcept {
    const std::uint64_t tail = prod_.tail.load(std::memory_order_seq_cst);
    return (tail & consts_.mark_bit) == 0 && slot_at(tail).stamp.load(std::memory_order_seq_cst) == tail;
  }
  [[nodiscard]] bool pop_ready() const noexcept {
    const std::uint64_t head = cons_.head.load(std::memory_order_seq_cst);
    return slot_at(head).stamp.load(std::memory_order_seq_cst) == head + 1;
  }

  // Spin, then yield, then park. `fail` is full/empty.
  template <class Op, class Clock, class Duration, class Ready>
  queue_status block_(Op& op, detail::event_count& ev, queue_status fail,
                      const std::chrono::time_point<Clock, Duration>* deadline, Ready ready) {
    static_assert(std::chrono::is_clock_v<Clock>,
                  "levee::mpmc_queue timed operations wait in real time: the deadline's clock must be a "
                  "std::chrono clock with a static now() (steady_clock, system_clock, ...)");
    attempt r = op.spin();
    if (r == attempt::ok) return queue_status::ok;
    if (r == attempt::closed) return queue_status::closed;
    if (deadline != nullptr && Clock::now() >= *deadline) {
      // Nothing is waited for; the full attempt tells closed from full/empty.
      r = op();
      if (r == attempt::ok) return queue_status::ok;
      return r == attempt::closed ? queue_status::closed : fail;
    }
    // Spin phase: poll only the slot we need (a line we must touch anyway),
    // not the other side's index, and attempt when it looks ready.
    for (unsigned i = 0; i < consts_.tuning.spins; ++i) {
      detail::cpu_relax();
      if (!ready()) continue;
      r = op.spin();
      if (r == attempt::ok) return queue_status::ok;
      if (r == attempt::closed) return queue_status::closed;
    }
    r = op();
    if (r == attempt::ok) return queue_status::ok;
    if (r == attempt::closed) return queue_status::closed;
    // Yield phase, bounded by a count rather than by time: on an idle machine
    // a yield returns at once (the phase is over in microseconds); under
    // oversubscription each yield lets the peer we wait for run, which is
    // far cheaper than parking and being woken by a system call.
    for (unsigned i = 0; i < consts_.tuning.yields; ++i) {
      std::this_thread::yield();
      r = op();
      if (r == attempt::ok) return queue_status::ok;
      if (r == attempt::closed) return queue_status::closed;
      if (deadline != nullptr && Clock::now() >= *deadline) return queue_status::timeout;
    }
    bool woken = false;
    for (;;) {
      const std::uint32_t key = ev.prepare_wait(consts_.asymmetric);
      r = op();
      if (r != attempt::ok && r != attempt::closed) {
        detail::park_deadline pd{};
        if (deadline != nullptr) {
          pd = detail::to_park_deadline(*deadline);
          if (pd.k == detail::park_deadline::kind::expired) {
            ev.cancel_wait();
            return queue_status::timeout;
          }
        }
        ev.wait(key, pd);
        woken = true;
        continue;
      }
      ev.cancel_wait();
      if (r == attempt::closed) return queue_status::closed;
      // Pass the baton: a notify_one may have been spent on us while the
      // slot we needed was still busy (its element behind an unpublished
      // one); if more elements are ready and others are parked, wake one of
      // them so that no ready element is stranded.
      if (woken && ev.waiters() != 0 && ready()) ev.notify_one(consts_.asymmetric);
      return queue_status::ok;
    }
  }

  template <class Rep, class Period>
  static std::chrono::steady_clock::time_point deadline_after(const std::chrono::duration<Rep, Period>& d) {
    return detail::deadline_after<std::chrono::steady_clock>(std::chrono::steady_clock::now(), d);
  }

  static constexpr unsigned busy_spin_limit = 64;

  struct alignas(detail::false_sharing_range) constants {
    constants(std::uint64_t cap, const Allocator& a)
        : capacity(cap),
          mark_bit(std::bit_ceil(cap + 1)),
          one_lap(2 * mark_bit),
          asymmetric(!detail::force_symmetric_fence.load() && detail::asymmetric_fence_available()),
          tuning(detail::current_wait_tuning()),
          alloc(a) {}
    slot* slots = nullptr;
    std::uint64_t capacity;
    std::uint64_t mark_bit;  // also one past the largest index
    std::uint64_t one_lap;
    bool asymmetric;  // event counts use the membarrier-based fence
    detail::wait_tuning tuning;
    [[no_unique_address]] slot_alloc alloc;
  };
  // Written by producers (CAS on tail); the consumers' event count lives here
  // because every push reads it: the line is already owned by the pusher.
  struct alignas(detail::false_sharing_range) producer_side {
    std::atomic<std::uint64_t> tail{0};
    detail::event_count not_empty;
  };
  struct alignas(detail::false_sharing_range) consumer_side {
    std::atomic<std::uint64_t> head{0};
    detail::event_count not_full;
  };

  constants consts_;
  producer_side prod_;
  consumer_side cons_;
};

}  // namespace levee
