// Single-threaded semantics of levee::mpmc_queue, plus small deterministic
// multi-thread checks (wake-ups, close, timeouts). The heavy stress tests
// live in mpmc_queue_stress_test.cpp.
#include <doctest/doctest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <ctime>
#include <iterator>
#include <levee/mpmc_queue.hpp>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "eventually.hpp"

namespace {

using namespace std::chrono_literals;

// Counts every construction, move and destruction and detects double
// destruction and use of destroyed objects. No default constructor.
struct census {
  long constructed = 0;  // value constructions
  long copied = 0;
  long moved = 0;
  long assigned = 0;  // copy or move assignments (no new object)
  long destroyed = 0;
  long live = 0;
  long bad = 0;  // destroyed twice, or copied/moved from a dead object
};
census g_census;

class tracked {
 public:
  explicit tracked(int v) noexcept : value_(v) {
    ++g_census.constructed;
    ++g_census.live;
  }
  tracked(const tracked& o) : value_(o.value_) {
    if (o.magic_ != alive) ++g_census.bad;
    ++g_census.copied;
    ++g_census.live;
  }
  tracked(tracked&& o) noexcept : value_(o.value_) {
    if (o.magic_ != alive) ++g_census.bad;
    o.value_ = moved_from;
    ++g_census.moved;
    ++g_census.live;
  }
  tracked& operator=(const tracked& o) {
    if (o.magic_ != alive || magic_ != alive) ++g_census.bad;
    value_ = o.value_;
    ++g_census.assigned;
    return *this;
  }
  tracked& operator=(tracked&& o) noexcept {
    if (o.magic_ != alive || magic_ != alive) ++g_census.bad;
    value_ = o.value_;
    o.value_ = moved_from;
    ++g_census.assigned;
    return *this;
  }
  ~tracked() {
    if (magic_ != alive) ++g_census.bad;
    magic_ = dead;
    ++g_census.destroyed;
    --g_census.live;
  }
  [[nodiscard]] int value() const { return value_; }
  static constexpr int moved_from = -1;

 private:
  static constexpr unsigned alive = 0xA11CE;
  static constexpr unsigned dead = 0xDEAD;
  int value_;
  unsigned magic_ = alive;
};
static_assert(!std::is_default_constructible_v<tracked>);

void reset_census() { g_census = census{}; }
void check_census_balanced() {
  CHECK(g_census.bad == 0);
  CHECK(g_census.live == 0);
  CHECK(g_census.destroyed == g_census.constructed + g_census.copied + g_census.moved);
}

// Move-only and not default constructible.
struct move_only {
  explicit move_only(int v) : p(std::make_unique<int>(v)) {}
  move_only(move_only&&) noexcept = default;
  move_only& operator=(move_only&&) noexcept = default;
  std::unique_ptr<int> p;
};

// Copy constructor that throws on demand; nothrow move.
struct throwing_copy {
  static inline bool fail = false;
  explicit throwing_copy(int v) : value(v) {}
  throwing_copy(const throwing_copy& o) : value(o.value) {
    if (fail) throw std::runtime_error("copy failed");
  }
  throwing_copy(throwing_copy&&) noexcept = default;
  throwing_copy& operator=(const throwing_copy&) = default;
  throwing_copy& operator=(throwing_copy&&) noexcept = default;
  int value;
};

// Allocator that counts its live allocations (over all rebound types).
long g_live_allocations = 0;
template <class T>
struct counting_allocator {
  using value_type = T;
  counting_allocator() = default;
  template <class U>
  counting_allocator(const counting_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    ++g_live_allocations;
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    --g_live_allocations;
    std::allocator<T>().deallocate(p, n);
  }
  template <class U>
  bool operator==(const counting_allocator<U>&) const noexcept {
    return true;
  }
};

}  // namespace

TEST_CASE("mpmc_queue: construction rejects capacity 0 and impossible capacities") {
  CHECK_THROWS_AS(levee::mpmc_queue<int>(0), std::invalid_argument);
  CHECK_THROWS_WITH_AS(levee::mpmc_queue<int>(0), doctest::Contains("levee::mpmc_queue"),
                       std::invalid_argument);
  CHECK_THROWS_AS(levee::mpmc_queue<int>(std::size_t{1} << 62), std::length_error);
  CHECK_THROWS_WITH_AS(levee::mpmc_queue<int>(std::size_t{1} << 62), doctest::Contains("4611686018427387904"),
                       std::length_error);
  levee::mpmc_queue<int> q(1);
  CHECK(q.capacity() == 1);
  CHECK(q.size_approx() == 0);
  CHECK_FALSE(q.is_closed());
}

TEST_CASE("mpmc_queue: exact capacity, FIFO and wrap-around with an instrumented element") {
  for (std::size_t cap :
       {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{1000}, std::size_t{1023}}) {
    CAPTURE(cap);
    reset_census();
    {
      levee::mpmc_queue<tracked> q(cap);
      CHECK(q.capacity() == cap);
      int next_in = 0;
      int next_out = 0;
      // Several laps, each filling to exactly capacity and draining.
      for (int lap = 0; lap < 4; ++lap) {
        for (std::size_t i = 0; i < cap; ++i) {
          tracked t(next_in);
          REQUIRE(q.try_push(std::move(t)));
          CHECK(t.value() == tracked::moved_from);
          ++next_in;
          CHECK(q.size_approx() == i + 1);
        }
        tracked extra(-7);
        CHECK_FALSE(q.try_push(std::move(extra)));
        CHECK(extra.value() == -7);  // untouched on failure
        CHECK_FALSE(q.try_push(extra));
        CHECK_FALSE(q.try_emplace(5));
        CHECK(q.size_approx() == cap);
        CHECK(g_census.live == static_cast<long>(cap) + 1);
        for (std::size_t i = 0; i < cap; ++i) {
          std::optional<tracked> out = q.try_pop();
          REQUIRE(out.has_value());
          CHECK(out->value() == next_out);
          ++next_out;
        }
        CHECK_FALSE(q.try_pop().has_value());
        tracked sink(-3);
        CHECK_FALSE(q.try_pop(sink));
        CHECK(sink.value() == -3);
        CHECK(q.size_approx() == 0);
      }
      // Interleaved traffic at varying fill levels, crossing the lap boundary many times.
      std::size_t size = 0;
      for (int i = 0; i < 3000; ++i) {
        const std::size_t pushes = static_cast<std::size_t>(1 + i % 3);
        for (std::size_t k = 0; k < pushes; ++k) {
          const bool ok = q.try_emplace(next_in);
          REQUIRE(ok == (size < cap));
          if (ok) {
            ++next_in;
            ++size;
          }
        }
        CHECK(q.size_approx() == size);
        const std::size_t pops = static_cast<std::size_t>(1 + (i / 2) % 3);
        for (std::size_t k = 0; k < pops; ++k) {
          tracked out(0);
          const bool ok = q.try_pop(out);
          REQUIRE(ok == (size > 0));
          if (ok) {
            CHECK(out.value() == next_out++);
            --size;
          }
        }
      }
      while (q.size_approx() > 0) {
        tracked out(0);
        REQUIRE(q.try_pop(out));
        CHECK(out.value() == next_out++);
      }
      CHECK(next_in == next_out);
      // Leave some elements inside: the destructor must destroy them.
      for (std::size_t i = 0; i < (cap + 1) / 2; ++i) REQUIRE(q.try_emplace(static_cast<int>(i)));
      CHECK(g_census.live == static_cast<long>((cap + 1) / 2));
    }
    check_census_balanced();
  }
}

TEST_CASE("mpmc_queue: every operation keeps the census balanced") {
  reset_census();
  {
    levee::mpmc_queue<tracked> q(3);
    const tracked a(1);
    REQUIRE(q.try_push(a));       // copy
    REQUIRE(q.push(tracked(2)));  // move
    REQUIRE(q.emplace(3));        // in place
    CHECK(g_census.copied == 1);
    CHECK(g_census.live == 4);
    tracked out(0);
    REQUIRE(q.pop(out));
    CHECK(out.value() == 1);
    std::optional<tracked> o = q.pop();
    REQUIRE(o);
    CHECK(o->value() == 2);
    CHECK(q.try_pop_for(out, 0ms) == levee::queue_status::ok);
    CHECK(out.value() == 3);
    CHECK(g_census.bad == 0);
    REQUIRE(q.try_push_for(tracked(4), 0ms) == levee::queue_status::ok);
    REQUIRE(q.try_push_until(a, std::chrono::steady_clock::now()) == levee::queue_status::ok);
    q.close();
    CHECK(q.is_closed());
    tracked rejected(9);
    CHECK_FALSE(q.push(std::move(rejected)));
    CHECK(rejected.value() == 9);
    CHECK(q.try_push_for(std::move(rejected), 10ms) == levee::queue_status::closed);
    CHECK(rejected.value() == 9);
    CHECK_FALSE(q.try_push(std::move(rejected)));
    CHECK_FALSE(q.emplace(10));
    // Drains after close.
    REQUIRE(q.pop(out));
    CHECK(out.value() == 4);
    o = q.pop();
    REQUIRE(o);
    CHECK(o->value() == 1);
    CHECK_FALSE(q.pop(out));
    CHECK_FALSE(q.pop().has_value());
    CHECK(q.try_pop_for(out, 1h) == levee::queue_status::closed);
    CHECK(out.value() == 4);  // untouched
    q.close();                // idempotent
    CHECK(q.is_closed());
  }
  check_census_balanced();
}

TEST_CASE("mpmc_queue: move-only and non-default-constructible elements") {
  levee::mpmc_queue<move_only> q(2);
  move_only a(1);
  REQUIRE(q.try_push(std::move(a)));
  CHECK(a.p == nullptr);
  REQUIRE(q.try_emplace(2));
  move_only b(3);
  CHECK_FALSE(q.try_push(std::move(b)));
  REQUIRE(b.p != nullptr);  // untouched on failure
  CHECK(*b.p == 3);
  CHECK(q.try_push_for(std::move(b), 1ms) == levee::queue_status::timeout);
  CHECK(q.try_push_for(std::move(b), 0ms) == levee::queue_status::full);
  REQUIRE(b.p != nullptr);
  std::optional<move_only> x = q.try_pop();
  REQUIRE(x);
  CHECK(*x->p == 1);
  move_only y(0);
  REQUIRE(q.try_pop(y));
  CHECK(*y.p == 2);
  CHECK(q.try_pop_for(y, 0ms) == levee::queue_status::empty);
  CHECK(*y.p == 2);

  levee::mpmc_queue<std::unique_ptr<std::string>> strings(4);
  REQUIRE(strings.push(std::make_unique<std::string>("x")));
  std::optional<std::unique_ptr<std::string>> s = strings.pop();
  REQUIRE(s);
  CHECK(**s == "x");
}

TEST_CASE("mpmc_queue: a throwing copy leaves the queue unchanged") {
  levee::mpmc_queue<throwing_copy> q(2);
  const throwing_copy item(5);
  throwing_copy::fail = true;
  CHECK_THROWS_AS((void)q.try_push(item), std::runtime_error);
  CHECK_THROWS_AS((void)q.push(item), std::runtime_error);
  CHECK_THROWS_AS((void)q.try_push_for(item, 1ms), std::runtime_error);
  CHECK(q.size_approx() == 0);
  throwing_copy::fail = false;
  REQUIRE(q.try_push(item));
  REQUIRE(q.try_push(throwing_copy(6)));
  CHECK_FALSE(q.try_push(item));
  throwing_copy out(0);
  REQUIRE(q.try_pop(out));
  CHECK(out.value == 5);
  REQUIRE(q.try_pop(out));
  CHECK(out.value == 6);
}

namespace {

// Nothrow move construction (required by the queue), but a move assignment
// that throws on demand; counts live objects and double destructions.
struct throwing_assign {
  static inline int fail_on = -1;  // the value whose assignment throws (-1: none)
  static inline long live = 0;
  static inline long bad = 0;
  explicit throwing_assign(int v) noexcept : value(v) { ++live; }
  throwing_assign(throwing_assign&& o) noexcept : value(o.value) { ++live; }
  throwing_assign& operator=(throwing_assign&& o) {
    if (o.value == fail_on) throw std::runtime_error("assignment failed");
    value = o.value;
    return *this;
  }
  ~throwing_assign() {
    if (magic != 0xA11CE) ++bad;
    magic = 0xDEAD;
    --live;
  }
  int value;
  unsigned magic = 0xA11CE;
};
static_assert(std::is_nothrow_move_constructible_v<throwing_assign>);
static_assert(!std::is_nothrow_move_assignable_v<throwing_assign>);

// An output iterator whose assignment throws at the k-th element.
struct throwing_sink {
  std::vector<int>* got;
  int throw_at;
  throwing_sink& operator*() { return *this; }
  throwing_sink& operator++() { return *this; }
  throwing_sink operator++(int) { return *this; }
  throwing_sink& operator=(tracked&& t) {
    if (static_cast<int>(got->size()) == throw_at) throw std::runtime_error("sink full");
    got->push_back(t.value());
    return *this;
  }
  using difference_type = std::ptrdiff_t;
};

// A constructor from a unique_ptr that may throw (so try_emplace builds the
// element before claiming a slot) and one that cannot.
struct from_ptr_throwing {
  explicit from_ptr_throwing(std::unique_ptr<int> p) : v(std::move(p)) {}
  from_ptr_throwing(from_ptr_throwing&&) noexcept = default;
  from_ptr_throwing& operator=(from_ptr_throwing&&) noexcept = default;
  std::unique_ptr<int> v;
};
struct from_ptr_nothrow {
  explicit from_ptr_nothrow(std::unique_ptr<int>&& p) noexcept : v(std::move(p)) {}
  from_ptr_nothrow(from_ptr_nothrow&&) noexcept = default;
  from_ptr_nothrow& operator=(from_ptr_nothrow&&) noexcept = default;
  std::unique_ptr<int> v;
};

}  // namespace

TEST_CASE(
    "mpmc_queue: try_pop_bulk when an assignment to *out throws: the rest is destroyed, the queue stays "
    "consistent") {
  reset_census();
  {
    levee::mpmc_queue<tracked> q(6);
    for (int i = 0; i < 5; ++i) REQUIRE(q.try_emplace(i));
    std::vector<int> got;
    // claims all 5, assigns 0 and 1, throws on the third
    CHECK_THROWS_AS((void)q.try_pop_bulk(throwing_sink{&got, 2}, 10), std::runtime_error);
    CHECK(got == std::vector<int>{0, 1});
    CHECK(g_census.live == 0);  // elements 2..4 were destroyed (documented as lost), none leaked
    CHECK(g_census.bad == 0);
    CHECK(q.size_approx() == 0);
    // every slot was released: the full capacity is usable again, FIFO intact
    for (int i = 10; i < 16; ++i) REQUIRE(q.try_emplace(i));
    CHECK_FALSE(q.try_emplace(99));
    std::vector<tracked> out;
    CHECK(q.try_pop_bulk(std::back_inserter(out), 10) == 6);
    REQUIRE(out.size() == 6);
    for (int i = 0; i < 6; ++i) CHECK(out[static_cast<std::size_t>(i)].value() == 10 + i);
  }
  check_census_balanced();
}

TEST_CASE("mpmc_queue: pop(T&) and try_pop(T&) with a throwing move-assignment release the slot") {
  throwing_assign::live = 0;
  throwing_assign::bad = 0;
  {
    levee::mpmc_queue<throwing_assign> q(2);
    REQUIRE(q.try_emplace(1));
    REQUIRE(q.try_emplace(2));
    throwing_assign out(0);
    throwing_assign::fail_on = 1;
    CHECK_THROWS_AS((void)q.pop(out), std::runtime_error);
    CHECK(out.value == 0);  // untouched
    CHECK(q.size_approx() == 1);
    REQUIRE(q.try_emplace(3));  // the slot of element 1 was released before the throw
    CHECK_FALSE(q.try_emplace(4));
    throwing_assign::fail_on = 2;
    CHECK_THROWS_AS((void)q.try_pop(out), std::runtime_error);
    CHECK(q.size_approx() == 1);
    throwing_assign::fail_on = -1;
    REQUIRE(q.pop(out));
    CHECK(out.value == 3);
    CHECK(throwing_assign::live == 1);  // only `out`: the failed elements were destroyed, not leaked
    q.close();
    CHECK_FALSE(q.pop(out));
  }
  CHECK(throwing_assign::live == 0);
  CHECK(throwing_assign::bad == 0);
}

TEST_CASE("mpmc_queue: try_emplace consumes an rvalue argument only when T's constructor may throw") {
  {
    levee::mpmc_queue<from_ptr_throwing> q(1);
    REQUIRE(q.try_emplace(std::make_unique<int>(1)));
    auto arg = std::make_unique<int>(2);
    CHECK_FALSE(q.try_emplace(std::move(arg)));  // full: the element was built first (documented)
    CHECK(arg == nullptr);                       // ... so the argument is consumed
  }
  {
    levee::mpmc_queue<from_ptr_nothrow> q(1);
    REQUIRE(q.try_emplace(std::make_unique<int>(1)));
    auto arg = std::make_unique<int>(2);
    CHECK_FALSE(q.try_emplace(std::move(arg)));  // full: built in place only after a slot is claimed
    REQUIRE(arg != nullptr);                     // ... so the argument is untouched
    CHECK(*arg == 2);
    // and try_push(T&&) leaves its argument untouched on failure
    from_ptr_nothrow v(std::make_unique<int>(3));
    CHECK_FALSE(q.try_push(std::move(v)));
    REQUIRE(v.v != nullptr);
    CHECK(*v.v == 3);
  }
}

TEST_CASE("mpmc_queue: the allocator provides all storage and gets it back") {
  {
    levee::mpmc_queue<std::string, counting_allocator<std::string>> q(10);
    CHECK(g_live_allocations == 1);
    REQUIRE(q.try_push(std::string(100, 'a')));  // heap-allocated string left inside
  }
  CHECK(g_live_allocations == 0);
}

TEST_CASE("mpmc_queue: bulk operations keep FIFO order and stop at capacity") {
  reset_census();
  {
    levee::mpmc_queue<tracked> q(5);
    std::vector<tracked> in;
    for (int i = 0; i < 8; ++i) in.emplace_back(i);
    CHECK(q.try_push_bulk(std::make_move_iterator(in.begin()), 3) == 3);
    CHECK(in[0].value() == tracked::moved_from);
    CHECK(in[3].value() == 3);
    CHECK(q.try_push_bulk(std::make_move_iterator(in.begin() + 3), 5) == 2);  // only 2 slots left
    CHECK(in[5].value() == 5);                                                // not consumed
    CHECK(q.try_push_bulk(std::make_move_iterator(in.begin() + 5), 3) == 0);
    CHECK(q.size_approx() == 5);
    std::vector<tracked> out;
    CHECK(q.try_pop_bulk(std::back_inserter(out), 2) == 2);
    CHECK(q.try_push_bulk(std::make_move_iterator(in.begin() + 5), 3) == 2);  // wraps around
    CHECK(q.try_pop_bulk(std::back_inserter(out), 100) == 5);
    CHECK(q.try_pop_bulk(std::back_inserter(out), 100) == 0);
    REQUIRE(out.size() == 7);
    for (int i = 0; i < 7; ++i) CHECK(out[static_cast<std::size_t>(i)].value() == i);
    // Copying bulk push from an array of ints (T constructible from int& without throwing).
    std::array<int, 4> ints{10, 11, 12, 13};
    CHECK(q.try_push_bulk(ints.begin(), ints.size()) == 4);
    tracked t(0);
    REQUIRE(q.try_pop(t));
    CHECK(t.value() == 10);
    q.close();
    CHECK(q.try_push_bulk(ints.begin(), 1) == 0);
    std::vector<tracked> rest;
    CHECK(q.try_pop_bulk(std::back_inserter(rest), 10) == 3);
    CHECK(rest.back().value() == 13);
  }
  check_census_balanced();
}

TEST_CASE(
    "mpmc_queue: timed operations: deadlines in the past never wait; extreme deadlines do not overflow") {
  levee::mpmc_queue<int> q(1);
  int out = 0;
  CHECK(q.try_pop_until(out, std::chrono::steady_clock::now() - 1s) == levee::queue_status::empty);
  CHECK(q.try_pop_until(out, std::chrono::system_clock::time_point::min()) == levee::queue_status::empty);
  CHECK(q.try_pop_for(out, -5s) == levee::queue_status::empty);
  REQUIRE(q.try_push(1));
  CHECK(q.try_push_until(2, std::chrono::system_clock::now()) == levee::queue_status::full);
  CHECK(q.try_push_until(2, std::chrono::steady_clock::time_point::min()) == levee::queue_status::full);
  CHECK(q.try_pop_until(out, std::chrono::steady_clock::time_point::max()) == levee::queue_status::ok);
  CHECK(out == 1);
  CHECK(q.try_push_for(3, std::chrono::hours::max()) == levee::queue_status::ok);
  // Coarse time points at the extremes saturate instead of overflowing.
  CHECK(q.try_push_until(4, std::chrono::time_point<std::chrono::steady_clock, std::chrono::hours>::min()) ==
        levee::queue_status::full);
  CHECK(q.try_pop_until(out, std::chrono::time_point<std::chrono::system_clock, std::chrono::hours>::max()) ==
        levee::queue_status::ok);
  CHECK(out == 3);
  CHECK(q.try_push_until(4, std::chrono::time_point<std::chrono::system_clock, std::chrono::hours>::max()) ==
        levee::queue_status::ok);
  CHECK(q.try_pop_for(out, std::chrono::duration<double>(0.5)) == levee::queue_status::ok);
  CHECK(out == 4);
}

TEST_CASE("mpmc_queue: maximal timeouts mean no deadline: the call parks until woken, never times out") {
  using namespace std::chrono;
  for (int which = 0; which < 6; ++which) {
    INFO("variant " << which);
    levee::mpmc_queue<int> q(1);
    std::atomic<int> status{-1};
    std::thread consumer([&] {
      int out = 0;
      levee::queue_status st = levee::queue_status::full;
      switch (which) {
        case 0:
          st = q.try_pop_for(out, hours::max());
          break;
        case 1:
          st = q.try_pop_for(out, nanoseconds::max());
          break;
        case 2:
          st = q.try_pop_for(out, duration<double>(1e300));
          break;
        case 3:
          st = q.try_pop_until(out, steady_clock::time_point::max());
          break;
        case 4:
          st = q.try_pop_until(out, time_point<system_clock, hours>::max());
          break;
        default:
          st = q.try_pop_until(out, time_point<steady_clock, hours>::max());
          break;
      }
      status = st == levee::queue_status::ok && out == 7 ? 1 : 0;
    });
    const bool parked = levee_test::eventually([&] { return q.waiters_approx() == 1 || status.load() >= 0; });
    CHECK(parked);
    CHECK(status.load() == -1);  // still waiting: no overflow into "already expired"
    REQUIRE(q.try_push(7));
    consumer.join();
    CHECK(status.load() == 1);
  }
  // the same on the producer side
  levee::mpmc_queue<int> full(1);
  REQUIRE(full.try_push(0));
  std::atomic<int> pushed{-1};
  std::thread producer(
      [&] { pushed = full.try_push_for(1, hours::max()) == levee::queue_status::ok ? 1 : 0; });
  CHECK(levee_test::eventually([&] { return full.waiters_approx() == 1 || pushed.load() >= 0; }));
  CHECK(pushed.load() == -1);
  CHECK(full.pop() == 0);
  producer.join();
  CHECK(pushed.load() == 1);
  CHECK(full.pop() == 1);
}

TEST_CASE("mpmc_queue: timed operations time out within a bounded delay on real clocks") {
  // Generous upper bound: must not flake on a loaded 2-core machine.
  constexpr auto wait = 30ms;
  constexpr auto slack = 5s;
  levee::mpmc_queue<int> q(1);
  int out = 0;
  auto t0 = std::chrono::steady_clock::now();
  CHECK(q.try_pop_for(out, wait) == levee::queue_status::timeout);
  auto elapsed = std::chrono::steady_clock::now() - t0;
  CHECK(elapsed >= wait);
  CHECK(elapsed < wait + slack);

  const auto sys0 = std::chrono::system_clock::now();
  CHECK(q.try_pop_until(out, sys0 + wait) == levee::queue_status::timeout);
  CHECK(std::chrono::system_clock::now() >= sys0 + wait);

  REQUIRE(q.try_push(1));
  t0 = std::chrono::steady_clock::now();
  CHECK(q.try_push_until(2, t0 + wait) == levee::queue_status::timeout);
  elapsed = std::chrono::steady_clock::now() - t0;
  CHECK(elapsed >= wait);
  CHECK(elapsed < wait + slack);
}

TEST_CASE("mpmc_queue: blocked pop wakes on push, blocked push wakes on pop") {
  levee::mpmc_queue<int> q(1);
  std::atomic<int> got{0};
  std::thread consumer([&] {
    std::optional<int> v = q.pop();
    got = v ? *v : -1;
  });
  // wait until it is parked: the wake-up path is what this tests
  CHECK(levee_test::eventually([&] { return q.waiters_approx() == 1; }));
  REQUIRE(q.push(42));
  consumer.join();
  CHECK(got == 42);

  REQUIRE(q.push(1));
  std::atomic<bool> pushed{false};
  std::thread producer([&] { pushed = q.push(2); });
  CHECK(levee_test::eventually([&] { return q.waiters_approx() == 1; }));
  CHECK_FALSE(pushed.load());
  CHECK(q.pop() == 1);
  producer.join();
  CHECK(pushed);
  CHECK(q.pop() == 2);
}

TEST_CASE("mpmc_queue: close wakes blocked and timed waiters on both sides promptly") {
  levee::mpmc_queue<int> empty_q(4);
  levee::mpmc_queue<int> full_q(1);
  REQUIRE(full_q.try_push(0));
  std::atomic<int> done{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&] {
      CHECK_FALSE(empty_q.pop().has_value());
      ++done;
    });
    threads.emplace_back([&] {
      int out = 0;
      CHECK(empty_q.try_pop_for(out, 1h) == levee::queue_status::closed);
      ++done;
    });
    threads.emplace_back([&] {
      CHECK_FALSE(full_q.push(1));
      ++done;
    });
    threads.emplace_back([&] {
      CHECK(full_q.try_push_until(1, std::chrono::system_clock::now() + 1h) == levee::queue_status::closed);
      ++done;
    });
  }
  // all twelve parked (six on each queue) before close(): a watchdog, not a sleep
  CHECK(
      levee_test::eventually([&] { return empty_q.waiters_approx() == 6 && full_q.waiters_approx() == 6; }));
  CHECK(done == 0);
  const auto t0 = std::chrono::steady_clock::now();
  empty_q.close();
  full_q.close();
  for (auto& t : threads) t.join();
  CHECK(done == 12);
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);
  CHECK(full_q.pop() == 0);  // still drains
  CHECK_FALSE(full_q.pop().has_value());
}

TEST_CASE("mpmc_queue: push_count counts successful pushes exactly, across laps, bulk pushes and close") {
  for (std::size_t cap : {1u, 2u, 3u, 5u, 8u, 1000u}) {
    INFO("capacity " << cap);
    levee::mpmc_queue<int> q(cap);
    CHECK(q.push_count() == 0);
    std::uint64_t pushed = 0;
    int x = 0;
    for (int round = 0; round < 7; ++round) {  // several laps
      while (q.try_push(round)) ++pushed;
      CHECK(q.push_count() == pushed);  // the failed push did not count
      const int pops = round % 2 == 0 ? static_cast<int>(cap) : std::max(1, static_cast<int>(cap) / 2);
      for (int k = 0; k < pops; ++k) REQUIRE(q.try_pop(x));
      CHECK(q.push_count() == pushed);  // pops do not change it
    }
    std::array<int, 4> ints{1, 2, 3, 4};
    while (q.try_pop(x)) {
    }
    const std::size_t n = q.try_push_bulk(ints.begin(), ints.size());
    pushed += n;
    CHECK(n == std::min<std::size_t>(4, cap));
    CHECK(q.push_count() == pushed);
    q.close();
    CHECK_FALSE(q.try_push(9));
    CHECK(q.push_count() == pushed);  // the closed flag is not counted
  }
}

TEST_CASE("mpmc_queue: push_count under concurrent producers equals the number of accepted pushes") {
  levee::mpmc_queue<int> q(64);
  std::atomic<std::uint64_t> ok{0};
  std::atomic<bool> stop{false};
  std::thread consumer([&] {
    int x = 0;
    while (!stop.load() || q.size_approx() != 0) (void)q.try_pop(x);
  });
  std::vector<std::thread> ps;
  for (int p = 0; p < 4; ++p)
    ps.emplace_back([&] {
      for (int i = 0; i < 20000; ++i)
        if (q.try_push(i)) ok.fetch_add(1);
    });
  for (auto& t : ps) t.join();
  stop = true;
  consumer.join();
  CHECK(q.push_count() == ok.load());
}

#if defined(__linux__)
namespace {
double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}
}  // namespace

// A property, not a speed: a parked thread costs (almost) no CPU. The bar,
// 1 % of the time blocked, leaves room for the spin and yield phases before
// parking (microseconds) and for a sanitizer's slowdown.
TEST_CASE("mpmc_queue: a thread blocked 1 s on an empty or full queue uses < 1 % of a core") {
  for (bool full : {false, true}) {
    CAPTURE(full);
    levee::mpmc_queue<int> q(1);
    if (full) REQUIRE(q.try_push(0));
    std::atomic<double> cpu{-1};
    std::atomic<double> wall{-1};
    std::thread waiter([&] {
      const double cpu0 = thread_cpu_seconds();
      const auto t0 = std::chrono::steady_clock::now();
      if (full) {
        CHECK(q.push(1));
      } else {
        CHECK(q.pop() == 7);
      }
      wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      cpu = thread_cpu_seconds() - cpu0;
    });
    REQUIRE(levee_test::eventually([&] { return q.waiters_approx() == 1; }));
    std::this_thread::sleep_for(1s);  // the period measured, not synchronisation
    if (full) {
      CHECK(q.pop() == 0);
    } else {
      REQUIRE(q.push(7));
    }
    waiter.join();
    MESSAGE("blocked in " << std::string(full ? "push" : "pop") << " for " << wall.load() << " s, CPU "
                          << cpu.load() * 1e3 << " ms");
    CHECK(wall.load() >= 1.0);
    CHECK(cpu.load() >= 0.0);
    CHECK(cpu.load() < 0.01 * wall.load());
  }
}
#endif
