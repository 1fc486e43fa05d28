// Tests of levee/rate_gate.hpp: what models the concept and what does not,
// a local limiter driven through nothing but the concept's calls, and a
// leveler pacing with a gate other than its own limiter.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <levee/clock.hpp>
#include <levee/conformance.hpp>
#include <levee/leveler.hpp>
#include <levee/rate_gate.hpp>
#include <levee/rate_limiter.hpp>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

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

// ----------------------------------------------------------------------------
// A leveler on a gate of the user's: the leveler dispatches exactly when the
// gate admits, never otherwise, and predicts with the gate's available_at.

namespace {

using namespace std::chrono_literals;

// Admits one token at each time of a fixed, irregular schedule (no rate could
// produce it): a stand-in for a gate whose permits come from elsewhere.
// Single-threaded (simulation mode drives it from one thread).
class scripted_gate {
 public:
  using clock_type = levee::manual_clock;
  using time_point = clock_type::time_point;

  explicit scripted_gate(std::vector<time_point> valid_from) : at_(std::move(valid_from)) {}

  bool try_acquire(std::uint64_t n, time_point now) {
    ++tries_;
    if (next_ + n > at_.size() || at_[next_ + n - 1] > now) return false;
    for (std::uint64_t i = 0; i < n; ++i) admitted_.push_back(now);
    next_ += n;
    return true;
  }
  [[nodiscard]] time_point available_at(std::uint64_t n, time_point now) const {
    if (next_ + n > at_.size()) return now + 1h;  // nothing to give: strictly after now
    return std::max(now, at_[next_ + n - 1]);
  }
  [[nodiscard]] std::uint64_t burst() const { return 3; }
  [[nodiscard]] levee::rate get_rate() const { return levee::rate::per_second(100); }

  [[nodiscard]] const std::vector<time_point>& admitted() const { return admitted_; }
  [[nodiscard]] std::uint64_t tries() const { return tries_; }

 private:
  std::vector<time_point> at_;
  std::size_t next_ = 0;
  std::vector<time_point> admitted_;
  std::uint64_t tries_ = 0;
};
static_assert(levee::rate_gate<scripted_gate> && !levee::reconfigurable_rate_gate<scripted_gate>);

using gated_t = levee::leveler<int, levee::round_robin, levee::manual_clock, scripted_gate>;
using local_t = levee::leveler<int, levee::round_robin, levee::manual_clock>;

template <class L>
concept has_set_rate = requires(L& l) {
  l.set_rate(levee::rate::per_second(1));
};
template <class L>
concept has_set_burst = requires(L& l) {
  l.set_burst(1);
};
static_assert(!has_set_rate<gated_t> && !has_set_burst<gated_t>,
              "set_rate/set_burst exist only for a reconfigurable gate");
static_assert(has_set_rate<local_t> && has_set_burst<local_t>);
static_assert(std::is_same_v<local_t, levee::leveler<int, levee::round_robin, levee::manual_clock,
                                                     levee::rate_limiter<levee::manual_clock>>>,
              "the default gate is the local rate_limiter");

tp ms(std::int64_t n) { return tp(std::chrono::milliseconds(n)); }

}  // namespace

TEST_CASE("rate_gate: a leveler dispatches exactly per a custom gate") {
  levee::manual_clock clock;
  const std::vector<tp> schedule{ms(0), ms(0), ms(2), ms(7), ms(7), ms(7), ms(20), ms(21)};
  auto gate = std::make_shared<scripted_gate>(schedule);
  gated_t::options o;
  o.workers = 0;
  o.capacity = 64;
  o.gate = gate;
  std::vector<tp> ran;
  gated_t lev(
      o, [&](int&) { ran.push_back(clock.now()); }, clock);
  for (int i = 0; i < 9; ++i) REQUIRE(lev.try_submit(i));
  CHECK(lev.run_until(ms(50)) == schedule.size());
  CHECK(ran == schedule);                   // dispatched exactly at the gate's times...
  CHECK(gate->admitted() == schedule);      // ...each with one admitted token
  CHECK(gate->tries() == schedule.size());  // the token is taken only when it is due
  // The ninth job waits for a token the gate does not have: the next event
  // is the gate's "ask again" time, and nothing runs before it.
  REQUIRE(lev.next_event().has_value());
  CHECK(*lev.next_event() == ms(21) + 1h);  // asked last when the eighth token was spent
  CHECK(lev.step() == 0);
  CHECK(*lev.next_event() == ms(50) + 1h);
  CHECK(lev.outstanding() == 1);
  const auto m = lev.metrics();
  CHECK(m.rate_limit == doctest::Approx(100.0));
  CHECK(m.burst == 3);
}

TEST_CASE("rate_gate: deadline admission forecasts with the custom gate") {
  levee::manual_clock clock;
  auto gate = std::make_shared<scripted_gate>(std::vector<tp>{ms(0), ms(5), ms(9), ms(9)});
  gated_t::options o;
  o.workers = 0;
  o.gate = gate;
  gated_t lev(
      o, [](int&) {}, clock);
  REQUIRE(lev.try_submit(1));  // forecast: the first token, at 0
  // Second in line: due at 5 ms.
  CHECK(lev.try_submit(2, {.deadline = ms(5) - 1ns}).status == levee::submit_status::would_miss_deadline);
  CHECK(lev.try_submit(2, {.deadline = ms(5)}));
  // Third: 9 ms. Fifth (beyond burst 3): available_at(3) = 9 ms plus two
  // emission intervals of the gate's rate (100/s): 29 ms.
  CHECK(lev.try_submit(3, {.deadline = ms(9)}));
  CHECK(lev.try_submit(4));
  CHECK(lev.try_submit(5, {.deadline = ms(29) - 1ns}).status == levee::submit_status::would_miss_deadline);
  CHECK(lev.try_submit(5, {.deadline = ms(29)}));
}

TEST_CASE("rate_gate: a shared local gate, reconfigured through the leveler") {
  levee::manual_clock clock;
  auto gate =
      std::make_shared<levee::rate_limiter<levee::manual_clock>>(levee::rate::per_second(1000), 1, clock);
  local_t::options o;
  o.workers = 0;
  o.gate = gate;
  std::vector<tp> ran;
  local_t a(
      o, [&](int&) { ran.push_back(clock.now()); }, clock);
  local_t b(
      o, [&](int&) { ran.push_back(clock.now()); }, clock);
  for (int i = 0; i < 3; ++i) {
    REQUIRE(a.try_submit(i));
    REQUIRE(b.try_submit(i));
  }
  // Two levelers on one gate share its 1000/s: six jobs take 5 ms, not 2.
  for (std::int64_t t = 0; t <= 10; ++t) {
    a.run_until(ms(t));
    b.run_until(ms(t));
  }
  REQUIRE(ran.size() == 6);
  CHECK(ran.back() == ms(5));
  CHECK(levee::check_conformance(ran, levee::rate::per_second(1000), 1).ok);
  a.set_rate(levee::rate::per_second(10));
  CHECK(gate->get_rate() == levee::rate::per_second(10));
  CHECK(b.metrics().rate_limit == doctest::Approx(10.0));
}

TEST_CASE("rate_gate: options.gate conflicts are reported naming the option") {
  levee::manual_clock clock;
  auto gate =
      std::make_shared<levee::rate_limiter<levee::manual_clock>>(levee::rate::per_second(10), 1, clock);
  local_t::options o;
  o.workers = 0;
  o.gate = gate;
  o.rate = levee::rate::per_second(5);
  CHECK_THROWS_WITH_AS(local_t(o, clock), doctest::Contains("options.rate and options.gate"),
                       std::invalid_argument);
  o.rate.reset();
  o.burst = 4;
  CHECK_THROWS_WITH_AS(local_t(o, clock), doctest::Contains("options.burst"), std::invalid_argument);
  gated_t::options g;
  g.workers = 0;
  g.rate = levee::rate::per_second(5);  // a scripted_gate cannot be built from a rate
  CHECK_THROWS_WITH_AS(gated_t(g, clock), doctest::Contains("options.gate"), std::invalid_argument);
}
