// levee/leveler/job.hpp - the leveler's public vocabulary: what a producer
// passes with a job (job_options), what a submission returns
// (submit_result, submit_status), the handler forms (synchronous, or
// asynchronous with a levee::completion: completion.hpp),
// why a job reaches the dead-letter sink (dead_letter_reason), the overflow
// and retry policies.
#pragma once

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <levee/leveler/completion.hpp>
#include <optional>
#include <string_view>
#include <type_traits>
#include <utility>

namespace levee {

// What submit() does when the ingress queue is full.
enum class overflow_policy {
  block,        // wait for room (backpressure); see leveler::submit for when it does not wait
  reject,       // return submit_status::full with the job
  drop_oldest,  // evict the oldest queued job to the dead-letter sink (reason dropped) and enqueue
};

enum class submit_status {
  accepted,
  full,                 // no room (try_submit, reject policy, or a submit that may not wait: see submit)
  closed,               // close() or stop() was called
  would_miss_deadline,  // deadline-aware admission predicted dispatch after the job's deadline
  timeout,              // submit_for / submit_until found no room in time
  flow_full,            // fair ingress: the job's flow holds fairness.max_queued_per_flow queued jobs
};

enum class dead_letter_reason {
  failed,     // the last allowed attempt failed (or a retry was refused by the budget or the deadline)
  expired,    // found past its deadline at dispatch; the handler never ran for this attempt
  dropped,    // evicted from a full queue by overflow_policy::drop_oldest
  cancelled,  // not started when stop() was called
  shed,       // fair ingress: shed by its band's CoDel sojourn control before dispatch; not run
};

namespace detail {
// The name of an enumerator of a contiguous enum numbered from 0.
template <class E, std::size_t N>
[[nodiscard]] constexpr std::string_view enum_name(E e, const std::string_view (&names)[N]) noexcept {
  const auto i = static_cast<std::size_t>(e);
  return i < N ? names[i] : "unknown";
}
}  // namespace detail

[[nodiscard]] constexpr std::string_view to_string(overflow_policy p) noexcept {
  constexpr std::string_view names[] = {"block", "reject", "drop_oldest"};
  return detail::enum_name(p, names);
}
[[nodiscard]] constexpr std::string_view to_string(submit_status s) noexcept {
  constexpr std::string_view names[] = {"accepted", "full",     "closed", "would_miss_deadline",
                                        "timeout",  "flow_full"};
  return detail::enum_name(s, names);
}
[[nodiscard]] constexpr std::string_view to_string(dead_letter_reason r) noexcept {
  constexpr std::string_view names[] = {"failed", "expired", "dropped", "cancelled", "shed"};
  return detail::enum_name(r, names);
}
static_assert(to_string(submit_status::timeout) == "timeout" &&
                  to_string(submit_status::flow_full) == "flow_full" &&
                  to_string(dead_letter_reason::cancelled) == "cancelled" &&
                  to_string(dead_letter_reason::shed) == "shed" &&
                  to_string(overflow_policy::drop_oldest) == "drop_oldest",
              "the names follow the enumerators' order");

// The result of a submission. On anything but `accepted`, `job` holds the
// job handed back to the caller; on `accepted` it is empty.
template <class Job>
struct [[nodiscard]] submit_result {
  submit_status status = submit_status::accepted;
  std::optional<Job> job;

  [[nodiscard]] bool accepted() const noexcept { return status == submit_status::accepted; }
  explicit operator bool() const noexcept { return accepted(); }
};

// Retries: a failed job is attempted again after a full-jitter exponential
// backoff, uniform in [0, min(max_backoff, base_backoff * 2^(retry-1))], on a
// backend it has not failed on yet (if any), as long as
//  - it has made fewer than max_attempts attempts (1 = never retry),
//  - the retry would start before the job's deadline, and
//  - the retry budget allows it: over a sliding 10 s window, retries <=
//    min_retries_per_second * 10 + budget_ratio * first attempts.
// Otherwise it goes to the dead-letter sink as `failed` with the last error.
// Retries are opt-in (max_attempts = 1) because only idempotent jobs may be
// retried safely.
struct retry_policy {
  std::uint32_t max_attempts = 1;
  std::chrono::nanoseconds base_backoff = std::chrono::milliseconds{10};
  std::chrono::nanoseconds max_backoff = std::chrono::seconds{1};
  double budget_ratio = 0.2;
  std::uint32_t min_retries_per_second = 10;
};

// Per-job options, used with designated initializers:
//   lev.try_submit(j, {.key = k, .deadline = d});
// key: an affinity key for key-based strategies (ring_hash, maglev,
// rendezvous, jump_hash). deadline: an absolute time on the leveler's clock;
// the job is never dispatched after it (and refused at the door when the
// leveler predicts it would be). Fields are added over time; every field
// has a default, so code naming some of them keeps compiling.
// flow, band, cost: used only with a fair ingress (leveler options.fairness;
// ignored by the default FIFO). flow: the fairness key (e.g. a tenant id);
// backlogged flows of a band share its dispatches in proportion to their
// weights. band: the priority band, < fairness.bands.size(). cost: the
// job's size in deficit round robin (and in the per-flow rate), >= 1; the
// leveler's own rate gate still charges one token per job.
template <class Clock>
struct job_options {
  std::optional<std::uint64_t> key{};
  std::optional<typename Clock::time_point> deadline{};
  std::uint64_t flow = 0;
  std::uint32_t band = 0;
  std::uint32_t cost = 1;
};

// A synchronous handler: callable with Job&, returning void, bool or
// handler_result; the attempt ends when it returns (or throws).
template <class H, class Job>
concept sync_job_handler = std::invocable<H&, Job&> &&
    (std::is_void_v<std::invoke_result_t<H&, Job&>> || std::same_as<std::invoke_result_t<H&, Job&>, bool> ||
     std::convertible_to<std::invoke_result_t<H&, Job&>, handler_result>);
// An asynchronous handler: callable with (Job&, levee::completion), returning
// void; it starts the work and returns, and the attempt ends when the
// completion fires (see levee::completion).
template <class H, class Job>
concept async_job_handler =
    std::invocable<H&, Job&, completion> && std::is_void_v<std::invoke_result_t<H&, Job&, completion>>;
// A backend handler: either form (not both: the form must be unambiguous).
template <class H, class Job>
concept job_handler = std::move_constructible<std::decay_t<H>> &&
    (sync_job_handler<std::decay_t<H>, Job> != async_job_handler<std::decay_t<H>, Job>);

}  // namespace levee
