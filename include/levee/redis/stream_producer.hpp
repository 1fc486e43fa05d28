// levee/redis/stream_producer.hpp - levee::redis::stream_producer, the
// producer side of a durable ingress: XADD with backpressure from the
// consumer group's lag, and length limiting that never trims work away.
//
// One Lua script per add decides atomically on the server:
//  - backpressure: if the group's lag (entries added and not yet delivered
//    to any consumer) is >= max_lag, nothing is added (status backpressure);
//  - length limit: while the stream holds >= max_len entries, the oldest is
//    deleted only if every group has delivered it and none holds it pending
//    (it is done); otherwise nothing is added (status full). Plain MAXLEN
//    trimming would silently delete entries never delivered or still being
//    processed: this refuses instead, and the caller decides.
// Thread safety: as a connection (one producer per thread).
#pragma once

#include <chrono>
#include <cstdint>
#include <levee/redis/codec.hpp>
#include <levee/redis/connection.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace levee::redis {

enum class produce_status {
  ok,            // added; id set
  backpressure,  // the group's lag is at max_lag
  full,          // at max_len and the oldest entry is not done
  error,         // the server could not be reached or replied an error; message set
};

[[nodiscard]] constexpr std::string_view to_string(produce_status s) noexcept {
  switch (s) {
    case produce_status::ok:
      return "ok";
    case produce_status::backpressure:
      return "backpressure";
    case produce_status::full:
      return "full";
    case produce_status::error:
      return "error";
  }
  return "unknown";
}

struct [[nodiscard]] produce_result {
  produce_status status = produce_status::ok;
  std::string id;         // the entry's id when ok
  std::uint64_t lag = 0;  // the group's lag seen by the script
  std::string message;    // when error
  explicit operator bool() const noexcept { return status == produce_status::ok; }
};

struct stream_producer_options {
  connection_options connection;
  std::string stream;         // non-empty
  std::string group;          // the consumer group whose lag applies (non-empty)
  std::uint64_t max_lag = 0;  // 0: no backpressure
  std::uint64_t max_len = 0;  // 0: no length limit
};

inline const script& producer_script() {
  static const script s{R"lua(
local function parse(id)
  local d = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, d - 1)), tonumber(string.sub(id, d + 1))
end
local function le(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as <= bs)
end
local group, max_lag, max_len = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local groups = {}
if redis.call('EXISTS', KEYS[1]) == 1 then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    table.insert(groups, info)
  end
end
local lag = 0
if max_lag > 0 then
  local mine = nil
  for _, info in ipairs(groups) do if info['name'] == group then mine = info end end
  if mine == nil then
    lag = redis.call('XLEN', KEYS[1])
  elseif mine['lag'] then
    lag = tonumber(mine['lag'])
  else
    lag = #redis.call('XRANGE', KEYS[1], '(' .. mine['last-delivered-id'], '+', 'COUNT', max_lag)
  end
  if lag >= max_lag then return {'backpressure', lag} end
end
if max_len > 0 then
  while redis.call('XLEN', KEYS[1]) >= max_len do
    local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
    if #groups == 0 then return {'full', lag} end
    for _, info in ipairs(groups) do
      if not le(oldest, info['last-delivered-id']) then return {'full', lag} end
      local p = redis.call('XPENDING', KEYS[1], info['name'])
      if p[1] > 0 and le(p[2], oldest) then return {'full', lag} end
    end
    redis.call('XDEL', KEYS[1], oldest)
  end
end
local id = redis.call('XADD', KEYS[1], '*', ARGV[4], ARGV[5])
return {'ok', lag, id}
)lua"};
  return s;
}

template <class Job, stream_codec<Job> Codec>
class stream_producer {
 public:
  // Connects at once (io_error if that fails); std::invalid_argument for a bad option.
  explicit stream_producer(stream_producer_options o, Codec codec = Codec{})
      : opts_(validate(std::move(o))), codec_(std::move(codec)), conn_(opts_.connection) {}

  // Adds one job (one round trip). Blocking for at most the command timeout
  // (plus a reconnection). Never throws for an outage: status error.
  produce_result try_add(const Job& job) {
    produce_result out;
    try {
      reply r = conn_.eval(producer_script(), {opts_.stream},
                           {opts_.group, std::to_string(opts_.max_lag), std::to_string(opts_.max_len),
                            std::string(job_field), codec_.encode(job)});
      if (r.is_error()) {
        out.status = produce_status::error;
        out.message = std::string(r.str());
        return out;
      }
      const std::string_view st = reply::text(r.at(0));
      out.lag = static_cast<std::uint64_t>(r.at(1)->integer);
      if (st == "ok") {
        out.id = std::string(reply::text(r.at(2)));
      } else {
        out.status = st == "full" ? produce_status::full : produce_status::backpressure;
      }
    } catch (const std::exception& e) {
      out.status = produce_status::error;
      out.message = e.what();
    }
    return out;
  }

  [[nodiscard]] connection& get_connection() noexcept { return conn_; }

 private:
  static stream_producer_options validate(stream_producer_options o) {
    if (o.stream.empty())
      throw std::invalid_argument("levee::redis::stream_producer: stream must not be empty");
    if (o.group.empty())
      throw std::invalid_argument("levee::redis::stream_producer: group must not be empty");
    return o;
  }
  stream_producer_options opts_;
  Codec codec_;
  connection conn_;
};

}  // namespace levee::redis
