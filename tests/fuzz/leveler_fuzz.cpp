// tests/fuzz/leveler_fuzz.cpp - levee::leveler in simulation mode
// (options.workers = 0, levee::manual_clock): random options, submissions
// (keys, deadlines, overflow policies reject and drop_oldest), handler
// outcomes (success, failure, throw) scripted per job and attempt,
// set_rate/set_burst/set_concurrency_limit, backend add/remove/weight/
// max_in_flight/health changes, step(), run_until(), clock moves, close and
// stop. Checked after every operation: metrics() agrees with the handlers'
// and the sink's own counts; handlers never run a job past its deadline;
// and at the end (after stop()) every accepted job reached exactly one final
// state (success or one dead letter) and no rejected job ever ran.
// A blocking submit() is never used (the queue can only drain through
// step(), so a full queue would block forever).
#include <chrono>
#include <cstdint>
#include <levee/clock.hpp>
#include <levee/leveler.hpp>
#include <map>
#include <optional>
#include <stdexcept>
#include <vector>

#include "fuzz_input.hpp"

namespace {

using clock_type = levee::manual_clock;
using time_point = clock_type::time_point;
using ns = std::chrono::nanoseconds;

time_point saturating_add(time_point t, ns d) {
  std::int64_t r = 0;
  if (__builtin_add_overflow(t.time_since_epoch().count(), d.count(), &r)) return time_point::max();
  return time_point(ns(r));
}

struct job {
  std::uint64_t id = 0;
  std::uint32_t script = 0;  // 2 bits per attempt: 0/3 success, 1 failure, 2 throw
};
using leveler_type = levee::leveler<job, levee::round_robin, clock_type>;

struct job_record {
  bool accepted = false;
  bool rejected = false;
  std::uint32_t attempts = 0;
  std::uint32_t successes = 0;
  std::uint32_t dead_letters = 0;
  std::optional<time_point> deadline;
};

struct world {
  clock_type clk{time_point(ns(1'000'000'000))};
  std::map<std::uint64_t, job_record> jobs;
  std::uint64_t started = 0, succeeded = 0, failed = 0;
  std::uint64_t dl[4] = {0, 0, 0, 0};  // by dead_letter_reason
  std::uint64_t accepted = 0, rejected_full = 0, rejected_closed = 0, rejected_deadline = 0;
  std::uint64_t sink_throws = 0;
  bool sink_throw_next = false;
  std::map<levee::backend_id, std::uint64_t> started_on;
};

void check_metrics(const world& w, const leveler_type& lev) {
  const levee::metrics_snapshot m = lev.metrics();
  auto eq = [](std::uint64_t a, std::uint64_t b, const char* what) {
    LEVEE_FUZZ_CHECK(a == b, "metrics %s = %llu, harness counted %llu", what,
                     static_cast<unsigned long long>(a), static_cast<unsigned long long>(b));
  };
  eq(m.accepted, w.accepted, "accepted");
  eq(m.rejected.full, w.rejected_full, "rejected.full");
  eq(m.rejected.closed, w.rejected_closed, "rejected.closed");
  eq(m.rejected.would_miss_deadline, w.rejected_deadline, "rejected.would_miss_deadline");
  eq(m.submitted, m.accepted + m.rejected.total(), "submitted");
  eq(m.started, w.started, "started");
  eq(m.succeeded, w.succeeded, "succeeded");
  eq(m.failed, w.failed, "failed");
  eq(m.dead_lettered.failed, w.dl[static_cast<int>(levee::dead_letter_reason::failed)],
     "dead_lettered.failed");
  eq(m.dead_lettered.expired, w.dl[static_cast<int>(levee::dead_letter_reason::expired)],
     "dead_lettered.expired");
  eq(m.dead_lettered.dropped, w.dl[static_cast<int>(levee::dead_letter_reason::dropped)],
     "dead_lettered.dropped");
  eq(m.dead_lettered.cancelled, w.dl[static_cast<int>(levee::dead_letter_reason::cancelled)],
     "dead_lettered.cancelled");
  eq(m.dead_letter_sink_errors, w.sink_throws, "dead_letter_sink_errors");
  eq(m.outstanding, w.accepted - w.succeeded - m.dead_lettered.total(), "outstanding");
  eq(lev.outstanding(), m.outstanding, "outstanding()");
  eq(m.in_flight, 0, "in_flight (no handler is running between operations)");
  LEVEE_FUZZ_CHECK(m.queue_depth <= m.queue_capacity, "queue_depth %zu > capacity %zu", m.queue_depth,
                   m.queue_capacity);
  for (const auto& b : m.backends) {
    auto it = w.started_on.find(b.id);
    const std::uint64_t mine = it == w.started_on.end() ? 0 : it->second;
    eq(b.started, mine, "backends[i].started");
    LEVEE_FUZZ_CHECK(b.in_flight == 0, "backend %llu in flight %zu between operations",
                     static_cast<unsigned long long>(b.id), b.in_flight);
  }
}

void run(levee_fuzz::input& in) {
  world w;
  leveler_type::options o;
  o.workers = 0;
  o.capacity = 1 + in.below(12);
  o.overflow = in.boolean() ? levee::overflow_policy::drop_oldest : levee::overflow_policy::reject;
  o.deadline_admission = in.below(4) != 0;
  const bool with_rate = in.below(3) != 0;
  if (with_rate) {
    o.rate = levee::rate::per_second(1 + in.below(2000));
    o.burst = in.below(6);  // 0 = auto
  }
  const unsigned gate = static_cast<unsigned>(in.below(3));
  if (gate == 1) o.max_concurrency = 1 + in.below(4);
  if (gate == 2) o.adaptive.emplace();
  o.retry.max_attempts = 1 + static_cast<std::uint32_t>(in.below(4));
  o.retry.base_backoff = ns(1 + static_cast<std::int64_t>(in.u16()) * 1000);
  // "Maximum" durations mean "no limit" and must saturate, never overflow.
  o.retry.max_backoff =
      in.below(8) == 0 ? ns::max() : o.retry.base_backoff * static_cast<std::int64_t>(1 + in.below(64));
  o.retry.budget_ratio = static_cast<double>(in.below(3)) * 0.5;
  o.retry.min_retries_per_second = static_cast<std::uint32_t>(in.below(20));
  if (in.below(4) == 0)
    o.default_deadline = in.below(4) == 0 ? ns::max() : ns(1 + static_cast<std::int64_t>(in.u32()) * 100);
  if (in.boolean()) o.health = levee::health_options::disabled();
  o.seed = in.u64();
  o.dead_letter = [&w](job&& j, levee::dead_letter_reason r, std::exception_ptr) {
    auto& rec = w.jobs[j.id];
    LEVEE_FUZZ_CHECK(rec.accepted, "job %llu dead-lettered but never accepted",
                     static_cast<unsigned long long>(j.id));
    ++rec.dead_letters;
    ++w.dl[static_cast<int>(r)];
    if (w.sink_throw_next) {
      w.sink_throw_next = false;
      ++w.sink_throws;
      throw std::runtime_error("sink");
    }
  };

  leveler_type lev(o, w.clk);
  std::vector<levee::backend_id> backends;
  auto make_handler = [&w, &lev_ref = lev](levee::backend_id* self) {
    (void)lev_ref;
    return [&w, self](job& j) -> levee::handler_result {
      auto& rec = w.jobs[j.id];
      LEVEE_FUZZ_CHECK(rec.accepted, "job %llu ran but was never accepted",
                       static_cast<unsigned long long>(j.id));
      LEVEE_FUZZ_CHECK(rec.successes == 0 && rec.dead_letters == 0, "job %llu ran after its final state",
                       static_cast<unsigned long long>(j.id));
      if (rec.deadline)
        LEVEE_FUZZ_CHECK(w.clk.now() <= *rec.deadline, "job %llu dispatched %lld ns after its deadline",
                         static_cast<unsigned long long>(j.id),
                         static_cast<long long>((w.clk.now() - *rec.deadline).count()));
      const std::uint32_t attempt = rec.attempts++;
      ++w.started;
      ++w.started_on[*self];
      const std::uint32_t what = attempt < 16 ? (j.script >> (2 * attempt)) & 3U : 0;
      if (what == 1) {
        ++w.failed;
        return levee::handler_result::failure();
      }
      if (what == 2) {
        ++w.failed;
        throw std::runtime_error("handler");
      }
      ++rec.successes;
      ++w.succeeded;
      return levee::handler_result::success();
    };
  };
  // Backend ids live in stable storage: the handler learns its id after add_backend returns.
  std::vector<std::unique_ptr<levee::backend_id>> ids;
  auto add = [&] {
    levee::backend_options bo;
    bo.weight = 1 + static_cast<std::uint32_t>(in.below(5));
    bo.max_in_flight = in.below(3);
    ids.push_back(std::make_unique<levee::backend_id>(0));
    levee::backend_id* slot = ids.back().get();
    *slot = lev.add_backend(make_handler(slot), bo);
    backends.push_back(*slot);
  };
  for (std::size_t i = 0, n = in.below(4); i < n; ++i) add();

  std::uint64_t next_id = 1;
  bool stopped = false;
  for (int ops = 0; ops < 400 && !in.empty(); ++ops) {
    switch (in.below(16)) {
      case 0:
      case 1:
      case 2:
      case 3: {  // submit
        job j{next_id++, in.u32()};
        leveler_type::job_options jo;
        if (in.boolean()) jo.key = in.u64();
        if (in.below(3) == 0)
          jo.deadline = in.below(8) == 0
                            ? time_point::max()
                            : w.clk.now() + ns(static_cast<std::int64_t>(in.u32()) * 100) - ns(1000);
        const unsigned how = static_cast<unsigned>(in.below(3));
        const time_point now = w.clk.now();
        auto& rec = w.jobs[j.id];
        if (how != 0 && jo.deadline)
          rec.deadline = jo.deadline;
        else if (o.default_deadline)
          rec.deadline = saturating_add(now, *o.default_deadline);
        levee::submit_result<job> r = how == 0   ? lev.try_submit(j)
                                      : how == 1 ? lev.try_submit(j, jo)
                                                 : lev.submit(j, jo);  // reject or drop_oldest: never blocks
        if (r.accepted()) {
          rec.accepted = true;
          ++w.accepted;
          LEVEE_FUZZ_CHECK(!r.job, "accepted result holds a job");
        } else {
          rec.rejected = true;
          LEVEE_FUZZ_CHECK(r.job && r.job->id == j.id, "a rejected submission did not hand the job back");
          switch (r.status) {
            case levee::submit_status::full:
              ++w.rejected_full;
              break;
            case levee::submit_status::closed:
              ++w.rejected_closed;
              break;
            case levee::submit_status::would_miss_deadline:
              // With the simulation's rates (>= 1/s) and capacities (<= 12) no job waits an hour.
              LEVEE_FUZZ_CHECK(rec.deadline && *rec.deadline - now < std::chrono::hours(1),
                               "job %llu with a deadline an hour or more away refused as would_miss_deadline",
                               static_cast<unsigned long long>(j.id));
              ++w.rejected_deadline;
              break;
            default:
              LEVEE_FUZZ_CHECK(false, "unexpected submit status %d", static_cast<int>(r.status));
          }
        }
        break;
      }
      case 4:
      case 5:
        (void)lev.step();
        break;
      case 6: {  // run_until
        const time_point t = w.clk.now() + ns(static_cast<std::int64_t>(in.u32()) * 10);
        (void)lev.run_until(t);
        LEVEE_FUZZ_CHECK(w.clk.now() >= t, "run_until did not reach its time");
        break;
      }
      case 7:  // move the clock
        w.clk.advance(
            ns(static_cast<std::int64_t>(in.u16()) * static_cast<std::int64_t>(1 + in.below(1000))));
        break;
      case 8:
        if (in.below(4) == 0 || backends.empty())
          add();
        else {
          const std::size_t i = in.below(backends.size());
          LEVEE_FUZZ_CHECK(lev.remove_backend(backends[i]), "remove_backend of a present backend failed");
          backends.erase(backends.begin() + static_cast<std::ptrdiff_t>(i));
        }
        break;
      case 9:
        if (!backends.empty()) {
          const levee::backend_id id = backends[in.below(backends.size())];
          switch (in.below(3)) {
            case 0:
              LEVEE_FUZZ_CHECK(lev.set_weight(id, 1 + static_cast<std::uint32_t>(in.below(8))), "set_weight");
              break;
            case 1:
              LEVEE_FUZZ_CHECK(lev.set_max_in_flight(id, in.below(3)), "set_max_in_flight");
              break;
            default:
              LEVEE_FUZZ_CHECK(lev.set_healthy(id, in.boolean()), "set_healthy");
              break;
          }
        }
        break;
      case 10:
        if (with_rate) {
          if (in.boolean())
            lev.set_rate(levee::rate::per_second(1 + in.below(5000)));
          else
            lev.set_burst(1 + in.below(300));
        }
        break;
      case 11:
        if (gate == 1) lev.set_concurrency_limit(1 + in.below(4));
        break;
      case 12:
        w.sink_throw_next = in.boolean();
        break;
      case 13:
        if (in.below(4) == 0) lev.close();
        break;
      case 14:
        if (in.below(8) == 0) {
          lev.stop();
          stopped = true;
        }
        break;
      default: {  // step until idle or a bounded number of events
        for (int k = 0; k < 8; ++k) {
          (void)lev.step();
          const auto e = lev.next_event();
          if (!e) break;
          (void)lev.run_until(*e);
        }
        break;
      }
    }
    check_metrics(w, lev);
  }
  lev.stop();
  (void)stopped;
  check_metrics(w, lev);
  LEVEE_FUZZ_CHECK(lev.outstanding() == 0, "%llu jobs outstanding after stop()",
                   static_cast<unsigned long long>(lev.outstanding()));
  for (const auto& [id, rec] : w.jobs) {
    if (rec.rejected) {
      LEVEE_FUZZ_CHECK(!rec.accepted && rec.attempts == 0 && rec.dead_letters == 0,
                       "rejected job %llu was also accepted, run or dead-lettered",
                       static_cast<unsigned long long>(id));
      continue;
    }
    LEVEE_FUZZ_CHECK(rec.accepted, "job %llu neither accepted nor rejected",
                     static_cast<unsigned long long>(id));
    LEVEE_FUZZ_CHECK(rec.successes + rec.dead_letters == 1,
                     "job %llu reached %u final states (%u successes, %u dead letters, %u attempts)",
                     static_cast<unsigned long long>(id), rec.successes + rec.dead_letters, rec.successes,
                     rec.dead_letters, rec.attempts);
    LEVEE_FUZZ_CHECK(rec.attempts <= o.retry.max_attempts, "job %llu ran %u times, max_attempts %u",
                     static_cast<unsigned long long>(id), rec.attempts, o.retry.max_attempts);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  levee_fuzz::input in(data, size);
  run(in);
  return 0;
}
