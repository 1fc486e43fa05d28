// levee/leveler/gates.hpp - the gates a job passes between the queue and a
// backend: the rate gate (any levee::rate_gate: by default a local GCRA on an
// absolute schedule, with the automatic burst and its jitter reserve; or a
// gate the user hands in, such as levee::redis::shared_rate_gate) and the
// concurrency gate (a fixed limit, or an adaptive one fed by every finished
// attempt). The dispatch step asks them in a fixed order (see worker.hpp): a
// side-effect-free rate check, the concurrency permit, the backend, and only
// then the rate token.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <levee/adaptive_limit.hpp>
#include <levee/clock.hpp>
#include <levee/concurrency_limiter.hpp>
#include <levee/detail/time.hpp>
#include <levee/metrics.hpp>
#include <levee/rate_gate.hpp>
#include <levee/rate_limiter.hpp>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace levee::detail {

// Whether the leveler can build a RateGate itself from options.rate and
// options.burst (levee::rate_limiter can; a gate leasing permits from
// elsewhere is built by the user and handed in as options.gate).
template <class RateGate, class Clock>
inline constexpr bool buildable_rate_gate = std::is_constructible_v<RateGate, rate, std::uint64_t, Clock>;

template <clock Clock, rate_gate RateGate = rate_limiter<Clock>>
class gate_stage {
  static_assert(std::is_same_v<typename RateGate::clock_type, Clock>,
                "levee::leveler: the rate gate's clock_type must be the leveler's Clock (both read the same "
                "time)");

 public:
  using time_point = typename Clock::time_point;
  using duration = typename Clock::duration;
  using adaptive_options = typename adaptive_limit<>::options;
  using gate_type = RateGate;

  // burst 0 = automatic. `external`, when set, is the rate gate (the leveler
  // shares it and never builds its own; r must then be empty and burst 0).
  // Throws std::invalid_argument naming options.rate, options.burst or
  // options.gate when the rate gate cannot be built or they conflict.
  gate_stage(const std::optional<rate>& r, std::uint64_t burst, std::shared_ptr<RateGate> external,
             std::size_t max_concurrency, const std::optional<adaptive_options>& adaptive, const Clock& c) {
    if (external) {
      if (r)
        throw std::invalid_argument(
            "levee::leveler: options.rate and options.gate are exclusive: the gate has its own rate");
      if (burst != 0)
        throw std::invalid_argument(
            "levee::leveler: options.burst must be 0 with options.gate: the gate has its own burst, got " +
            std::to_string(burst));
      external_ = std::move(external);
      gate_ = external_.get();
    } else if (r) {
      if constexpr (buildable_rate_gate<RateGate, Clock>) {
        make_limiter(*r, burst, c);
      } else {
        throw std::invalid_argument(
            "levee::leveler: options.rate needs a gate the leveler can build from (rate, burst, clock); "
            "this RateGate cannot be: build it and pass it as options.gate");
      }
    }
    if (adaptive) {
      adaptive_.emplace(*adaptive);
      concurrency_.emplace(adaptive_->limit());
    } else if (max_concurrency != 0) {
      concurrency_.emplace(max_concurrency);
    }
  }

  [[nodiscard]] bool has_rate() const noexcept { return gate_ != nullptr; }
  [[nodiscard]] bool has_concurrency() const noexcept { return concurrency_.has_value(); }
  [[nodiscard]] bool is_adaptive() const noexcept { return adaptive_.has_value(); }

  // The rate check without side effects: when the next token is due (<= now: available).
  [[nodiscard]] time_point next_token(time_point now) const { return gate_->available_at(1, now); }
  // Spends the token (false if another thread took it first).
  [[nodiscard]] bool take_token(time_point now) { return gate_->try_acquire(1, now); }
  // A concurrency permit, or an empty one when the gate is full.
  [[nodiscard]] permit try_permit() noexcept { return concurrency_->try_acquire(); }

  // The time the k-th next token is due (GCRA: available_at(k) for k <= burst,
  // then one emission interval apart), saturating at time_point::max(). A
  // concurrent set_burst() that lowers the burst below the k asked for is
  // read again, never thrown.
  [[nodiscard]] time_point forecast(std::uint64_t k, time_point now) const {
    for (;;) {
      const std::uint64_t b = std::max<std::uint64_t>(gate_->burst(), 1);
      time_point at;
      try {
        at = gate_->available_at(std::min(k, b), now);
      } catch (const std::invalid_argument&) {
        continue;
      }
      if (k <= b) return at;
      const auto t = saturating_ceil<duration>(gate_->get_rate().emission_interval());
      return saturating_add(at, saturating_mul(t, static_cast<double>(k - b)));
    }
  }

  // Feedback of one finished attempt to the adaptive limit: its latency, the
  // attempts in flight (itself included) and whether it failed (a failure
  // counts as a drop: a struggling downstream must make the limit shrink).
  void on_sample(std::chrono::nanoseconds latency, std::size_t in_flight, bool failed) {
    if (!adaptive_) return;
    adaptive_->on_sample(latency, in_flight, failed);
    concurrency_->set_limit(adaptive_->limit());
  }

  // Reconfigures the rate gate (a gate handed in as options.gate is
  // reconfigured for everyone sharing it).
  void set_rate(rate r, const char* fn) requires reconfigurable_rate_gate<RateGate> {
    require_gate(fn).set_rate(r);
  }
  void set_burst(std::uint64_t b, const char* fn) requires reconfigurable_rate_gate<RateGate> {
    require_gate(fn).set_burst(b);
    auto_burst_.store(0, std::memory_order_relaxed);  // an explicit burst has no jitter reserve
  }
  void set_concurrency_limit(std::size_t limit) {
    if (!concurrency_ || adaptive_)
      throw std::logic_error(
          "levee::leveler::set_concurrency_limit: the leveler has no fixed concurrency limit");
    concurrency_->set_limit(limit);
  }

  void collect(metrics_snapshot& m) const {
    if (gate_) {
      m.rate_limit = gate_->get_rate().per_second_value();
      const std::uint64_t automatic = auto_burst_.load(std::memory_order_relaxed);
      m.burst = automatic != 0 ? automatic : gate_->burst();
    }
    if (concurrency_) m.concurrency_limit = concurrency_->limit();
  }

  // Enough credit to absorb ~5 ms of wake-up lateness (timer slack, and
  // scheduling delays on a loaded machine): a late worker dispatches the
  // missed tokens as a catch-up batch, so the long-run rate stays exact. With
  // burst 1 every late wake-up would be lost time.
  [[nodiscard]] static std::uint64_t auto_burst(const rate& r) {
    const double per_5ms = r.per_second_value() / 200.0;
    return std::max<std::uint64_t>(2, static_cast<std::uint64_t>(std::ceil(per_5ms)));
  }
  // With the automatic burst b, the gate itself admits at most b minus the
  // tokens of 100 us, and at least one token when b > 2: a handler starts a
  // little after its admission (and workers run in parallel), and this
  // reserve keeps the times handlers start - what a downstream sees - within
  // b + r x w as long as those delays differ by at most 100 us (by at most
  // one interval at rates below 10k/s). Always < b / 2.
  [[nodiscard]] static std::uint64_t jitter_reserve(const rate& r) {
    if (auto_burst(r) <= 2) return 0;
    return std::max<std::uint64_t>(1,
                                   static_cast<std::uint64_t>(std::floor(r.per_second_value() / 10'000.0)));
  }

 private:
  void make_limiter(const rate& r, std::uint64_t burst, const Clock& c) {
    const std::uint64_t b = burst != 0 ? burst : auto_burst(r) - jitter_reserve(r);
    try {
      own_.emplace(r, b, c);
      gate_ = &*own_;
    } catch (const std::invalid_argument& e) {
      bool rate_ok = true;
      try {
        RateGate probe(r, 1, c);
      } catch (const std::invalid_argument&) {
        rate_ok = false;
      }
      throw std::invalid_argument(std::string("levee::leveler: options.") +
                                  (rate_ok ? "burst (" + std::to_string(burst) + ")" : std::string("rate")) +
                                  " is not usable: " + e.what());
    }
    if (burst == 0) auto_burst_.store(auto_burst(r), std::memory_order_relaxed);
  }
  RateGate& require_gate(const char* fn) {
    if (!gate_)
      throw std::logic_error(std::string("levee::leveler::") + fn +
                             ": the leveler has no rate gate (options.rate or options.gate)");
    return *gate_;
  }

  // The rate gate in use: own_ (built from options.rate), *external_, or none.
  // Reached through one pointer either way, as the optional alone was.
  RateGate* gate_ = nullptr;
  std::optional<RateGate> own_;
  std::shared_ptr<RateGate> external_;
  std::optional<concurrency_limiter> concurrency_;
  std::optional<adaptive_limit<>> adaptive_;  // thread-safe on its own
  std::atomic<std::uint64_t> auto_burst_{
      0};  // the automatic burst b while in use (see jitter_reserve), else 0
};

}  // namespace levee::detail
