// levee/detail/metrics_histogram.hpp - a concurrent log-linear histogram of
// non-negative 64-bit values (nanoseconds), recorded with relaxed atomics.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>

namespace levee::detail {

// Bucket layout: values below 2^sub_bits are exact (one bucket each); above,
// every power-of-two range [2^e, 2^(e+1)) is split into 2^sub_bits equal
// buckets, so a bucket's width is at most 1/32 of its lower bound (relative
// error of any quantile below 3.2%).
struct metrics_histogram_layout {
  static constexpr unsigned sub_bits = 5;
  static constexpr std::uint64_t sub_count = std::uint64_t{1} << sub_bits;
  static constexpr std::size_t bucket_count =
      static_cast<std::size_t>(sub_count + (64 - sub_bits) * sub_count);

  [[nodiscard]] static constexpr std::size_t index_of(std::uint64_t v) noexcept {
    if (v < sub_count) return static_cast<std::size_t>(v);
    const unsigned e = static_cast<unsigned>(std::bit_width(v)) - 1;  // e >= sub_bits
    const std::uint64_t sub = (v >> (e - sub_bits)) - sub_count;      // 0 .. sub_count-1
    return static_cast<std::size_t>(sub_count + (e - sub_bits) * sub_count + sub);
  }
  // Smallest value that lands in bucket i.
  [[nodiscard]] static constexpr std::uint64_t lower_of(std::size_t i) noexcept {
    if (i < sub_count) return i;
    const std::uint64_t j = i - sub_count;
    const std::uint64_t e = j / sub_count + sub_bits;
    const std::uint64_t sub = j % sub_count;
    return (sub_count + sub) << (e - sub_bits);
  }
  // Largest value that lands in bucket i.
  [[nodiscard]] static constexpr std::uint64_t upper_of(std::size_t i) noexcept {
    if (i + 1 >= bucket_count) return std::numeric_limits<std::uint64_t>::max();
    return lower_of(i + 1) - 1;
  }
};

static_assert(metrics_histogram_layout::index_of(std::numeric_limits<std::uint64_t>::max()) + 1 ==
                  metrics_histogram_layout::bucket_count,
              "the largest 64-bit value must land in the last bucket");
static_assert(metrics_histogram_layout::index_of(metrics_histogram_layout::lower_of(700)) == 700 &&
                  metrics_histogram_layout::index_of(metrics_histogram_layout::upper_of(700)) == 700,
              "bucket bounds must round-trip through index_of");

// The raw counts of a histogram, summed over shards before building a
// public histogram_snapshot.
struct metrics_histogram_counts {
  std::array<std::uint64_t, metrics_histogram_layout::bucket_count> buckets{};
  std::uint64_t count = 0;
  std::uint64_t sum = 0;
  std::uint64_t min = std::numeric_limits<std::uint64_t>::max();
  std::uint64_t max = 0;
};

// Writers: record() from any thread (relaxed atomics; ~4 uncontended RMWs).
// Readers: add_to() reads each bucket independently, so a snapshot taken
// during recording may be off by the records in progress (never torn within
// one counter).
class metrics_histogram {
 public:
  using layout = metrics_histogram_layout;

  void record(std::uint64_t v) noexcept {
    buckets_[layout::index_of(v)].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(v, std::memory_order_relaxed);
    std::uint64_t cur = max_.load(std::memory_order_relaxed);
    while (v > cur && !max_.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
    }
    cur = min_.load(std::memory_order_relaxed);
    while (v < cur && !min_.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
    }
  }

  // As record(), for a histogram written by one thread only: plain
  // load/store instead of read-modify-write (no lock prefix, no contention).
  void record_exclusive(std::uint64_t v) noexcept {
    auto bump = [](std::atomic<std::uint64_t>& a, std::uint64_t d) {
      a.store(a.load(std::memory_order_relaxed) + d, std::memory_order_relaxed);
    };
    bump(buckets_[layout::index_of(v)], 1);
    bump(count_, 1);
    bump(sum_, v);
    if (v > max_.load(std::memory_order_relaxed)) max_.store(v, std::memory_order_relaxed);
    if (v < min_.load(std::memory_order_relaxed)) min_.store(v, std::memory_order_relaxed);
  }

  void add_to(metrics_histogram_counts& out) const noexcept {
    for (std::size_t i = 0; i < layout::bucket_count; ++i)
      out.buckets[i] += buckets_[i].load(std::memory_order_relaxed);
    out.count += count_.load(std::memory_order_relaxed);
    out.sum += sum_.load(std::memory_order_relaxed);
    const std::uint64_t mx = max_.load(std::memory_order_relaxed);
    const std::uint64_t mn = min_.load(std::memory_order_relaxed);
    if (mx > out.max) out.max = mx;
    if (mn < out.min) out.min = mn;
  }

 private:
  std::array<std::atomic<std::uint64_t>, layout::bucket_count> buckets_{};
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_{0};
  std::atomic<std::uint64_t> min_{std::numeric_limits<std::uint64_t>::max()};
  std::atomic<std::uint64_t> max_{0};
};

}  // namespace levee::detail
