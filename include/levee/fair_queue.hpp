// levee/fair_queue.hpp - levee::fair_queue, a queue discipline for many
// tenants in the shape of fq_codel (RFC 8290): priority bands, flows inside
// bands served by weighted deficit round robin, per-flow limits, and CoDel
// (RFC 8289) sojourn control per band that sheds to a caller-supplied sink.
//
// Structure. Producers push into a lock-free door (a levee::mpmc_queue of
// the whole capacity). Consumers call try_pop() or try_pop_bulk(), which
// take the scheduler lock, move everything in the door into per-flow queues
// (each item moves once, so this is amortised O(1) per item), and then
// choose items one at a time:
//   1. bands: strict bands, in index order, are served before everything
//      after them while they have an eligible item; the weighted bands (all
//      after the strict ones) share the rest by deficit round robin with
//      quantum band weight * options.quantum (cost units), given to a band
//      when the round robin arrives at it.
//   2. flows: inside a band, flows (keyed by (band, flow id)) are served by
//      the deficit round robin of RFC 8290 with its two lists: a flow that
//      becomes backlogged joins the "new" list with one quantum
//      (weight(flow) * quantum) and is served before the "old" list; a flow
//      that has spent its quantum moves to the tail of the old list with a
//      fresh one. Why this variant: a sparse flow (one item now and then)
//      is served at the next pop instead of after one turn of every
//      backlogged flow, which is what gives a trickling tenant low dwell next
//      to a flooding one; a flow that empties while on the new list moves to
//      the old list (not back to new) when other flows wait, so it cannot
//      keep jumping the queue. Each backlogged flow's share of dispatched
//      cost is proportional to its weight; a flow with nothing queued takes
//      no turn (work-conserving). A pop costs O(1 + c / (w * quantum))
//      visits, where c is the largest item cost: choose quantum near the
//      typical cost.
//   3. eligibility: a flow at max_in_flight_per_flow, or whose per-flow rate
//      (GCRA, as levee::rate_limiter, one state per flow) admits its next
//      item only later, takes no turn; it leaves the round robin until
//      finished() / its time comes. try_pop then reports `waiting` with the
//      earliest such time so a consumer can sleep until then.
//   4. CoDel per band (RFC 8289), evaluated at dequeue on the sojourn (now -
//      push time) of the item at the head of the flow chosen: when the
//      sojourn has stayed at or above `target` for `interval` (and more than
//      one item is queued in the band) the band enters the dropping state,
//      sheds one item and schedules the next shed at drop_next = t +
//      interval / sqrt(count) (the control law, with RFC 8289's memory of
//      the previous count when dropping resumes within 16 intervals). It
//      leaves the dropping state when a sojourn falls below target.
//      Overload cutoff (not in RFC 8289): jobs, unlike TCP, do not slow down
//      when shed, so the control law alone needs tens of seconds to match a
//      constant 2x overload (its shed rate grows linearly with time) while
//      the standing queue grows to seconds. While dropping, an item whose
//      sojourn exceeds overload_cutoff_targets * target (default 2, as
//      folly's Codel) is therefore shed too. Set it to 0 for pure RFC 8289.
//      Two rules keep a band that is overloaded as a whole in the dropping
//      state: the item an overload cut leaves at the head of its flow (often
//      younger than target, its elders just shed) does not end the episode;
//      and a flow that emptied while its band was dropping rejoins the old
//      list, not the new one, when it comes back during the episode (with
//      many flows emptied in turn, each fresh item would otherwise look
//      sparse and end it).
//      Shed items go to the sink passed to try_pop (never silently); an
//      exempt band never sheds. The state is per band but the sojourn is
//      that of the flow being served, so a band sheds only while the flows
//      it serves all see a standing queue: a sparse flow served at once
//      keeps the band below target, and one flow's private backlog next to
//      such flows is bounded by max_queued_per_flow and the capacity, not
//      by CoDel (its items are delayed, the other flows' are not).
//      Adaptive LIFO (per band, optional): while the band is in the dropping
//      state, the flow chosen delivers its newest item instead of its oldest
//      (CoDel still measures, and sheds, the oldest); it returns to FIFO as
//      soon as the band leaves the dropping state.
//   5. idle flows (nothing queued, nothing in flight) expire flow_ttl after
//      they became idle (later if their rate state is still in the future;
//      forgetting a GCRA state whose time has passed is exact). Every pop and
//      finished() examines at most four idle flows, oldest first, so expiry
//      is amortised O(1) and the flow table shrinks back (its bucket array is
//      rehashed down when it is less than 1/8 full).
//
// Capacity is exact over the whole queue: size_approx() (door + scheduled +
// items being shed) never exceeds capacity(). Storage: the door ring and a
// node pool of `capacity` items are allocated at construction; flow states
// are allocated when a flow first appears and freed when it expires (up to
// 64 are kept for reuse). Room for the states of the next 64 items' flows
// is allocated before those items leave the door, so an allocation failure
// (std::bad_alloc from try_pop) loses no item.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <levee/clock.hpp>
#include <levee/detail/cache.hpp>
#include <levee/detail/hash.hpp>
#include <levee/detail/metrics_histogram.hpp>
#include <levee/detail/time.hpp>
#include <levee/metrics.hpp>
#include <levee/mpmc_queue.hpp>
#include <levee/rate_limiter.hpp>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace levee {

// Result of fair_queue::try_push. On anything but ok the value is untouched
// (handed back to the caller).
//   ok        - queued.
//   full      - the queue holds capacity() items.
//   flow_full - the flow (band, flow id) holds max_queued_per_flow items.
//   closed    - close() was called.
enum class fair_push_status { ok, full, flow_full, closed };

// Result of fair_queue::try_pop.
//   ok      - an item was dequeued.
//   empty   - nothing is queued (or only items still being pushed).
//   waiting - items are queued but none is eligible now (per-flow rate or
//             in-flight limit); ready_at says when the earliest becomes
//             eligible by time (time_point::max() if only finished() can
//             free one).
//   closed  - close() was called and the queue is drained.
enum class fair_pop_status { ok, empty, waiting, closed };

// One band. Bands are indexed 0..n-1; strict bands must come first.
struct fair_band_options {
  bool strict = false;       // served before every later band while it has an eligible item
  std::uint32_t weight = 1;  // share among the weighted (non-strict) bands, >= 1
  bool exempt = false;       // never shed (CoDel off for this band)
  std::chrono::nanoseconds target = std::chrono::milliseconds(5);      // CoDel target sojourn, > 0
  std::chrono::nanoseconds interval = std::chrono::milliseconds(100);  // CoDel interval, > 0
  double overload_cutoff_targets = 2.0;  // while dropping, shed items older than this * target; 0 = off
  bool adaptive_lifo = false;            // newest-first within a flow while the band is dropping
};

struct fair_queue_options {
  std::size_t capacity = 1024;  // exact, whole queue, 1 .. 2^32 - 2
  std::vector<fair_band_options> bands = std::vector<fair_band_options>(1);  // 1 .. 8 bands
  std::uint32_t quantum = 1;  // cost units per weight per round, >= 1
  // Weight of a flow (>= 1; 0 is treated as 1, and so is a weight() that
  // throws). Read once when the flow's state is created (first use, or first
  // use after expiry). Called under the scheduler lock: keep it cheap and
  // do not call back into the queue. Empty: every flow has weight 1.
  std::function<std::uint32_t(std::uint64_t flow, std::size_t band)> weight;
  std::uint32_t max_queued_per_flow = 0;     // 0 = unlimited
  std::uint32_t max_in_flight_per_flow = 0;  // 0 = unlimited (finished() is then a no-op)
  std::optional<rate> flow_rate;             // per-flow GCRA rate of dispatched cost; nullopt = off
  std::uint64_t flow_burst = 1;              // per-flow GCRA burst (cost units), >= 1
  std::chrono::nanoseconds flow_ttl = std::chrono::seconds(30);  // idle flow state lifetime, >= 0
};

// What the sink of try_pop receives with each shed item.
template <class TimePoint>
struct fair_item_info {
  std::uint64_t flow = 0;
  std::uint32_t band = 0;
  std::uint32_t cost = 0;
  TimePoint enqueued{};
};

template <class T, class TimePoint>
struct fair_pop_result {
  fair_pop_status status = fair_pop_status::empty;
  std::optional<T> value;  // engaged iff status == ok
  fair_item_info<TimePoint> info;
  TimePoint ready_at{};  // status == waiting: see fair_pop_status
  [[nodiscard]] explicit operator bool() const noexcept { return status == fair_pop_status::ok; }
};

// A conservative estimate for deadline admission (see estimate_wait).
template <class TimePoint>
struct fair_wait_estimate {
  std::uint64_t cost_ahead = 0;  // cost dispatched before the new item (upper bound, see estimate_wait)
  TimePoint flow_ready_at{};     // earliest time the flow's own rate admits the new item (>= now)
};

struct fair_band_metrics {
  std::uint64_t depth = 0;       // items in this band (taken from the door, not yet popped or shed)
  std::uint64_t depth_cost = 0;  // their cost
  std::uint64_t dispatched = 0;  // items popped
  std::uint64_t shed = 0;        // items handed to the sink by CoDel
  bool dropping = false;         // CoDel's dropping state
  histogram_snapshot sojourn;    // push -> pop of dispatched items
};

struct fair_queue_metrics {
  std::uint64_t size = 0;     // size_approx()
  std::uint64_t in_door = 0;  // items pushed and not yet sorted into flows (no band known yet)
  std::vector<fair_band_metrics> bands;
  std::uint64_t active_flows = 0;    // flow states held (queued, in flight, or idle within the TTL)
  std::uint64_t idle_flows = 0;      // of which idle (expire after the TTL)
  std::uint64_t flows_created = 0;   // since construction
  std::uint64_t flows_expired = 0;   // since construction
  std::size_t flow_table_bytes = 0;  // estimate: bucket array + flow state nodes
};

namespace detail {

// An intrusive doubly linked list of objects with prev/next members.
template <class Node>
struct fair_list {
  Node* head = nullptr;
  Node* tail = nullptr;
  std::size_t size = 0;
  [[nodiscard]] bool empty() const noexcept { return head == nullptr; }
  void push_back(Node* n) noexcept {
    n->prev = tail;
    n->next = nullptr;
    if (tail != nullptr)
      tail->next = n;
    else
      head = n;
    tail = n;
    ++size;
  }
  void remove(Node* n) noexcept {
    if (n->prev != nullptr)
      n->prev->next = n->next;
    else
      head = n->next;
    if (n->next != nullptr)
      n->next->prev = n->prev;
    else
      tail = n->prev;
    n->prev = n->next = nullptr;
    --size;
  }
};

// Per-flow queued counts for max_queued_per_flow, read and written by
// producers (push) and consumers (pop, shed): 64 stripes, each a mutex and a
// map holding only flows with at least one item queued.
class fair_flow_counters {
 public:
  // Reserves one slot for key; false if the flow already holds `limit`.
  bool try_acquire(std::uint64_t key_hash, std::uint64_t flow, std::uint32_t band, std::uint32_t limit) {
    stripe& s = stripes_[key_hash % stripe_count];
    std::lock_guard lock(s.mutex);
    auto [it, inserted] = s.counts.try_emplace(key{flow, band}, 0U);
    if (it->second >= limit) return false;
    ++it->second;
    return true;
  }
  void release(std::uint64_t key_hash, std::uint64_t flow, std::uint32_t band) noexcept {
    stripe& s = stripes_[key_hash % stripe_count];
    std::lock_guard lock(s.mutex);
    auto it = s.counts.find(key{flow, band});
    if (it != s.counts.end() && --it->second == 0) s.counts.erase(it);
  }

 private:
  struct key {
    std::uint64_t flow;
    std::uint32_t band;
    bool operator==(const key&) const = default;
  };
  struct key_hash_fn {
    std::size_t operator()(const key& k) const noexcept {
      return static_cast<std::size_t>(hash_pair(k.flow, k.band));
    }
  };
  static constexpr std::size_t stripe_count = 64;
  struct alignas(cache_line_size) stripe {
    std::mutex mutex;
    std::unordered_map<key, std::uint32_t, key_hash_fn> counts;
  };
  std::array<stripe, stripe_count> stripes_;
};

}  // namespace detail

// A bounded multi-producer multi-consumer queue discipline for many
// tenants. See the top of this header for the algorithm.
//
// Blocking: nothing here waits for an event (there is no blocking pop: the
// caller waits, e.g. on its own event count, and sleeps until ready_at when
// told `waiting`). What takes a lock:
//  - try_push takes no lock unless max_queued_per_flow is set: it is one CAS
//    on the occupancy counter and one lock-free push into the door (which
//    may spin briefly, then yield, while a consumer is moving the item out
//    of the slot it needs). With max_queued_per_flow it also takes one of 64
//    striped mutexes (hashed by (band, flow)) around a hash-map update, and
//    so does the pop, shed or drain of that item (under the scheduler mutex
//    for a pop: the order is always scheduler, then stripe).
//  - try_pop, try_pop_bulk, drain_all, finished() (when
//    max_in_flight_per_flow is set), expire_idle, estimate_wait and metrics
//    take the one scheduler mutex (a std::mutex). try_pop and try_pop_bulk
//    return at once without it when the queue is empty and holds no flow
//    state. A pop that finds a long door moves all of it (its latency is
//    proportional to the number of items pushed since the last pop).
//  - The sink runs after the scheduler mutex is released.
// Memory ordering: a successful try_push happens-before the pop that
// returns, sheds or drains its item (the door's publication, then the
// scheduler mutex). close() happens-before every push it refuses. The
// occupancy counter only bounds the count (relaxed CAS on push): it orders no
// data; items are handed over by the door and the scheduler mutex.
template <class T, clock Clock = std::chrono::steady_clock>
class fair_queue {
  static_assert(std::is_object_v<T> && !std::is_const_v<T> && !std::is_array_v<T>,
                "levee::fair_queue<T>: T must be a non-const, non-array object type");
  static_assert(std::is_nothrow_move_constructible_v<T>,
                "levee::fair_queue<T>: T's move constructor must be noexcept (items move from the door into "
                "the scheduler under its lock; a throwing move there would lose the item)");
  static_assert(std::is_nothrow_destructible_v<T>, "levee::fair_queue<T>: T's destructor must be noexcept");

 public:
  using value_type = T;
  using clock_type = Clock;
  using time_point = typename Clock::time_point;
  using duration = typename Clock::duration;
  using pop_result = fair_pop_result<T, time_point>;
  using item_info = fair_item_info<time_point>;
  using wait_estimate = fair_wait_estimate<time_point>;

  static constexpr std::size_t max_bands = 8;

  // Throws std::invalid_argument naming the option for: capacity 0 or >=
  // 2^32 - 1, no bands or more than max_bands, a strict band after a weighted
  // one, weight 0, target/interval <= 0, overload_cutoff_targets < 0 or not
  // finite, quantum 0, flow_burst 0, flow_ttl < 0.
  explicit fair_queue(fair_queue_options opts, Clock c = Clock{})
      : opts_(checked(std::move(opts))), clock_(std::move(c)), door_(opts_.capacity) {
    nodes_ = std::make_unique<node[]>(opts_.capacity);
    for (std::size_t i = 0; i < opts_.capacity; ++i)
      nodes_[i].next_free = i + 1 < opts_.capacity ? static_cast<std::uint32_t>(i + 1) : npos;
    free_head_ = 0;
    bands_ = std::make_unique<band_state[]>(opts_.bands.size());
    first_weighted_ = opts_.bands.size();
    for (std::size_t b = 0; b < opts_.bands.size(); ++b) {
      const auto& bo = opts_.bands[b];
      band_state& s = bands_[b];
      s.target = detail::saturating_ceil<duration>(bo.target);
      s.interval = detail::saturating_ceil<duration>(bo.interval);
      s.cutoff = bo.overload_cutoff_targets > 0 ? detail::saturating_mul(s.target, bo.overload_cutoff_targets)
                                                : duration::max();
      if (!bo.strict && first_weighted_ == opts_.bands.size()) first_weighted_ = b;
    }
    ttl_ = detail::saturating_ceil<duration>(opts_.flow_ttl);
    if (opts_.flow_rate) {
      rate_count_ = static_cast<detail::int128>(opts_.flow_rate->count());
      rate_period_ = static_cast<detail::int128>(opts_.flow_rate->period().count());
      rate_tau_ = rate_period_ * static_cast<detail::int128>(opts_.flow_burst);
    }
    prepare_chunk();
    baseline_buckets_ = flows_.bucket_count();
  }

  fair_queue(const fair_queue&) = delete;
  fair_queue& operator=(const fair_queue&) = delete;

  // Destroys every item still queued exactly once. No thread may be inside
  // any member function when the destructor starts.
  ~fair_queue() {
    for (auto& [k, f] : flows_) {
      for (std::uint32_t i = f.head; i != npos;) {
        node& n = nodes_[i];
        i = n.next;
        n.ptr()->~T();
      }
    }
  }

  // ---- producers ------------------------------------------------------------

  // Queues `value` for (band, flow) with `cost` (>= 1), stamped `now` (the
  // sojourn clock starts here). Lock-free unless max_queued_per_flow is set
  // (see Blocking above). On anything but ok `value` is untouched.
  // Throws std::invalid_argument (value untouched) for band >= bands, cost
  // 0, or cost > flow_burst when a flow rate is set (it could never be
  // admitted).
  [[nodiscard]] fair_push_status try_push(T&& value, std::uint64_t flow, std::size_t band, std::uint32_t cost,
                                          time_point now) {
    check_item(band, cost);
    if (door_.is_closed()) return fair_push_status::closed;
    std::uint64_t occ = occupancy_.load(std::memory_order_relaxed);
    do {
      if (occ >= opts_.capacity) return fair_push_status::full;
    } while (!occupancy_.compare_exchange_weak(occ, occ + 1, std::memory_order_relaxed,
                                               std::memory_order_relaxed));
    const auto b32 = static_cast<std::uint32_t>(band);
    std::uint64_t h = 0;
    if (opts_.max_queued_per_flow != 0) {
      h = detail::hash_pair(flow, b32);
      if (!counters_->try_acquire(h, flow, b32, opts_.max_queued_per_flow)) {
        occupancy_.fetch_sub(1, std::memory_order_relaxed);
        return fair_push_status::flow_full;
      }
    }
    // The reservation guarantees the door has room: it can only fail
    // spuriously while a consumer is moving an item out, or because the
    // door is closed.
    for (unsigned spins = 0;; ++spins) {
      if (door_.try_push(door_entry{std::move(value), flow, now, cost, b32})) return fair_push_status::ok;
      if (door_.is_closed()) {
        if (opts_.max_queued_per_flow != 0) counters_->release(h, flow, b32);
        occupancy_.fetch_sub(1, std::memory_order_relaxed);
        return fair_push_status::closed;
      }
      if (spins < 64)
        detail::cpu_relax();
      else
        std::this_thread::yield();
    }
  }
  [[nodiscard]] fair_push_status try_push(T&& value, std::uint64_t flow = 0, std::size_t band = 0,
                                          std::uint32_t cost = 1) {
    return try_push(std::move(value), flow, band, cost, clock_.now());
  }

  // Closes the queue: idempotent, never blocks. Every later push returns
  // closed; queued items can still be popped; try_pop returns closed once
  // the queue is drained.
  void close() noexcept { door_.close(); }
  [[nodiscard]] bool is_closed() const noexcept { return door_.is_closed(); }

  // ---- consumers ------------------------------------------------------------

  // Dequeues the next item by band priority, weighted DRR and eligibility;
  // items CoDel sheds on the way are handed to sink(T&&, const item_info&)
  // after the scheduler lock is released (the sink must not throw: it runs
  // in a noexcept context; it may call any member of this queue). When
  // max_in_flight_per_flow is set, every ok result must be matched by one
  // finished(info.flow, info.band) call.
  template <class Sink>
  requires std::invocable<Sink&, T&&, const item_info&>
  [[nodiscard]] pop_result try_pop(time_point now, Sink&& sink) {
    pop_result r;
    const pop_outcome o = pop_some(now, 1, sink, [&](T&& v, const item_info& info) noexcept {
      r.value.emplace(std::move(v));
      r.info = info;
    });
    r.status = o.status;
    r.ready_at = o.ready_at;
    return r;
  }
  template <class Sink>
  requires std::invocable<Sink&, T&&, const item_info&>
  [[nodiscard]] pop_result try_pop(Sink&& sink) { return try_pop(clock_.now(), std::forward<Sink>(sink)); }

  // Up to `max_items` items in one call (one lock acquisition), in the order
  // try_pop would return them; each is handed to out(T&&, const item_info&)
  // while the scheduler lock is held (out must not throw: it runs in a
  // noexcept context; keep it short and do not call into this queue from
  // it). Shed items go to `sink` after the lock is released, as for try_pop.
  // Returns how many went to `out` and, when 0, the status try_pop would
  // have returned (with ready_at for `waiting`); max_items == 0 returns
  // {0, empty} without looking at the queue.
  struct bulk_result {
    std::size_t count = 0;
    fair_pop_status status = fair_pop_status::empty;
    time_point ready_at{};
  };
  template <class Out, class Sink>
  requires std::invocable<Out&, T&&, const item_info&> && std::invocable<Sink&, T&&, const item_info&>
  [[nodiscard]] bulk_result try_pop_bulk(time_point now, std::size_t max_items, Out&& out, Sink&& sink) {
    if (max_items == 0) return bulk_result{};
    const pop_outcome o = pop_some(now, max_items, sink,
                                   [&](T&& v, const item_info& info) noexcept { out(std::move(v), info); });
    return bulk_result{o.count, o.status, o.ready_at};
  }

  // Takes every queued item, eligible or not, without CoDel, handing each
  // to out(T&&, const item_info&) under the scheduler lock (out must not
  // throw: it runs in a noexcept context; nor call into this queue): for shutdown, when whatever is left is
  // cancelled. Items whose push is still being published when it runs are
  // not taken: call it until size_approx() == 0 after close(). Returns how
  // many it took. In-flight counts and rate states are left as they are.
  template <class Out>
  requires std::invocable<Out&, T&&, const item_info&> std::size_t drain_all(Out&& out) {
    auto emit = [&](T&& v, const item_info& info) noexcept { out(std::move(v), info); };
    std::size_t n = 0;
    {
      std::lock_guard lock(mutex_);
      drain_door();
      for (auto& [key, f] : flows_) {
        while (f.head != npos) {
          const std::uint32_t i = f.head;
          node& nd = nodes_[i];
          unlink(f, i);
          emit(std::move(*nd.ptr()), item_info{nd.flow, nd.band, nd.cost, nd.enqueued});
          nd.ptr()->~T();
          release_counts(nd.flow, nd.band);
          free_node(i);
          ++n;
        }
      }
      occupancy_.fetch_sub(n, std::memory_order_release);
    }
    return n;
  }

  // The consumer finished the item of (band, flow) that try_pop returned:
  // frees one in-flight slot of that flow. A no-op (no lock) unless
  // max_in_flight_per_flow is set. Calls without a matching pop are ignored.
  void finished(std::uint64_t flow, std::size_t band, time_point now) {
    if (opts_.max_in_flight_per_flow == 0) return;
    std::lock_guard lock(mutex_);
    auto it = flows_.find(flow_key{flow, static_cast<std::uint32_t>(band)});
    if (it != flows_.end()) {
      flow_state& f = it->second;
      if (f.in_flight != 0) --f.in_flight;
      if (f.where_ == where::waiting_finish && f.in_flight < opts_.max_in_flight_per_flow) {
        if (f.queued != 0) {
          join_old(f);
        } else {
          f.where_ = where::none;
          maybe_idle(f, now);
        }
      } else {
        maybe_idle(f, now);
      }
    }
    expire_some(now);
  }
  void finished(std::uint64_t flow, std::size_t band) { finished(flow, band, clock_.now()); }

  // Expires up to `max_flows` idle flows whose TTL has passed (try_pop and
  // finished() already do a few each; a consumer that idles can call this to
  // return memory sooner). Returns how many were expired. Takes the lock.
  std::size_t expire_idle(time_point now, std::size_t max_flows) {
    std::lock_guard lock(mutex_);
    return expire_some(now, max_flows);
  }

  // When the oldest idle flow's state is due to expire (time_point::max() if
  // no flow is idle): a consumer with nothing to pop can sleep until then
  // and call expire_idle. Takes the lock.
  [[nodiscard]] time_point next_expiry() const {
    std::lock_guard lock(mutex_);
    return idle_.empty() ? time_point::max() : idle_.head->expire_at;
  }

  // ---- deadline admission -------------------------------------------------
  //
  // For an item of `cost` about to be pushed into (band, flow) at `now`:
  //  - cost_ahead: an upper bound on the cost dispatched before it, given the
  //    items queued now: everything in strict bands before its band (or all
  //    strict bands, for a weighted band), its own flow's queued cost, what
  //    weighted DRR lets the band's other backlogged flows and the other
  //    weighted bands dispatch while its flow catches up (one extra round
  //    and one largest item each for the round robin's phase), and every
  //    item still in the door (band not yet known).
  //  - flow_ready_at: when the flow's own rate admits the item if the flow's
  //    queued cost goes out back to back (now without a flow rate).
  // Cannot predict: work that arrives later in strict bands before this one
  // or as new flows of its band (both may overtake it), in-flight limits
  // (they depend on service times), and shedding (which only shortens the
  // wait). A caller wanting never to admit an item it predicts will miss its
  // deadline rejects when now + max(cost_ahead * per-cost dispatch interval,
  // flow_ready_at - now) is past the deadline (see predicted_wait).
  // Takes the scheduler lock; O(number of bands).
  [[nodiscard]] wait_estimate estimate_wait(std::uint64_t flow, std::size_t band, std::uint32_t cost,
                                            time_point now) const {
    check_item(band, cost);
    std::lock_guard lock(mutex_);
    wait_estimate e;
    e.flow_ready_at = now;
    const auto b32 = static_cast<std::uint32_t>(band);
    const band_state& own = bands_[band];
    std::uint64_t ahead = occupancy_.load(std::memory_order_relaxed) - scheduled_ - shedding_;  // door
    const std::size_t strict_end = band < first_weighted_ ? band : first_weighted_;
    for (std::size_t b = 0; b < strict_end; ++b) ahead += bands_[b].depth_cost;
    std::uint64_t q_flow = cost;
    std::uint64_t w_flow = weight_of(flow, band);
    const flow_state* f = nullptr;
    if (auto it = flows_.find(flow_key{flow, b32}); it != flows_.end()) {
      f = &it->second;
      q_flow += f->queued_cost;
      w_flow = f->weight;
    }
    const std::uint64_t q = opts_.quantum;
    // Rounds the flow needs to send q_flow, plus one for the round robin's phase.
    const std::uint64_t rounds = (q_flow + w_flow * q - 1) / (w_flow * q) + 1;
    const std::uint64_t other_queued = own.depth_cost - (f ? f->queued_cost : 0);
    const std::uint64_t other_weight =
        own.backlogged_weight - (f != nullptr && f->queued != 0 ? f->weight : 0);
    const std::uint64_t other_flows = own.backlogged_flows - (f != nullptr && f->queued != 0 ? 1 : 0);
    const std::uint64_t own_band_out =
        q_flow + std::min(other_queued, sat_add(sat_mul(rounds, sat_mul(other_weight, q)),
                                                sat_mul(other_flows, own.max_cost)));
    ahead = sat_add(ahead, own_band_out - cost);
    if (band >= first_weighted_) {
      const std::uint64_t wb = opts_.bands[band].weight;
      const std::uint64_t band_rounds = (own_band_out + wb * q - 1) / (wb * q) + 1;
      for (std::size_t b = first_weighted_; b < opts_.bands.size(); ++b) {
        if (b == band) continue;
        const band_state& o = bands_[b];
        ahead = sat_add(ahead, std::min(o.depth_cost, sat_add(sat_mul(band_rounds, opts_.bands[b].weight * q),
                                                              o.max_cost)));
      }
    }
    e.cost_ahead = ahead;
    if (opts_.flow_rate) {
      // Earliest t with max(tat, t) + q_flow * T <= t + tau, in 1/count ns units.
      const detail::int128 now_u = units_of(now);
      const detail::int128 tat = f != nullptr ? std::max(f->tat, now_u) : now_u;
      const detail::int128 need = tat + static_cast<detail::int128>(q_flow) * rate_period_ - rate_tau_;
      if (need > now_u) e.flow_ready_at = time_of_units(need);
    }
    return e;
  }

  // max(cost_ahead * per_cost, flow_ready_at - now) of estimate_wait: the
  // predicted time from now until the item would be dispatched when the
  // consumer dispatches one cost unit every `per_cost`.
  [[nodiscard]] duration predicted_wait(std::uint64_t flow, std::size_t band, std::uint32_t cost,
                                        time_point now, duration per_cost) const {
    const wait_estimate e = estimate_wait(flow, band, cost, now);
    const duration by_rate = detail::saturating_mul(
        per_cost, static_cast<double>(std::min<std::uint64_t>(e.cost_ahead, 1ULL << 52)));
    return std::max(by_rate, e.flow_ready_at - now);
  }

  // ---- queries ----------------------------------------------------------------

  [[nodiscard]] std::size_t capacity() const noexcept { return opts_.capacity; }
  [[nodiscard]] std::size_t band_count() const noexcept { return opts_.bands.size(); }
  // Items pushed (or being pushed) and not yet popped or shed, in
  // [0, capacity()]. Racy while other threads operate; exact when quiescent.
  [[nodiscard]] std::size_t size_approx() const noexcept {
    return static_cast<std::size_t>(occupancy_.load(std::memory_order_acquire));
  }
  // Items accepted since construction: monotonic and exact (each accepted
  // item is pushed into the door exactly once; refused pushes never count).
  // Memory ordering: as mpmc_queue::push_count.
  [[nodiscard]] std::uint64_t push_count() const noexcept { return door_.push_count(); }
  // Flow states held (queued, in flight or idle within the TTL). Racy.
  [[nodiscard]] std::size_t flow_count() const noexcept {
    return flow_count_.load(std::memory_order_relaxed);
  }
  [[nodiscard]] const fair_queue_options& options() const noexcept { return opts_; }
  [[nodiscard]] const Clock& get_clock() const noexcept { return clock_; }

  // A snapshot of the metrics. Takes the scheduler lock.
  [[nodiscard]] fair_queue_metrics metrics() const {
    std::lock_guard lock(mutex_);
    fair_queue_metrics m;
    m.size = occupancy_.load(std::memory_order_relaxed);
    m.in_door = m.size - scheduled_ - shedding_;
    for (std::size_t b = 0; b < opts_.bands.size(); ++b) {
      const band_state& s = bands_[b];
      fair_band_metrics bm;
      bm.depth = s.depth;
      bm.depth_cost = s.depth_cost;
      bm.dispatched = s.dispatched;
      bm.shed = s.shed;
      bm.dropping = s.dropping;
      detail::metrics_histogram_counts c;
      s.sojourn.add_to(c);
      bm.sojourn = histogram_snapshot(c);
      m.bands.push_back(std::move(bm));
    }
    m.active_flows = flows_.size();
    m.idle_flows = idle_.size;
    m.flows_created = flows_created_;
    m.flows_expired = flows_expired_;
    // An unordered_map node: the value, the next pointer and the cached hash.
    constexpr std::size_t node_bytes = sizeof(std::pair<const flow_key, flow_state>) + 2 * sizeof(void*);
    m.flow_table_bytes = flows_.bucket_count() * sizeof(void*) + (flows_.size() + spare_.size()) * node_bytes;
    return m;
  }

 private:
  static constexpr std::uint32_t npos = std::numeric_limits<std::uint32_t>::max();
  static constexpr std::size_t chunk = 64;  // door items moved per bulk pop

  struct door_entry {
    T value;
    std::uint64_t flow;
    time_point enqueued;
    std::uint32_t cost;
    std::uint32_t band;
  };

  struct node {
    T* ptr() noexcept { return std::launder(reinterpret_cast<T*>(storage)); }
    alignas(T) unsigned char storage[sizeof(T)];
    time_point enqueued{};
    std::uint64_t flow = 0;
    std::uint32_t cost = 0;
    std::uint32_t band = 0;
    std::uint32_t prev = npos;
    std::uint32_t next = npos;
    std::uint32_t next_free = npos;
  };

  enum class where : std::uint8_t { none, new_list, old_list, waiting_timer, waiting_finish, idle };

  struct flow_key {
    std::uint64_t flow;
    std::uint32_t band;
    bool operator==(const flow_key&) const = default;
  };
  struct flow_key_hash {
    std::size_t operator()(const flow_key& k) const noexcept {
      return static_cast<std::size_t>(detail::hash_pair(k.flow, k.band));
    }
  };

  struct flow_state {
    flow_key key{};
    std::uint64_t weight = 1;
    std::int64_t quantum = 1;  // weight * options.quantum
    std::int64_t deficit = 0;
    std::uint64_t queued = 0;
    std::uint64_t queued_cost = 0;
    std::uint32_t in_flight = 0;
    std::uint32_t head = npos;  // oldest item
    std::uint32_t tail = npos;  // newest item
    where where_ = where::none;
    bool rejoin_old = false;     // emptied while the band was dropping (see pick)
    flow_state* prev = nullptr;  // links in new/old/idle list
    flow_state* next = nullptr;
    time_point expire_at{};
    time_point last_active{};  // when its last item was delivered or shed
    detail::int128 tat = std::numeric_limits<std::int64_t>::min();  // GCRA, 1/count ns units
  };
  using flow_list = detail::fair_list<flow_state>;

  struct timer {
    time_point at;
    flow_state* flow;
  };
  static bool timer_later(const timer& a, const timer& b) noexcept { return a.at > b.at; }

  struct band_state {
    flow_list new_flows;
    flow_list old_flows;
    duration target{};
    duration interval{};
    duration cutoff{};
    // CoDel (RFC 8289 names)
    bool dropping = false;
    bool first_above_set = false;
    time_point first_above{};
    time_point drop_next{};
    std::uint32_t count = 0;
    std::uint32_t lastcount = 0;
    // band-level DRR among weighted bands
    std::int64_t deficit = 0;
    // accounting
    std::uint64_t depth = 0;
    std::uint64_t depth_cost = 0;
    std::uint64_t backlogged_weight = 0;
    std::uint64_t backlogged_flows = 0;
    std::uint64_t max_cost = 1;
    std::uint64_t dispatched = 0;
    std::uint64_t shed = 0;
    detail::metrics_histogram sojourn;
  };

  static fair_queue_options checked(fair_queue_options o) {
    auto fail = [](const std::string& what) { throw std::invalid_argument("levee::fair_queue: " + what); };
    if (o.capacity == 0) fail("options.capacity must be >= 1, got 0");
    if (o.capacity >= std::uint64_t{npos})
      fail("options.capacity must be < 2^32 - 1, got " + std::to_string(o.capacity));
    if (o.bands.empty() || o.bands.size() > max_bands)
      fail("options.bands must hold 1.." + std::to_string(max_bands) + " bands, got " +
           std::to_string(o.bands.size()));
    bool seen_weighted = false;
    for (std::size_t b = 0; b < o.bands.size(); ++b) {
      const auto& bo = o.bands[b];
      const std::string name = "options.bands[" + std::to_string(b) + "]";
      if (bo.strict && seen_weighted) fail(name + ".strict: strict bands must come before weighted bands");
      if (!bo.strict) seen_weighted = true;
      if (bo.weight == 0) fail(name + ".weight must be >= 1, got 0");
      if (bo.target.count() <= 0) fail(name + ".target must be > 0");
      if (bo.interval.count() <= 0) fail(name + ".interval must be > 0");
      if (!std::isfinite(bo.overload_cutoff_targets) || bo.overload_cutoff_targets < 0)
        fail(name + ".overload_cutoff_targets must be finite and >= 0");
    }
    if (o.quantum == 0) fail("options.quantum must be >= 1, got 0");
    if (o.flow_burst == 0) fail("options.flow_burst must be >= 1, got 0");
    if (o.flow_ttl.count() < 0) fail("options.flow_ttl must be >= 0");
    return o;
  }

  void check_item(std::size_t band, std::uint32_t cost) const {
    if (band < opts_.bands.size() && cost != 0 && (!opts_.flow_rate || cost <= opts_.flow_burst)) [[likely]]
      return;
    throw_bad_item(band, cost);
  }
  [[noreturn]] void throw_bad_item(std::size_t band, std::uint32_t cost) const {
    if (band >= opts_.bands.size())
      throw std::invalid_argument("levee::fair_queue: band " + std::to_string(band) + " out of range (" +
                                  std::to_string(opts_.bands.size()) + " bands)");
    if (cost == 0) throw std::invalid_argument("levee::fair_queue: cost must be >= 1, got 0");
    throw std::invalid_argument("levee::fair_queue: cost " + std::to_string(cost) +
                                " exceeds options.flow_burst " + std::to_string(opts_.flow_burst) +
                                " (it could never be admitted by the flow rate)");
  }

  static std::uint64_t sat_add(std::uint64_t a, std::uint64_t b) noexcept {
    return a > std::numeric_limits<std::uint64_t>::max() - b ? std::numeric_limits<std::uint64_t>::max()
                                                             : a + b;
  }
  static std::uint64_t sat_mul(std::uint64_t a, std::uint64_t b) noexcept {
    if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a)
      return std::numeric_limits<std::uint64_t>::max();
    return a * b;
  }

  std::uint64_t weight_of(std::uint64_t flow, std::size_t band) const noexcept {
    if (!opts_.weight) return 1;
    try {
      return std::max<std::uint64_t>(opts_.weight(flow, band), 1);
    } catch (...) {
      return 1;
    }
  }
  // weight * quantum, capped so deficits cannot overflow (cached per flow).
  std::int64_t quantum_for(std::uint64_t weight) const noexcept {
    return static_cast<std::int64_t>(std::min<std::uint64_t>(sat_mul(weight, opts_.quantum), max_quantum));
  }
  static std::int64_t quantum_of(const flow_state& f) noexcept { return f.quantum; }
  static constexpr std::uint64_t max_quantum = std::uint64_t{1} << 40;

  // GCRA time in units of 1/count ns (exact for levee::rate).
  detail::int128 units_of(time_point t) const noexcept {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
    return static_cast<detail::int128>(ns) * rate_count_;
  }
  time_point time_of_units(detail::int128 u) const noexcept {
    detail::int128 ns = u / rate_count_;
    if (ns * rate_count_ < u) ++ns;  // round up: never earlier than admissible
    const auto cap = static_cast<detail::int128>(std::numeric_limits<std::int64_t>::max());
    if (ns > cap) return time_point::max();
    return time_point(
        detail::saturating_ceil<duration>(std::chrono::nanoseconds(static_cast<std::int64_t>(ns))));
  }

  struct pop_outcome {
    std::size_t count = 0;
    fair_pop_status status = fair_pop_status::empty;
    time_point ready_at{};
  };

  template <class Sink, class Emit>
  pop_outcome pop_some(time_point now, std::size_t max_items, Sink& sink, Emit&& emit) {
    pop_outcome o;
    if (occupancy_.load(std::memory_order_acquire) == 0 && flow_count_.load(std::memory_order_relaxed) == 0) {
      o.status = door_.is_closed() && occupancy_.load(std::memory_order_acquire) == 0
                     ? fair_pop_status::closed
                     : fair_pop_status::empty;
      return o;
    }
    std::uint32_t shed_idx = npos;
    std::uint32_t shed_n = 0;
    {
      std::lock_guard lock(mutex_);
      if (occupancy_.load(std::memory_order_relaxed) != scheduled_ + shedding_) drain_door();
      if (!idle_.empty()) expire_some(now);
      if (!timers_.empty()) release_timers(now);
      while (o.count < max_items && select(now, emit, shed_idx, shed_n)) ++o.count;
      if (o.count != 0) {
        o.status = fair_pop_status::ok;
        occupancy_.fetch_sub(o.count, std::memory_order_release);
      } else if (scheduled_ != 0) {
        o.status = fair_pop_status::waiting;
        o.ready_at = timers_.empty() ? time_point::max() : timers_.front().at;
      }
    }
    if (shed_idx != npos) deliver_shed(shed_idx, shed_n, sink);
    if (o.status == fair_pop_status::empty && door_.is_closed() &&
        occupancy_.load(std::memory_order_acquire) == 0)
      o.status = fair_pop_status::closed;
    return o;
  }

  // ---- door -> flows (under the lock) ------------------------------------------

  struct accept_iterator {
    using difference_type = std::ptrdiff_t;
    using value_type = void;
    fair_queue* q;
    accept_iterator& operator*() noexcept { return *this; }
    accept_iterator& operator++() noexcept { return *this; }
    accept_iterator operator++(int) noexcept { return *this; }
    accept_iterator& operator=(door_entry&& e) {
      q->accept(std::move(e));
      return *this;
    }
  };

  // Moves the door into the flows, a chunk at a time. Before each chunk the
  // flow table gets room and spare nodes for a chunk of new flows, so that
  // accepting an item never allocates: an allocation failure is thrown from
  // here, before the chunk is taken, and loses nothing.
  void drain_door() {
    for (;;) {
      prepare_chunk();
      if (door_.try_pop_bulk(accept_iterator{this}, chunk) < chunk) return;
    }
  }
  void prepare_chunk() {
    if (static_cast<float>(flows_.size() + chunk) >
        flows_.max_load_factor() * static_cast<float>(flows_.bucket_count()))
      flows_.reserve(flows_.size() + chunk);
    while (spare_.size() < chunk) {
      // A key no item can have (band npos), extracted at once: a free node.
      auto it = flows_.try_emplace(flow_key{0, npos}).first;
      spare_.push_back(flows_.extract(it));
    }
  }

  LEVEE_DETAIL_ALWAYS_INLINE void accept(door_entry&& e) {
    const flow_key key{e.flow, e.band};
    flow_state* f = last_;
    if (f == nullptr || !(f->key == key)) {
      auto it = flows_.find(key);
      if (it == flows_.end()) {
        // No allocation and no rehash: see prepare_chunk.
        auto nh = std::move(spare_.back());
        spare_.pop_back();
        nh.key() = key;
        nh.mapped() = flow_state{};
        it = flows_.insert(std::move(nh)).position;
        it->second.key = key;
        it->second.weight = weight_of(e.flow, e.band);
        it->second.quantum = quantum_for(it->second.weight);
        ++flows_created_;
        flow_count_.store(flows_.size(), std::memory_order_relaxed);
      }
      f = &it->second;
      last_ = f;
    }
    const std::uint32_t i = free_head_;
    node& n = nodes_[i];
    free_head_ = n.next_free;
    ::new (static_cast<void*>(n.storage)) T(std::move(e.value));
    n.enqueued = e.enqueued;
    n.flow = e.flow;
    n.cost = e.cost;
    n.band = e.band;
    n.next = npos;
    n.prev = f->tail;
    if (f->tail != npos)
      nodes_[f->tail].next = i;
    else
      f->head = i;
    f->tail = i;
    band_state& b = bands_[e.band];
    if (f->queued == 0) {
      b.backlogged_weight += f->weight;
      ++b.backlogged_flows;
    }
    ++f->queued;
    f->queued_cost += e.cost;
    ++b.depth;
    b.depth_cost += e.cost;
    b.max_cost = std::max<std::uint64_t>(b.max_cost, e.cost);
    ++scheduled_;
    if (f->where_ == where::idle) {
      idle_.remove(f);
      f->where_ = where::none;
    }
    if (f->where_ == where::none) {
      f->deficit = quantum_of(*f);
      if (f->rejoin_old && b.dropping) {
        join_old(*f);  // part of the standing queue, not a sparse flow: see pick()
      } else {
        b.new_flows.push_back(f);
        f->where_ = where::new_list;
      }
      f->rejoin_old = false;
    }
  }

  // Removes node i from flow f (either end) and returns it; accounting included.
  LEVEE_DETAIL_ALWAYS_INLINE void unlink(flow_state& f, std::uint32_t i) noexcept {
    node& n = nodes_[i];
    if (n.prev != npos)
      nodes_[n.prev].next = n.next;
    else
      f.head = n.next;
    if (n.next != npos)
      nodes_[n.next].prev = n.prev;
    else
      f.tail = n.prev;
    band_state& b = bands_[n.band];
    --f.queued;
    f.queued_cost -= n.cost;
    if (f.queued == 0) {
      b.backlogged_weight -= f.weight;
      --b.backlogged_flows;
    }
    --b.depth;
    b.depth_cost -= n.cost;
    --scheduled_;
  }
  void free_node(std::uint32_t i) noexcept {
    nodes_[i].next_free = free_head_;
    free_head_ = i;
  }

  void join_old(flow_state& f) {
    bands_[f.key.band].old_flows.push_back(&f);
    f.where_ = where::old_list;
  }

  void maybe_idle(flow_state& f, time_point now) {
    if (f.where_ != where::none || f.queued != 0 || f.in_flight != 0) return;
    f.expire_at = detail::saturating_add(now, ttl_);
    idle_.push_back(&f);
    f.where_ = where::idle;
  }

  std::size_t expire_some(time_point now, std::size_t max_flows = 4) {
    std::size_t expired = 0;
    for (std::size_t k = 0; k < max_flows && !idle_.empty(); ++k) {
      flow_state* f = idle_.head;
      if (f->expire_at > now) break;
      if (opts_.flow_rate && f->tat > units_of(now)) {
        // Its rate state still matters: keep it until its time has passed.
        idle_.remove(f);
        f->expire_at = time_of_units(f->tat);
        idle_.push_back(f);
        continue;
      }
      idle_.remove(f);
      if (last_ == f) last_ = nullptr;
      auto nh = flows_.extract(f->key);
      if (spare_.size() < chunk) spare_.push_back(std::move(nh));
      ++flows_expired_;
      ++expired;
    }
    if (expired != 0) {
      flow_count_.store(flows_.size(), std::memory_order_relaxed);
      // Shrink the bucket array once it is less than 1/8 full, to twice the
      // size plus room for a chunk (see prepare_chunk): O(size) work after at
      // least 3/4 of the entries were erased since the last resize, so
      // amortised O(1).
      if (flows_.bucket_count() > baseline_buckets_ && flows_.size() * 8 < flows_.bucket_count())
        flows_.rehash(flows_.size() * 2 + chunk);
    }
    return expired;
  }

  void release_timers(time_point now) {
    while (!timers_.empty() && timers_.front().at <= now) {
      std::pop_heap(timers_.begin(), timers_.end(), timer_later);
      flow_state* f = timers_.back().flow;
      timers_.pop_back();
      if (f->where_ == where::waiting_timer) join_old(*f);
    }
  }

  // ---- scheduling (under the lock) -------------------------------------------

  // RFC 8290 DRR inside band b: the flow to serve next, or nullptr when the
  // band has no eligible flow. `lifo`: the item to deliver is the newest.
  LEVEE_DETAIL_ALWAYS_INLINE flow_state* pick(band_state& b, time_point now, bool lifo) {
    for (;;) {
      flow_list* l = !b.new_flows.empty() ? &b.new_flows : &b.old_flows;
      flow_state* f = l->head;
      if (f == nullptr) return nullptr;
      if (f->queued == 0) {
        l->remove(f);
        if (l == &b.new_flows && !b.old_flows.empty()) {
          join_old(*f);
        } else {
          // A flow emptied while its band sheds (CoDel dropping) was
          // emptied by that shedding or by its own turns: when it comes
          // back while the band still sheds, it rejoins the old list instead
          // of jumping the queue as a new flow. Otherwise every flow of a
          // band overloaded as a whole would in turn look sparse, and its
          // fresh item's sojourn would end the dropping state it needs.
          f->rejoin_old = b.dropping;
          f->where_ = where::none;
          maybe_idle(*f, f->last_active);  // idle since its last item left
        }
        continue;
      }
      if (f->deficit <= 0) {
        const std::int64_t q = quantum_of(*f);
        if (b.new_flows.size + b.old_flows.size == 1) {
          // Alone in its band nobody's share is at stake: top up in one
          // step, in place (the old list's tail is where it would go).
          f->deficit += f->deficit > -q ? q : (-f->deficit / q + 1) * q;
          if (l == &b.new_flows) {
            l->remove(f);
            join_old(*f);
            l = &b.old_flows;
          }
        } else {
          f->deficit += q;
          l->remove(f);
          join_old(*f);
          continue;
        }
      }
      if (opts_.max_in_flight_per_flow != 0 && f->in_flight >= opts_.max_in_flight_per_flow) {
        l->remove(f);
        f->where_ = where::waiting_finish;
        continue;
      }
      if (opts_.flow_rate) {
        const std::uint32_t cost = nodes_[lifo ? f->tail : f->head].cost;
        const detail::int128 now_u = units_of(now);
        const detail::int128 need =
            std::max(f->tat, now_u) + static_cast<detail::int128>(cost) * rate_period_ - rate_tau_;
        if (need > now_u) {
          l->remove(f);
          f->where_ = where::waiting_timer;
          timers_.push_back(timer{time_of_units(need), f});
          std::push_heap(timers_.begin(), timers_.end(), timer_later);
          continue;
        }
      }
      return f;
    }
  }

  struct peeked {
    flow_state* f = nullptr;
    bool ok_to_drop = false;
    duration sojourn{};
  };

  // RFC 8289 dodequeue, without removing the item: the flow to serve and
  // whether its oldest item may be shed. after_cut: the flow's older items
  // were just shed by the overload cutoff, so its head's sojourn below
  // target says nothing about the band's standing queue (the band's delay
  // was above the cutoff an instant ago): it does not end the episode.
  LEVEE_DETAIL_ALWAYS_INLINE peeked codel_peek(band_state& b, std::size_t band, time_point now,
                                               bool after_cut = false) {
    peeked p;
    p.f = pick(b, now, opts_.bands[band].adaptive_lifo && b.dropping);
    if (p.f == nullptr) {
      b.first_above_set = false;
      return p;
    }
    p.sojourn = now - nodes_[p.f->head].enqueued;
    if ((p.sojourn < b.target && !after_cut) || b.depth <= 1) {
      b.first_above_set = false;
    } else if (!b.first_above_set) {
      b.first_above_set = true;
      b.first_above = detail::saturating_add(now, b.interval);
    } else if (now >= b.first_above) {
      p.ok_to_drop = true;
    }
    return p;
  }

  time_point control_law(time_point t, const band_state& b) const noexcept {
    return detail::saturating_add(
        t, detail::saturating_mul(b.interval, 1.0 / std::sqrt(static_cast<double>(b.count))));
  }

  void shed_head(band_state& b, flow_state& f, time_point now, std::uint32_t& shed_head_idx,
                 std::uint32_t& shed_n) {
    const std::uint32_t i = f.head;
    unlink(f, i);
    f.last_active = now;
    nodes_[i].next_free = shed_head_idx;
    shed_head_idx = i;
    ++shed_n;
    ++shedding_;
    ++b.shed;
  }

  // Dequeues from band `band` into r (true) or finds nothing (false).
  // Returns the cost delivered (>= 1), or 0.
  template <class Emit>
  LEVEE_DETAIL_ALWAYS_INLINE std::uint32_t band_dequeue(std::size_t band, time_point now, Emit& emit,
                                                        std::uint32_t& shed_idx, std::uint32_t& shed_n) {
    band_state& b = bands_[band];
    const fair_band_options& bo = opts_.bands[band];
    if (bo.exempt) {
      flow_state* f = pick(b, now, false);
      if (f == nullptr) return 0;
      return deliver(b, *f, false, now, emit);
    }
    peeked p = codel_peek(b, band, now);
    if (b.dropping) {
      if (!p.ok_to_drop) b.dropping = false;
      while (b.dropping && (now >= b.drop_next || p.sojourn > b.cutoff)) {
        const bool by_law = now >= b.drop_next;
        shed_head(b, *p.f, now, shed_idx, shed_n);
        if (by_law) ++b.count;
        p = codel_peek(b, band, now, !by_law);
        if (!p.ok_to_drop)
          b.dropping = false;
        else if (by_law)
          b.drop_next = control_law(b.drop_next, b);
      }
    } else if (p.ok_to_drop) {
      shed_head(b, *p.f, now, shed_idx, shed_n);
      p = codel_peek(b, band, now);
      b.dropping = true;
      const std::uint32_t delta = b.count - b.lastcount;
      b.count = (delta > 1 && now - b.drop_next < detail::saturating_mul(b.interval, 16.0)) ? delta : 1;
      b.drop_next = control_law(now, b);
      b.lastcount = b.count;
      while (b.dropping && p.f != nullptr && p.sojourn > b.cutoff) {
        shed_head(b, *p.f, now, shed_idx, shed_n);
        p = codel_peek(b, band, now, true);
        if (!p.ok_to_drop) b.dropping = false;
      }
    }
    if (p.f == nullptr) return 0;
    return deliver(b, *p.f, bo.adaptive_lifo && b.dropping, now, emit);
  }

  template <class Emit>
  LEVEE_DETAIL_ALWAYS_INLINE std::uint32_t deliver(band_state& b, flow_state& f, bool lifo, time_point now,
                                                   Emit& emit) {
    const std::uint32_t i = lifo ? f.tail : f.head;
    node& n = nodes_[i];
    unlink(f, i);
    emit(std::move(*n.ptr()), item_info{n.flow, n.band, n.cost, n.enqueued});
    n.ptr()->~T();
    release_counts(n.flow, n.band);
    f.deficit -= n.cost;
    f.last_active = now;
    if (opts_.flow_rate) {
      const detail::int128 now_u = units_of(now);
      f.tat = std::max(f.tat, now_u) + static_cast<detail::int128>(n.cost) * rate_period_;
    }
    if (opts_.max_in_flight_per_flow != 0) ++f.in_flight;
    ++b.dispatched;
    const auto soj = std::chrono::duration_cast<std::chrono::nanoseconds>(now - n.enqueued).count();
    b.sojourn.record_exclusive(static_cast<std::uint64_t>(std::max<std::int64_t>(soj, 0)));
    free_node(i);
    return n.cost;
  }

  // Delivers one item through emit (true) or finds none eligible (false).
  template <class Emit>
  bool select(time_point now, Emit& emit, std::uint32_t& shed_idx, std::uint32_t& shed_n) {
    for (std::size_t s = 0; s < first_weighted_; ++s)
      if (band_dequeue(s, now, emit, shed_idx, shed_n) != 0) return true;
    const std::size_t n_w = opts_.bands.size() - first_weighted_;
    if (n_w == 0) return false;
    if (n_w == 1) return band_dequeue(first_weighted_, now, emit, shed_idx, shed_n) != 0;
    // DRR across the weighted bands: a band gets its quantum when the
    // cursor arrives at it and keeps the cursor until its deficit is spent
    // or it has nothing eligible. `misses` counts consecutive bands found
    // with nothing eligible; a full turn of them ends the search.
    std::size_t misses = 0;
    while (misses < n_w) {
      const std::size_t band = first_weighted_ + cursor_;
      band_state& b = bands_[band];
      if (b.new_flows.empty() && b.old_flows.empty()) {
        b.deficit = 0;
        cursor_ = (cursor_ + 1) % n_w;
        ++misses;
        continue;
      }
      misses = 0;
      if (b.deficit <= 0) {
        b.deficit += static_cast<std::int64_t>(std::uint64_t{opts_.bands[band].weight} * opts_.quantum);
        if (b.deficit <= 0) {  // still paying for an earlier large item
          cursor_ = (cursor_ + 1) % n_w;
          continue;
        }
      }
      if (const std::uint32_t cost = band_dequeue(band, now, emit, shed_idx, shed_n); cost != 0) {
        b.deficit -= cost;
        if (b.deficit <= 0) cursor_ = (cursor_ + 1) % n_w;
        return true;
      }
      b.deficit = 0;
      cursor_ = (cursor_ + 1) % n_w;
      ++misses;
    }
    return false;
  }

  // Hands shed nodes to the sink outside the lock, then returns them.
  template <class Sink>
  void deliver_shed(std::uint32_t head, std::uint32_t n, Sink& sink) noexcept {
    for (std::uint32_t i = head; i != npos; i = nodes_[i].next_free) {
      node& nd = nodes_[i];
      const item_info info{nd.flow, nd.band, nd.cost, nd.enqueued};
      sink(std::move(*nd.ptr()), info);
      nd.ptr()->~T();
      release_counts(nd.flow, nd.band);
    }
    {
      std::lock_guard lock(mutex_);
      std::uint32_t i = head;
      while (i != npos) {
        const std::uint32_t next = nodes_[i].next_free;
        free_node(i);
        i = next;
      }
      shedding_ -= n;
    }
    occupancy_.fetch_sub(n, std::memory_order_release);
  }

  void release_counts(std::uint64_t flow, std::uint32_t band) noexcept {
    if (opts_.max_queued_per_flow != 0) counters_->release(detail::hash_pair(flow, band), flow, band);
  }

  fair_queue_options opts_;
  [[no_unique_address]] Clock clock_;
  mpmc_queue<door_entry> door_;
  alignas(detail::false_sharing_range) std::atomic<std::uint64_t> occupancy_{0};
  std::unique_ptr<detail::fair_flow_counters> counters_ =
      opts_.max_queued_per_flow != 0 ? std::make_unique<detail::fair_flow_counters>() : nullptr;

  // Consumer side: everything below is guarded by mutex_ (the atomics are
  // mirrors for lock-free queries).
  alignas(detail::false_sharing_range) mutable std::mutex mutex_;
  std::atomic<std::size_t> flow_count_{0};
  std::unique_ptr<node[]> nodes_;
  std::uint32_t free_head_ = npos;
  std::unique_ptr<band_state[]> bands_;
  std::size_t first_weighted_ = 0;
  std::size_t cursor_ = 0;
  std::unordered_map<flow_key, flow_state, flow_key_hash> flows_;
  std::vector<typename std::unordered_map<flow_key, flow_state, flow_key_hash>::node_type> spare_;
  flow_state* last_ = nullptr;  // the flow of the previous accept (one lookup per run of one flow)
  flow_list idle_;
  std::vector<timer> timers_;
  std::uint64_t scheduled_ = 0;  // items in flows
  std::uint64_t shedding_ = 0;   // items out of flows, with the sink
  std::uint64_t flows_created_ = 0;
  std::uint64_t flows_expired_ = 0;
  std::size_t baseline_buckets_ = 0;
  duration ttl_{};
  detail::int128 rate_count_ = 1;
  detail::int128 rate_period_ = 0;
  detail::int128 rate_tau_ = 0;
};

}  // namespace levee
