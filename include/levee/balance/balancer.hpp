// levee/balance/balancer.hpp - levee::balancer: a live backend set plus a
// strategy, safe for concurrent picks while another thread changes the set.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "../clock.hpp"
#include "backend_set.hpp"
#include "failover.hpp"
#include "health.hpp"
#include "round_robin.hpp"
#include "slow_start.hpp"
#include "snapshot_cell.hpp"
#include "strategy.hpp"

namespace levee {

// Every member has a default initialiser, so designated initialisers such as
// {.key = k} compile cleanly under -Wmissing-field-initializers.
struct pick_request {
  std::optional<std::uint64_t> key = std::nullopt;  // affinity key (hashing strategies)
  std::span<const backend_id> exclude = {};         // backends this job already tried
  rng* random = nullptr;                            // the caller's generator; null = a per-thread one
};

struct backend_stats {
  backend_id id = 0;
  std::uint32_t weight = 0;
  std::uint32_t tier = 0;
  std::size_t max_in_flight = 0;
  std::int64_t in_flight = 0;
  // Peak-EWMA at the time of the call; 0 without samples. Fed by every
  // finished lease when the strategy reads latency (peak_ewma), otherwise by
  // one in 16 per thread (see lease::finish).
  std::chrono::nanoseconds latency_ewma{0};
  bool ejected = false;  // by outlier detection
  bool healthy = true;   // the set_healthy mark
};

// A set of backends (each with a Payload, e.g. a std::shared_ptr<handler>)
// and a strategy S, decorated as failover<health<slow_start<S>>> with the
// given health_options.
//
// Concurrency: try_pick() and lease operations may run on any number of
// threads while one or more threads call add/remove/set_*. Every change
// builds a new immutable snapshot (including S's tables) and publishes it
// atomically: a pick sees the old set or the new one, never a mix. Picks never
// block and never allocate. Changes are serialised by a mutex and never wait
// for picks: the replaced snapshot is freed once no pick can still read it
// (polled during this and later changes; see detail::snapshot_cell).
//
// Load cells (in-flight, latency EWMA, failure streak, ejection) belong to
// the backend, not to a snapshot: they survive every change except removal.
template <strategy S = round_robin, clock Clock = std::chrono::steady_clock, class Payload = std::monostate>
class balancer {
 public:
  using strategy_type = S;
  using clock_type = Clock;
  using payload_type = Payload;
  using composed_type = failover<health<slow_start<S>>>;
  class lease;

  explicit balancer(S s = S{}, health_options h = {}, Clock c = Clock{})
      : strategy_(make_composed(std::move(s), h)),
        shared_(std::make_shared<shared_state>(std::move(c), strategy_.inner().detector(),
                                               decay_of(strategy_))) {}

  balancer(const balancer&) = delete;
  balancer& operator=(const balancer&) = delete;

  // Requires: no try_pick() running. Leases may outlive the balancer: their
  // backend, payload and feedback state stay alive until they are destroyed.
  ~balancer() {
    std::lock_guard lock(mutex_);
    for (auto& m : members_) release(m.n);
  }

  // Adds a backend. Throws std::invalid_argument on a duplicate id or weight 0.
  // Blocking: takes the change mutex; allocates; never waits for picks or
  // leases (see class comment). Memory ordering: everything before the
  // call (including the payload's construction) happens-before any pick that
  // returns this backend.
  void add_backend(backend_id id, Payload p = {}, backend_options o = {}) {
    if (o.weight == 0)
      throw std::invalid_argument("levee::balancer::add_backend: weight 0 for backend " + std::to_string(id));
    std::lock_guard lock(mutex_);
    auto it = lower(id);
    if (it != members_.end() && it->n->id == id)
      throw std::invalid_argument("levee::balancer::add_backend: duplicate backend id " + std::to_string(id));
    node* n = new node(id, std::move(p), shared_);
    it = members_.insert(it, member{n, o, true, shared_->now_ns()});
    try {
      publish();
    } catch (...) {
      members_.erase(it);
      release(n);
      throw;
    }
  }

  // Removes a backend; false if absent. Leases on it stay valid and finish
  // normally (without ejecting it). Its payload is destroyed when the last
  // lease on it ends and no snapshot references it any more (normally within
  // this call, at the latest at a later change or the balancer's destruction).
  // Blocking and ordering as add_backend.
  bool remove_backend(backend_id id) {
    std::lock_guard lock(mutex_);
    auto it = lower(id);
    if (it == members_.end() || it->n->id != id) return false;
    node* n = it->n;
    members_.erase(it);
    shared_->detector->forget(n->cell);
    publish();
    release(n);
    return true;
  }

  // Changes a weight (0 throws std::invalid_argument); false if absent.
  // Rebuilds S's tables. Blocking and ordering as add_backend.
  bool set_weight(backend_id id, std::uint32_t w) {
    if (w == 0)
      throw std::invalid_argument("levee::balancer::set_weight: weight 0 for backend " + std::to_string(id));
    return change(id, [&](member& m) { m.o.weight = w; });
  }

  // Changes the concurrent-lease cap (0 = unlimited); false if absent.
  // Existing leases are not affected. Blocking and ordering as add_backend.
  bool set_max_in_flight(backend_id id, std::size_t max) {
    return change(id, [&](member& m) { m.o.max_in_flight = max; });
  }

  // Marks a backend healthy or not (unhealthy = skipped unless in panic);
  // becoming healthy restarts its slow start. false if absent.
  // Blocking and ordering as add_backend.
  bool set_healthy(backend_id id, bool healthy) {
    return change(id, [&](member& m) {
      if (healthy && !m.healthy) m.since = shared_->now_ns();
      m.healthy = healthy;
    });
  }

  // Several changes published as one snapshot (one table rebuild), applied
  // all-or-nothing: if any change is invalid (duplicate id, weight 0, unknown
  // id for a removal or update), apply() throws std::invalid_argument and
  // the set is unchanged. Changes apply in the order they were recorded.
  class batch {
   public:
    batch& add(backend_id id, Payload p = {}, backend_options o = {}) {
      ops_.push_back(op{kind::add, id, std::optional<Payload>(std::move(p)), o, false});
      return *this;
    }
    batch& remove(backend_id id) {
      ops_.push_back(op{kind::remove, id, std::nullopt, {}, false});
      return *this;
    }
    batch& set_weight(backend_id id, std::uint32_t w) {
      ops_.push_back(op{kind::weight, id, std::nullopt, backend_options{w, 0, 0}, false});
      return *this;
    }
    batch& set_healthy(backend_id id, bool healthy) {
      ops_.push_back(op{kind::healthy, id, std::nullopt, {}, healthy});
      return *this;
    }
    [[nodiscard]] std::size_t size() const noexcept { return ops_.size(); }

   private:
    friend class balancer;
    enum class kind { add, remove, weight, healthy };
    struct op {
      kind k;
      backend_id id;
      std::optional<Payload> payload;
      backend_options o;
      bool healthy;
    };
    std::vector<op> ops_;
  };

  // Applies a batch (see batch). Blocking and ordering as add_backend.
  void apply(batch b) {
    std::lock_guard lock(mutex_);
    std::vector<member> next = members_;
    std::vector<node*> created, dropped;
    auto fail = [&](const std::string& what) {
      for (node* n : created) release(n);
      throw std::invalid_argument("levee::balancer::apply: " + what);
    };
    auto find = [&](backend_id id) {
      return std::lower_bound(next.begin(), next.end(), id,
                              [](const member& m, backend_id v) { return m.n->id < v; });
    };
    const std::int64_t now = shared_->now_ns();
    for (auto& o : b.ops_) {
      auto it = find(o.id);
      const bool present = it != next.end() && it->n->id == o.id;
      switch (o.k) {
        case batch::kind::add:
          if (present) fail("duplicate backend id " + std::to_string(o.id));
          if (o.o.weight == 0) fail("weight 0 for backend " + std::to_string(o.id));
          created.push_back(new node(o.id, std::move(*o.payload), shared_));
          next.insert(it, member{created.back(), o.o, true, now});
          break;
        case batch::kind::remove:
          if (!present) fail("unknown backend id " + std::to_string(o.id));
          dropped.push_back(it->n);
          next.erase(it);
          break;
        case batch::kind::weight:
          if (!present) fail("unknown backend id " + std::to_string(o.id));
          if (o.o.weight == 0) fail("weight 0 for backend " + std::to_string(o.id));
          it->o.weight = o.o.weight;
          break;
        case batch::kind::healthy:
          if (!present) fail("unknown backend id " + std::to_string(o.id));
          if (o.healthy && !it->healthy) it->since = now;
          it->healthy = o.healthy;
          break;
      }
    }
    // A node both added and removed in this batch is in `created` and `dropped`.
    std::swap(members_, next);
    try {
      publish();
    } catch (...) {
      std::swap(members_, next);
      for (node* n : created) release(n);
      throw;
    }
    for (node* n : dropped) {
      shared_->detector->forget(n->cell);
      release(n);
    }
  }

  // Picks a backend and starts a lease on it (in-flight + 1). nullopt when
  // no backend is eligible: the set is empty, every backend is excluded,
  // unhealthy or ejected (outside panic), or at max_in_flight.
  // Blocking: never; wait-free apart from the strategy's bounded probing and
  // a bounded retry when another thread takes a backend's last slot.
  // Allocation: none. Memory ordering: the pick reads a complete snapshot
  // (see snapshot_cell); load counters are relaxed and may be slightly stale.
  [[nodiscard]] std::optional<lease> try_pick(const pick_request& r = {}) {
    std::optional<lease> none;
    return pick_impl(r, none);
  }

  // try_pick for a caller that holds `kept`: a lease it took earlier, gave
  // its feedback with lease::record(), and runs no job on any more (a worker
  // between two jobs). If the pick lands on kept's backend, kept itself is
  // returned and the backend's in-flight count is not touched (no
  // read-modify-write on a cache line that every worker finishing there
  // writes); otherwise kept is released and a new lease is returned as by
  // try_pick. The shortcut applies only when the strategy does not read
  // in-flight counts (strategy_traits<S>::reads_load == false: the caller's
  // own slot cannot bias the pick) and no backend has a max_in_flight; it
  // changes no pick, only the count's bookkeeping: kept's backend counts the
  // caller as in flight until it takes another backend or releases kept.
  // kept is empty afterwards in every case. Blocking, allocation and memory
  // ordering as try_pick.
  [[nodiscard]] std::optional<lease> try_pick_keeping(const pick_request& r, std::optional<lease>& kept) {
    std::optional<lease> out = pick_impl(r, kept);
    kept.reset();
    return out;
  }

  [[nodiscard]] std::size_t size() const noexcept { return size_.load(std::memory_order_relaxed); }

  // A consistent listing of the members (takes the change mutex; allocates).
  [[nodiscard]] std::vector<backend_stats> stats() const {
    std::lock_guard lock(mutex_);
    const std::int64_t now = shared_->now_ns();
    std::vector<backend_stats> out;
    out.reserve(members_.size());
    for (const auto& m : members_) {
      const load_cell& c = m.n->cell;
      out.push_back(backend_stats{
          m.n->id, m.o.weight, m.o.tier, m.o.max_in_flight, c.load(),
          std::chrono::nanoseconds(std::llround(c.latency_estimate(now, shared_->decay_ns, 0.0))),
          c.ejected_at(now), m.healthy});
    }
    return out;
  }

  [[nodiscard]] const health_options& options() const noexcept { return shared_->detector->options(); }
  [[nodiscard]] const Clock& get_clock() const noexcept { return shared_->clock; }

 private:
  static constexpr std::size_t npos = ~std::size_t{0};
  static constexpr bool track_total = strategy_traits<composed_type>::needs_total_load;
  static constexpr bool reads_latency = requires(const composed_type& c) { c.latency_decay(); };

  // Whether this finished lease feeds the backend's latency EWMA. Strategies
  // that read it (peak_ewma) get every sample. For the others the EWMA only
  // serves stats(), and one sample in 16 per thread keeps it current without
  // a write to the backend's hot cache line on every job.
  static bool feed_latency() noexcept {
    if constexpr (reads_latency) {
      return true;
    } else {
      thread_local unsigned countdown = 0;
      if (countdown != 0) {
        --countdown;
        return false;
      }
      countdown = 15;
      return true;
    }
  }

  struct shared_state {
    shared_state(Clock c, std::shared_ptr<outlier_detector> d, double decay)
        : clock(std::move(c)), detector(std::move(d)), decay_ns(decay) {}
    [[nodiscard]] std::int64_t now_ns() const {
      return std::chrono::duration_cast<std::chrono::nanoseconds>(clock.now().time_since_epoch()).count();
    }
    Clock clock;
    std::shared_ptr<outlier_detector> detector;
    double decay_ns;
    std::atomic<std::int64_t> total_in_flight{0};
  };

  struct node {
    // Lifetime: cell.in_flight counts owner references (high half: the
    // member list, each snapshot, each finished-but-alive lease) and
    // unfinished leases (low half); the node dies when the word reaches 0.
    node(backend_id i, Payload&& p, std::shared_ptr<shared_state> s)
        : id(i), payload(std::move(p)), shared(std::move(s)) {
      cell.in_flight.store(load_cell::owner_unit, std::memory_order_relaxed);  // the member list's reference
    }
    load_cell cell;
    backend_id id;
    Payload payload;
    std::shared_ptr<shared_state> shared;
  };

  struct member {
    node* n;
    backend_options o;
    bool healthy;
    std::int64_t since;
  };

  struct block {
    block(backend_snapshot v, std::vector<node*> ns, const composed_type& s)
        : view(std::move(v)),
          nodes(std::move(ns)),
          table(s.build(view)),
          uncapped(std::all_of(view.begin(), view.end(),
                               [](const backend_entry& e) { return e.max_in_flight == 0; })) {}
    block(const block&) = delete;
    block& operator=(const block&) = delete;
    ~block() {
      for (node* n : nodes) release(n);
    }
    backend_snapshot view;
    std::vector<node*> nodes;  // parallel to view
    typename composed_type::table_type table;
    bool uncapped;  // no backend has a max_in_flight (try_pick_keeping may hand a held lease back)
  };

  // Drops `amount` (an owner reference or one unfinished lease); the last
  // one out destroys the node. Memory ordering: acq_rel so the last owner
  // sees every write made by other owners (payload use, cell updates) first.
  static void release(node* n, std::int64_t amount = load_cell::owner_unit) noexcept {
    if (n->cell.in_flight.fetch_sub(amount, std::memory_order_acq_rel) == amount) delete n;
  }

  static constexpr bool keep_allowed = !strategy_traits<composed_type>::reads_load;

  std::optional<lease> pick_impl(const pick_request& r, std::optional<lease>& kept) {
    rng& g = r.random != nullptr ? *r.random : detail::thread_rng();
    pick_context ctx(g);
    // Field by field: a whole-optional copy is one 16-byte load of what the
    // caller just wrote as an 8-byte value and a 1-byte flag, which cannot be
    // forwarded from the store buffer (a ~12-cycle stall per pick).
    if (r.key.has_value()) ctx.key = *r.key;
    ctx.tried = r.exclude;
    ctx.set_clock(&now_thunk, shared_.get());
    auto guard = cell_.read();
    const block* b = guard.get();
    if (b == nullptr) return std::nullopt;
    // Where the shortcut does not apply, kept's slot must not count against
    // its backend (max_in_flight, load-aware strategies) during the pick.
    if (!(keep_allowed && b->uncapped)) kept.reset();
    for (int attempt = 0; attempt < 8; ++attempt) {
      // Unwrapped at once into a plain index: GCC 12 otherwise spills the
      // optional and reloads it with a wider load than the stores that wrote
      // it (a store-forwarding stall on every pick).
      const std::size_t i = strategy_.pick(b->view, b->table, ctx).value_or(npos);
      if (i == npos) return std::nullopt;
      node* n = b->nodes[i];
      if constexpr (keep_allowed) {
        if (kept && kept->n_ == n && !kept->done_) return std::move(kept);
      }
      // The slot is also the lease's reference on the node (safe: the
      // snapshot holds one while we are inside the read section).
      if (!acquire_slot(n->cell, b->view[i].max_in_flight)) continue;  // lost the last slot to another thread
      if constexpr (track_total) shared_->total_in_flight.fetch_add(1, std::memory_order_relaxed);
      return std::optional<lease>(lease(n));
    }
    return std::nullopt;
  }

  static bool acquire_slot(load_cell& c, std::size_t max) noexcept {
    if (max == 0) {
      c.in_flight.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    std::int64_t cur = c.in_flight.load(std::memory_order_relaxed);
    do {
      if ((cur & load_cell::lease_mask) >= static_cast<std::int64_t>(max)) return false;
    } while (!c.in_flight.compare_exchange_weak(cur, cur + 1, std::memory_order_relaxed));
    return true;
  }

  static std::int64_t now_thunk(const void* p) { return static_cast<const shared_state*>(p)->now_ns(); }

  static composed_type make_composed(S s, const health_options& h) {
    h.validate("levee::balancer");
    slow_start_options ss{h.slow_start_window, h.slow_start_aggression, h.slow_start_min_weight};
    return composed_type(health<slow_start<S>>(slow_start<S>(std::move(s), ss), h));
  }

  static double decay_of(const composed_type& c) {
    if constexpr (requires { c.latency_decay(); })
      return static_cast<double>(c.latency_decay().count());
    else
      return 10e9;  // 10 s, for stats only
  }

  auto lower(backend_id id) {
    return std::lower_bound(members_.begin(), members_.end(), id,
                            [](const member& m, backend_id v) { return m.n->id < v; });
  }

  template <class F>
  bool change(backend_id id, F&& f) {
    std::lock_guard lock(mutex_);
    auto it = lower(id);
    if (it == members_.end() || it->n->id != id) return false;
    const member saved = *it;
    f(*it);
    try {
      publish();
    } catch (...) {
      *it = saved;
      throw;
    }
    return true;
  }

  // Builds and publishes a snapshot of members_ (caller holds mutex_).
  void publish() {
    std::vector<backend_entry> entries;
    std::vector<node*> nodes;
    entries.reserve(members_.size());
    nodes.reserve(members_.size());
    for (const auto& m : members_) {
      entries.push_back(
          backend_entry{m.n->id, m.o.weight, m.o.tier, m.o.max_in_flight, m.since, &m.n->cell, m.healthy});
      nodes.push_back(m.n);
    }
    backend_snapshot view(std::move(entries), track_total ? &shared_->total_in_flight : nullptr);
    auto b = std::make_unique<block>(std::move(view), std::move(nodes), strategy_);
    for (node* n : b->nodes) n->cell.in_flight.fetch_add(load_cell::owner_unit, std::memory_order_relaxed);
    size_.store(members_.size(), std::memory_order_relaxed);
    cell_.exchange(std::move(b));  // the old block is destroyed after its grace period
  }

  composed_type strategy_;
  std::shared_ptr<shared_state> shared_;
  mutable std::mutex mutex_;     // serialises changes; guards members_
  std::vector<member> members_;  // sorted by id
  std::atomic<std::size_t> size_{0};
  detail::snapshot_cell<block> cell_;

 public:
  // RAII feedback for one pick. Move-only. Keeps the backend's payload alive
  // while it lives, even if the backend is removed or the balancer destroyed.
  // finish() records the outcome and latency (in-flight - 1, latency EWMA,
  // outlier detection); destroying an unfinished lease only releases its
  // in-flight count (no failure is recorded). A moved-from lease is empty:
  // only destruction and assignment are allowed.
  class lease {
   public:
    lease(lease&& o) noexcept : n_(std::exchange(o.n_, nullptr)), done_(o.done_) {}
    lease& operator=(lease&& o) noexcept {
      if (this != &o) {
        reset();
        n_ = std::exchange(o.n_, nullptr);
        done_ = o.done_;
      }
      return *this;
    }
    lease(const lease&) = delete;
    lease& operator=(const lease&) = delete;
    ~lease() { reset(); }

    [[nodiscard]] backend_id id() const noexcept { return n_->id; }
    [[nodiscard]] Payload& payload() const noexcept { return n_->payload; }
    [[nodiscard]] bool finished() const noexcept { return done_; }

    // Records the result; a second call does nothing. Lock-free; reads the
    // balancer's clock once. The latency feeds the backend's EWMA every time
    // if the strategy reads it (peak_ewma), else once in 16 finishes per
    // thread (the EWMA then only serves stats()). Memory ordering: the in-flight decrement is a
    // release that follows the latency and outcome updates, so a pick that
    // sees the lower count also sees this job's feedback; load counters are
    // otherwise relaxed statistics.
    void finish(outcome o, std::chrono::nanoseconds latency) noexcept {
      if (n_ == nullptr || done_) return;
      done_ = true;
      shared_state& sh = *n_->shared;
      const std::int64_t now = sh.now_ns();
      if (feed_latency()) n_->cell.record_latency(latency.count(), now, sh.decay_ns);
      sh.detector->record(n_->cell, o, now);
      // One RMW turns the in-flight slot into an owner reference, so the
      // payload stays alive until the lease is destroyed.
      n_->cell.in_flight.fetch_add(load_cell::owner_unit - 1, std::memory_order_release);
      if constexpr (track_total) n_->shared->total_in_flight.fetch_sub(1, std::memory_order_relaxed);
    }

    // Records the result like finish() but keeps the slot: the lease stays
    // open, for a caller that will offer it to try_pick_keeping() for its
    // next job (or destroy it, which then only releases the slot). Call once
    // per job run on the lease. Lock-free; reads the balancer's clock once.
    void record(outcome o, std::chrono::nanoseconds latency) noexcept {
      if (n_ == nullptr || done_) return;
      shared_state& sh = *n_->shared;
      const std::int64_t now = sh.now_ns();
      if (feed_latency()) n_->cell.record_latency(latency.count(), now, sh.decay_ns);
      sh.detector->record(n_->cell, o, now);
    }

    // finish() and destruction in one step: records the result and releases
    // the lease, which is empty afterwards (payload() must not be used).
    // Costs one read-modify-write on the backend's count where finish() plus
    // destruction cost two. On a finished lease it only releases it.
    void finish_and_release(outcome o, std::chrono::nanoseconds latency) noexcept {
      if (n_ == nullptr) return;
      if (done_) {
        reset();
        return;
      }
      node* n = std::exchange(n_, nullptr);
      shared_state& sh = *n->shared;
      const std::int64_t now = sh.now_ns();
      if (feed_latency()) n->cell.record_latency(latency.count(), now, sh.decay_ns);
      sh.detector->record(n->cell, o, now);
      if constexpr (track_total) sh.total_in_flight.fetch_sub(1, std::memory_order_relaxed);
      release(n, 1);  // the slot; a release, so a pick that sees the lower count also sees the feedback
    }

   private:
    friend class balancer;
    explicit lease(node* n) noexcept : n_(n) {}
    void reset() noexcept {
      if (n_ == nullptr) return;
      node* n = std::exchange(n_, nullptr);
      if (done_) {
        release(n);  // the owner reference finish() took
      } else {
        if constexpr (track_total) n->shared->total_in_flight.fetch_sub(1, std::memory_order_relaxed);
        release(n, 1);  // the unfinished slot
      }
    }
    node* n_ = nullptr;
    bool done_ = false;
  };
};

}  // namespace levee
