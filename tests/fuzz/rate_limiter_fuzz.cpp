// tests/fuzz/rate_limiter_fuzz.cpp - levee::rate_limiter on a manual_clock
// driven with arbitrary `now` values (fresh, stale, backwards within the
// documented staleness limit, far jumps, extremes of the clock's range),
// set_rate, set_burst, reserve/cancel and available_at. Checked:
//  - the admissions of each configuration segment (between two successful
//    reconfigurations) satisfy the envelope of that configuration
//    (levee::check_conformance);
//  - available_at(n, now) is the earliest admission time: try_acquire fails
//    just before it and succeeds at it;
//  - n > burst(): try_acquire is false and available_at/reserve throw;
//  - a reservation that can still be cancelled is refunded (its admissions
//    leave the log), and no cancel succeeds across a reconfiguration;
//  - reconfigurations without admissions never push available_at(1) past
//    now + one emission interval when the bucket held a token.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <levee/clock.hpp>
#include <levee/conformance.hpp>
#include <levee/rate_limiter.hpp>
#include <limits>
#include <stdexcept>
#include <vector>

#include "fuzz_input.hpp"

namespace {

using clock_type = levee::manual_clock;
using time_point = clock_type::time_point;
using ns = std::chrono::nanoseconds;
using limiter = levee::rate_limiter<clock_type>;

constexpr std::int64_t i64_max = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t i64_min = std::numeric_limits<std::int64_t>::min();

std::int64_t clamp_add(std::int64_t a, std::int64_t d) {
  std::int64_t r = 0;
  if (__builtin_add_overflow(a, d, &r)) return d > 0 ? i64_max : i64_min;
  return r;
}

levee::rate make_rate(levee_fuzz::input& in) {
  switch (in.below(4)) {
    case 0:
      return levee::rate::per_second(1 + in.below(100'000));
    case 1:
      return levee::rate::every(ns(1 + static_cast<std::int64_t>(in.u32())));
    case 2:
      return levee::rate::per(1 + in.below(1000),
                              ns(1 + static_cast<std::int64_t>(in.u64() % 60'000'000'000)));
    default:
      return levee::rate::per_second(5);
  }
}

std::uint64_t make_burst(levee_fuzz::input& in) {
  switch (in.below(4)) {
    case 0:
      return 1;
    case 1:
      return 200;
    case 2:
      return 1 + in.below(16);
    default:
      return 1 + in.below(1000);
  }
}

// The emission interval rounded up to whole ns.
ns interval_of(levee::rate r) {
  const auto p = static_cast<std::uint64_t>(r.period().count());
  return ns(static_cast<std::int64_t>((p + r.count() - 1) / r.count()));
}

struct segment {
  levee::rate r;
  std::uint64_t burst;
  std::vector<time_point> log;  // one entry per admitted permit
};

void check_segment(const segment& s) {
  if (s.log.empty()) return;
  const auto rep = levee::check_conformance(s.log, s.r, s.burst);
  LEVEE_FUZZ_CHECK(rep.ok,
                   "envelope violated: rate %llu/%lld ns, burst %llu, %zu admissions: %zu in a window of "
                   "%lld ns allow %llu",
                   static_cast<unsigned long long>(s.r.count()), static_cast<long long>(s.r.period().count()),
                   static_cast<unsigned long long>(s.burst), s.log.size(), rep.worst.count,
                   static_cast<long long>(rep.worst.length.count()),
                   static_cast<unsigned long long>(rep.worst.allowed));
}

struct pending_reservation {
  limiter::reservation res;
  std::uint64_t n;
  time_point at;
  std::uint64_t segment_id;
  std::uint64_t version;  // state version right after the reservation
};

void run(levee_fuzz::input& in) {
  const levee::rate r0 = make_rate(in);
  const std::uint64_t b0 = make_burst(in);
  std::int64_t newest = 0;
  switch (in.below(4)) {
    case 0:
      newest = static_cast<std::int64_t>(in.u64());  // anywhere, extremes included
      break;
    case 1:
      newest = i64_max - static_cast<std::int64_t>(in.u32());
      break;
    case 2:
      newest = i64_min + static_cast<std::int64_t>(in.u32());
      break;
    default:
      newest = static_cast<std::int64_t>(in.u32());
      break;
  }
  clock_type clk{time_point(ns(newest))};
  std::optional<limiter> lim_storage;
  try {
    lim_storage.emplace(r0, b0, clk);
  } catch (const std::invalid_argument&) {
    return;  // a rate/burst beyond the horizon: refused with a clear error, nothing to check
  }
  limiter& lim = *lim_storage;
  // The documented staleness limit H = 2^(61 - F) ns; stale `now` values stay well inside it.
  const std::int64_t horizon_ns = std::int64_t{1} << (61 - lim.resolution_bits());
  segment seg{r0, b0, {}};
  std::uint64_t segment_id = 0;
  std::uint64_t version = 0;  // bumped by every admission, reservation, refund and reconfiguration
  std::vector<pending_reservation> pending;
  bool token_held = false;  // the bucket held a token when the current run of reconfigurations began
  std::int64_t token_seen_at = 0;

  auto admitted = [&](std::uint64_t n, time_point at) {
    LEVEE_FUZZ_TRACE("  admitted %llu at %lld\n", static_cast<unsigned long long>(n),
                     static_cast<long long>(at.time_since_epoch().count()));
    for (std::uint64_t i = 0; i < n; ++i) seg.log.push_back(at);
    ++version;
    token_held = false;
  };
  auto pick_now = [&]() -> time_point {
    std::int64_t t = newest;
    switch (in.below(8)) {
      case 0:
      case 1:
        break;  // the same instant
      case 2:
      case 3:  // a little later
        t = clamp_add(newest, static_cast<std::int64_t>(in.u16()) * 1000);
        break;
      case 4:  // stale: earlier than the newest, within a quarter of the horizon
        t = clamp_add(newest,
                      -static_cast<std::int64_t>(in.u64() % static_cast<std::uint64_t>(horizon_ns / 4)));
        break;
      case 5:  // idle: a long jump forward (several horizons possible)
        t = clamp_add(newest, static_cast<std::int64_t>(in.u64() % static_cast<std::uint64_t>(horizon_ns)) *
                                  static_cast<std::int64_t>(1 + in.below(8)));
        break;
      case 6:  // within a few emission intervals
        t = clamp_add(newest, static_cast<std::int64_t>(in.below(64)) * interval_of(seg.r).count());
        break;
      default:  // slightly stale
        t = clamp_add(newest, -static_cast<std::int64_t>(in.u16()));
        break;
    }
    newest = std::max(newest, t);
    clk.set(time_point(ns(t)));
    return time_point(ns(t));
  };
  auto reconfigured = [&](levee::rate r, std::uint64_t b) {
    check_segment(seg);
    seg = segment{r, b, {}};
    ++segment_id;
    ++version;
  };
  auto before_reconfig = [&](time_point now) {
    const std::int64_t t = now.time_since_epoch().count();
    if (!token_held || t < token_seen_at) {
      token_held = lim.available(now) >= 1;
      token_seen_at = t;
    }
  };
  auto after_reconfig = [&](time_point now) {
    if (!token_held) return;
    const time_point at = lim.available_at(1, now);
    const ns limit = interval_of(seg.r);
    LEVEE_FUZZ_CHECK(at - now <= limit,
                     "reconfigurations without admissions pushed available_at(1) to now + %lld ns "
                     "(interval %lld ns, burst %llu) although the bucket held a token",
                     static_cast<long long>((at - now).count()), static_cast<long long>(limit.count()),
                     static_cast<unsigned long long>(lim.burst()));
  };

  for (int ops = 0; ops < 600 && !in.empty(); ++ops) {
    const time_point now = pick_now();
    const std::uint64_t burst = lim.burst();
    const std::size_t op = in.below(10);
    LEVEE_FUZZ_TRACE("op %zu at now %lld (burst %llu, rate %llu/%lld ns)\n", op,
                     static_cast<long long>(now.time_since_epoch().count()),
                     static_cast<unsigned long long>(burst), static_cast<unsigned long long>(seg.r.count()),
                     static_cast<long long>(seg.r.period().count()));
    switch (op) {
      case 0:
      case 1:
      case 2: {  // try_acquire(n, now)
        const std::uint64_t n = 1 + in.below(std::min<std::uint64_t>(burst, 64));
        if (lim.try_acquire(n, now)) admitted(n, now);
        break;
      }
      case 3: {  // available_at agrees with try_acquire
        const std::uint64_t n = 1 + in.below(std::min<std::uint64_t>(burst, 64));
        const time_point at = lim.available_at(n, now);
        LEVEE_FUZZ_CHECK(at >= now || at == now, "available_at before now");
        // time_point::max() is the saturated "not representable" answer
        // (detail/time.hpp): nothing to compare with.
        if (at == time_point::max()) break;
        if (at == now) {
          LEVEE_FUZZ_CHECK(lim.try_acquire(n, now), "available_at(%llu) == now but try_acquire failed",
                           static_cast<unsigned long long>(n));
          admitted(n, now);
        } else {
          LEVEE_FUZZ_CHECK(!lim.try_acquire(n, at - ns(1)),
                           "try_acquire(%llu) succeeded 1 ns before available_at (now + %lld ns)",
                           static_cast<unsigned long long>(n), static_cast<long long>((at - now).count()));
          LEVEE_FUZZ_CHECK(lim.try_acquire(n, at), "try_acquire(%llu) failed at available_at (now + %lld ns)",
                           static_cast<unsigned long long>(n), static_cast<long long>((at - now).count()));
          newest = std::max(newest, at.time_since_epoch().count());
          admitted(n, at);
        }
        break;
      }
      case 4: {  // n > burst
        const std::uint64_t n = burst + 1 + in.below(4);
        LEVEE_FUZZ_CHECK(!lim.try_acquire(n, now), "try_acquire(%llu) > burst %llu succeeded",
                         static_cast<unsigned long long>(n), static_cast<unsigned long long>(burst));
        bool threw = false;
        try {
          (void)lim.available_at(n, now);
        } catch (const std::invalid_argument&) {
          threw = true;
        }
        LEVEE_FUZZ_CHECK(threw, "available_at(n > burst) did not throw");
        threw = false;
        try {
          (void)lim.reserve(n, now);
        } catch (const std::invalid_argument&) {
          threw = true;
        }
        LEVEE_FUZZ_CHECK(threw, "reserve(n > burst) did not throw");
        break;
      }
      case 5: {  // reserve
        const std::uint64_t n = 1 + in.below(std::min<std::uint64_t>(burst, 64));
        limiter::reservation res = lim.reserve(n, now);
        if (!res.ok()) break;
        LEVEE_FUZZ_CHECK(res.ready_at() >= now, "reservation ready before now");
        if (res.ready_at() == time_point::max()) {  // saturated: "never", not an admission time
          (void)res.cancel();
          ++version;  // the state may have moved: later refunds are not guaranteed
          break;
        }
        admitted(n, res.ready_at());
        pending.push_back({std::move(res), n, pending_reservation{}.at, segment_id, version});
        pending.back().at = pending.back().res.ready_at();
        if (pending.size() > 8) pending.erase(pending.begin());
        break;
      }
      case 6: {  // cancel a reservation
        if (pending.empty()) break;
        const std::size_t i = in.below(pending.size());
        pending_reservation p = std::move(pending[i]);
        pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(i));
        const bool must = p.version == version;  // nothing happened since: nothing depends on it
        const bool refunded = p.res.cancel();
        LEVEE_FUZZ_TRACE("  cancel of %llu at %lld: %d\n", static_cast<unsigned long long>(p.n),
                         static_cast<long long>(p.at.time_since_epoch().count()), refunded);
        LEVEE_FUZZ_CHECK(!must || refunded, "the latest reservation could not be cancelled");
        LEVEE_FUZZ_CHECK(!refunded || p.segment_id == segment_id,
                         "a reservation was refunded across a reconfiguration");
        LEVEE_FUZZ_CHECK(!p.res.ok(), "a cancelled reservation is still ok()");
        if (refunded) {
          for (std::uint64_t k = 0; k < p.n; ++k) {
            auto it = std::find(seg.log.begin(), seg.log.end(), p.at);
            LEVEE_FUZZ_CHECK(it != seg.log.end(), "refunded admission not in the log");
            seg.log.erase(it);
          }
          ++version;
        }
        break;
      }
      case 7: {  // set_rate
        // The limiter reads its own clock here, and a Clock is steady: it never
        // goes back, so reconfigurations happen at the newest time seen.
        const time_point rnow{ns(newest)};
        clk.set(rnow);
        const levee::rate r = make_rate(in);
        before_reconfig(rnow);
        try {
          lim.set_rate(r);
        } catch (const std::invalid_argument&) {
          LEVEE_FUZZ_CHECK(lim.get_rate() == seg.r, "a refused set_rate changed the rate");
          break;
        }
        reconfigured(r, lim.burst());
        after_reconfig(rnow);
        break;
      }
      case 8: {  // set_burst (also the 1 <-> 200 toggling pattern)
        // The limiter reads its own clock here, and a Clock is steady: it never
        // goes back, so reconfigurations happen at the newest time seen.
        const time_point rnow{ns(newest)};
        clk.set(rnow);
        const std::uint64_t b = in.boolean() ? (burst == 1 ? 200 : 1) : make_burst(in);
        before_reconfig(rnow);
        try {
          lim.set_burst(b);
        } catch (const std::invalid_argument&) {
          LEVEE_FUZZ_CHECK(lim.burst() == seg.burst, "a refused set_burst changed the burst");
          break;
        }
        LEVEE_FUZZ_CHECK(lim.burst() == b, "burst() %llu after set_burst(%llu)",
                         static_cast<unsigned long long>(lim.burst()), static_cast<unsigned long long>(b));
        reconfigured(lim.get_rate(), b);
        after_reconfig(rnow);
        break;
      }
      default: {  // available() agrees with available_at
        const std::uint64_t a = lim.available(now);
        LEVEE_FUZZ_CHECK(a <= burst, "available %llu > burst %llu", static_cast<unsigned long long>(a),
                         static_cast<unsigned long long>(burst));
        if (a >= 1)
          LEVEE_FUZZ_CHECK(lim.available_at(a, now) == now, "available(now) permits not available now");
        // available_at saturates at time_point::max(): at now == max() "later" does not exist.
        if (a < burst && now != time_point::max())
          LEVEE_FUZZ_CHECK(lim.available_at(a + 1, now) > now, "available(now) undercounts");
        break;
      }
    }
  }
  check_segment(seg);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  levee_fuzz::input in(data, size);
  run(in);
  return 0;
}
