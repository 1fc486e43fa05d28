// levee/redis/connection.hpp - levee::redis::connection, a synchronous Redis
// connection over hiredis: unix socket or TCP, connect and command timeouts,
// reconnection, pipelining, and Lua scripts run by SHA (EVALSHA) with a
// NOSCRIPT fallback.
//
// Thread safety: a hiredis context is not thread-safe, and neither is a
// connection: use one connection per thread, or let one thread own it (the
// shared rate gate's refill thread and the stream pump's thread each own
// theirs; worker threads never touch a connection). Moving a connection to
// another thread between uses is fine.
//
// Errors: a reply of type error (e.g. WRONGTYPE) is an ordinary reply
// (reply::is_error()). A failure to connect, a timeout or a broken socket
// throws levee::redis::io_error and leaves the connection disconnected; the
// next call reconnects first (one attempt, with the connect timeout).
#pragma once

#include <hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <sys/time.h>

#include <cerrno>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace levee::detail {
// Writing to a socket the server closed raises SIGPIPE, whose default action
// kills the process. hiredis writes with plain write(), so every call that
// may write blocks SIGPIPE in the calling thread for its duration and
// consumes a SIGPIPE it caused (one that was pending before is left alone),
// without touching the process's signal disposition.
class sigpipe_guard {
 public:
  sigpipe_guard() noexcept {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    blocked_ = pthread_sigmask(SIG_BLOCK, &pipe_, &old_) == 0;
  }
  sigpipe_guard(const sigpipe_guard&) = delete;
  sigpipe_guard& operator=(const sigpipe_guard&) = delete;
  ~sigpipe_guard() {
    if (!blocked_) return;
    if (!was_pending_) {
      sigset_t pending;
      sigemptyset(&pending);
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        const timespec zero{0, 0};
        while (sigtimedwait(&pipe_, nullptr, &zero) < 0 && errno == EINTR) {
        }
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }

 private:
  sigset_t pipe_{};
  sigset_t old_{};
  bool was_pending_ = false;
  bool blocked_ = false;
};
}  // namespace levee::detail

namespace levee::redis {

// A connection-level failure: could not connect, timed out, or the socket broke.
class io_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Where the server listens.
struct endpoint {
  std::string unix_path;  // non-empty: a unix socket (host/port ignored)
  std::string host = "127.0.0.1";
  int port = 6379;

  [[nodiscard]] static endpoint unix_socket(std::string path) {
    endpoint e;
    e.unix_path = std::move(path);
    return e;
  }
  [[nodiscard]] static endpoint tcp(std::string host, int port) {
    endpoint e;
    e.host = std::move(host);
    e.port = port;
    return e;
  }
  [[nodiscard]] std::string to_string() const {
    return unix_path.empty() ? host + ":" + std::to_string(port) : "unix:" + unix_path;
  }
};

struct connection_options {
  redis::endpoint endpoint;
  std::chrono::milliseconds connect_timeout{1000};  // > 0
  std::chrono::milliseconds command_timeout{1000};  // > 0: a reply slower than this is an io_error
};

// An owned hiredis reply (move-only). A default-constructed or moved-from
// reply is nil.
class reply {
 public:
  reply() noexcept = default;
  explicit reply(redisReply* r) noexcept : r_(r) {}
  reply(reply&& o) noexcept : r_(std::exchange(o.r_, nullptr)) {}
  reply& operator=(reply&& o) noexcept {
    if (this != &o) {
      reset();
      r_ = std::exchange(o.r_, nullptr);
    }
    return *this;
  }
  reply(const reply&) = delete;
  reply& operator=(const reply&) = delete;
  ~reply() { reset(); }

  [[nodiscard]] const redisReply* get() const noexcept { return r_; }
  [[nodiscard]] int type() const noexcept { return r_ == nullptr ? REDIS_REPLY_NIL : r_->type; }
  [[nodiscard]] bool is_nil() const noexcept { return type() == REDIS_REPLY_NIL; }
  [[nodiscard]] bool is_error() const noexcept { return type() == REDIS_REPLY_ERROR; }
  [[nodiscard]] bool is_array() const noexcept { return type() == REDIS_REPLY_ARRAY; }
  [[nodiscard]] bool is_integer() const noexcept { return type() == REDIS_REPLY_INTEGER; }
  // The text of a string, status or error reply ("" otherwise).
  [[nodiscard]] std::string_view str() const noexcept { return text(r_); }
  [[nodiscard]] long long integer() const noexcept { return r_ != nullptr ? r_->integer : 0; }
  [[nodiscard]] std::size_t size() const noexcept { return is_array() ? r_->elements : 0; }
  // Element i of an array reply (borrowed; valid while this reply lives).
  [[nodiscard]] const redisReply* at(std::size_t i) const {
    if (i >= size()) throw std::out_of_range("levee::redis::reply::at: index out of range");
    return r_->element[i];
  }
  [[nodiscard]] static std::string_view text(const redisReply* r) noexcept {
    if (r == nullptr) return {};
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_ERROR)
      return {r->str, r->len};
    return {};
  }
  // Throws std::runtime_error with `what` and the server's message if this is an error reply.
  const reply& expect_ok(std::string_view what) const {
    if (is_error()) throw std::runtime_error(std::string(what) + ": " + std::string(str()));
    return *this;
  }

 private:
  void reset() noexcept {
    if (r_ != nullptr) freeReplyObject(r_);
    r_ = nullptr;
  }
  redisReply* r_ = nullptr;
};

// One command: its arguments as binary-safe strings.
class command {
 public:
  command() = default;
  template <class... A>
  explicit command(A&&... args) {
    args_.reserve(sizeof...(A));
    (push(std::forward<A>(args)), ...);
  }
  template <class A>
  command& push(A&& a) {
    using T = std::decay_t<A>;
    if constexpr (std::integral<T>) {
      args_.push_back(std::to_string(a));
    } else {
      args_.emplace_back(std::string_view(a));
    }
    return *this;
  }
  [[nodiscard]] const std::vector<std::string>& args() const noexcept { return args_; }
  [[nodiscard]] bool empty() const noexcept { return args_.empty(); }

 private:
  std::vector<std::string> args_;
};

// A Lua script, run with connection::eval. The SHA is learned from the
// server (SCRIPT LOAD) on first use per connection and after NOSCRIPT.
struct script {
  std::string source;
};

class connection {
 public:
  // Connects at once; throws io_error if that fails, std::invalid_argument for a bad option.
  explicit connection(connection_options o) : opts_(std::move(o)) {
    if (opts_.connect_timeout.count() <= 0)
      throw std::invalid_argument("levee::redis::connection: connect_timeout must be > 0");
    if (opts_.command_timeout.count() <= 0)
      throw std::invalid_argument("levee::redis::connection: command_timeout must be > 0");
    connect();
  }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;
  connection(connection&& o) noexcept
      : opts_(std::move(o.opts_)), ctx_(std::exchange(o.ctx_, nullptr)), shas_(std::move(o.shas_)) {}
  ~connection() { disconnect(); }

  [[nodiscard]] bool connected() const noexcept { return ctx_ != nullptr && ctx_->err == 0; }
  [[nodiscard]] const connection_options& options() const noexcept { return opts_; }

  // Drops the socket (the next call reconnects).
  void disconnect() noexcept {
    if (ctx_ != nullptr) redisFree(ctx_);
    ctx_ = nullptr;
  }
  // Connects if disconnected. Throws io_error on failure.
  void ensure_connected() {
    if (!connected()) connect();
  }

  // Sends one command and waits for its reply (at most command_timeout).
  // Blocking. Throws io_error on a connection failure.
  reply run(const command& c) {
    const detail::sigpipe_guard guard;
    ensure_connected();
    append(c);
    return read_one();
  }
  template <class... A>
  requires(sizeof...(A) > 0 && (!std::same_as<std::decay_t<A>, command> && ...)) reply run(A&&... args) {
    return run(command(std::forward<A>(args)...));
  }

  // Pipelining: sends every command, then reads every reply (one round trip
  // for the batch). Blocking. Throws io_error on a connection failure (the
  // commands may or may not have run).
  std::vector<reply> pipeline(const std::vector<command>& cmds) {
    const detail::sigpipe_guard guard;
    ensure_connected();
    for (const auto& c : cmds) append(c);
    std::vector<reply> out;
    out.reserve(cmds.size());
    for (std::size_t i = 0; i < cmds.size(); ++i) out.push_back(read_one());
    return out;
  }

  // EVALSHA with keys and args; on NOSCRIPT (server restarted, failed over
  // or SCRIPT FLUSH) loads the script and retries once. Returns the script's
  // reply (an error reply if the script raised one).
  reply eval(const script& s, const std::vector<std::string>& keys, const std::vector<std::string>& args) {
    ensure_connected();
    auto it = shas_.find(s.source);
    if (it == shas_.end()) it = shas_.emplace(s.source, load(s)).first;
    reply r = run(evalsha(it->second, keys, args));
    if (r.is_error() && r.str().starts_with("NOSCRIPT")) {
      ++noscript_reloads_;
      it->second = load(s);
      r = run(evalsha(it->second, keys, args));
    }
    return r;
  }

  // How many times eval() met NOSCRIPT and reloaded a script.
  [[nodiscard]] std::uint64_t noscript_reloads() const noexcept { return noscript_reloads_; }
  // How many (re)connections were made.
  [[nodiscard]] std::uint64_t connects() const noexcept { return connects_; }

 private:
  static command evalsha(const std::string& sha, const std::vector<std::string>& keys,
                         const std::vector<std::string>& args) {
    command c("EVALSHA", sha, keys.size());
    for (const auto& k : keys) c.push(k);
    for (const auto& a : args) c.push(a);
    return c;
  }
  std::string load(const script& s) {
    reply r = run("SCRIPT", "LOAD", s.source);
    r.expect_ok("levee::redis::connection: SCRIPT LOAD");
    return std::string(r.str());
  }

  static timeval to_timeval(std::chrono::milliseconds d) noexcept {
    timeval tv{};
    tv.tv_sec = static_cast<decltype(tv.tv_sec)>(d.count() / 1000);
    tv.tv_usec = static_cast<decltype(tv.tv_usec)>((d.count() % 1000) * 1000);
    return tv;
  }

  void connect() {
    disconnect();
    const timeval ct = to_timeval(opts_.connect_timeout);
    redisContext* c = opts_.endpoint.unix_path.empty()
                          ? redisConnectWithTimeout(opts_.endpoint.host.c_str(), opts_.endpoint.port, ct)
                          : redisConnectUnixWithTimeout(opts_.endpoint.unix_path.c_str(), ct);
    if (c == nullptr) throw io_error("levee::redis: cannot allocate a connection context");
    if (c->err != 0) {
      const std::string msg =
          "levee::redis: cannot connect to " + opts_.endpoint.to_string() + ": " + c->errstr;
      redisFree(c);
      throw io_error(msg);
    }
    if (redisSetTimeout(c, to_timeval(opts_.command_timeout)) != REDIS_OK) {
      redisFree(c);
      throw io_error("levee::redis: cannot set the command timeout on " + opts_.endpoint.to_string());
    }
    ctx_ = c;
    ++connects_;
  }

  void append(const command& c) {
    const auto& a = c.args();
    std::vector<const char*> argv(a.size());
    std::vector<std::size_t> lens(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      argv[i] = a[i].data();
      lens[i] = a[i].size();
    }
    if (redisAppendCommandArgv(ctx_, static_cast<int>(a.size()), argv.data(), lens.data()) != REDIS_OK)
      fail("append");
  }

  reply read_one() {
    void* out = nullptr;
    if (redisGetReply(ctx_, &out) != REDIS_OK || out == nullptr) fail("read");
    return reply(static_cast<redisReply*>(out));
  }

  [[noreturn]] void fail(const char* op) {
    std::string msg = std::string("levee::redis: ") + op + " on " + opts_.endpoint.to_string() + " failed";
    if (ctx_ != nullptr && ctx_->err != 0) msg += std::string(": ") + ctx_->errstr;
    disconnect();
    throw io_error(msg);
  }

  connection_options opts_;
  redisContext* ctx_ = nullptr;
  std::unordered_map<std::string, std::string> shas_;  // script source -> SHA on this server
  std::uint64_t noscript_reloads_ = 0;
  std::uint64_t connects_ = 0;
};

}  // namespace levee::redis
