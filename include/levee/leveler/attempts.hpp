// levee/leveler/attempts.hpp - asynchronous attempts in flight: the state
// machine of one attempt, the registry that stop() and the timeouts walk,
// and the events a simulation fires at virtual times (post_at).
//
// One attempt, from the worker that starts it to whoever finishes it:
//
//   running --handler returns--> pending --completion fires--> done (settled by the firing thread)
//      |                            '------timeout passes-----> done (settled by the thread that saw it)
//      '--completion fires inside the handler--> fired_inline --handler returns--> done (settled by the
//      worker)
//
// Exactly one transition into `done` wins (compare-exchange), and only the
// winner settles the attempt: permit, lease, feedback, retry or final state.
// A completion arriving after `done` is a late completion: counted, nothing
// else. A timeout that passes while the handler is still starting the work
// (`running`) is remembered and applied when the handler returns.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <levee/concurrency_limiter.hpp>
#include <levee/leveler/completion.hpp>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

namespace levee::detail {

// What a completion still needs after its leveler is gone: the count of late
// completions (every attempt holds a reference).
struct attempt_shared {
  std::atomic<std::uint64_t> late{0};
};

enum class attempt_state : std::uint8_t { running, fired_inline, pending, done };

// One asynchronous attempt. Core provides envelope_type, lease, time_point
// and settle_async(attempt&, handler_result&&, bool timed_out, bool abandoned) noexcept.
// References: the completion's, the starting worker's (while it starts the
// work) and the registry's (until settled); the last one frees it.
template <class Core>
class attempt final : public attempt_base {
 public:
  using envelope_type = typename Core::envelope_type;
  using lease = typename Core::lease;
  using time_point = typename Core::time_point;
  static constexpr std::int64_t no_deadline = std::numeric_limits<std::int64_t>::max();

  attempt(Core& core, std::shared_ptr<attempt_shared> shared, envelope_type&& e, lease&& l,
          std::optional<permit>&& p, time_point started, std::int64_t deadline)
      : env(std::move(e)),
        held_lease(std::move(l)),
        held_permit(std::move(p)),
        start(started),
        deadline_ns(deadline),
        core_(&core),
        shared_(std::move(shared)) {}

  // The completion fired (or was destroyed unfired: `abandoned`).
  void complete(handler_result&& r, bool abandoned) noexcept override {
    attempt_state s = state_.load(std::memory_order_acquire);
    if (s == attempt_state::running) {
      // Parked for the starting worker, which reads it only after seeing
      // fired_inline; if the compare-exchange fails, nobody else reads it.
      result_ = std::move(r);
      abandoned_ = abandoned;
      if (state_.compare_exchange_strong(s, attempt_state::fired_inline, std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
        release();
        return;
      }
      r = std::move(result_);
    }
    if (s == attempt_state::pending &&
        state_.compare_exchange_strong(s, attempt_state::done, std::memory_order_acq_rel,
                                       std::memory_order_acquire)) {
      core_->settle_async(*this, std::move(r), false, abandoned);
    } else {
      shared_->late.fetch_add(1, std::memory_order_relaxed);  // done: it timed out (or threw) first
    }
    release();
  }

  // The starting worker, after the handler returned (or threw: `thrown`).
  // Settles the attempt if it was completed inline (returns true then) or
  // timed out meanwhile; otherwise it stays pending.
  bool handler_returned(std::exception_ptr thrown) noexcept {
    if (thrown) {
      // The handler's exception fails the attempt, even if the completion
      // fired (or was abandoned by the unwinding) inside it; a completion
      // fired later is late.
      attempt_state s = attempt_state::running;
      if (state_.compare_exchange_strong(s, attempt_state::done, std::memory_order_acq_rel)) {
        core_->settle_async(*this, handler_result::failure(std::move(thrown)), false, false);
        return true;
      }
      if (s == attempt_state::fired_inline) {
        state_.store(attempt_state::done, std::memory_order_relaxed);
        core_->settle_async(*this, handler_result::failure(std::move(thrown)), false, false);
        return true;
      }
    }
    attempt_state s = attempt_state::running;
    if (!state_.compare_exchange_strong(s, attempt_state::pending, std::memory_order_seq_cst)) {
      // fired_inline: only this thread moves it on.
      state_.store(attempt_state::done, std::memory_order_relaxed);
      core_->settle_async(*this, std::move(result_), false, abandoned_);
      return true;
    }
    if (timed_out_.load(std::memory_order_seq_cst)) return try_time_out();
    return false;
  }

  // The attempt's timeout passed: a pending attempt fails with
  // attempt_errc::timeout; a running one does when its handler returns.
  // Requests stop either way. Returns whether this call settled it.
  bool time_out() noexcept {
    timed_out_.store(true, std::memory_order_seq_cst);
    stop_.request_stop();
    return try_time_out();
  }

  // stop(): asks the work to stop; the attempt still ends by its completion
  // or its timeout.
  void request_stop() noexcept { stop_.request_stop(); }

  void acquire() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  // The attempt's parts, owned by it until settled (settle_async takes them).
  std::optional<envelope_type> env;
  std::optional<lease> held_lease;
  std::optional<permit> held_permit;
  time_point start;
  std::int64_t deadline_ns;  // no_deadline: no timeout

  // Registry links (under the registry's mutex).
  attempt* prev = nullptr;
  attempt* next = nullptr;
  std::size_t heap_index = npos;
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);

 private:
  ~attempt() = default;

  bool try_time_out() noexcept {
    attempt_state s = attempt_state::pending;
    if (!state_.compare_exchange_strong(s, attempt_state::done, std::memory_order_seq_cst)) return false;
    std::exception_ptr e;
    try {
      e = std::make_exception_ptr(std::system_error(make_error_code(attempt_errc::timeout)));
    } catch (...) {
      e = std::current_exception();
    }
    core_->settle_async(*this, handler_result::failure(std::move(e)), true, false);
    return true;
  }

  Core* core_;
  std::shared_ptr<attempt_shared> shared_;
  std::atomic<attempt_state> state_{attempt_state::running};
  std::atomic<bool> timed_out_{false};
  std::atomic<std::uint32_t> refs_{3};  // completion, starting worker, registry
  handler_result result_ = handler_result::success();
  bool abandoned_ = false;
};

// The asynchronous attempts in flight: a list (stop() requests stop on each)
// and a min-heap of the timed ones by deadline, under one mutex, with the
// earliest deadline and the count readable without it.
template <class Attempt>
class attempt_registry {
 public:
  static constexpr std::int64_t none = std::numeric_limits<std::int64_t>::max();

  void add(Attempt& a) {
    std::lock_guard lock(mutex_);
    a.next = head_;
    if (head_ != nullptr) head_->prev = &a;
    head_ = &a;
    if (a.deadline_ns != Attempt::no_deadline) {
      a.heap_index = heap_.size();
      heap_.push_back(&a);  // reserved by reserve_one(): cannot throw
      sift_up(a.heap_index);
    }
    publish();
  }
  // Room for one more timed attempt, so that add() cannot throw after the
  // attempt took its permit and lease. Throws std::bad_alloc.
  void reserve_one() {
    std::lock_guard lock(mutex_);
    if (heap_.size() == heap_.capacity()) heap_.reserve(std::max<std::size_t>(64, heap_.size() * 2));
  }
  void remove(Attempt& a) noexcept {
    std::lock_guard lock(mutex_);
    if (a.prev != nullptr) a.prev->next = a.next;
    if (a.next != nullptr) a.next->prev = a.prev;
    if (head_ == &a) head_ = a.next;
    a.prev = a.next = nullptr;
    if (a.heap_index != Attempt::npos) erase_at(a.heap_index);
    publish();
  }

  // The timed attempts whose deadline is <= now_ns, taken out of the heap
  // (still in flight), each with a reference for the caller.
  [[nodiscard]] std::vector<Attempt*> take_due(std::int64_t now_ns) {
    std::vector<Attempt*> due;
    if (next_ns_.load(std::memory_order_acquire) > now_ns) return due;
    std::lock_guard lock(mutex_);
    while (!heap_.empty() && heap_.front()->deadline_ns <= now_ns) {
      Attempt* a = heap_.front();
      erase_at(0);
      a->acquire();
      due.push_back(a);
    }
    publish();
    return due;
  }
  // Every attempt in flight, each with a reference for the caller.
  [[nodiscard]] std::vector<Attempt*> all() {
    std::vector<Attempt*> out;
    std::lock_guard lock(mutex_);
    for (Attempt* a = head_; a != nullptr; a = a->next) {
      a->acquire();
      out.push_back(a);
    }
    return out;
  }

  [[nodiscard]] std::int64_t next_ns() const noexcept { return next_ns_.load(std::memory_order_acquire); }

 private:
  void publish() noexcept {  // under mutex_
    next_ns_.store(heap_.empty() ? none : heap_.front()->deadline_ns, std::memory_order_release);
  }
  void erase_at(std::size_t i) noexcept {
    heap_[i]->heap_index = Attempt::npos;
    const std::size_t last = heap_.size() - 1;
    if (i != last) {
      heap_[i] = heap_[last];
      heap_[i]->heap_index = i;
      heap_.pop_back();
      sift_down(i);
      sift_up(i);
    } else {
      heap_.pop_back();
    }
  }
  void sift_up(std::size_t i) noexcept {
    while (i > 0) {
      const std::size_t parent = (i - 1) / 2;
      if (heap_[parent]->deadline_ns <= heap_[i]->deadline_ns) break;
      swap_at(i, parent);
      i = parent;
    }
  }
  void sift_down(std::size_t i) noexcept {
    for (;;) {
      std::size_t m = i;
      for (std::size_t c = 2 * i + 1; c <= 2 * i + 2 && c < heap_.size(); ++c)
        if (heap_[c]->deadline_ns < heap_[m]->deadline_ns) m = c;
      if (m == i) return;
      swap_at(i, m);
      i = m;
    }
  }
  void swap_at(std::size_t i, std::size_t j) noexcept {
    std::swap(heap_[i], heap_[j]);
    heap_[i]->heap_index = i;
    heap_[j]->heap_index = j;
  }

  std::mutex mutex_;
  Attempt* head_ = nullptr;
  std::vector<Attempt*> heap_;
  std::atomic<std::int64_t> next_ns_{none};
};

// A move-only void() callable (post_at's events hold completions).
class unique_task {
 public:
  unique_task() = default;
  template <class F>
  explicit unique_task(F f) : p_(std::make_unique<impl<F>>(std::move(f))) {}
  void operator()() { p_->run(); }

 private:
  struct base {
    virtual ~base() = default;
    virtual void run() = 0;
  };
  template <class F>
  struct impl final : base {
    explicit impl(F g) : f(std::move(g)) {}
    void run() override { f(); }
    F f;
  };
  std::unique_ptr<base> p_;
};

// Simulation mode's timed events (leveler::post_at): run on the driving
// thread in time order, FIFO among equal times. Thread-safe.
class sim_events {
 public:
  static constexpr std::int64_t none = std::numeric_limits<std::int64_t>::max();

  void push(std::int64_t at_ns, unique_task f) {
    std::lock_guard lock(mutex_);
    heap_.push_back(item{at_ns, seq_++, std::move(f)});
    std::push_heap(heap_.begin(), heap_.end(), later);
    next_ns_.store(heap_.front().at_ns, std::memory_order_release);
  }
  // Runs every event due at now_ns (including ones they post for now_ns);
  // returns how many ran. Each runs outside the lock.
  std::size_t run_due(std::int64_t now_ns) {
    std::size_t n = 0;
    while (next_ns_.load(std::memory_order_acquire) <= now_ns) {
      unique_task f;
      {
        std::lock_guard lock(mutex_);
        if (heap_.empty() || heap_.front().at_ns > now_ns) break;
        std::pop_heap(heap_.begin(), heap_.end(), later);
        f = std::move(heap_.back().task);
        heap_.pop_back();
        next_ns_.store(heap_.empty() ? none : heap_.front().at_ns, std::memory_order_release);
      }
      f();
      ++n;
    }
    return n;
  }
  [[nodiscard]] std::int64_t next_ns() const noexcept { return next_ns_.load(std::memory_order_acquire); }
  // Drops every event (their tasks are destroyed outside the lock: a dropped
  // completion abandons its attempt).
  void clear() {
    std::vector<item> dropped;
    {
      std::lock_guard lock(mutex_);
      dropped.swap(heap_);
      next_ns_.store(none, std::memory_order_release);
    }
  }

 private:
  struct item {
    std::int64_t at_ns;
    std::uint64_t seq;
    unique_task task;
  };
  static bool later(const item& a, const item& b) noexcept {
    return a.at_ns != b.at_ns ? a.at_ns > b.at_ns : a.seq > b.seq;
  }
  std::mutex mutex_;
  std::vector<item> heap_;
  std::uint64_t seq_ = 0;
  std::atomic<std::int64_t> next_ns_{none};
};

}  // namespace levee::detail
