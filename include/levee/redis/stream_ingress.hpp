// levee/redis/stream_ingress.hpp - levee::redis::stream_ingress, a durable
// ingress for levee::leveler: a pump thread that reads a Redis stream
// through a consumer group and feeds the leveler, and acknowledges each
// entry once its job is done.
//
//   using ingress = levee::redis::stream_ingress<order, order_codec>;
//   ingress in(opts);                                 // stream, group, consumer, ...
//   levee::leveler<levee::redis::stream_job<order>>::options o;
//   o.dead_letter = in.dead_letter_sink();            // failed/expired -> dead-letter stream
//   levee::leveler<levee::redis::stream_job<order>> lev(o, in.wrap(handle_order));
//   in.start(lev);
//   ...
//   lev.close(); lev.drain(); in.stop();              // or lev.stop(): unstarted jobs stay pending
//
// Delivery: at least once. An entry is acknowledged (XACK, batched per pump
// iteration) only after its handler succeeded; a consumer that dies leaves
// its entries pending, and another consumer claims them once they have been
// idle for min_idle. A job that was processed but whose acknowledgement had
// not reached the server when its consumer died is processed again: that is
// the only source of duplicates, so handlers should be idempotent.
//
// What happens to each entry read:
//  - handler succeeded -> XACK;
//  - dead-lettered by the leveler as failed or expired -> copied to the
//    dead-letter stream with fields source_id, reason (and the entry's own
//    fields) and acknowledged, atomically (one Lua script);
//  - cancelled (stop() before it ran) or dropped (drop_oldest overflow) ->
//    left pending, for another consumer (or this one after a restart) to claim;
//  - undecodable -> dead-lettered with reason "decode";
//  - found idle with delivery count >= max_deliveries (it keeps killing or
//    stalling consumers) -> dead-lettered with reason "deliveries". Entries
//    claimed a second time or more are run one at a time, alone, so that
//    entries queued behind a poison one in a crashed consumer are not
//    charged with its deliveries (see claim()).
// Reading: XREADGROUP asks only for as many entries as the leveler has room
// for (capacity - outstanding), at most `batch`; submissions use try_submit,
// so the pump never blocks on the leveler. An entry the leveler refuses
// (full: another producer took the room) is kept and offered again.
// Heartbeat: every `heartbeat`, the ids of jobs submitted and not finished
// are re-claimed by this consumer with XCLAIM ... JUSTID (idle time reset,
// delivery count unchanged), so long-running jobs are not claimed by others;
// heartbeat must be shorter than min_idle.
//
// Threads: one pump thread owns the connection; handlers and the dead-letter
// sink (any leveler thread) only append ids to a mutex-protected list that
// the pump flushes. Redis outages: the pump counts the error, waits
// retry_interval and tries again; outcomes not yet flushed are kept.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <levee/leveler.hpp>
#include <levee/redis/codec.hpp>
#include <levee/redis/connection.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

namespace levee::redis {

struct stream_ingress_options {
  connection_options connection;         // command_timeout must exceed block
  std::string stream;                    // non-empty
  std::string group;                     // non-empty; created (MKSTREAM) if missing
  std::string consumer;                  // non-empty; unique per live consumer
  std::string dead_letter_stream;        // empty: stream + ":dead"
  std::string group_start_id = "0";      // where a new group starts reading
  std::size_t batch = 64;                // most entries per XREADGROUP (>= 1)
  std::chrono::milliseconds block{100};  // XREADGROUP BLOCK (> 0)
  // Acknowledgements and dead letters are sent together once `batch` of them
  // are recorded or the oldest has waited this long (>= 0; 0: at once).
  std::chrono::milliseconds ack_interval{10};
  std::chrono::milliseconds min_idle{30'000};       // claim others' entries idle this long (> 0)
  std::chrono::milliseconds claim_interval{1'000};  // how often to look for them (> 0)
  std::chrono::milliseconds heartbeat{10'000};      // < min_idle
  std::uint64_t max_deliveries = 5;                 // dead-letter at this many deliveries (>= 1)
  std::chrono::milliseconds retry_interval{100};    // after a Redis error (> 0)
};

struct stream_ingress_metrics {
  std::uint64_t read = 0;           // entries read by XREADGROUP
  std::uint64_t claimed = 0;        // entries claimed from idle consumers
  std::uint64_t submitted = 0;      // accepted by the leveler
  std::uint64_t acknowledged = 0;   // XACKed after success
  std::uint64_t dead_lettered = 0;  // moved to the dead-letter stream (any reason)
  std::uint64_t left_pending = 0;   // cancelled/dropped jobs left for another consumer
  std::uint64_t heartbeats = 0;     // XCLAIM JUSTID rounds
  std::uint64_t vanished = 0;       // pending ids whose entry was deleted (acknowledged, counted)
  std::uint64_t errors = 0;         // failed Redis calls
};

inline const script& dead_letter_script() {
  static const script s{R"lua(
local n = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local e = redis.call('XRANGE', KEYS[1], id, id)
  local fields = {'source_id', id, 'reason', ARGV[2]}
  if #e > 0 then
    for _, v in ipairs(e[1][2]) do table.insert(fields, v) end
  end
  redis.call('XADD', KEYS[2], '*', unpack(fields))
  n = n + redis.call('XACK', KEYS[1], ARGV[1], id)
end
return n
)lua"};
  return s;
}

template <class Job, stream_codec<Job> Codec>
class stream_ingress {
 public:
  using job_type = stream_job<Job>;

  // No I/O here (start() connects). std::invalid_argument for a bad option.
  explicit stream_ingress(stream_ingress_options o, Codec codec = Codec{})
      : opts_(validate(std::move(o))), codec_(std::move(codec)), state_(std::make_shared<shared>()) {}
  stream_ingress(const stream_ingress&) = delete;
  stream_ingress& operator=(const stream_ingress&) = delete;
  ~stream_ingress() { stop(); }

  // Wraps a handler of stream_job<Job>& (returning void, bool or
  // levee::handler_result, or throwing) so that its success is recorded for
  // acknowledgement. Use the result as the leveler's handler.
  template <class H>
  requires job_handler<H, job_type>
  [[nodiscard]] auto wrap(H&& handler) {
    return
        [st = state_, h = std::decay_t<H>(std::forward<H>(handler))](job_type& j) mutable -> handler_result {
          handler_result r = handler_result::failure();
          try {
            using R = std::invoke_result_t<decltype(h)&, job_type&>;
            if constexpr (std::is_void_v<R>) {
              std::invoke(h, j);
              r = handler_result::success();
            } else if constexpr (std::same_as<R, bool>) {
              r = std::invoke(h, j) ? handler_result::success() : handler_result::failure();
            } else {
              r = handler_result(std::invoke(h, j));
            }
          } catch (...) {
            return handler_result::failure(std::current_exception());
          }
          if (r.ok()) st->finish(j.id, outcome::ack);
          return r;
        };
  }

  // The leveler's dead-letter sink: failed/expired/shed -> dead-letter stream,
  // cancelled/dropped -> left pending. Then calls `next` (if any) with the job.
  [[nodiscard]] std::function<void(job_type&&, dead_letter_reason, std::exception_ptr)> dead_letter_sink(
      std::function<void(job_type&&, dead_letter_reason, std::exception_ptr)> next = {}) {
    return [st = state_, next = std::move(next)](job_type&& j, dead_letter_reason why, std::exception_ptr e) {
      switch (why) {
        case dead_letter_reason::failed:
          st->finish(j.id, outcome::failed);
          break;
        case dead_letter_reason::expired:
        case dead_letter_reason::shed:
          st->finish(j.id, outcome::expired);
          break;
        case dead_letter_reason::dropped:
        case dead_letter_reason::cancelled:
          st->finish(j.id, outcome::leave);
          break;
      }
      if (next) next(std::move(j), why, std::move(e));
    };
  }

  // Starts the pump thread feeding `lev` (which must outlive stop()): any
  // leveler of stream_job<Job> (try_submit(job), get_options().capacity,
  // outstanding()). Throws std::logic_error if already started.
  template <class Leveler>
  void start(Leveler& lev) {
    if (thread_.joinable()) throw std::logic_error("levee::redis::stream_ingress::start: already started");
    state_->stopping.store(false);
    thread_ = std::thread([this, &lev] { pump(lev); });
  }

  // Stops reading and heartbeating, flushes the outcomes recorded so far
  // (acknowledgements and dead letters), and joins the pump thread. Entries
  // read and not finished stay pending in the group, to be claimed by
  // another consumer after min_idle. Outcomes recorded after stop() are not
  // flushed (those entries are processed again elsewhere): stop or drain
  // the leveler first. Blocking: up to one XREADGROUP block plus a flush.
  void stop() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard lock(state_->mutex);
      state_->stopping.store(true);
    }
    state_->cv.notify_all();
    thread_.join();
  }

  [[nodiscard]] stream_ingress_metrics metrics() const {
    std::lock_guard lock(state_->mutex);
    return state_->metrics;
  }
  [[nodiscard]] const stream_ingress_options& options() const noexcept { return opts_; }

 private:
  enum class outcome { ack, failed, expired, leave };

  struct shared {
    mutable std::mutex mutex;
    std::condition_variable cv;
    std::atomic<bool> stopping{false};
    std::vector<std::pair<std::string, outcome>> done;  // recorded, not yet flushed
    std::unordered_set<std::string> in_flight;          // submitted, not finished (for heartbeats)
    stream_ingress_metrics metrics;

    void finish(const std::string& id, outcome o) {
      {
        std::lock_guard lock(mutex);
        in_flight.erase(id);
        done.emplace_back(id, o);
      }
      cv.notify_all();
    }
  };

  static stream_ingress_options validate(stream_ingress_options o) {
    auto bad = [](const char* what) {
      throw std::invalid_argument(std::string("levee::redis::stream_ingress: ") + what);
    };
    if (o.stream.empty()) bad("stream must not be empty");
    if (o.group.empty()) bad("group must not be empty");
    if (o.consumer.empty()) bad("consumer must not be empty");
    if (o.batch == 0) bad("batch must be >= 1");
    if (o.block.count() <= 0) bad("block must be > 0");
    if (o.connection.command_timeout <= o.block) bad("connection.command_timeout must exceed block");
    if (o.min_idle.count() <= 0) bad("min_idle must be > 0");
    if (o.claim_interval.count() <= 0) bad("claim_interval must be > 0");
    if (o.heartbeat.count() <= 0 || o.heartbeat >= o.min_idle) bad("heartbeat must be > 0 and < min_idle");
    if (o.max_deliveries == 0) bad("max_deliveries must be >= 1");
    if (o.retry_interval.count() <= 0) bad("retry_interval must be > 0");
    if (o.ack_interval.count() < 0) bad("ack_interval must be >= 0");
    if (o.dead_letter_stream.empty()) o.dead_letter_stream = o.stream + ":dead";
    return o;
  }

  void count(std::uint64_t stream_ingress_metrics::*field, std::uint64_t n = 1) {
    std::lock_guard lock(state_->mutex);
    state_->metrics.*field += n;
  }
  [[nodiscard]] bool stopping() const noexcept { return state_->stopping.load(); }
  // A suspect entry is running alone (see claim); clears itself when it finished.
  [[nodiscard]] bool isolating() {
    if (isolating_.empty()) return false;
    std::lock_guard lock(state_->mutex);
    if (state_->in_flight.count(isolating_) != 0) return true;
    isolating_.clear();
    return false;
  }

  template <class Leveler>
  void pump(Leveler& lev) {
    using clock = std::chrono::steady_clock;
    std::optional<connection> conn;
    std::vector<job_type> deferred;  // read, refused by the leveler (full): offered again
    auto next_claim = clock::now();
    auto next_heartbeat = clock::now() + opts_.heartbeat;
    bool group_ready = false;
    for (;;) {
      const bool last_round = stopping();
      try {
        if (!conn) conn.emplace(opts_.connection);
        if (!group_ready) {
          reply r =
              conn->run("XGROUP", "CREATE", opts_.stream, opts_.group, opts_.group_start_id, "MKSTREAM");
          if (r.is_error() && !r.str().starts_with("BUSYGROUP")) r.expect_ok("XGROUP CREATE");
          group_ready = true;
        }
        if (last_round || suspects_waiting_ || flush_due(clock::now())) flush(*conn);
        if (last_round) break;
        if (clock::now() >= next_heartbeat) {
          heartbeat(*conn);
          next_heartbeat = clock::now() + opts_.heartbeat;
        }
        // Offer refused entries again first (FIFO).
        std::size_t offered = 0;
        for (; offered < deferred.size(); ++offered) {
          if (auto back = submit(lev, std::move(deferred[offered]))) {
            deferred[offered] = std::move(*back);
            break;
          }
        }
        deferred.erase(deferred.begin(), deferred.begin() + static_cast<std::ptrdiff_t>(offered));
        std::size_t room = room_of(lev);
        room = room > deferred.size() ? room - deferred.size() : 0;
        if (isolating()) room = 0;  // a suspect runs alone
        if (room > 0 && clock::now() >= next_claim) {
          room -= std::min(room, claim(*conn, lev, room, deferred));
          next_claim = clock::now() + opts_.claim_interval;
        }
        if (isolating() || suspects_waiting_) room = 0;  // let in-flight work finish first
        if (room > 0) {
          read(*conn, lev, std::min(room, opts_.batch), deferred);
        } else {
          // No room: wait for outcomes (they make room), at most one block period.
          std::unique_lock lock(state_->mutex);
          const std::size_t seen = state_->done.size();
          state_->cv.wait_for(lock, opts_.block, [&] { return state_->done.size() != seen || stopping(); });
        }
      } catch (const std::exception&) {
        count(&stream_ingress_metrics::errors);
        if (conn && !conn->connected()) conn.reset();
        if (last_round) break;
        std::unique_lock lock(state_->mutex);
        state_->cv.wait_for(lock, opts_.retry_interval, [&] { return stopping(); });
      }
    }
    // Entries read but never submitted stay pending (another consumer claims them).
    std::lock_guard lock(state_->mutex);
    state_->metrics.left_pending += deferred.size();
    state_->in_flight.clear();
  }

  template <class Leveler>
  [[nodiscard]] static std::size_t room_of(const Leveler& lev) {
    const std::uint64_t cap = lev.get_options().capacity;
    const std::uint64_t out = lev.outstanding();
    return out >= cap ? 0 : static_cast<std::size_t>(cap - out);
  }

  // Submits one job; returns it if the leveler is full (to be offered
  // again). Refused for another reason (closed, ...): the entry stays
  // pending (counted) and nothing is returned.
  template <class Leveler>
  std::optional<job_type> submit(Leveler& lev, job_type&& j) {
    const std::string id = j.id;
    {
      std::lock_guard lock(state_->mutex);
      state_->in_flight.insert(id);  // before the handler can finish it
    }
    auto r = lev.try_submit(std::move(j));
    if (r.accepted()) {
      count(&stream_ingress_metrics::submitted);
      return std::nullopt;
    }
    std::lock_guard lock(state_->mutex);
    state_->in_flight.erase(id);
    if (r.status == submit_status::full && r.job) return std::move(r.job);
    ++state_->metrics.left_pending;
    return std::nullopt;
  }

  // Decodes one entry ([id, [field, value, ...]]) and submits it; an
  // undecodable one is dead-lettered.
  template <class Leveler>
  void take_entry(connection& conn, Leveler& lev, const redisReply* e, std::vector<job_type>& deferred) {
    const std::string id(reply::text(e->element[0]));
    const redisReply* fields = e->element[1];
    std::optional<Job> job;
    if (fields != nullptr && fields->type == REDIS_REPLY_ARRAY) {
      for (std::size_t i = 0; i + 1 < fields->elements; i += 2) {
        if (reply::text(fields->element[i]) == job_field) {
          try {
            job.emplace(codec_.decode(reply::text(fields->element[i + 1])));
          } catch (...) {
          }
          break;
        }
      }
    }
    if (!job) {
      dead_letter(conn, "decode", {id});
      return;
    }
    if (auto back = submit(lev, job_type{id, std::move(*job)})) deferred.push_back(std::move(*back));
  }

  template <class Leveler>
  void read(connection& conn, Leveler& lev, std::size_t n, std::vector<job_type>& deferred) {
    reply r = conn.run("XREADGROUP", "GROUP", opts_.group, opts_.consumer, "COUNT", n, "BLOCK",
                       opts_.block.count(), "STREAMS", opts_.stream, ">");
    r.expect_ok("XREADGROUP");
    if (!r.is_array()) return;  // nil: nothing within the block time
    const redisReply* entries = r.at(0)->element[1];
    count(&stream_ingress_metrics::read, entries->elements);
    for (std::size_t i = 0; i < entries->elements; ++i) take_entry(conn, lev, entries->element[i], deferred);
  }

  // Claims up to n entries idle for min_idle (from dead or stopped
  // consumers); dead-letters those delivered max_deliveries times. Entries
  // claimed before (delivered twice or more: suspects, they may have
  // crashed a consumer) are claimed one at a time and only when nothing
  // else is in flight here, so an innocent entry that merely shared a
  // consumer with a poison one is not charged with its crashes. Returns how
  // many were submitted or deferred.
  template <class Leveler>
  std::size_t claim(connection& conn, Leveler& lev, std::size_t n, std::vector<job_type>& deferred) {
    reply p = conn.run("XPENDING", opts_.stream, opts_.group, "IDLE", opts_.min_idle.count(), "-", "+", n);
    p.expect_ok("XPENDING");
    std::vector<std::string> poison, take, suspects;
    std::unique_lock lock(state_->mutex);
    for (std::size_t i = 0; i < p.size(); ++i) {
      const redisReply* e = p.at(i);
      std::string id(reply::text(e->element[0]));
      // This consumer's own work (running, queued, refused for now, or
      // finished and not yet acknowledged; a late heartbeat let it look
      // idle) is not claimed again.
      if (state_->in_flight.count(id) != 0 ||
          std::any_of(deferred.begin(), deferred.end(), [&](const job_type& j) { return j.id == id; }) ||
          std::any_of(state_->done.begin(), state_->done.end(), [&](const auto& d) { return d.first == id; }))
        continue;
      const auto deliveries = static_cast<std::uint64_t>(e->element[3]->integer);
      if (deliveries >= opts_.max_deliveries)
        poison.push_back(std::move(id));
      else if (deliveries >= 2)
        suspects.push_back(std::move(id));
      else
        take.push_back(std::move(id));
    }
    suspects_waiting_ = !suspects.empty();
    // Alone means: nothing running or queued here, and every outcome so far
    // flushed (an acknowledgement lost in a crash would charge its entry
    // with a delivery it did not cause).
    if (take.empty() && suspects_waiting_ && deferred.empty() && state_->in_flight.empty() &&
        state_->done.empty()) {
      take.push_back(suspects.front());
      isolating_ = suspects.front();
    }
    lock.unlock();
    if (!poison.empty()) dead_letter(conn, "deliveries", poison);
    if (take.empty()) return 0;
    command c("XCLAIM", opts_.stream, opts_.group, opts_.consumer, opts_.min_idle.count());
    for (const auto& id : take) c.push(id);
    reply r = conn.run(c);
    r.expect_ok("XCLAIM");
    std::size_t got = 0;
    std::vector<std::string> vanished;
    for (std::size_t i = 0; i < r.size(); ++i) {
      const redisReply* e = r.at(i);
      if (e == nullptr || e->type != REDIS_REPLY_ARRAY || e->elements < 2 || e->element[1] == nullptr ||
          e->element[1]->type != REDIS_REPLY_ARRAY) {
        // A pending id whose entry was deleted (XDEL / trimming by someone else).
        if (e != nullptr && e->type == REDIS_REPLY_ARRAY && e->elements >= 1)
          vanished.emplace_back(reply::text(e->element[0]));
        continue;
      }
      ++got;
      take_entry(conn, lev, e, deferred);
    }
    count(&stream_ingress_metrics::claimed, got);
    if (!vanished.empty()) {
      command ack("XACK", opts_.stream, opts_.group);
      for (const auto& id : vanished) ack.push(id);
      conn.run(ack).expect_ok("XACK");
      count(&stream_ingress_metrics::vanished, vanished.size());
    }
    return got;
  }

  void heartbeat(connection& conn) {
    command c("XCLAIM", opts_.stream, opts_.group, opts_.consumer, 0);
    {
      std::lock_guard lock(state_->mutex);
      if (state_->in_flight.empty()) return;
      for (const auto& id : state_->in_flight) c.push(id);
    }
    c.push("JUSTID");
    conn.run(c).expect_ok("XCLAIM JUSTID");
    count(&stream_ingress_metrics::heartbeats);
  }

  void dead_letter(connection& conn, std::string_view reason, const std::vector<std::string>& ids) {
    std::vector<std::string> args{opts_.group, std::string(reason)};
    args.insert(args.end(), ids.begin(), ids.end());
    conn.eval(dead_letter_script(), {opts_.stream, opts_.dead_letter_stream}, args).expect_ok("dead letter");
    count(&stream_ingress_metrics::dead_lettered, ids.size());
  }

  // Whether the recorded outcomes should be sent now (see ack_interval).
  [[nodiscard]] bool flush_due(std::chrono::steady_clock::time_point now) {
    std::lock_guard lock(state_->mutex);
    if (state_->done.empty()) {
      first_done_.reset();
      return false;
    }
    if (!first_done_) first_done_ = now;
    return state_->done.size() >= opts_.batch || now - *first_done_ >= opts_.ack_interval;
  }

  // Sends the recorded outcomes: one XACK for the successes, one script call
  // per dead-letter reason. On failure the outcomes are put back.
  void flush(connection& conn) {
    std::vector<std::pair<std::string, outcome>> done;
    {
      std::lock_guard lock(state_->mutex);
      done.swap(state_->done);
    }
    first_done_.reset();
    if (done.empty()) return;
    try {
      command ack("XACK", opts_.stream, opts_.group);
      std::vector<std::string> failed, expired;
      std::uint64_t acks = 0, left = 0;
      for (auto& [id, o] : done) {
        switch (o) {
          case outcome::ack:
            ack.push(id);
            ++acks;
            break;
          case outcome::failed:
            failed.push_back(id);
            break;
          case outcome::expired:
            expired.push_back(id);
            break;
          case outcome::leave:
            ++left;
            break;
        }
      }
      if (acks != 0) conn.run(ack).expect_ok("XACK");
      if (!failed.empty()) dead_letter(conn, "failed", failed);
      if (!expired.empty()) dead_letter(conn, "expired", expired);
      std::lock_guard lock(state_->mutex);
      state_->metrics.acknowledged += acks;
      state_->metrics.left_pending += left;
    } catch (...) {
      // Put them back (in front): they are flushed on the next success. An
      // XACK that did reach the server is harmless to repeat.
      std::lock_guard lock(state_->mutex);
      done.insert(done.end(), state_->done.begin(), state_->done.end());
      state_->done.swap(done);
      throw;
    }
  }

  stream_ingress_options opts_;
  Codec codec_;
  std::shared_ptr<shared> state_;
  std::string isolating_;                                            // pump thread only
  std::optional<std::chrono::steady_clock::time_point> first_done_;  // pump thread only
  bool suspects_waiting_ = false;                                    // pump thread only
  std::thread thread_;
};

}  // namespace levee::redis
