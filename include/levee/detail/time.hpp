// levee/detail/time.hpp - saturating time arithmetic: the one place where
// levee turns a caller's duration or time point into an absolute time point.
//
// Contract ("maximum duration"): a duration or time point too large for the
// clock's representation means "no limit". Every levee API that takes a
// duration (submit_for, drain_for, try_pop_for, default_deadline,
// max_backoff, ...) or a time point saturates through these helpers:
// now + hours::max() is time_point::max(), never a signed overflow, and a
// time point at or past time_point::max() is treated as "never".
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace levee::detail {

// Anything further away than this is treated as "no deadline" by the
// parking primitive (~95 years): it keeps clock arithmetic away from
// time_point::max() and similar sentinels.
inline constexpr std::chrono::duration<double> far_future_limit{3.0e9};

// d converted to To, rounded up (so a wait never ends early), saturating at
// To::max() / To::min() instead of overflowing.
template <class To, class Rep, class Period>
[[nodiscard]] constexpr To saturating_ceil(const std::chrono::duration<Rep, Period>& d) noexcept {
  using namespace std::chrono;
  if constexpr (std::is_same_v<duration<Rep, Period>, To>) {
    return d;
  } else {
    const long double s = duration<long double>(d).count();
    const long double hi = duration<long double>(To::max()).count();
    const long double lo = duration<long double>(To::min()).count();
    if (!(s < hi)) return To::max();  // also NaN for floating-point durations
    if (s <= lo) return To::min();
    const To t = duration_cast<To>(d);
    return (t < d && t < To::max()) ? t + To(1) : t;
  }
}

// a + b for durations of one type, saturating at max()/min().
template <class Rep, class Period>
[[nodiscard]] constexpr std::chrono::duration<Rep, Period> saturating_add(
    std::chrono::duration<Rep, Period> a, std::chrono::duration<Rep, Period> b) noexcept {
  using D = std::chrono::duration<Rep, Period>;
  if (b > D::zero() && a > D::max() - b) return D::max();
  if (b < D::zero() && a < D::min() - b) return D::min();
  return a + b;
}

// tp + d on tp's own clock and duration, saturating at time_point::max()
// (and min() for negative d). A time point already at max() stays there.
template <class Clock, class Duration, class Rep, class Period>
[[nodiscard]] constexpr std::chrono::time_point<Clock, Duration> saturating_add(
    std::chrono::time_point<Clock, Duration> tp, const std::chrono::duration<Rep, Period>& d) noexcept {
  using TP = std::chrono::time_point<Clock, Duration>;
  if (tp == TP::max()) return tp;
  return TP(saturating_add(tp.time_since_epoch(), saturating_ceil<Duration>(d)));
}

// a * k for a non-negative duration and factor, saturating at max().
template <class Rep, class Period>
[[nodiscard]] constexpr std::chrono::duration<Rep, Period> saturating_mul(
    std::chrono::duration<Rep, Period> a, double k) noexcept {
  using D = std::chrono::duration<Rep, Period>;
  const long double r = static_cast<long double>(a.count()) * static_cast<long double>(k);
  if (!(r < static_cast<long double>(D::max().count()))) return D::max();
  if (r <= static_cast<long double>(D::min().count())) return D::min();
  return D(static_cast<Rep>(r));
}

// The absolute deadline `timeout` after `now`: now itself for a timeout <= 0,
// time_point::max() (no deadline) for one that does not fit.
template <class Clock, class Rep, class Period>
[[nodiscard]] typename Clock::time_point deadline_after(
    typename Clock::time_point now, const std::chrono::duration<Rep, Period>& timeout) noexcept {
  if (timeout <= timeout.zero()) return now;
  return saturating_add(now, timeout);
}

// A deadline converted to the clock's own duration, saturating instead of
// overflowing (time_point<Clock, hours>::max() and the like), rounded up so
// that a wait never ends early.
template <class Clock, class Duration>
[[nodiscard]] constexpr std::chrono::time_point<Clock> saturate_deadline(
    const std::chrono::time_point<Clock, Duration>& tp) noexcept {
  return std::chrono::time_point<Clock>(saturating_ceil<typename Clock::duration>(tp.time_since_epoch()));
}

// Compile-time checks of the contract above.
static_assert(saturating_add(std::chrono::steady_clock::time_point{}, std::chrono::hours::max()) ==
                  std::chrono::steady_clock::time_point::max(),
              "now + hours::max() must saturate to time_point::max()");
static_assert(saturating_ceil<std::chrono::seconds>(std::chrono::milliseconds(1001)) ==
                  std::chrono::seconds(2),
              "conversions round up so a wait never ends early");
static_assert(saturating_mul(std::chrono::nanoseconds::max(), 2.0) == std::chrono::nanoseconds::max(),
              "a doubled maximum backoff stays at the maximum");

}  // namespace levee::detail
