// levee/redis/codec.hpp - the stream codec concept: how a Job travels in a
// Redis stream entry, and levee::redis::stream_job, what the leveler gets.
//
// A codec turns a Job into one binary-safe blob and back. The blob is stored
// in the entry's field "job" (levee::redis::job_field); other fields of an
// entry are ignored by the ingress and copied to the dead-letter stream.
//   c.encode(job)   -> std::string (any bytes)
//   c.decode(blob)  -> Job; throws (any exception) for a blob it cannot read:
//                      the ingress then dead-letters the entry (reason "decode")
//                      instead of handing it to the leveler.
#pragma once

#include <concepts>
#include <string>
#include <string_view>
#include <type_traits>

namespace levee::redis {

inline constexpr std::string_view job_field = "job";

template <class C, class Job>
concept stream_codec = std::copy_constructible<C> &&
    requires(const C& c, const Job& job, std::string_view blob) {
  { c.encode(job) } -> std::convertible_to<std::string>;
  { c.decode(blob) } -> std::same_as<Job>;
};

// The identity codec for std::string jobs.
struct string_codec {
  [[nodiscard]] std::string encode(const std::string& job) const { return job; }
  [[nodiscard]] std::string decode(std::string_view blob) const { return std::string(blob); }
};

// What the leveler carries for an entry read from a stream: the entry's id
// (needed to acknowledge it) and the decoded job.
template <class Job>
struct stream_job {
  std::string id;
  Job job;
};

static_assert(stream_codec<string_codec, std::string>, "string_codec must model stream_codec<std::string>");
static_assert(std::is_nothrow_move_constructible_v<stream_job<std::string>>,
              "stream_job must be nothrow movable (the leveler requires it of its jobs)");

}  // namespace levee::redis
