// levee/balance/snapshot_cell.hpp - publication and reclamation of immutable
// snapshots: readers never block and never allocate; a replaced snapshot is
// freed after a grace period, which the writer polls for instead of waiting.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "../detail/cache.hpp"
#include "../detail/wait.hpp"

namespace levee::detail {

// Reader slots: each thread that reads any snapshot_cell owns one index in
// [0, reader_slots) for its lifetime (returned when it exits), so its reader
// counts have a single writer and can be updated with a plain load and
// store. Threads beyond reader_slots alive at once share the overflow index
// reader_slots, whose counts take read-modify-writes.
inline constexpr std::size_t reader_slots = 64;
inline std::atomic<std::uint64_t> reader_slot_bits{0};

class reader_slot_holder {
 public:
  reader_slot_holder() noexcept {
    std::uint64_t bits = reader_slot_bits.load(std::memory_order_relaxed);
    while (bits != ~std::uint64_t{0}) {
      const unsigned i = static_cast<unsigned>(std::countr_one(bits));
      // acquire: the previous owner's last count update happens-before ours.
      if (reader_slot_bits.compare_exchange_weak(bits, bits | (std::uint64_t{1} << i),
                                                 std::memory_order_acquire, std::memory_order_relaxed)) {
        index_ = i;
        return;
      }
    }
  }
  ~reader_slot_holder() {
    if (index_ < reader_slots)
      reader_slot_bits.fetch_and(~(std::uint64_t{1} << index_), std::memory_order_release);
  }
  reader_slot_holder(const reader_slot_holder&) = delete;
  reader_slot_holder& operator=(const reader_slot_holder&) = delete;
  [[nodiscard]] std::size_t index() const noexcept { return index_; }

 private:
  std::size_t index_ = reader_slots;
};

[[nodiscard]] inline std::size_t this_thread_reader_slot() noexcept {
  thread_local const reader_slot_holder slot;
  return slot.index();
}

// Why not std::atomic<std::shared_ptr<T>>: in libstdc++ 12 its load() takes a
// spin lock embedded in the control-block pointer (is_lock_free() == false),
// so concurrent readers serialise on one cache line and a reader can spin
// behind a preempted one. Instead this is a small userspace RCU with
// per-thread reader counts (in the style of SRCU), with deferred reclamation:
//
//   reader:  e = epoch & 1; readers[slot][e] += 1; p = current; ...use p...; readers[slot][e] -= 1
//   writer:  old = current.exchange(next); retire old; a retired snapshot is
//            freed once each parity's counts were observed all zero after it
//            was retired; after each such observation the epoch flips.
//
// Why that is enough: a reader that holds `old` loaded `current` before the
// exchange, so its increment preceded the exchange in the order the two
// fences below establish, and it keeps the count >= 1 until it is done; a
// later observation of zero on its parity (slot by slot) therefore cannot
// happen while it still holds `old`. Flipping the epoch after observing the
// inactive parity drained sends new readers there, so the other parity
// drains in turn: reclamation cannot be starved by a steady stream of
// readers. The writer never waits for a reader that was preempted inside its
// read section (which would make every change cost a scheduler time slice on
// an oversubscribed machine); it only polls.
//
// Fences: the reader needs a StoreLoad barrier between its increment and its
// load of `current`, the writer one between its exchange and its reads of
// the counts. Picks are hot and changes rare, so on Linux the pair is
// asymmetric (as in liburcu's membarrier flavour): a reader that owns its
// slot does a plain store and a compiler barrier, and the writer calls
// membarrier() (detail::heavy_fence), which makes every running thread of the
// process pass a full barrier. Without membarrier, under ThreadSanitizer, or
// for threads on the shared overflow slot, readers use seq_cst
// read-modify-writes. Counts live on their own cache lines per thread.
template <class T>
class snapshot_cell {
 public:
  // More retired snapshots than this and exchange() waits (spinning, then
  // sleeping in short steps) for a grace period, which bounds memory when
  // changes outpace readers that were preempted inside a read section.
  static constexpr std::size_t max_retired = 64;

  snapshot_cell() = default;
  snapshot_cell(const snapshot_cell&) = delete;
  snapshot_cell& operator=(const snapshot_cell&) = delete;
  // Requires: no reader inside a read section.
  ~snapshot_cell() {
    retired_.clear();
    delete current_.load(std::memory_order_acquire);
  }

  class read_guard {
   public:
    read_guard(const read_guard&) = delete;
    read_guard& operator=(const read_guard&) = delete;
    ~read_guard() {
      // release: the reader's uses of the snapshot happen-before a writer's
      // observation of the lower count.
      if (owned_) {
        counter_->store(counter_->load(std::memory_order_relaxed) - 1, std::memory_order_release);
      } else {
        counter_->fetch_sub(1, std::memory_order_release);
      }
    }
    [[nodiscard]] const T* get() const noexcept { return p_; }
    [[nodiscard]] const T* operator->() const noexcept { return p_; }

   private:
    friend class snapshot_cell;
    read_guard(std::atomic<std::uint64_t>* c, const T* p, bool owned) noexcept
        : counter_(c), p_(p), owned_(owned) {}
    std::atomic<std::uint64_t>* counter_;
    const T* p_;
    bool owned_;
  };

  // Enters a read-side section; the snapshot stays alive until the guard dies.
  // Wait-free: a plain increment of this thread's count, a compiler barrier
  // and two loads (or a seq_cst fetch_add; see the class comment).
  // Memory ordering: the increment is ordered before the load of the pointer
  // (asymmetric fence or seq_cst); the guard's release decrement orders the
  // reader's last use of the snapshot before the writer's observation of it.
  [[nodiscard]] read_guard read() const noexcept {
    const std::size_t slot = this_thread_reader_slot();
    const bool owned = asymmetric_ && slot < reader_slots;
    const std::uint64_t parity = epoch_.load(std::memory_order_relaxed) & 1;
    auto* counter = &stripes_[slot].readers[parity];
    if (owned) {
      counter->store(counter->load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      light_fence();
      return read_guard(counter, current_.load(std::memory_order_acquire), true);
    }
    counter->fetch_add(1, std::memory_order_seq_cst);
    return read_guard(counter, current_.load(std::memory_order_seq_cst), false);
  }

  // Publishes `next`. The previous snapshot is destroyed once no reader can
  // hold it: during this call if the readers allow, otherwise during a later
  // exchange() or reclaim() or at destruction. Blocking: serialised with other
  // writers by an internal mutex; waits for readers only when more than
  // max_retired snapshots are pending. Readers are never blocked.
  // Memory ordering: the seq_cst exchange makes everything written into
  // `next` before the call visible to every reader that obtains it.
  void exchange(std::unique_ptr<T> next) {
    std::lock_guard lock(writer_);
    std::unique_ptr<T> old(current_.exchange(next.release(), std::memory_order_seq_cst));
    if (old) retired_.push_back(retired{std::move(old), 0});
    poll();
    for (int spins = 0; retired_.size() > max_retired; ++spins) {
      // A straggler is usually a reader preempted inside its section: give
      // it the CPU (sched_yield alone does not on an oversubscribed core).
      if (spins > 64) std::this_thread::sleep_for(std::chrono::microseconds(spins > 256 ? 200 : 20));
      poll();
    }
  }

  // Destroys retired snapshots whose grace period has ended. Non-blocking
  // apart from the writer mutex.
  void reclaim() {
    std::lock_guard lock(writer_);
    poll();
  }

  [[nodiscard]] std::size_t retired_count() const {
    std::lock_guard lock(writer_);
    return retired_.size();
  }

 private:
  struct retired {
    std::unique_ptr<T> p;
    unsigned cleared;  // bit p: parity p observed drained after retirement
  };

  [[nodiscard]] bool drained(std::uint64_t parity) const noexcept {
    if (asymmetric_) heavy_fence();  // pairs with the readers' light_fence()
    for (const auto& s : stripes_)
      if (s.readers[parity].load(std::memory_order_seq_cst) != 0) return false;
    return true;
  }

  // One or two observations of the inactive parity; caller holds writer_.
  void poll() {
    if (retired_.empty()) return;
    for (int round = 0; round < 2; ++round) {
      const std::uint64_t inactive = (epoch_.load(std::memory_order_seq_cst) + 1) & 1;
      if (!drained(inactive)) break;
      for (auto& r : retired_) r.cleared |= 1u << inactive;
      epoch_.fetch_add(1, std::memory_order_seq_cst);
    }
    std::erase_if(retired_, [](const retired& r) { return r.cleared == 3u; });
  }

  struct alignas(false_sharing_range) stripe {
    std::atomic<std::uint64_t> readers[2]{};
  };
  const bool asymmetric_ = !LEVEE_DETAIL_TSAN && asymmetric_fence_available();
  mutable std::array<stripe, reader_slots + 1> stripes_{};  // [reader_slots]: the shared overflow slot
  std::atomic<std::uint64_t> epoch_{0};
  std::atomic<T*> current_{nullptr};
  mutable std::mutex writer_;
  std::vector<retired> retired_;  // guarded by writer_
};

}  // namespace levee::detail
