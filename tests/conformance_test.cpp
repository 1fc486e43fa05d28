// Tests for levee/conformance.hpp: the envelope checker itself, against
// hand-made sequences and a brute-force reference.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <levee/conformance.hpp>
#include <random>
#include <span>
#include <vector>

using namespace std::chrono_literals;
using levee::rate;
using tp = std::chrono::steady_clock::time_point;

namespace {

tp at(std::int64_t ns) { return tp(std::chrono::nanoseconds(ns)); }

// O(n^2) reference over closed windows [t_i, t_j] of the sorted times.
std::size_t brute_violations(std::vector<std::int64_t> t, rate r, std::uint64_t b,
                             std::int64_t* worst_excess) {
  std::sort(t.begin(), t.end());
  std::size_t bad = 0;
  *worst_excess = 0;
  for (std::size_t j = 0; j < t.size(); ++j) {
    bool any = false;
    for (std::size_t i = 0; i <= j; ++i) {
      const auto w = static_cast<std::uint64_t>(t[j] - t[i]);
      // admissions i..j of the time order (the report counts a violation at
      // the admission j that completes an over-full window)
      const std::size_t count = j - i + 1;
      const std::uint64_t allowed =
          b + static_cast<std::uint64_t>(static_cast<levee::detail::uint128>(w) * r.count() /
                                         static_cast<std::uint64_t>(r.period().count()));
      const auto excess = static_cast<std::int64_t>(count) - static_cast<std::int64_t>(allowed);
      if (excess > 0) any = true;
      *worst_excess = std::max(*worst_excess, excess);
    }
    bad += any ? 1U : 0U;
  }
  return bad;
}

}  // namespace

TEST_CASE("empty and trivially conforming inputs") {
  const std::vector<tp> none;
  auto rep = levee::check_conformance(none, rate::per_second(1), 1);
  CHECK(rep.ok);
  CHECK(rep.admissions == 0);
  const std::array<tp, 3> three{at(0), at(0), at(0)};
  CHECK(levee::check_conformance(three, rate::per_second(1), 3).ok);
  CHECK_FALSE(levee::check_conformance(three, rate::per_second(1), 2).ok);
  CHECK_THROWS_AS((void)levee::check_conformance(three, rate::per_second(1), 0), std::invalid_argument);
}

TEST_CASE("windows are closed: both ends count") {
  const rate r = rate::every(10ns);  // burst 1: at most 1 + floor(w / 10) in [t, t + w]
  // 0 and 10: window [0, 10] holds 2 = 1 + 1: fine
  CHECK(levee::check_conformance(std::vector<tp>{at(0), at(10)}, r, 1).ok);
  // 0 and 9: [0, 9] holds 2 > 1 + 0
  const auto rep = levee::check_conformance(std::vector<tp>{at(0), at(9)}, r, 1);
  CHECK_FALSE(rep.ok);
  CHECK(rep.violations == 1);
  CHECK(rep.worst.count == 2);
  CHECK(rep.worst.allowed == 1);
  CHECK(rep.worst.length == 9ns);
  CHECK(rep.max_excess == 1);
  // 0, 10, 20, 29: [10, 29] holds 3 > 1 + 1
  const auto rep2 = levee::check_conformance(std::vector<tp>{at(0), at(10), at(20), at(29)}, r, 1);
  CHECK_FALSE(rep2.ok);
  CHECK(rep2.violations == 1);
  CHECK(rep2.max_excess == 1);  // [20, 29], [10, 29] and [0, 29] all exceed by exactly 1
  CHECK(rep2.worst.last == 3);
  CHECK(rep2.worst.count - rep2.worst.allowed == 1);
}

TEST_CASE("unsorted input is sorted; indices refer to time order") {
  std::vector<tp> v{at(30), at(0), at(20), at(10), at(15)};
  const auto rep = levee::check_conformance(v, rate::every(10ns), 1);
  CHECK_FALSE(rep.ok);
  CHECK(v.front() == at(30));  // the caller's data is not modified
  // sorted: 0 10 15 20 30. The admissions at 15, 20 and 30 each end a window
  // over the envelope ([10, 15], [10, 20], [10, 30]: one too many); the first
  // window of the largest excess found is [0, 15] (3 > 1 + 1).
  CHECK(rep.violations == 3);
  CHECK(rep.max_excess == 1);
  CHECK(rep.worst.first == 0);
  CHECK(rep.worst.last == 2);
  CHECK(rep.worst.count == 3);
  CHECK(rep.worst.allowed == 2);
  CHECK(rep.worst.start == 0ns);
  CHECK(rep.worst.length == 15ns);
  // shifted by 1000 ns: the same report, start relative to the earliest admission
  std::vector<tp> w{at(1030), at(1000), at(1020), at(1010), at(1015), at(900)};
  const auto rep2 = levee::check_conformance(w, rate::every(10ns), 1);
  CHECK(rep2.violations == 3);
  CHECK(rep2.worst.first == 1);
  CHECK(rep2.worst.start == 100ns);
  CHECK(rep2.worst.length == 15ns);
}

TEST_CASE("exact rational arithmetic: a rate that is not a whole number of ns") {
  const rate r = rate::per_second(3);  // T = 333333333.33 ns
  // 1 + floor(3 * w / 1 s): [0, 666666667 ns] allows 1 + 2 = 3, [0, 666666666 ns] only 1 + 1 = 2
  CHECK(levee::check_conformance(std::vector<tp>{at(0), at(0), at(666666667)}, rate::per_second(3), 2).ok);
  CHECK_FALSE(
      levee::check_conformance(std::vector<tp>{at(0), at(0), at(666666666)}, rate::per_second(3), 1).ok);
  CHECK(levee::check_conformance(std::vector<tp>{at(0), at(333333334), at(666666668)}, r, 1).ok);
  // [333333334, 666666667] is 1 ns short of one interval (333333333.33 ns)
  CHECK_FALSE(levee::check_conformance(std::vector<tp>{at(0), at(333333334), at(666666667)}, r, 1).ok);
  CHECK_FALSE(levee::check_conformance(std::vector<tp>{at(0), at(333333333), at(666666668)}, r, 1).ok);
  CHECK(levee::check_conformance(std::vector<tp>{at(0), at(1'000'000'000)}, rate::per(1, 1s), 1).ok);
  CHECK_FALSE(levee::check_conformance(std::vector<tp>{at(0), at(999'999'999)}, rate::per(1, 1s), 1).ok);
}

TEST_CASE("matches a brute-force reference on random sequences") {
  std::mt19937_64 rng(2024);
  for (int round = 0; round < 300; ++round) {
    const rate r =
        rate::per(1 + rng() % 5, std::chrono::nanoseconds(1 + static_cast<std::int64_t>(rng() % 50)));
    const std::uint64_t b = 1 + rng() % 4;
    std::vector<std::int64_t> ns;
    const std::size_t n = 1 + rng() % 40;
    std::int64_t t = static_cast<std::int64_t>(rng() % 1000) - 500;
    for (std::size_t i = 0; i < n; ++i) {
      t += static_cast<std::int64_t>(rng() % 30);
      ns.push_back(t);
    }
    std::shuffle(ns.begin(), ns.end(), rng);
    std::vector<tp> tps;
    for (const auto x : ns) tps.push_back(at(x));
    std::int64_t worst = 0;
    const std::size_t expect = brute_violations(ns, r, b, &worst);
    const auto rep = levee::check_conformance(std::span<const tp>(tps), r, b);
    INFO("round " << round);
    CHECK(rep.violations == expect);
    CHECK(rep.ok == (expect == 0));
    if (!rep.ok) CHECK(rep.max_excess == worst);
  }
}

TEST_CASE("works with any clock's time points, including manual_clock") {
  using mtp = levee::manual_clock::time_point;
  const std::vector<mtp> v{mtp(0s), mtp(1s), mtp(2s)};
  CHECK(levee::check_conformance(v, rate::per_second(1), 1).ok);
  CHECK_FALSE(levee::check_conformance(v, rate::every(1001ms), 1).ok);
  const std::vector<mtp> w{mtp(-5s), mtp(-5s + 1ms)};
  CHECK_FALSE(levee::check_conformance(w, rate::per_second(1), 1).ok);
}
