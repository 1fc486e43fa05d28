// levee/adaptive_limit.hpp - a concurrency limit that adapts to observed
// completion latency and drops: levee::adaptive_limit<Policy> with the
// policies levee::aimd and levee::gradient (in the spirit of Netflix's
// Gradient2). Feed it one sample per completed operation; read limit() and
// apply it (e.g. concurrency_limiter::set_limit).
//
// Both policies compare latency against a baseline: the lowest window-mean
// latency seen (a mean, so per-sample noise does not drag it down), which is
// re-learnt only when a whole window's minimum stays above
// `relearn_factor` times it for `relearn_windows` windows in a row (the
// downstream really got slower). Tracking a moving average instead lets the
// baseline inflate under sustained overload, so the limit creeps up forever
// (Netflix/concurrency-limits#134); a pure minimum never adapts to a slower
// downstream. Decisions are taken once per window of max(limit, 8) samples -
// about one round trip in a closed loop - so one congested round trip causes
// one reduction, not `limit` of them (the collapse seen with per-sample AIMD).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

namespace levee {

// One completed operation.
struct limit_sample {
  std::chrono::nanoseconds latency{0};  // completion latency
  std::size_t in_flight = 0;            // operations in flight when it completed (itself included)
  bool dropped = false;                 // failed because of overload (timeout, rejection, 503, ...)
};

// A limit policy: given the current limit (a real number) and one sample,
// returns the new limit. Called under adaptive_limit's lock, so it needs no
// synchronisation of its own; adaptive_limit clamps the result to [min, max].
template <class P>
concept limit_policy = std::copy_constructible<P> && requires(P& p, double limit, const limit_sample& s) {
  { p.update(limit, s) } -> std::convertible_to<double>;
};

namespace detail {

// Per-window aggregation plus the latency baseline shared by both policies.
class latency_window {
 public:
  latency_window(double relearn_factor, int relearn_windows)
      : relearn_factor_(relearn_factor), relearn_windows_(relearn_windows) {}

  // Adds a sample; returns true when it closes a window of `size` samples.
  bool add(const limit_sample& s, double size) {
    const auto ns = static_cast<double>(std::max<std::int64_t>(1, s.latency.count()));
    sum_ += ns;
    win_min_ = count_ == 0 ? ns : std::min(win_min_, ns);
    max_in_flight_ = std::max(max_in_flight_, s.in_flight);
    dropped_ = dropped_ || s.dropped;
    return ++count_ >= static_cast<std::size_t>(std::max(8.0, size));
  }
  // Call after add() returned true; folds the window into the baseline and resets it.
  void close() {
    const double m = mean();
    baseline_ = baseline_ > 0 ? std::min(baseline_, m) : m;
    if (win_min_ > relearn_factor_ * baseline_) {
      if (++slow_windows_ >= relearn_windows_) {
        baseline_ = m;
        slow_windows_ = 0;
      }
    } else {
      slow_windows_ = 0;
    }
    count_ = 0;
    sum_ = 0;
    max_in_flight_ = 0;
    dropped_ = false;
  }
  [[nodiscard]] double mean() const { return count_ > 0 ? sum_ / static_cast<double>(count_) : 0; }
  // The baseline including the current window (call before close()).
  [[nodiscard]] double baseline() const { return baseline_ > 0 ? std::min(baseline_, mean()) : mean(); }
  [[nodiscard]] std::size_t max_in_flight() const { return max_in_flight_; }
  [[nodiscard]] bool dropped() const { return dropped_; }

 private:
  double relearn_factor_;
  int relearn_windows_;
  double baseline_ = 0;
  double sum_ = 0;
  double win_min_ = 0;
  std::size_t count_ = 0;
  std::size_t max_in_flight_ = 0;
  int slow_windows_ = 0;
  bool dropped_ = false;
};

inline void check_positive(double v, const char* what) {
  if (!std::isfinite(v) || !(v > 0))
    throw std::invalid_argument(std::string(what) + " (got " + std::to_string(v) + ")");
}

}  // namespace detail

// Additive increase, multiplicative decrease. Once per window: if a sample
// was dropped, or the window's mean latency exceeded tolerance * baseline
// (or the absolute `timeout`, if set), limit *= backoff; otherwise, if the
// limit was actually used (max in flight >= limit / 2), limit += increase.
class aimd {
 public:
  struct options {
    double backoff = 0.9;
    double increase = 1.0;
    double tolerance = 1.1;               // latency above tolerance * baseline means congestion
    std::chrono::nanoseconds timeout{0};  // absolute congestion threshold; 0 = off
    double relearn_factor = 2.0;
    int relearn_windows = 10;
  };
  aimd() : aimd(options{}) {}
  explicit aimd(options o) : o_(o), win_(o.relearn_factor, o.relearn_windows) {
    if (!(o.backoff > 0 && o.backoff < 1))
      throw std::invalid_argument("levee::aimd: backoff must be in (0, 1) (got " + std::to_string(o.backoff) +
                                  ")");
    detail::check_positive(o.increase, "levee::aimd: increase must be > 0");
    if (!(o.tolerance >= 1))
      throw std::invalid_argument("levee::aimd: tolerance must be >= 1 (got " + std::to_string(o.tolerance) +
                                  ")");
    if (!(o.relearn_factor > 1) || o.relearn_windows < 1)
      throw std::invalid_argument("levee::aimd: relearn_factor must be > 1 and relearn_windows >= 1");
  }

  double update(double limit, const limit_sample& s) {
    if (!win_.add(s, limit)) return limit;
    const double mean = win_.mean();
    const bool congested = win_.dropped() || mean > o_.tolerance * win_.baseline() ||
                           (o_.timeout.count() > 0 && mean > static_cast<double>(o_.timeout.count()));
    double next = limit;
    if (congested)
      next = limit * o_.backoff;
    else if (static_cast<double>(win_.max_in_flight()) * 2 >= limit)
      next = limit + o_.increase;
    win_.close();
    return next;
  }

 private:
  options o_;
  detail::latency_window win_;
};

// Gradient (after Netflix Gradient2). Once per window:
//   gradient = clamp(tolerance * baseline / mean latency, min_gradient, 1)
//   queue    = max(queue_min, queue_ratio * limit)   (headroom to probe with)
//   uncongested (gradient == 1): limit += queue       (grows ~5% per window)
//   congested:   limit = (1 - smoothing) * limit + smoothing * (limit * gradient + queue)
// A drop counts as gradient = min_gradient. The limit does not grow while it
// is not used (max in flight < limit / 2). In a closed loop whose latency is
// proportional to in-flight beyond a capacity C, the fixed point is
// limit = (tolerance * C + queue): ~1.1 C with the defaults.
// Probe: every `probe_every` windows the limit is cut to probe_factor * limit
// and held for `probe_hold` windows (the windows that measure it). A policy started above capacity never sees
// the unqueued latency, so its baseline is inflated and it would settle wherever it started; each probe
// lowers the observed minimum by probe_factor * (tolerance + queue_ratio) < 1 until the baseline is real. At
// the fixed point a probe dips to ~0.9 C and the limit regrows within a few windows.
class gradient {
 public:
  struct options {
    double tolerance = 1.05;
    double queue_ratio = 0.05;
    double queue_min = 1.0;
    double smoothing = 0.2;
    double min_gradient = 0.5;
    double relearn_factor = 2.0;
    int relearn_windows = 10;
    int probe_every = 20;  // windows; 0 = never
    double probe_factor = 0.8;
    int probe_hold = 2;
  };
  gradient() : gradient(options{}) {}
  explicit gradient(options o) : o_(o), win_(o.relearn_factor, o.relearn_windows) {
    if (!(o.tolerance >= 1))
      throw std::invalid_argument("levee::gradient: tolerance must be >= 1 (got " +
                                  std::to_string(o.tolerance) + ")");
    if (!(o.queue_ratio >= 0 && o.queue_ratio < 1) || !(o.queue_min >= 0) ||
        !(o.queue_ratio > 0 || o.queue_min > 0))
      throw std::invalid_argument(
          "levee::gradient: need queue_ratio in [0, 1), queue_min >= 0, one of them > 0");
    if (!(o.smoothing > 0 && o.smoothing <= 1))
      throw std::invalid_argument("levee::gradient: smoothing must be in (0, 1] (got " +
                                  std::to_string(o.smoothing) + ")");
    if (!(o.min_gradient > 0 && o.min_gradient <= 1))
      throw std::invalid_argument("levee::gradient: min_gradient must be in (0, 1] (got " +
                                  std::to_string(o.min_gradient) + ")");
    if (!(o.relearn_factor > 1) || o.relearn_windows < 1)
      throw std::invalid_argument("levee::gradient: relearn_factor must be > 1 and relearn_windows >= 1");
    if (o.probe_every < 0 || o.probe_hold < 0 || !(o.probe_factor > 0 && o.probe_factor < 1))
      throw std::invalid_argument(
          "levee::gradient: need probe_every >= 0, probe_hold >= 0, probe_factor in (0, 1)");
  }

  double update(double limit, const limit_sample& s) {
    if (!win_.add(s, limit)) return limit;
    const bool app_limited = static_cast<double>(win_.max_in_flight()) * 2 < limit;
    if (hold_ > 0) {  // measuring a probe: keep the limit still
      --hold_;
      win_.close();
      return limit;
    }
    if (!app_limited && o_.probe_every > 0 && ++windows_ % static_cast<std::uint64_t>(o_.probe_every) == 0) {
      hold_ = o_.probe_hold;
      win_.close();
      return limit * o_.probe_factor;
    }
    const double g = win_.dropped()
                         ? o_.min_gradient
                         : std::clamp(o_.tolerance * win_.baseline() / win_.mean(), o_.min_gradient, 1.0);
    const double queue = std::max(o_.queue_min, o_.queue_ratio * limit);
    win_.close();
    if (g >= 1.0) return app_limited ? limit : limit + queue;
    return (1 - o_.smoothing) * limit + o_.smoothing * (limit * g + queue);
  }

 private:
  options o_;
  detail::latency_window win_;
  std::uint64_t windows_ = 0;
  int hold_ = 0;
};

static_assert(limit_policy<aimd>, "aimd must satisfy levee::limit_policy");
static_assert(limit_policy<gradient>, "gradient must satisfy levee::limit_policy");

// A concurrency limit driven by a limit_policy. Thread-safe: any number of
// threads may call on_sample() concurrently (they serialise on a mutex held
// for the policy update only); limit() is a lock-free read.
// Memory ordering: limit() is a relaxed read of the latest published limit;
// it carries no other data.
template <limit_policy Policy = gradient>
class adaptive_limit {
 public:
  struct options {
    std::size_t initial = 20;
    std::size_t min = 1;
    std::size_t max = 1000;
  };

  // min == 0, min > max, or initial outside [min, max] throws std::invalid_argument.
  explicit adaptive_limit(options o = {}, Policy p = Policy{}) : o_(o), policy_(std::move(p)) {
    if (o.min == 0) throw std::invalid_argument("levee::adaptive_limit: min must be >= 1 (got 0)");
    if (o.min > o.max)
      throw std::invalid_argument("levee::adaptive_limit: min (" + std::to_string(o.min) + ") exceeds max (" +
                                  std::to_string(o.max) + ")");
    if (o.initial < o.min || o.initial > o.max)
      throw std::invalid_argument("levee::adaptive_limit: initial (" + std::to_string(o.initial) +
                                  ") must lie in [min, max]");
    value_ = static_cast<double>(o.initial);
    limit_.store(o.initial, std::memory_order_relaxed);
  }

  // Reports one completed operation (see limit_sample). Non-blocking apart
  // from the short internal lock.
  void on_sample(std::chrono::nanoseconds latency, std::size_t in_flight, bool dropped) {
    std::lock_guard lock(mutex_);
    const double next =
        static_cast<double>(policy_.update(value_, limit_sample{latency, in_flight, dropped}));
    value_ = std::clamp(std::isfinite(next) ? next : value_, static_cast<double>(o_.min),
                        static_cast<double>(o_.max));
    limit_.store(static_cast<std::size_t>(std::llround(value_)), std::memory_order_relaxed);
  }

  [[nodiscard]] std::size_t limit() const noexcept { return limit_.load(std::memory_order_relaxed); }
  [[nodiscard]] const options& get_options() const noexcept { return o_; }

 private:
  options o_;
  Policy policy_;
  std::mutex mutex_;
  double value_ = 0;
  std::atomic<std::size_t> limit_{0};
};

}  // namespace levee
