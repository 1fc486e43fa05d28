// Tests of levee/rate_gate.hpp: what models the concept and what does not,
// and a local limiter driven through nothing but the concept's calls.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <levee/clock.hpp>
#include <levee/rate_gate.hpp>
#include <levee/rate_limiter.hpp>

namespace {

using tp = levee::manual_clock::time_point;

struct no_rate {  // lacks get_rate()
  using clock_type = levee::manual_clock;
  using time_point = tp;
  bool try_acquire(std::uint64_t, time_point);
  [[nodiscard]] time_point available_at(std::uint64_t, time_point) const;
  [[nodiscard]] std::uint64_t burst() const;
};
struct fixed_gate {  // a gate without reconfiguration
  using clock_type = levee::manual_clock;
  using time_point = tp;
  bool try_acquire(std::uint64_t, time_point);
  [[nodiscard]] time_point available_at(std::uint64_t, time_point) const;
  [[nodiscard]] std::uint64_t burst() const;
  [[nodiscard]] levee::rate get_rate() const;
};
struct wrong_time {  // time_point of another clock
  using clock_type = levee::manual_clock;
  using time_point = std::chrono::steady_clock::time_point;
  bool try_acquire(std::uint64_t, time_point);
  [[nodiscard]] time_point available_at(std::uint64_t, time_point) const;
  [[nodiscard]] std::uint64_t burst() const;
  [[nodiscard]] levee::rate get_rate() const;
};

static_assert(!levee::rate_gate<no_rate>, "a gate must report its rate");
static_assert(levee::rate_gate<fixed_gate> && !levee::reconfigurable_rate_gate<fixed_gate>,
              "reconfiguration is optional");
static_assert(!levee::rate_gate<wrong_time>, "a gate's time_point is its clock's");
static_assert(levee::reconfigurable_rate_gate<levee::rate_limiter<levee::manual_clock>>);

// Admits as many single permits as the gate allows at `now`, through the concept only.
template <levee::rate_gate G>
std::uint64_t drain_at(G& g, typename G::time_point now) {
  std::uint64_t n = 0;
  while (g.available_at(1, now) <= now && g.try_acquire(1, now)) ++n;
  return n;
}

}  // namespace

TEST_CASE("rate_gate: levee::rate_limiter driven through the concept") {
  levee::manual_clock clock;
  levee::rate_limiter<levee::manual_clock> lim(levee::rate::per_second(1000), 5, clock);
  const auto t0 = clock.now();
  CHECK(drain_at(lim, t0) == 5);  // the burst
  CHECK(lim.available_at(1, t0) == t0 + std::chrono::milliseconds(1));
  CHECK(drain_at(lim, t0 + std::chrono::milliseconds(3)) == 3);
  CHECK(lim.burst() == 5);
  CHECK(lim.get_rate() == levee::rate::per_second(1000));
}
