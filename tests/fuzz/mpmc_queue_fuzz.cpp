// tests/fuzz/mpmc_queue_fuzz.cpp - levee::mpmc_queue from one thread against
// a sequential model (std::deque): FIFO order, exact capacity, close
// semantics, size_approx/push_count, exception safety of throwing copies, and
// that every element constructed is destroyed exactly once (an instrumented
// element type counts live objects and detects double destruction).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <iterator>
#include <levee/mpmc_queue.hpp>
#include <optional>
#include <stdexcept>
#include <vector>

#include "fuzz_input.hpp"

namespace {

long live = 0;               // instrumented objects alive
bool throw_on_copy = false;  // the next copy constructor throws

// An element that knows whether it is alive (a destroyed or never-built
// element read by the queue shows up as a wrong value or a failed check).
struct item {
  static constexpr std::uint32_t alive_tag = 0xA11CE5ED;
  std::uint64_t value = 0;
  std::uint32_t tag = alive_tag;

  explicit item(std::uint64_t v) noexcept : value(v) { ++live; }
  item(const item& o) : value(o.value) {
    LEVEE_FUZZ_CHECK(o.tag == alive_tag, "copy from a dead element");
    if (throw_on_copy) {
      throw_on_copy = false;
      throw std::runtime_error("copy");
    }
    ++live;
  }
  item(item&& o) noexcept : value(o.value) {
    LEVEE_FUZZ_CHECK(o.tag == alive_tag, "move from a dead element");
    ++live;
  }
  item& operator=(item&& o) noexcept {
    LEVEE_FUZZ_CHECK(o.tag == alive_tag && tag == alive_tag, "move-assignment with a dead element");
    value = o.value;
    return *this;
  }
  item& operator=(const item&) = delete;
  ~item() {
    LEVEE_FUZZ_CHECK(tag == alive_tag, "element destroyed twice");
    tag = 0;
    --live;
  }
};

void run(levee_fuzz::input& in) {
  const std::size_t capacity = 1 + in.below(40);
  std::deque<std::uint64_t> model;
  bool closed = false;
  std::uint64_t pushed = 0;
  std::uint64_t next = 1;
  {
    levee::mpmc_queue<item> q(capacity);
    LEVEE_FUZZ_CHECK(q.capacity() == capacity, "capacity %zu != %zu", q.capacity(), capacity);
    auto expect_pop = [&](std::optional<std::uint64_t> got) {
      if (model.empty()) {
        LEVEE_FUZZ_CHECK(!got, "popped %llu from an empty queue", static_cast<unsigned long long>(*got));
        return;
      }
      LEVEE_FUZZ_CHECK(got.has_value(), "pop failed with %zu elements queued", model.size());
      LEVEE_FUZZ_CHECK(*got == model.front(), "FIFO: popped %llu, expected %llu",
                       static_cast<unsigned long long>(*got), static_cast<unsigned long long>(model.front()));
      model.pop_front();
    };
    auto can_push = [&] { return !closed && model.size() < capacity; };
    auto expect_push = [&](bool ok, std::uint64_t v) {
      LEVEE_FUZZ_CHECK(ok == can_push(), "push returned %d with %zu/%zu queued, closed %d", ok, model.size(),
                       capacity, closed);
      if (ok) {
        model.push_back(v);
        ++pushed;
      }
    };
    for (int ops = 0; ops < 4000 && !in.empty(); ++ops) {
      switch (in.below(12)) {
        case 0: {  // try_push(T&&)
          item x(next);
          const bool ok = q.try_push(std::move(x));
          expect_push(ok, next++);
          break;
        }
        case 1: {  // try_push(const T&), the copy may throw
          const item x(next);
          throw_on_copy = in.boolean();
          const bool will_throw = throw_on_copy;
          bool ok = false;
          bool threw = false;
          try {
            ok = q.try_push(x);
          } catch (const std::runtime_error&) {
            threw = true;
          }
          throw_on_copy = false;
          if (threw) {
            LEVEE_FUZZ_CHECK(will_throw, "unexpected throw");
            LEVEE_FUZZ_CHECK(q.size_approx() == model.size(), "a throwing copy changed the size");
          } else {
            // A throwing copy is only attempted when the push can succeed or
            // is made before the slot is claimed; either way no element is lost.
            expect_push(ok, next);
          }
          ++next;
          break;
        }
        case 2: {  // try_emplace
          const bool ok = q.try_emplace(next);
          expect_push(ok, next++);
          break;
        }
        case 3: {  // try_pop(T&)
          item out(0);
          const bool ok = q.try_pop(out);
          expect_pop(ok ? std::optional<std::uint64_t>(out.value) : std::nullopt);
          break;
        }
        case 4: {  // try_pop() -> optional
          auto o = q.try_pop();
          expect_pop(o ? std::optional<std::uint64_t>(o->value) : std::nullopt);
          break;
        }
        case 5: {  // try_push_bulk
          const std::size_t n = in.below(capacity + 3);
          std::vector<item> src;
          src.reserve(n);
          for (std::size_t i = 0; i < n; ++i) src.emplace_back(next + i);
          const std::size_t got = q.try_push_bulk(std::make_move_iterator(src.begin()), n);
          const std::size_t room = closed ? 0 : capacity - model.size();
          LEVEE_FUZZ_CHECK(got == std::min(n, room), "try_push_bulk(%zu) pushed %zu, room %zu", n, got, room);
          for (std::size_t i = 0; i < got; ++i) model.push_back(next + i);
          pushed += got;
          next += n;
          break;
        }
        case 6: {  // try_pop_bulk
          const std::size_t n = in.below(capacity + 3);
          std::vector<item> dst;
          const std::size_t got = q.try_pop_bulk(std::back_inserter(dst), n);
          LEVEE_FUZZ_CHECK(got == std::min(n, model.size()), "try_pop_bulk(%zu) popped %zu of %zu", n, got,
                           model.size());
          LEVEE_FUZZ_CHECK(dst.size() == got, "try_pop_bulk wrote %zu, returned %zu", dst.size(), got);
          for (const item& x : dst) expect_pop(x.value);
          break;
        }
        case 7:  // close
          q.close();
          closed = true;
          break;
        case 8: {  // blocking push/pop where they cannot block
          if (can_push() || closed) {
            const bool ok = q.push(item(next));
            expect_push(ok, next++);
          }
          if (!model.empty() || closed) {
            item out(0);
            const bool ok = q.pop(out);
            expect_pop(ok ? std::optional<std::uint64_t>(out.value) : std::nullopt);
          }
          break;
        }
        case 9: {  // timed operations with a zero timeout: full/empty (deadline already passed) or timeout
          const auto st = q.try_push_for(item(next), std::chrono::nanoseconds(0));
          const bool ok = st == levee::queue_status::ok;
          if (!ok)
            LEVEE_FUZZ_CHECK(closed ? st == levee::queue_status::closed
                                    : st == levee::queue_status::full || st == levee::queue_status::timeout,
                             "try_push_for status %d", static_cast<int>(st));
          expect_push(ok, next++);
          item out(0);
          const auto sp = q.try_pop_for(out, std::chrono::nanoseconds(0));
          const bool okp = sp == levee::queue_status::ok;
          if (!okp)
            LEVEE_FUZZ_CHECK(closed ? sp == levee::queue_status::closed
                                    : sp == levee::queue_status::empty || sp == levee::queue_status::timeout,
                             "try_pop_for status %d", static_cast<int>(sp));
          expect_pop(okp ? std::optional<std::uint64_t>(out.value) : std::nullopt);
          break;
        }
        case 10: {  // bulk calls with a count of 0 are no-ops
          std::vector<item> none;
          LEVEE_FUZZ_CHECK(q.try_push_bulk(std::make_move_iterator(none.begin()), 0) == 0, "bulk push of 0");
          std::vector<item> dst;
          LEVEE_FUZZ_CHECK(q.try_pop_bulk(std::back_inserter(dst), 0) == 0, "bulk pop of 0");
          break;
        }
        default:
          break;
      }
      LEVEE_FUZZ_CHECK(q.size_approx() == model.size(), "size_approx %zu, model %zu", q.size_approx(),
                       model.size());
      LEVEE_FUZZ_CHECK(q.push_count() == pushed, "push_count %llu, model %llu",
                       static_cast<unsigned long long>(q.push_count()),
                       static_cast<unsigned long long>(pushed));
      LEVEE_FUZZ_CHECK(q.is_closed() == closed, "is_closed %d, model %d", q.is_closed(), closed);
      // Every temporary of this operation is gone: exactly the queued elements are alive.
      LEVEE_FUZZ_CHECK(live == static_cast<long>(model.size()), "%ld elements alive, %zu queued", live,
                       model.size());
    }
  }
  LEVEE_FUZZ_CHECK(live == 0, "%ld elements alive after the queue's destruction", live);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  levee_fuzz::input in(data, size);
  live = 0;
  run(in);
  return 0;
}
