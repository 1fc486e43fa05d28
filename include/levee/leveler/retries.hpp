// levee/leveler/retries.hpp - failed attempts coming back: the full-jitter
// exponential backoff, the retry budget, and the timer heap of retries
// waiting for their backoff to elapse.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <levee/detail/rng.hpp>
#include <levee/detail/time_window.hpp>
#include <limits>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace levee::detail {

// Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^(retry-1))]
// (retry counts from 1, the first retry), never overflowing.
[[nodiscard]] inline std::chrono::nanoseconds backoff(std::chrono::nanoseconds base,
                                                      std::chrono::nanoseconds cap, std::uint32_t retry,
                                                      xoshiro256& random) noexcept {
  const auto b = static_cast<std::uint64_t>(std::max<std::int64_t>(base.count(), 0));
  const auto c = static_cast<std::uint64_t>(std::max<std::int64_t>(cap.count(), 0));
  std::uint64_t ceiling = b;
  for (std::uint32_t i = 1; i < retry && ceiling < c; ++i) ceiling = ceiling > c / 2 ? c : ceiling * 2;
  ceiling = std::min(ceiling, c);
  const std::uint64_t d =
      ceiling == std::numeric_limits<std::uint64_t>::max() ? random() : random.below(ceiling + 1);
  return std::chrono::nanoseconds{static_cast<std::int64_t>(d)};
}

// A retry budget in the style of tower's TpsBudget: over a sliding 10 s
// window, retries may not exceed min_per_second * 10 + ratio * first attempts.
// Deposit and withdrawal are each one CAS; the check-then-withdraw pair is
// not atomic, so concurrent retries may overshoot the budget by at most the
// number of threads racing (exact when driven by one thread, as in
// simulation mode).
class retry_budget {
 public:
  static constexpr std::chrono::seconds window{10};

  retry_budget(double ratio, std::uint32_t min_per_second)
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
  window_counter deposits_;
  window_counter withdrawals_;
};

// Retries waiting for their backoff: a min-heap on (due time, arrival order)
// under a mutex, with the earliest due time and the count readable without
// it (a worker checks for a due retry before every job).
template <class Env>
class retry_heap {
 public:
  static constexpr std::int64_t none = std::numeric_limits<std::int64_t>::max();

  void push(Env&& env, std::int64_t due_ns) {
    std::lock_guard lock(mutex_);
    items_.push_back(item{due_ns, seq_++, std::move(env)});
    std::push_heap(items_.begin(), items_.end(), later);
    publish();
  }

  // The earliest retry due at now_ns, if any.
  std::optional<Env> pop_due(std::int64_t now_ns) {
    if (next_ns_.load(std::memory_order_acquire) > now_ns) return std::nullopt;
    std::lock_guard lock(mutex_);
    if (items_.empty() || items_.front().due_ns > now_ns) return std::nullopt;
    std::pop_heap(items_.begin(), items_.end(), later);
    Env env = std::move(items_.back().env);
    items_.pop_back();
    publish();
    return env;
  }

  // Takes every waiting retry, earliest due first (stop() cancels them in
  // that order).
  std::vector<Env> take_all() {
    std::vector<item> all;
    {
      std::lock_guard lock(mutex_);
      all.swap(items_);
      publish();
    }
    std::sort(all.begin(), all.end(), [](const item& a, const item& b) { return later(b, a); });
    std::vector<Env> out;
    out.reserve(all.size());
    for (auto& i : all) out.push_back(std::move(i.env));
    return out;
  }

  // The earliest due time (none: no retry waits) and the count; snapshots.
  [[nodiscard]] std::int64_t next_ns() const noexcept { return next_ns_.load(std::memory_order_acquire); }
  [[nodiscard]] std::size_t size() const noexcept { return count_.load(std::memory_order_relaxed); }

 private:
  struct item {
    std::int64_t due_ns;
    std::uint64_t seq;
    Env env;
  };
  static bool later(const item& a, const item& b) noexcept {
    return a.due_ns != b.due_ns ? a.due_ns > b.due_ns : a.seq > b.seq;
  }
  void publish() noexcept {  // under mutex_
    count_.store(items_.size(), std::memory_order_relaxed);
    next_ns_.store(items_.empty() ? none : items_.front().due_ns, std::memory_order_release);
  }

  std::mutex mutex_;
  std::vector<item> items_;
  std::uint64_t seq_ = 0;
  std::atomic<std::size_t> count_{0};
  std::atomic<std::int64_t> next_ns_{none};
};

}  // namespace levee::detail
