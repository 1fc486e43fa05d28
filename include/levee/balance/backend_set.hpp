// levee/balance/backend_set.hpp - backends as strategies see them: stable
// ids, weights, health marks and shared load cells, frozen into an immutable
// backend_snapshot. Also backend_set, a single-threaded owner of backends for
// tests, simulations and custom balancers (levee::balancer is the concurrent one).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../detail/cache.hpp"
#include "../detail/math.hpp"

namespace levee {

// A backend's identity. Stable across membership changes: strategies hash it
// (never its position), so the same member list gives the same tables.
using backend_id = std::uint64_t;

struct backend_options {
  std::uint32_t weight = 1;       // relative share; 0 is rejected
  std::uint32_t tier = 0;         // failover tier: lower tiers are preferred
  std::size_t max_in_flight = 0;  // hard cap on concurrent leases; 0 = unlimited
  // levee::leveler only (the balancer ignores it): this backend's attempt
  // timeout; 0 = the leveler's options.attempt_timeout.
  std::chrono::nanoseconds attempt_timeout{0};
};

enum class outcome { success, failure };

// Mutable per-backend load state. One cell per backend for the backend's whole
// life: snapshots come and go, the cell (and so its counts) stays. All fields
// are atomics written by finishing jobs and read racily by picks; a pick sees
// a recent value, never a torn one.
struct alignas(detail::cache_line_size) load_cell {
  static constexpr std::int64_t no_sample = std::numeric_limits<std::int64_t>::min();
  // eject_state: 0 = in service; removed = the backend left the set (never
  // ejected again); any other value = ejected until that time (ns).
  static constexpr std::int64_t removed = std::numeric_limits<std::int64_t>::min();

  // Low 32 bits: leases in flight (not yet finished or destroyed). High 32
  // bits: owner references, used by levee::balancer to keep a backend alive
  // while a snapshot or a lease needs it (one atomic word, so a pick and its
  // release each cost one read-modify-write). Always 0 outside a balancer.
  // Read the load with load().
  std::atomic<std::int64_t> in_flight{0};
  static constexpr std::int64_t lease_mask = 0xffffffffLL;
  static constexpr std::int64_t owner_unit = std::int64_t{1} << 32;
  std::atomic<double> latency_ewma_ns{0.0};  // peak-EWMA of latency, valid if stamp != no_sample
  std::atomic<std::int64_t> latency_stamp_ns{no_sample};
  // The fields above change with every job; the ones below rarely (failure
  // streaks, ejections). A line of their own keeps picks, which read them,
  // from missing in cache each time another thread finishes a job here.
  alignas(detail::cache_line_size) std::atomic<std::uint32_t> consecutive_failures{0};
  std::atomic<std::uint32_t> ejections{0};  // ejections so far (backoff multiplier)
  std::atomic<std::int64_t> eject_state{0};
  std::atomic<std::int64_t> recovered_at_ns{no_sample};  // last return from ejection (slow start origin)

  [[nodiscard]] std::int64_t load() const noexcept {
    return in_flight.load(std::memory_order_relaxed) & lease_mask;
  }

  // Folds one latency sample into the peak-EWMA (Finagle/tower semantics): a
  // sample above the estimate replaces it at once; otherwise the estimate
  // moves towards the sample with weight 1 - exp(-dt/decay), dt = time since
  // the previous sample. Lock-free and without read-modify-write (this runs
  // once per finished job, on a line that every worker finishing on this
  // backend writes): the stamp and the estimate are each loaded and stored.
  // Exact when samples are serialised; two samples finishing at the same
  // instant on different threads may overwrite each other (one of them is
  // kept), which an estimate can afford and a per-job RMW pair could not.
  void record_latency(std::int64_t latency_ns, std::int64_t now_ns, double decay_ns) noexcept {
    const double sample = static_cast<double>(latency_ns < 0 ? 0 : latency_ns);
    const std::int64_t prev = latency_stamp_ns.load(std::memory_order_relaxed);
    if (prev == no_sample) {
      latency_ewma_ns.store(sample, std::memory_order_relaxed);
      latency_stamp_ns.store(now_ns, std::memory_order_release);
      return;
    }
    const double cur = latency_ewma_ns.load(std::memory_order_relaxed);
    double next = sample;
    if (sample <= cur) {
      const double dt = prev < now_ns ? static_cast<double>(now_ns - prev) : 0.0;
      const double keep = decay_ns > 0 ? detail::exp_neg(dt / decay_ns) : 0.0;
      next = cur * keep + sample * (1.0 - keep);
    }
    latency_ewma_ns.store(next, std::memory_order_relaxed);
    if (now_ns > prev) latency_stamp_ns.store(now_ns, std::memory_order_release);
  }

  // The estimate at `now`: decays towards zero while no sample arrives (so an
  // idle slow backend is retried eventually); default_ns without history.
  [[nodiscard]] double latency_estimate(std::int64_t now_ns, double decay_ns,
                                        double default_ns) const noexcept {
    const std::int64_t stamp = latency_stamp_ns.load(std::memory_order_acquire);
    if (stamp == no_sample) return default_ns;
    const double est = latency_ewma_ns.load(std::memory_order_relaxed);
    if (now_ns <= stamp || decay_ns <= 0) return est;
    return est * detail::exp_neg(static_cast<double>(now_ns - stamp) / decay_ns);
  }

  // True while ejected at `now` (an expired ejection counts as not ejected).
  [[nodiscard]] bool ejected_at(std::int64_t now_ns) const noexcept {
    const std::int64_t s = eject_state.load(std::memory_order_acquire);
    return s != 0 && s != removed && now_ns < s;
  }
};

// One backend inside a snapshot: the immutable part plus its load cell.
struct backend_entry {
  backend_id id = 0;
  std::uint32_t weight = 1;
  std::uint32_t tier = 0;
  std::size_t max_in_flight = 0;
  std::int64_t since_ns = 0;  // when added or last marked healthy (slow start origin)
  load_cell* load = nullptr;  // never null inside a snapshot
  bool healthy = true;        // the operator's mark (set_healthy)

  LEVEE_DETAIL_ALWAYS_INLINE [[nodiscard]] bool at_capacity() const noexcept {
    return max_in_flight != 0 && load->load() >= static_cast<std::int64_t>(max_in_flight);
  }
};

// An immutable, id-sorted view of the backends: what a strategy's build()
// and pick() receive. Sorting by id makes tables independent of insertion order.
class backend_snapshot {
 public:
  backend_snapshot() = default;

  // Throws std::invalid_argument on a duplicate id, a zero weight or a null cell.
  explicit backend_snapshot(std::vector<backend_entry> entries,
                            const std::atomic<std::int64_t>* total_in_flight = nullptr)
      : entries_(std::move(entries)), total_in_flight_(total_in_flight) {
    std::sort(entries_.begin(), entries_.end(),
              [](const backend_entry& a, const backend_entry& b) { return a.id < b.id; });
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      const auto& e = entries_[i];
      if (e.weight == 0)
        throw std::invalid_argument("levee::backend_snapshot: backend " + std::to_string(e.id) +
                                    " has weight 0");
      if (e.load == nullptr)
        throw std::invalid_argument("levee::backend_snapshot: backend " + std::to_string(e.id) +
                                    " has no load cell");
      if (i > 0 && entries_[i - 1].id == e.id)
        throw std::invalid_argument("levee::backend_snapshot: duplicate backend id " + std::to_string(e.id));
      total_weight_ += e.weight;
      max_weight_ = std::max(max_weight_, e.weight);
    }
    size_ = entries_.size();
  }
  backend_snapshot(const backend_snapshot&) = default;
  backend_snapshot& operator=(const backend_snapshot&) = default;
  // A moved-from snapshot is empty.
  backend_snapshot(backend_snapshot&& o) noexcept
      : entries_(std::move(o.entries_)),
        total_in_flight_(o.total_in_flight_),
        total_weight_(std::exchange(o.total_weight_, 0)),
        max_weight_(std::exchange(o.max_weight_, 0)),
        size_(std::exchange(o.size_, 0)) {}
  backend_snapshot& operator=(backend_snapshot&& o) noexcept {
    entries_ = std::move(o.entries_);
    total_in_flight_ = o.total_in_flight_;
    total_weight_ = std::exchange(o.total_weight_, 0);
    max_weight_ = std::exchange(o.max_weight_, 0);
    size_ = std::exchange(o.size_, 0);
    return *this;
  }

  // Kept as a member: a pick asks for it, and the vector's size() divides by
  // sizeof(backend_entry) each time.
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  [[nodiscard]] const backend_entry& operator[](std::size_t i) const noexcept { return entries_[i]; }
  [[nodiscard]] std::span<const backend_entry> entries() const noexcept { return entries_; }
  [[nodiscard]] auto begin() const noexcept { return entries_.begin(); }
  [[nodiscard]] auto end() const noexcept { return entries_.end(); }
  [[nodiscard]] std::uint64_t total_weight() const noexcept { return total_weight_; }
  [[nodiscard]] std::uint32_t max_weight() const noexcept { return max_weight_; }

  // Index of `id`, O(log n).
  [[nodiscard]] std::optional<std::size_t> find(backend_id id) const noexcept {
    auto it = std::lower_bound(entries_.begin(), entries_.end(), id,
                               [](const backend_entry& e, backend_id v) { return e.id < v; });
    if (it == entries_.end() || it->id != id) return std::nullopt;
    return static_cast<std::size_t>(it - entries_.begin());
  }

  // Sum of in-flight counts: O(1) when the owner maintains a total counter
  // (levee::balancer does for strategies that ask), otherwise an O(n) scan.
  [[nodiscard]] std::int64_t total_in_flight() const noexcept {
    if (total_in_flight_ != nullptr) return total_in_flight_->load(std::memory_order_relaxed);
    std::int64_t sum = 0;
    for (const auto& e : entries_) sum += e.load->load();
    return sum;
  }

 private:
  std::vector<backend_entry> entries_;
  const std::atomic<std::int64_t>* total_in_flight_ = nullptr;
  std::uint64_t total_weight_ = 0;
  std::uint32_t max_weight_ = 0;
  std::size_t size_ = 0;  // entries_.size()
};

// A single-threaded, owning list of backends and their load cells, for
// simulations, tests and custom balancers. Not synchronised: mutate it from
// one thread, and take snapshot() only while no pick uses an older snapshot
// whose backend was removed (the removed backend's cell dies with remove()).
class backend_set {
 private:
  struct item_t {
    load_cell cell;
    backend_entry entry;
  };
  using items_t = std::vector<std::unique_ptr<item_t>>;
  items_t::iterator lower(backend_id id) {
    return std::lower_bound(items_.begin(), items_.end(), id,
                            [](const std::unique_ptr<item_t>& a, backend_id v) { return a->entry.id < v; });
  }
  item_t* find(backend_id id) {
    auto it = lower(id);
    return it != items_.end() && (*it)->entry.id == id ? it->get() : nullptr;
  }
  items_t items_;

 public:
  void add(backend_id id, backend_options o = {}, std::int64_t since_ns = 0) {
    if (o.weight == 0)
      throw std::invalid_argument("levee::backend_set::add: weight 0 for backend " + std::to_string(id));
    auto it = lower(id);
    if (it != items_.end() && (*it)->entry.id == id)
      throw std::invalid_argument("levee::backend_set::add: duplicate backend id " + std::to_string(id));
    auto item = std::make_unique<item_t>();
    item->entry = backend_entry{id, o.weight, o.tier, o.max_in_flight, since_ns, &item->cell, true};
    items_.insert(it, std::move(item));
  }
  bool remove(backend_id id) {
    auto it = lower(id);
    if (it == items_.end() || (*it)->entry.id != id) return false;
    items_.erase(it);
    return true;
  }
  bool set_weight(backend_id id, std::uint32_t w) {
    if (w == 0)
      throw std::invalid_argument("levee::backend_set::set_weight: weight 0 for backend " +
                                  std::to_string(id));
    auto* e = find(id);
    return e != nullptr && ((e->entry.weight = w), true);
  }
  bool set_healthy(backend_id id, bool healthy, std::int64_t now_ns = 0) {
    auto* e = find(id);
    if (e == nullptr) return false;
    if (healthy && !e->entry.healthy) e->entry.since_ns = now_ns;
    e->entry.healthy = healthy;
    return true;
  }
  bool set_max_in_flight(backend_id id, std::size_t m) {
    auto* e = find(id);
    return e != nullptr && ((e->entry.max_in_flight = m), true);
  }
  // The cell of `id`; throws std::out_of_range if absent.
  [[nodiscard]] load_cell& load(backend_id id) {
    auto* e = find(id);
    if (e == nullptr)
      throw std::out_of_range("levee::backend_set::load: unknown backend id " + std::to_string(id));
    return e->cell;
  }
  [[nodiscard]] std::size_t size() const noexcept { return items_.size(); }
  [[nodiscard]] backend_snapshot snapshot(const std::atomic<std::int64_t>* total_in_flight = nullptr) const {
    std::vector<backend_entry> v;
    v.reserve(items_.size());
    for (const auto& it : items_) v.push_back(it->entry);
    return backend_snapshot(std::move(v), total_in_flight);
  }
};

}  // namespace levee
