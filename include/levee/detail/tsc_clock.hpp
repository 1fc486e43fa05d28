// levee/detail/tsc_clock.hpp - cheap steady_clock readings for measurement.
//
// The leveler times every job twice (submitted, finished); on virtual
// machines a vDSO clock_gettime costs several times an RDTSC (figures:
// benchmarks/README.md). measurement_now() returns steady_clock time extrapolated from the CPU's
// time-stamp counter: each thread anchors on a real steady_clock reading and
// extrapolates for at most `window` with a ticks-to-nanoseconds ratio
// calibrated against steady_clock over an ever longer span (>= 20 ms).
// Errors: an anchor pairs a clock reading with the midpoint of two counter
// reads around it, and is used only if those are < 2 us apart (so a
// preemption while anchoring is detected, not extrapolated): at most 1 us
// off, typically ~20 ns; the ratio's relative error (< 1e-4 after 20 ms,
// shrinking as the span doubles) adds < 25 ns over a window. Readings are
// monotonic within a window and may step back by the anchor error at a
// re-anchor.
//
// Self-check: every re-anchor also compares what the previous anchor would
// have extrapolated with the real reading. An error beyond 2 us + 2e-4 of the
// elapsed time (a counter that jumped, changed frequency or differs between
// CPUs: a migrated or restored VM) discards the calibration, and every
// thread reads the real clock from its next re-anchor on (<= one window
// later) until a new ratio has been calibrated over 20 ms.
//
// Used only for measurements (queue dwell, service time, rate windows), never
// for decisions with a promise attached: deadline checks and the rate gate
// read the real clock. Enabled on x86-64 Linux when the CPU reports an
// invariant counter (CPUID 8000_0007h EDX bit 8: constant rate, runs in every
// power state) and the kernel's clocksource is "tsc" (CLOCK_MONOTONIC is then
// the scaled counter itself) or "kvm-clock" (the hypervisor's pvclock, which
// the vDSO also computes from the counter); elsewhere, and until the ratio is
// calibrated, measurement_now() is steady_clock::now().
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#define LEVEE_DETAIL_HAS_TSC 1
#else
#define LEVEE_DETAIL_HAS_TSC 0
#endif

namespace levee::detail {

#if LEVEE_DETAIL_HAS_TSC

// RDTSC through the compiler builtin (GCC and clang): <x86intrin.h> would
// pull every intrinsics header into each translation unit for one instruction.
[[nodiscard]] inline std::uint64_t read_tsc() noexcept { return __builtin_ia32_rdtsc(); }

[[nodiscard]] inline bool tsc_usable() noexcept {
  static const bool ok = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid(0x80000007u, &eax, &ebx, &ecx, &edx) == 0 || (edx & (1u << 8)) == 0) return false;
    std::FILE* f = std::fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
    if (f == nullptr) return false;
    char buf[32] = {};
    const bool read = std::fgets(buf, sizeof buf, f) != nullptr;
    std::fclose(f);
    if (!read) return false;
    buf[std::strcspn(buf, "\n")] = '\0';
    return std::strcmp(buf, "tsc") == 0 || std::strcmp(buf, "kvm-clock") == 0;
  }();
  return ok;
}

// The process-wide ratio, and the base pair it is measured from. Guarded by
// `m`: only re-anchors (one per thread per window) touch it.
struct tsc_calibration {
  static constexpr std::int64_t min_span_ns = 20'000'000;  // 20 ms
  tsc_calibration() noexcept { rebase(); }
  // A new base pair, bracketed like tsc_reanchor's (best of a few tries); no ratio until min_span_ns later.
  void rebase() noexcept {
    std::uint64_t best = ~std::uint64_t{0};
    for (int attempt = 0; attempt < 8; ++attempt) {
      const std::uint64_t t1 = read_tsc();
      const std::int64_t ns = std::chrono::steady_clock::now().time_since_epoch().count();
      const std::uint64_t t2 = read_tsc();
      if (t2 >= t1 && t2 - t1 < best) {
        best = t2 - t1;
        base_ns = ns;
        base_tsc = t1 + (t2 - t1) / 2;
      }
    }
    ns_per_tick = 0.0;
    span_ns = 0;
  }
  std::mutex m;
  std::int64_t base_ns = 0;
  std::uint64_t base_tsc = 0;
  double ns_per_tick = 0.0;     // 0: not calibrated yet
  std::int64_t span_ns = 0;     // the span ns_per_tick was measured over
  std::uint64_t discarded = 0;  // calibrations thrown away by the self-check
};

[[nodiscard]] inline tsc_calibration& tsc_global() noexcept {
  static tsc_calibration c;
  return c;
}

struct tsc_anchor {
  std::uint64_t tsc = 0;
  std::int64_t ns = 0;
  std::uint64_t window_ticks = 0;  // 0: read the real clock next time
  double ns_per_tick = 0.0;
};

inline constexpr std::int64_t tsc_window_ns = 250'000;  // re-anchor every 250 us

// Pairs a steady_clock reading with the counter: the clock read is
// bracketed by two counter reads, and the pair is good only if they are at
// most max_pair_ns apart (a preemption in between would otherwise skew every
// extrapolation from it). The counter value used is their midpoint, so a
// good pair is off by at most max_pair_ns / 2.
inline constexpr std::int64_t tsc_max_pair_ns = 2'000;

// The self-check's tolerance for an extrapolation over `elapsed_ns`.
[[nodiscard]] constexpr bool tsc_consistent(std::int64_t error_ns, std::int64_t elapsed_ns) noexcept {
  const double e = static_cast<double>(error_ns < 0 ? -error_ns : error_ns);
  // Two anchors, each off by <= tsc_max_pair_ns / 2, plus the ratio's error.
  return e <=
         static_cast<double>(tsc_max_pair_ns) + 2e-4 * static_cast<double>(elapsed_ns < 0 ? 0 : elapsed_ns);
}

[[nodiscard]] inline std::int64_t tsc_reanchor(tsc_anchor& a) noexcept {
  tsc_calibration& g = tsc_global();
  std::int64_t ns = 0;
  std::uint64_t t = 0;
  bool good = false;
  for (int attempt = 0; attempt < 4 && !good; ++attempt) {
    const std::uint64_t t1 = read_tsc();
    ns = std::chrono::steady_clock::now().time_since_epoch().count();
    const std::uint64_t t2 = read_tsc();
    t = t1 + (t2 - t1) / 2;
    // Before calibration the tick length is unknown: assume >= 0.25 ns (<= 4 GHz).
    const double tick_ns = a.ns_per_tick > 0 ? a.ns_per_tick : 0.25;
    good = t2 >= t1 && static_cast<double>(t2 - t1) * tick_ns <= static_cast<double>(tsc_max_pair_ns);
  }
  double ratio = 0.0;
  {
    std::lock_guard lock(g.m);
    if (good) {
      // The previous anchor's extrapolation to this pair, against the real clock.
      if (a.window_ticks != 0) {
        const bool forward = t >= a.tsc;
        const auto predicted =
            a.ns + static_cast<std::int64_t>(static_cast<double>(t - a.tsc) * a.ns_per_tick);
        if (!forward || !tsc_consistent(predicted - ns, ns - a.ns)) {
          g.rebase();
          ++g.discarded;
        }
      }
      // Recalibrate whenever the span has doubled: the error shrinks with it.
      const std::int64_t span = ns - g.base_ns;
      if (span >= tsc_calibration::min_span_ns && span >= 2 * g.span_ns && t > g.base_tsc) {
        g.ns_per_tick = static_cast<double>(span) / static_cast<double>(t - g.base_tsc);
        g.span_ns = span;
      }
    }
    ratio = g.ns_per_tick;
  }
  a.tsc = t;
  a.ns = ns;
  a.ns_per_tick = ratio;
  // No extrapolation from a bad pair or without a ratio: the next call reads the clock again.
  a.window_ticks =
      good && ratio > 0 ? static_cast<std::uint64_t>(static_cast<double>(tsc_window_ns) / ratio) : 0;
  return ns;
}

#endif

// steady_clock time for measurements; see the file comment.
[[nodiscard]] inline std::chrono::steady_clock::time_point measurement_now() noexcept {
#if LEVEE_DETAIL_HAS_TSC
  if (tsc_usable()) {
    thread_local tsc_anchor a;
    const std::uint64_t t = read_tsc();
    // Unsigned: a counter below the anchor (never expected) also re-anchors.
    if (t - a.tsc < a.window_ticks) [[likely]] {
      const auto ns = a.ns + static_cast<std::int64_t>(static_cast<double>(t - a.tsc) * a.ns_per_tick);
      return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(ns));
    }
    return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(tsc_reanchor(a)));
  }
#endif
  return std::chrono::steady_clock::now();
}

}  // namespace levee::detail
