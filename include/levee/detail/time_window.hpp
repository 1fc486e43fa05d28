// levee/detail/time_window.hpp - counting events over a sliding window of
// time slots: the slot geometry (time_slots), a lock-free counter per slot
// (window_counter), and a log of an exact running total at each slot's start
// (window_log). The leveler uses them for dispatch and arrival rates and for
// the retry budget.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <vector>

namespace levee::detail {

// Time cut into slots of `width`: slot (epoch) e covers [e * width, (e + 1) *
// width) in nanoseconds; times <= 0 fall in slot 0.
class time_slots {
 public:
  explicit time_slots(std::chrono::nanoseconds width) noexcept : width_(width.count()) {}

  [[nodiscard]] std::uint64_t epoch(std::int64_t now_ns) const noexcept {
    return now_ns <= 0 ? 0 : static_cast<std::uint64_t>(now_ns / width_);
  }
  [[nodiscard]] std::int64_t start(std::uint64_t e) const noexcept {
    return static_cast<std::int64_t>(e) * width_;
  }
  [[nodiscard]] std::int64_t width_ns() const noexcept { return width_; }

  // The window made of the `full` whole slots before now's slot (fewer near
  // time 0) and now's partial slot: epochs [first, last] and the time covered.
  struct window {
    std::uint64_t first = 0;
    std::uint64_t last = 0;
    std::int64_t span_ns = 0;
  };
  [[nodiscard]] window window_at(std::int64_t now_ns, std::size_t full) const noexcept {
    const std::uint64_t e = epoch(now_ns);
    const std::uint64_t first = e - std::min<std::uint64_t>(full, e);
    return {first, e, std::max<std::int64_t>(now_ns, 0) - start(first)};
  }

 private:
  std::int64_t width_;
};

// Events counted over a window of time.
struct window_sum {
  std::uint64_t count = 0;
  std::int64_t span_ns = 0;
};

// Counts events in time slots on a ring (slot i holds the events of epoch e
// with e % slots == i). Each slot packs a 24-bit epoch tag and a 40-bit count
// into one atomic word, so add() is one CAS and a stale slot is recognised
// without a separate reset.
class window_counter {
 public:
  window_counter(std::chrono::nanoseconds width, std::size_t slots) : geometry_(width), slots_(slots) {}

  void add(std::int64_t now_ns, std::uint64_t n = 1) noexcept {
    const std::uint64_t e = geometry_.epoch(now_ns);
    auto& s = slots_[e % slots_.size()];
    std::uint64_t cur = s.load(std::memory_order_relaxed);
    while (!s.compare_exchange_weak(cur, bumped(cur, e, n), std::memory_order_relaxed)) {
    }
  }

  // As add(), for a counter written by one thread only: a plain load and
  // store instead of a CAS (readers still see whole words). The writer
  // remembers the current slot's time range, so consecutive adds within one
  // slot skip the division.
  void add_exclusive(std::int64_t now_ns, std::uint64_t n = 1) noexcept {
    if (now_ns < last_lo_ || now_ns >= last_hi_) {
      last_e_ = geometry_.epoch(now_ns);
      last_lo_ = now_ns <= 0 ? std::numeric_limits<std::int64_t>::min() : geometry_.start(last_e_);
      last_hi_ = geometry_.start(last_e_ + 1);
    }
    auto& s = slots_[last_e_ % slots_.size()];
    s.store(bumped(s.load(std::memory_order_relaxed), last_e_, n), std::memory_order_relaxed);
  }

  // Events in the `full` whole slots before the current one, plus the current
  // (partial) slot, and the time they cover.
  [[nodiscard]] window_sum sum(std::int64_t now_ns, std::size_t full) const noexcept {
    const auto w = geometry_.window_at(now_ns, std::min(full, slots_.size() - 1));
    window_sum r{0, w.span_ns};
    for (std::uint64_t e = w.first; e <= w.last; ++e) {
      const std::uint64_t v = slots_[e % slots_.size()].load(std::memory_order_relaxed);
      if (tag(v) == (e & tag_mask)) r.count += v & count_mask;
    }
    return r;
  }

 private:
  static constexpr unsigned count_bits = 40;
  static constexpr std::uint64_t count_mask = (std::uint64_t{1} << count_bits) - 1;
  static constexpr std::uint64_t tag_mask = (std::uint64_t{1} << (64 - count_bits)) - 1;
  static std::uint64_t tag(std::uint64_t v) noexcept { return v >> count_bits; }
  static std::uint64_t bumped(std::uint64_t cur, std::uint64_t e, std::uint64_t n) noexcept {
    return tag(cur) == (e & tag_mask) ? cur + n : ((e & tag_mask) << count_bits) | n;
  }

  time_slots geometry_;
  std::vector<std::atomic<std::uint64_t>> slots_;
  // add_exclusive's cache: [last_lo_, last_hi_) maps to epoch last_e_.
  std::int64_t last_lo_ = 0;
  std::int64_t last_hi_ = 0;
  std::uint64_t last_e_ = 0;
};

// Rates of an exact running total without a read-modify-write per event:
// it is enough to know the total at the start of each slot. For every slot
// this keeps the total seen by the first observe() in it (no event happened
// between the slot's start and that one, so that is the total at the slot's
// start). While the current slot is recorded, observe() costs one relaxed
// load; the first observe() of a slot takes a mutex (once per slot width).
class window_log {
 public:
  window_log(std::chrono::nanoseconds width, std::size_t slots) : geometry_(width), obs_(slots) {}

  // `total()` returns the running total before this event.
  template <class Total>
  void observe(std::int64_t now_ns, Total&& total) {
    if (now_ns < next_ns_.load(std::memory_order_relaxed)) [[likely]]
      return;
    std::lock_guard lock(mutex_);
    if (now_ns < next_ns_.load(std::memory_order_relaxed)) return;
    const std::uint64_t e = geometry_.epoch(now_ns);
    obs_[e % obs_.size()] = observation{e, total(), true};
    next_ns_.store(geometry_.start(e + 1), std::memory_order_relaxed);
  }

  // Events over the window (as window_counter::sum); total_now: the total now.
  [[nodiscard]] window_sum sum(std::int64_t now_ns, std::size_t full, std::uint64_t total_now) const {
    const auto w = geometry_.window_at(now_ns, std::min(full, obs_.size() - 1));
    window_sum r{0, w.span_ns};
    std::lock_guard lock(mutex_);
    for (std::uint64_t e = w.first; e <= w.last; ++e) {
      const observation& o = obs_[e % obs_.size()];
      if (o.valid && o.epoch == e) {
        r.count = total_now >= o.total ? total_now - o.total : 0;
        break;
      }
    }
    return r;
  }

 private:
  struct observation {
    std::uint64_t epoch = 0;
    std::uint64_t total = 0;
    bool valid = false;
  };
  time_slots geometry_;
  std::atomic<std::int64_t> next_ns_{std::numeric_limits<std::int64_t>::min()};
  mutable std::mutex mutex_;
  std::vector<observation> obs_;  // guarded by mutex_
};

}  // namespace levee::detail
