// levee/redis/gcra.hpp - the fleet-wide GCRA: one Lua script, run on the
// server with the server's clock, that reserves up to k tokens of a shared
// schedule and returns when each becomes valid.
//
// Envelope (the same as levee::rate_limiter's): the valid-from times of all
// tokens ever granted on one key, by any number of clients, hold at most
//     burst + floor(r * w)
// tokens in every closed window of length w. Only the server's clock is read
// (TIME), so the clients' clocks cannot matter; a client turns an offset
// into its own clock by adding it to the time it received the reply, which
// is never earlier than the server's reading.
//
// Arithmetic. Lua numbers are doubles, exact for integers below 2^53. With
// the rate as the exact fraction C permits per P ns (levee::rate), the
// script counts time in units of 1/C ns, so the emission interval is exactly
// P units and the bucket depth tau = burst * P. The key stores the schedule
// as "ahead" (how far the theoretical arrival time, TAT, is ahead of the
// server's time, in units) together with the server time it was written at
// (e, microseconds since the Unix epoch, exact in a double until 2255), so
// no stored number grows with the absolute time; the elapsed time is
// converted to units only while it is smaller than "ahead". Every stored or
// computed number is an integer below 2^53, which gcra_config checks at
// construction (std::invalid_argument otherwise).
//
// Grant rule: token j (1-based) of a reservation is valid at server time
//     now + max(0, ahead + j * P - tau) / C ns,
// and the script grants only the tokens valid within the horizon H of now
// (at most k), so a reservation never books more than H ahead. An idle key
// expires one second after its schedule has caught up with the server's time
// (an absent key is a full bucket, which is what the state would say).
//
// Redis 7 replicates the effects of a script (the only mode since 7.0), so
// reading TIME before writing is allowed; on 5.x/6.x the script asks for
// effects replication with redis.replicate_commands() (when it exists).
#pragma once

#include <chrono>
#include <cstdint>
#include <levee/rate_limiter.hpp>
#include <levee/redis/connection.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace levee::redis {

inline const script& gcra_script() {
  static const script s{R"lua(
if redis.replicate_commands then pcall(redis.replicate_commands) end
local C = tonumber(ARGV[1])
local P = tonumber(ARGV[2])
local tau = tonumber(ARGV[3]) * P
local k = tonumber(ARGV[4])
local H = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local upu = 1000 * C
local st = redis.call('HMGET', KEYS[1], 'e', 'a', 'c')
local ahead = 0
if st[1] and st[2] and st[3] then
  local e = tonumber(st[1])
  local a = tonumber(st[2])
  local c0 = tonumber(st[3])
  if c0 ~= C then a = math.ceil(a / c0 * C) end
  local el = now - e
  if el < 0 then el = 0 end
  if el < a / upu + 1 then
    ahead = a - el * upu
    if ahead < 0 then ahead = 0 end
  end
end
local room = H + tau - ahead
local n = 0
if room >= P then
  n = math.floor(room / P)
  if n * P > room then n = n - 1 end
  if (n + 1) * P <= room then n = n + 1 end
  if n > k then n = k end
end
local nxt = ahead + n * P
redis.call('HSET', KEYS[1], 'e', string.format('%.0f', now), 'a', string.format('%.0f', nxt),
           'c', string.format('%.0f', C))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.floor(nxt / upu / 1000) + 1000))
return {n, ahead}
)lua"};
  return s;
}

// Validated parameters of one fleet-wide GCRA key.
struct gcra_config {
  gcra_config(levee::rate r, std::uint64_t burst, std::chrono::nanoseconds horizon, std::uint64_t max_batch)
      : c(r.count()), p(static_cast<std::uint64_t>(r.period().count())), b(burst), k(max_batch) {
    constexpr std::uint64_t limit = std::uint64_t{1} << 52;
    if (burst == 0) throw std::invalid_argument("levee::redis::gcra: burst must be >= 1");
    if (max_batch == 0) throw std::invalid_argument("levee::redis::gcra: batch must be >= 1");
    if (horizon.count() <= 0) throw std::invalid_argument("levee::redis::gcra: horizon (lease) must be > 0");
    if (c > limit / 1'000'000)
      throw std::invalid_argument(
          "levee::redis::gcra: rate's fraction too fine (permit count " + std::to_string(c) +
          " per period): use levee::rate::per(n, period) with a small n, e.g. per_second(integer)");
    const auto h = static_cast<std::uint64_t>(horizon.count());
    const auto c128 = static_cast<detail::uint128>(c);
    const detail::uint128 hu = static_cast<detail::uint128>(h) * c128;
    const detail::uint128 tau = static_cast<detail::uint128>(b) * p;
    const detail::uint128 kp = static_cast<detail::uint128>(k) * p;
    if (hu + tau + kp >= limit)
      throw std::invalid_argument(
          "levee::redis::gcra: burst, batch and horizon (lease) too large for exact arithmetic in "
          "Lua doubles: (horizon * C + (burst + batch) * P) must be < 2^52 with the rate as C per P ns");
    h_units = static_cast<std::uint64_t>(hu);
  }
  std::uint64_t c;        // permits ...
  std::uint64_t p;        // ... per p ns (reduced)
  std::uint64_t b;        // burst
  std::uint64_t k;        // most tokens per reservation
  std::uint64_t h_units;  // horizon in units of 1/c ns

  // Offset (ns, rounded up) from the server's reading to the valid-from time
  // of token j (1-based) of a grant that started `ahead` units ahead.
  [[nodiscard]] std::uint64_t offset_ns(std::uint64_t ahead, std::uint64_t j) const noexcept {
    const detail::uint128 at = static_cast<detail::uint128>(ahead) + static_cast<detail::uint128>(j) * p;
    const detail::uint128 tau = static_cast<detail::uint128>(b) * p;
    if (at <= tau) return 0;
    return static_cast<std::uint64_t>((at - tau + c - 1) / c);
  }
};

// One reservation's result: `granted` tokens (0..k); token j is valid
// offset_ns(ahead, j) after the server's clock reading.
struct gcra_grant {
  std::uint64_t granted = 0;
  std::uint64_t ahead = 0;
};

// Runs the script once: reserves up to k tokens on `key`. Blocking (one
// round trip). Throws io_error on a connection failure and
// std::runtime_error on an error reply.
inline gcra_grant gcra_reserve(connection& conn, const std::string& key, const gcra_config& cfg,
                               std::uint64_t k) {
  reply r = conn.eval(gcra_script(), {key},
                      {std::to_string(cfg.c), std::to_string(cfg.p), std::to_string(cfg.b),
                       std::to_string(std::min(k, cfg.k)), std::to_string(cfg.h_units)});
  r.expect_ok("levee::redis::gcra_reserve");
  if (!r.is_array() || r.size() != 2 || r.at(0)->type != REDIS_REPLY_INTEGER ||
      r.at(1)->type != REDIS_REPLY_INTEGER)
    throw std::runtime_error("levee::redis::gcra_reserve: unexpected reply from the script");
  return {static_cast<std::uint64_t>(r.at(0)->integer), static_cast<std::uint64_t>(r.at(1)->integer)};
}

}  // namespace levee::redis
