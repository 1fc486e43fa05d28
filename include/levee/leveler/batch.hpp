// levee/leveler/batch.hpp - the batch a worker takes from the ingress
// queue with one claim, and other workers steal from (see worker.hpp).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <levee/detail/cache.hpp>
#include <memory>
#include <optional>
#include <utility>

namespace levee::detail {

// A worker's batch: up to N jobs taken from the ingress queue with one claim
// (mpmc_queue::try_pop_bulk), so that workers draining a deep queue of short
// jobs do not fight over the queue's head line once per job. The owner runs
// them in order; any other worker that finds the queue empty takes from the
// same front (take()), so a slow handler never strands the jobs behind it
// while another worker idles.
//
// Positions only grow (never reused), so a claim is one CAS on `front_` with
// no ABA: [front_, end_) are claimable, and a slot is refilled only after
// every position before end_ was both claimed and moved out (owner_done_ +
// stolen_done_ == end_). The slots live on the heap, allocated by enable()
// only for a batch that is used: a leveler of large jobs must not embed N.
// Only for T that moves without throwing: refill() and take() are noexcept.
// Memory ordering: refill() writes the slots, then stores end_ with release;
// a claimer that acquires end_ > p sees position p's element. A thief moves
// its element out before its release increment of stolen_done_, which the
// owner acquires before it overwrites any slot.
template <class T, std::size_t N>
class job_batch {
  static_assert(N >= 2 && (N & (N - 1)) == 0, "levee: a batch holds a power of two >= 2 jobs");

 public:
  job_batch() = default;
  job_batch(const job_batch&) = delete;
  job_batch& operator=(const job_batch&) = delete;

  void enable() { slots_ = std::make_unique<std::optional<T>[]>(N); }

  // Owner only: true if every position was claimed and moved out, so
  // refill() may run.
  [[nodiscard]] bool refillable() const noexcept {
    const std::uint64_t e = end_.load(std::memory_order_relaxed);
    return front_.load(std::memory_order_relaxed) == e &&
           owner_done_ + stolen_done_.load(std::memory_order_acquire) == e;
  }

  // Owner only, when refillable() and enabled: pop(out, max) moves up to
  // `max` <= N elements into *out++ (an output iterator over T&&) and returns
  // how many. Returns the number added.
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
    job_batch* b;
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

}  // namespace levee::detail
