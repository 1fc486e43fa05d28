// levee/balance/snapshot_cell.hpp - publication and reclamation of immutable
// snapshots: readers never block and never allocate; a replaced snapshot is
// freed after a grace period, which the writer polls for instead of waiting.
#pragma once

#include <array>
#include <chrono>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "../detail/cache.hpp"

namespace levee::detail {

// Why not std::atomic<std::shared_ptr<T>>: in libstdc++ 12 its load() takes a
// spin lock embedded in the control-block pointer (is_lock_free() == false),
// so concurrent readers serialise on one cache line and a reader can spin
// behind a preempted one. Instead this is a small userspace RCU with sharded
// reader counts (in the style of SRCU), with deferred reclamation:
//
//   reader:  e = epoch & 1; readers[stripe][e] += 1; p = current; ...use p...; readers[stripe][e] -= 1
//   writer:  old = current.exchange(next); retire old; a retired snapshot is
//            freed once each parity's counts were observed all zero after it
//            was retired; after each such observation the epoch flips.
//
// Why that is enough: a reader that holds `old` loaded `current` before the
// exchange, so it incremented its count before the exchange (all seq_cst) and
// keeps it >= 1 until it is done; a later observation of zero on its parity
// (stripe by stripe) therefore cannot happen while it still holds `old`.
// Flipping the epoch after observing the inactive parity drained sends new
// readers there, so the other parity drains in turn: reclamation cannot be
// starved by a steady stream of readers. The writer never waits for a reader
// that was preempted inside its read section (which would make every change
// cost a scheduler time slice on an oversubscribed machine); it only polls.
// Stripes keep readers on different threads off each other's cache lines.
template <class T>
class snapshot_cell {
 public:
  static constexpr std::size_t stripes = 16;
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
    ~read_guard() { counter_->fetch_sub(1, std::memory_order_release); }
    [[nodiscard]] const T* get() const noexcept { return p_; }
    [[nodiscard]] const T* operator->() const noexcept { return p_; }

   private:
    friend class snapshot_cell;
    read_guard(std::atomic<std::uint64_t>* c, const T* p) noexcept : counter_(c), p_(p) {}
    std::atomic<std::uint64_t>* counter_;
    const T* p_;
  };

  // Enters a read-side section; the snapshot stays alive until the guard dies.
  // Wait-free: two atomic loads and one fetch_add on this thread's stripe.
  // Memory ordering: seq_cst increment before the seq_cst load of the pointer
  // (see the class comment); the release decrement orders the reader's last
  // use of the snapshot before the writer's observation of a zero count.
  [[nodiscard]] read_guard read() const noexcept {
    const std::uint64_t parity = epoch_.load(std::memory_order_seq_cst) & 1;
    auto* counter = &stripes_[this_thread_stripe()].readers[parity];
    counter->fetch_add(1, std::memory_order_seq_cst);
    return read_guard(counter, current_.load(std::memory_order_seq_cst));
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

  static std::size_t this_thread_stripe() noexcept {
    static std::atomic<std::size_t> next{0};
    thread_local const std::size_t mine = next.fetch_add(1, std::memory_order_relaxed) % stripes;
    return mine;
  }
  struct alignas(false_sharing_range) stripe {
    std::atomic<std::uint64_t> readers[2]{};
  };
  mutable std::array<stripe, stripes> stripes_{};
  std::atomic<std::uint64_t> epoch_{0};
  std::atomic<T*> current_{nullptr};
  mutable std::mutex writer_;
  std::vector<retired> retired_;  // guarded by writer_
};

}  // namespace levee::detail
