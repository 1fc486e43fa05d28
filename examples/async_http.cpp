// async_http: a leveler with 2 worker threads keeps dozens of HTTP calls in
// flight with asynchronous handlers, and exactly 2 with synchronous ones.
//
// A local provider (cpp-httplib, 127.0.0.1, an ephemeral port) answers
// GET /quote after 50 ms and returns 429 Too Many Requests above its rate (a
// token bucket: R requests/s, burst R/10). Every request goes through a
// levee::leveler with 2 worker threads, a rate gate at 0.95 x R, a
// concurrency limit of 1,000 and a 1 s attempt timeout:
//
//  1. asynchronous handlers (void(job&, levee::completion)): the handler
//     hands the request to a small HTTP/1.1 client written on standalone
//     Asio (one io_context run by one thread, a keep-alive connection pool)
//     and returns; the Asio thread fires the completion when the response
//     arrives. The attempt's stop_token cancels the socket (a
//     std::stop_callback posts the cancellation to the io_context).
//  2. the same requests with a synchronous handler (a blocking
//     httplib::Client call) on the same 2 workers, for as long as the
//     provider's latency allows: 2 calls in flight, 2 / 50 ms = 40 calls/s.
//  3. cancellation: a few requests the provider holds far longer than the
//     attempt timeout; the timeout fails them (levee::attempt_errc::timeout)
//     and its stop_token cancels their sockets at once.
//
// The program checks its claims (exit status 1 when one does not hold):
// the asynchronous run reaches 90% of the rate gate with no 429 and every
// job succeeds, its calls in flight exceed what 2 threads could hold, the
// synchronous run never has more than 2 in flight, and the timed-out calls
// are failed, counted and cancelled.
#include <httplib.h>

#include <algorithm>
#include <asio.hpp>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <future>
#include <levee/leveler.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "support/args.hpp"
#include "support/format.hpp"

namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using example_support::fmt;
using example_support::num;

double seconds_between(steady::time_point a, steady::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// ---------------------------------------------------------------- provider --
// The downstream: GET /quote answers 200 after `latency`, or 429 at once
// when its token bucket (rate, burst) is empty; GET /slow answers only when
// the provider shuts down. It counts what it saw, so the example can check
// the 429s from both sides.
class provider {
 public:
  provider(double rate, double burst, std::chrono::milliseconds latency, std::size_t threads)
      : rate_(rate), burst_(burst), latency_(latency), tokens_(burst), last_(steady::now()) {
    // One server thread per connection being served: enough for every
    // keep-alive connection the client may open.
    server_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    server_.set_tcp_nodelay(true);  // it writes a response's head and body separately
    server_.set_keep_alive_max_count(1'000'000);
    server_.set_keep_alive_timeout(10);
    server_.Get("/quote", [this](const httplib::Request&, httplib::Response& res) { quote(res); });
    server_.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("ok\n", "text/plain");
    });
    server_.Get("/slow", [this](const httplib::Request&, httplib::Response& res) { slow(res); });
    port_ = server_.bind_to_any_port("127.0.0.1");
    if (port_ <= 0) throw std::runtime_error("provider: cannot listen on 127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // stop() is a no-op until the server runs: wait for it (bounded).
    const auto give_up = steady::now() + 10s;
    while (!server_.is_running()) {
      if (steady::now() > give_up) throw std::runtime_error("provider: the server did not start in 10 s");
      std::this_thread::sleep_for(1ms);
    }
  }
  provider(const provider&) = delete;
  provider& operator=(const provider&) = delete;
  ~provider() { shutdown(); }

  void shutdown() {
    {
      std::lock_guard lock(mutex_);
      closing_ = true;
    }
    released_.notify_all();
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }

  [[nodiscard]] std::uint16_t port() const { return static_cast<std::uint16_t>(port_); }

  struct counts {
    std::uint64_t ok = 0;
    std::uint64_t too_many = 0;  // 429 answers
    int peak_active = 0;         // requests being served at once (the provider's view of "in flight")
    double lowest_tokens = 0;    // the bucket's low-water mark: the margin left before a 429
  };
  // What the provider saw since the last call; refills the bucket.
  counts take_counts() {
    std::lock_guard lock(mutex_);
    counts c = counts_;
    counts_ = counts{};
    tokens_ = counts_.lowest_tokens = burst_;
    last_ = steady::now();
    return c;
  }

 private:
  bool admit() {
    std::lock_guard lock(mutex_);
    const auto now = steady::now();
    tokens_ = std::min(burst_, tokens_ + rate_ * seconds_between(last_, now));
    last_ = now;
    if (tokens_ < 1) {
      ++counts_.too_many;
      return false;
    }
    tokens_ -= 1;
    counts_.lowest_tokens = std::min(counts_.lowest_tokens, tokens_);
    counts_.peak_active = std::max(counts_.peak_active, ++active_);
    return true;
  }

  void quote(httplib::Response& res) {
    if (!admit()) {
      res.status = 429;
      res.set_header("Retry-After", "1");
      res.set_content("rate limit exceeded\n", "text/plain");
      return;
    }
    std::this_thread::sleep_for(latency_);  // the provider's work
    {
      std::lock_guard lock(mutex_);
      --active_;
      ++counts_.ok;
    }
    res.set_content("42\n", "text/plain");
  }

  void slow(httplib::Response& res) {
    std::unique_lock lock(mutex_);
    released_.wait_for(lock, 60s, [this] { return closing_; });
    res.set_content("too late\n", "text/plain");
  }

  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  const double rate_, burst_;
  const std::chrono::milliseconds latency_;
  std::mutex mutex_;
  std::condition_variable released_;
  bool closing_ = false;
  double tokens_;
  steady::time_point last_;
  int active_ = 0;
  counts counts_{.lowest_tokens = burst_};
};

// ------------------------------------------------------ asynchronous client --
// A minimal HTTP/1.1 client on standalone Asio: GET requests to one host,
// keep-alive connections kept in a pool. Every I/O step runs on the thread
// running the io_context; get() may be called from any thread.
//
// At most 2 connections are being opened at once, and at most
// max_connections are open; a call that finds no pooled connection waits for
// one. Responses must carry a Content-Length (the provider's always do); a
// connection is reused unless the response says "Connection: close". A
// request sent on a pooled connection that the server had closed meanwhile
// (end of file before any byte of the response) is sent again once on a new
// connection.
class http_client {
 public:
  // At most max_connections connections open at once (the provider serves
  // one per thread).
  http_client(asio::io_context& io, std::uint16_t port, std::size_t max_connections)
      : io_(io), endpoint_(asio::ip::address_v4::loopback(), port), max_open_(max_connections) {}

  // Sends `GET target` and calls on_result(ec, status) once, on the Asio
  // thread. A stop request on `stop` cancels the call: on_result then gets
  // asio::error::operation_aborted (unless the response won the race).
  template <class F>
  void get(std::string target, std::stop_token stop, F on_result) {
    start_call(std::move(target), std::move(stop), std::make_unique<result_fn<F>>(std::move(on_result)),
               false);
  }

  // Opens n new connections into the pool, one at a time, each checked with
  // a request to `target` (a real client's minimum pool size); blocks until
  // they are open. Not on the Asio thread.
  void prewarm(std::size_t n, const std::string& target) {
    for (std::size_t i = 0; i < n; ++i) {
      auto result = std::make_shared<std::promise<std::pair<std::error_code, int>>>();
      std::future<std::pair<std::error_code, int>> done = result->get_future();
      auto report = [result](std::error_code ec, int status) { result->set_value({ec, status}); };
      start_call(target, {}, std::make_unique<result_fn<decltype(report)>>(std::move(report)), true);
      const auto [ec, status] = done.get();
      if (ec) throw std::system_error(ec, "http_client: cannot reach the provider");
      if (status != 200)
        throw std::runtime_error("http_client: the provider answered " + std::to_string(status) + " to " +
                                 target);
    }
  }

  // Closes the pooled connections (posted to the Asio thread).
  void close_idle() {
    asio::post(io_, [this] { idle_.clear(); });
  }

  [[nodiscard]] std::uint64_t connections_opened() const { return opened_.load(); }

 private:
  struct result_fn_base;
  void start_call(std::string target, std::stop_token stop, std::unique_ptr<result_fn_base> fn,
                  bool new_connection) {
    auto c = std::make_shared<call>(*this, std::move(target), std::move(fn));
    c->fresh = new_connection;
    // Registered before the call starts: a stop requested already runs the
    // canceller here, which posts the cancellation behind the start.
    c->on_stop.emplace(std::move(stop), canceller{&io_, c});
    asio::post(io_, [c] { c->start(); });
  }

  struct connection {
    explicit connection(http_client& c) : socket(c.io_), client(c) { ++client.open_; }
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;
    ~connection() { --client.open_; }
    asio::ip::tcp::socket socket;
    asio::streambuf buffer;  // bytes read past the end of the last response head
    http_client& client;
  };

  struct result_fn_base {
    virtual ~result_fn_base() = default;
    virtual void operator()(std::error_code ec, int status) = 0;
  };
  // A move-only callable, type-erased (the callbacks hold levee::completion).
  template <class F>
  struct result_fn final : result_fn_base {
    explicit result_fn(F&& f) : fn(std::move(f)) {}
    void operator()(std::error_code ec, int status) override { fn(ec, status); }
    F fn;
  };

  struct call;
  // Runs where stop is requested (a leveler's timer, stop()); hands the
  // cancellation to the Asio thread, which owns the socket.
  struct canceller {
    asio::io_context* io;
    std::weak_ptr<call> target;
    void operator()() const {
      asio::post(*io, [t = target] {
        if (auto c = t.lock()) c->cancel();
      });
    }
  };

  // One request. Its members are used on the Asio thread only (on_stop is
  // set before the call is posted there).
  struct call : std::enable_shared_from_this<call> {
    call(http_client& cl, std::string target, std::unique_ptr<result_fn_base> fn)
        : client(cl),
          request("GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: levee-example\r\n\r\n"),
          on_result(std::move(fn)) {}

    // Takes a pooled connection, or opens one, or waits for either.
    void start() {
      if (finished) return;  // cancelled while waiting
      if (cancelled) return finish(asio::error::operation_aborted, 0);
      if (!client.idle_.empty() && !fresh) {
        conn = std::move(client.idle_.back());
        client.idle_.pop_back();
        reused = true;
        return write();
      }
      if (!client.may_connect()) {
        client.waiting_.push_back(this->shared_from_this());
        return;
      }
      ++client.connecting_;
      conn = std::make_unique<connection>(client);
      reused = false;
      client.opened_.fetch_add(1, std::memory_order_relaxed);
      conn->socket.async_connect(client.endpoint_, [self = this->shared_from_this()](std::error_code ec) {
        --self->client.connecting_;
        self->client.wake_waiting();
        if (ec) return self->finish(ec, 0);
        self->conn->socket.set_option(asio::ip::tcp::no_delay(true), ec);
        self->write();
      });
    }

    void write() {
      asio::async_write(conn->socket, asio::buffer(request),
                        [self = this->shared_from_this()](std::error_code ec, std::size_t) {
                          if (ec) return self->failed(ec);
                          self->read_head();
                        });
    }

    void read_head() {
      asio::async_read_until(conn->socket, conn->buffer, "\r\n\r\n",
                             [self = this->shared_from_this()](std::error_code ec, std::size_t head_size) {
                               if (ec) return self->failed(ec);
                               self->parse_head(head_size);
                             });
    }

    void parse_head(std::size_t head_size) {
      const auto begin = asio::buffers_begin(conn->buffer.data());
      const std::string head(begin, begin + static_cast<std::ptrdiff_t>(head_size));
      conn->buffer.consume(head_size);
      // "HTTP/1.1 200 OK\r\n", then "Name: value\r\n" lines.
      int code = 0;
      std::optional<std::size_t> length;
      bool must_close = false;
      const auto status_end = head.find("\r\n");
      if (head.rfind("HTTP/1.", 0) == 0 && head.size() > 12)
        std::from_chars(head.data() + 9, head.data() + 12, code);
      for (auto pos = status_end + 2; pos < head.size();) {
        const auto end = head.find("\r\n", pos);
        const std::string_view line(head.data() + pos, end - pos);
        pos = end + 2;
        const auto colon = line.find(':');
        if (colon == std::string_view::npos) continue;
        std::string name(line.substr(0, colon));
        std::transform(name.begin(), name.end(), name.begin(), [](char ch) {
          return static_cast<char>(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
        });
        std::string_view value = line.substr(colon + 1);
        while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
        if (name == "content-length") {
          std::size_t n = 0;
          if (std::from_chars(value.data(), value.data() + value.size(), n).ec == std::errc{}) length = n;
        } else if (name == "connection") {
          must_close = value == "close" || value == "Close";
        }
      }
      if (code < 100 || !length) return finish(std::make_error_code(std::errc::protocol_error), 0);
      status = code;
      keep_alive = !must_close;
      if (conn->buffer.size() >= *length) return body_read(*length);
      asio::async_read(conn->socket, conn->buffer, asio::transfer_exactly(*length - conn->buffer.size()),
                       [self = this->shared_from_this(), n = *length](std::error_code ec, std::size_t) {
                         if (ec) return self->finish(ec, 0);
                         self->body_read(n);
                       });
    }

    void body_read(std::size_t length) {
      conn->buffer.consume(length);
      if (keep_alive && !cancelled && conn->buffer.size() == 0) {
        client.idle_.push_back(std::move(conn));
        client.wake_waiting();
      }
      finish({}, status);
    }

    // An error while sending or before any byte of the response: a pooled
    // connection may have been closed by the server while idle; send again
    // once on a new connection.
    void failed(std::error_code ec) {
      const bool stale =
          ec == asio::error::eof || ec == asio::error::connection_reset || ec == asio::error::broken_pipe;
      if (stale && reused && !resent && !cancelled && conn->buffer.size() == 0) {
        resent = fresh = true;
        drop_connection();
        return start();
      }
      finish(ec, 0);
    }

    void cancel() {
      if (finished) return;
      cancelled = true;
      if (conn) {
        std::error_code ignored;
        conn->socket.close(ignored);  // the pending operation completes with operation_aborted
      } else {
        finish(asio::error::operation_aborted, 0);  // not started, or waiting for a connection
      }
    }

    // Closes the connection (if any): room for a waiting call.
    void drop_connection() {
      if (!conn) return;
      conn.reset();
      client.wake_waiting();
    }

    void finish(std::error_code ec, int code) {
      if (finished) return;
      finished = true;
      drop_connection();  // a reusable connection went back to the pool already
      on_stop.reset();    // waits for a canceller running elsewhere (it only posts)
      (*on_result)(ec, code);
    }

    http_client& client;
    const std::string request;
    std::unique_ptr<result_fn_base> on_result;
    std::optional<std::stop_callback<canceller>> on_stop;
    std::unique_ptr<connection> conn;
    int status = 0;
    bool keep_alive = false;
    bool reused = false;
    bool resent = false;
    bool fresh = false;  // open a new connection rather than take a pooled one
    bool cancelled = false;
    bool finished = false;
  };

  // Starts the calls waiting for a connection, as far as connections are
  // available (each one started may queue itself again).
  void wake_waiting() {
    for (std::size_t n = waiting_.size(); n > 0 && (!idle_.empty() || may_connect()); --n) {
      std::shared_ptr<call> c = std::move(waiting_.front());
      waiting_.pop_front();
      c->start();
    }
  }

  // Connections being opened at once, at most: the provider's accept queue
  // is short (cpp-httplib listens with a backlog of 5), and a connection
  // refused there costs a 1 s SYN retransmission.
  static constexpr int max_connecting = 2;

  [[nodiscard]] bool may_connect() const { return connecting_ < max_connecting && open_ < max_open_; }

  asio::io_context& io_;
  const asio::ip::tcp::endpoint endpoint_;
  // Asio thread only:
  std::size_t open_ = 0;  // connections open, pooled or in use (before idle_: they count down)
  const std::size_t max_open_;
  int connecting_ = 0;
  std::vector<std::unique_ptr<connection>> idle_;
  std::deque<std::shared_ptr<call>> waiting_;  // calls waiting for a connection
  std::atomic<std::uint64_t> opened_{0};
};

// ------------------------------------------------------------ measurements --
// Calls in flight as the handlers see them: from the handler's start to the
// response (or the error). The average is Little's law over the run: the
// summed call durations divided by the run's length.
class flight_meter {
 public:
  steady::time_point begin() {
    const int now = in_flight_.fetch_add(1, std::memory_order_relaxed) + 1;
    int peak = peak_.load(std::memory_order_relaxed);
    while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
    const auto t = steady::now();
    std::lock_guard lock(mutex_);
    if (!first_start_) first_start_ = t;
    return t;
  }
  void end(steady::time_point started) {
    const auto t = steady::now();
    in_flight_.fetch_sub(1, std::memory_order_relaxed);
    std::lock_guard lock(mutex_);
    busy_ += t - started;
    last_end_ = std::max(last_end_, t);
  }
  [[nodiscard]] int peak() const { return peak_.load(); }
  // The run: from the first call's start to the last call's end.
  [[nodiscard]] double window_seconds() const {
    std::lock_guard lock(mutex_);
    return first_start_ ? std::max(1e-9, seconds_between(*first_start_, last_end_)) : 1e-9;
  }
  [[nodiscard]] double average() const {
    const double busy = [&] {
      std::lock_guard lock(mutex_);
      return std::chrono::duration<double>(busy_).count();
    }();
    return busy / window_seconds();
  }

 private:
  std::atomic<int> in_flight_{0}, peak_{0};
  mutable std::mutex mutex_;
  std::optional<steady::time_point> first_start_;
  steady::time_point last_end_{};
  steady::duration busy_{0};
};

// What came back, counted by the handlers and the dead-letter sink.
struct tally {
  std::atomic<std::uint64_t> ok{0}, too_many{0}, other_status{0}, io_errors{0}, aborted{0};
  std::atomic<std::uint64_t> dead_timeout{0}, dead_other{0};

  // The dead-letter sink of a leveler of request ids.
  auto sink() {
    return [this](std::uint64_t&&, levee::dead_letter_reason, std::exception_ptr e) {
      try {
        if (e) std::rethrow_exception(e);
      } catch (const std::system_error& se) {
        if (se.code() == levee::attempt_errc::timeout) {
          dead_timeout.fetch_add(1);
          return;
        }
      } catch (...) {
      }
      dead_other.fetch_add(1);
    };
  }
};

struct http_status_error : std::runtime_error {
  explicit http_status_error(int status) : std::runtime_error("HTTP status " + std::to_string(status)) {}
};

// Samples the leveler's own gauge, metrics().in_flight, every 10 ms.
template <class Leveler>
class in_flight_sampler {
 public:
  explicit in_flight_sampler(const Leveler& lev)
      : thread_([this, &lev](std::stop_token st) {
          while (!st.stop_requested()) {
            peak_.store(std::max(peak_.load(), lev.metrics().in_flight));
            std::this_thread::sleep_for(10ms);
          }
        }) {}
  [[nodiscard]] std::size_t peak() {
    thread_.request_stop();
    if (thread_.joinable()) thread_.join();
    return peak_.load();
  }

 private:
  std::atomic<std::size_t> peak_{0};
  std::jthread thread_;
};

struct run_result {
  const char* name = "";
  std::uint64_t submitted = 0, succeeded = 0, cancelled = 0, retried = 0;
  std::uint64_t too_many = 0, provider_too_many = 0, timeouts = 0;
  double seconds = 0, rate = 0, avg_in_flight = 0;
  int peak_in_flight = 0, provider_peak = 0;
  std::size_t levee_peak_in_flight = 0;
  double lowest_tokens = 0;
};

struct scenario {
  double provider_rate = 1000;  // the provider's limit, requests/s
  double gate_fraction = 0.95;  // the leveler's rate gate, as a fraction of the provider's rate
  double gate_rate = 950;
  std::chrono::milliseconds latency{50};
  double async_seconds = 3;
  double sync_seconds = 2;
  std::chrono::milliseconds attempt_timeout{1000};
  std::chrono::milliseconds cancel_timeout{1000};  // the cancellation run's attempt timeout
  std::size_t workers = 2;
  std::size_t max_concurrency = 1000;
  // The gate's burst: 20 ms of its rate (the default is 5 ms), so that a
  // worker thread woken late on a busy machine can catch up; well inside the
  // provider's burst (100 ms of its rate).
  [[nodiscard]] std::uint64_t gate_burst() const {
    return std::max<std::uint64_t>(2, static_cast<std::uint64_t>(std::ceil(gate_rate * 0.02)));
  }
  [[nodiscard]] std::uint64_t jobs() const {
    return static_cast<std::uint64_t>(std::llround(gate_rate * async_seconds));
  }
};

using id_leveler = levee::leveler<std::uint64_t>;

id_leveler::options leveler_options(const scenario& s, tally& t) {
  id_leveler::options o;
  o.capacity = static_cast<std::size_t>(s.jobs()) + 16;  // the whole run queued at once
  o.rate = levee::rate::per_second(s.gate_rate);
  o.burst = s.gate_burst();
  o.max_concurrency = s.max_concurrency;
  o.workers = s.workers;
  o.attempt_timeout = s.attempt_timeout;
  o.retry.max_attempts = 3;  // a timed-out or failed call is retried (through the rate gate again)
  o.dead_letter = t.sink();
  return o;
}

// 1. Asynchronous handlers: the Asio client does the waiting.
run_result run_async(const scenario& s, provider& prov, http_client& client) {
  tally t;
  flight_meter meter;
  auto handler = [&](std::uint64_t& id, levee::completion done) {
    const steady::time_point started = meter.begin();
    std::stop_token stop = done.stop_token();
    client.get("/quote?id=" + std::to_string(id), std::move(stop),
               [&meter, &t, started, d = std::move(done)](std::error_code ec, int status) mutable {
                 meter.end(started);
                 if (ec) {
                   (ec == asio::error::operation_aborted ? t.aborted : t.io_errors).fetch_add(1);
                   return std::move(d).fail(ec);
                 }
                 if (status == 200) {
                   t.ok.fetch_add(1);
                   return std::move(d).succeed();
                 }
                 (status == 429 ? t.too_many : t.other_status).fetch_add(1);
                 std::move(d).fail(http_status_error(status));
               });
  };
  (void)prov.take_counts();
  id_leveler lev(leveler_options(s, t), handler);
  in_flight_sampler sampler(lev);
  for (std::uint64_t i = 0; i < s.jobs(); ++i)
    if (!lev.try_submit(i)) throw std::logic_error("the queue holds the whole run");
  lev.close();
  lev.drain();
  const levee::metrics_snapshot m = lev.metrics();
  const provider::counts pc = prov.take_counts();
  run_result r;
  r.name = "asynchronous";
  r.submitted = s.jobs();
  r.succeeded = m.succeeded;
  r.retried = m.retried;
  r.timeouts = m.attempt_timeouts;
  r.too_many = t.too_many.load();
  r.provider_too_many = pc.too_many;
  r.seconds = meter.window_seconds();
  r.rate = static_cast<double>(t.ok.load()) / r.seconds;
  r.peak_in_flight = meter.peak();
  r.avg_in_flight = meter.average();
  r.levee_peak_in_flight = sampler.peak();
  r.provider_peak = pc.peak_active;
  r.lowest_tokens = pc.lowest_tokens;
  if (t.io_errors.load() + t.other_status.load() != 0)
    std::printf("  (asynchronous run: %llu I/O errors, %llu unexpected statuses)\n",
                static_cast<unsigned long long>(t.io_errors.load()),
                static_cast<unsigned long long>(t.other_status.load()));
  return r;
}

// 2. The same requests, synchronous handler: the worker thread waits.
run_result run_sync(const scenario& s, provider& prov) {
  tally t;
  flight_meter meter;
  const std::uint16_t port = prov.port();
  auto handler = [&](std::uint64_t& id) -> levee::handler_result {
    const steady::time_point started = meter.begin();
    httplib::Client cli("127.0.0.1", port);
    cli.set_read_timeout(std::chrono::seconds(5));
    const httplib::Result res = cli.Get("/quote?id=" + std::to_string(id));
    meter.end(started);
    if (!res) {
      t.io_errors.fetch_add(1);
      return levee::handler_result::failure(std::runtime_error(httplib::to_string(res.error())));
    }
    if (res->status == 200) {
      t.ok.fetch_add(1);
      return levee::handler_result::success();
    }
    (res->status == 429 ? t.too_many : t.other_status).fetch_add(1);
    return levee::handler_result::failure(http_status_error(res->status));
  };
  (void)prov.take_counts();
  id_leveler lev(leveler_options(s, t), handler);
  in_flight_sampler sampler(lev);
  for (std::uint64_t i = 0; i < s.jobs(); ++i)
    if (!lev.try_submit(i)) throw std::logic_error("the queue holds the whole run");
  std::this_thread::sleep_for(std::chrono::duration<double>(s.sync_seconds));  // the run's length
  lev.stop();  // cancels what did not start; waits for the 2 calls running
  const levee::metrics_snapshot m = lev.metrics();
  const provider::counts pc = prov.take_counts();
  run_result r;
  r.name = "synchronous";
  r.submitted = s.jobs();
  r.succeeded = m.succeeded;
  r.cancelled = m.dead_lettered.cancelled;
  r.retried = m.retried;
  r.timeouts = m.attempt_timeouts;
  r.too_many = t.too_many.load();
  r.provider_too_many = pc.too_many;
  r.seconds = meter.window_seconds();
  r.rate = static_cast<double>(t.ok.load()) / r.seconds;
  r.peak_in_flight = meter.peak();
  r.avg_in_flight = meter.average();
  r.levee_peak_in_flight = sampler.peak();
  r.provider_peak = pc.peak_active;
  r.lowest_tokens = pc.lowest_tokens;
  return r;
}

struct cancel_result {
  std::uint64_t calls = 0, timeouts = 0, late = 0, dead_timeout = 0, aborted = 0, other = 0;
  double slowest_abort_seconds = 0;  // from a call's start to its socket's cancellation reported
};

// 3. Calls the provider holds far past the attempt timeout.
cancel_result run_cancel(const scenario& s, http_client& client) {
  constexpr std::uint64_t calls = 4;
  tally t;
  std::mutex mutex;
  double slowest = 0;
  auto handler = [&](std::uint64_t&, levee::completion done) {
    const steady::time_point started = steady::now();
    std::stop_token stop = done.stop_token();
    client.get("/slow", std::move(stop), [&, started, d = std::move(done)](std::error_code ec, int) mutable {
      {
        std::lock_guard lock(mutex);
        slowest = std::max(slowest, seconds_between(started, steady::now()));
      }
      std::move(d).fail(ec);  // too late: the attempt timed out; counted in late_completions
      (ec == asio::error::operation_aborted ? t.aborted : t.other_status).fetch_add(1);
    });
  };
  id_leveler::options o = leveler_options(s, t);
  o.attempt_timeout = s.cancel_timeout;
  o.retry.max_attempts = 1;
  id_leveler lev(o, handler);
  for (std::uint64_t i = 0; i < calls; ++i) (void)lev.try_submit(i);
  lev.close();
  lev.drain();  // returns when the attempts timed out
  // The cancellations reach the sockets through the io_context: wait for
  // the (late) completions, bounded.
  const auto give_up = steady::now() + 10s;
  while (t.aborted.load() + t.other_status.load() < calls && steady::now() < give_up)
    std::this_thread::sleep_for(1ms);
  const levee::metrics_snapshot m = lev.metrics();
  cancel_result r;
  r.calls = calls;
  r.timeouts = m.attempt_timeouts;
  r.late = m.late_completions;
  r.dead_timeout = t.dead_timeout.load();
  r.aborted = t.aborted.load();
  r.other = t.other_status.load();
  std::lock_guard lock(mutex);
  r.slowest_abort_seconds = slowest;
  return r;
}

void print_usage() {
  std::puts(
      "usage: async_http [--rate R] [--gate F] [--seconds S] [--latency MS] [--smoke]\n"
      "  --rate R      the provider's rate limit, requests/s (default 1000)\n"
      "  --gate F      the leveler's rate gate as a fraction of R (default 0.95; above 1, 429s appear)\n"
      "  --seconds S   length of the asynchronous run (default 3)\n"
      "  --latency MS  the provider's answer time, ms (default 50)\n"
      "  --smoke       a short run for CI (R = 500/s, 1.5 s asynchronous, 0.5 s synchronous)\n"
      "Exit status: 0 when every claim holds, 1 when one does not, 2 on bad flags.");
}

std::string percent(double part, double whole) { return fmt("%.1f%%", 100.0 * part / whole); }

int run(const scenario& s) {
  const double latency_s = std::chrono::duration<double>(s.latency).count();
  const double expected_in_flight = s.gate_rate * latency_s;  // Little's law
  // Provider: burst R/10 (100 ms of its rate, at least 5), enough threads for
  // every connection the client may hold open.
  const double provider_burst = std::max(5.0, std::ceil(s.provider_rate / 10));
  const auto server_threads = static_cast<std::size_t>(std::ceil(4 * expected_in_flight)) + 32;
  provider prov(s.provider_rate, provider_burst, s.latency, server_threads);

  asio::io_context io(1);
  auto work = asio::make_work_guard(io);
  http_client client(io, prov.port(), server_threads - 8);  // a few threads left for /health, /slow
  std::thread asio_thread([&io] { io.run(); });             // the one Asio thread
  struct join_on_error {  // an exception: stop the Asio thread before unwinding
    asio::io_context& io;
    std::thread& thread;
    ~join_on_error() {
      if (!thread.joinable()) return;
      io.stop();
      thread.join();
    }
  } joiner{io, asio_thread};
  // A pool of 2 x rate x latency connections: the run rarely opens one.
  client.prewarm(static_cast<std::size_t>(std::ceil(2 * expected_in_flight)) + 2, "/health");

  std::printf(
      "provider: 127.0.0.1:%u answers after %lld ms, %s requests/s (burst %s), 429 above; %zu server "
      "threads\n",
      static_cast<unsigned>(prov.port()), static_cast<long long>(s.latency.count()),
      num(s.provider_rate).c_str(), num(provider_burst).c_str(), server_threads);
  std::printf(
      "leveler: %zu worker threads, rate gate %s/s, max_concurrency %zu, attempt_timeout %lld ms; "
      "%s requests\n\n",
      s.workers, num(s.gate_rate).c_str(), s.max_concurrency,
      static_cast<long long>(s.attempt_timeout.count()), num(static_cast<double>(s.jobs())).c_str());

  const run_result a = run_async(s, prov, client);
  std::printf("1. asynchronous handler + Asio client: %s of %s requests answered 200 in %.2f s\n",
              num(static_cast<double>(a.succeeded)).c_str(), num(static_cast<double>(a.submitted)).c_str(),
              a.seconds);
  client.close_idle();
  const run_result y = run_sync(s, prov);
  std::printf(
      "2. synchronous handler (blocking httplib::Client): %s answered 200 in %.2f s, %s cancelled "
      "by stop()\n",
      num(static_cast<double>(y.succeeded)).c_str(), y.seconds,
      num(static_cast<double>(y.cancelled)).c_str());
  const cancel_result c = run_cancel(s, client);
  std::printf(
      "3. cancellation: %llu calls held by the provider, attempt_timeout %lld ms: %llu attempt timeouts, "
      "%llu dead-lettered with attempt_errc::timeout, %llu sockets cancelled (operation_aborted, the "
      "slowest %.0f ms after its start), %llu late completions\n\n",
      static_cast<unsigned long long>(c.calls), static_cast<long long>(s.cancel_timeout.count()),
      static_cast<unsigned long long>(c.timeouts), static_cast<unsigned long long>(c.dead_timeout),
      static_cast<unsigned long long>(c.aborted), 1000 * c.slowest_abort_seconds,
      static_cast<unsigned long long>(c.late));

  client.close_idle();  // the provider's threads serving them see the end of file
  prov.shutdown();
  work.reset();
  asio_thread.join();  // returns once no call and no connection is left

  auto row = [](const char* label, const std::string& x, const std::string& z) {
    std::printf("  %-38s %16s %16s\n", label, x.c_str(), z.c_str());
  };
  auto count = [](std::uint64_t v) { return num(static_cast<double>(v)); };
  row("", "asynchronous", "synchronous");
  row("worker threads", num(static_cast<double>(s.workers)), num(static_cast<double>(s.workers)));
  row("requests answered 200", count(a.succeeded), count(y.succeeded));
  row("achieved rate, /s", fmt("%.1f", a.rate), fmt("%.1f", y.rate));
  row("  of the rate gate", percent(a.rate, s.gate_rate), percent(y.rate, s.gate_rate));
  row("calls in flight, peak", num(a.peak_in_flight), num(y.peak_in_flight));
  row("calls in flight, average", fmt("%.1f", a.avg_in_flight), fmt("%.1f", y.avg_in_flight));
  row("metrics().in_flight, peak (sampled)", count(a.levee_peak_in_flight), count(y.levee_peak_in_flight));
  row("provider: requests served at once, peak", num(a.provider_peak), num(y.provider_peak));
  row("responses 429 (client / provider)", count(a.too_many) + " / " + count(a.provider_too_many),
      count(y.too_many) + " / " + count(y.provider_too_many));
  row("provider's bucket, lowest level", fmt("%.1f", a.lowest_tokens), fmt("%.1f", y.lowest_tokens));
  row("attempt timeouts", count(a.timeouts), count(y.timeouts));
  row("retries", count(a.retried), count(y.retried));
  std::printf("  Little's law: rate x latency = %.1f calls in flight at %s/s; 2 workers / %.0f ms = %.0f/s\n",
              expected_in_flight, num(s.gate_rate).c_str(), 1000 * latency_s, 2 / latency_s);
  std::printf("  Asio client: %llu connections opened\n\n",
              static_cast<unsigned long long>(client.connections_opened()));

  bool ok = true;
  auto expect = [&](bool cond, const std::string& what) {
    std::printf("[%s] %s\n", cond ? " ok " : "FAIL", what.c_str());
    ok = ok && cond;
  };
  expect(a.succeeded == a.submitted, "asynchronous: every request answered 200");
  expect(a.rate >= 0.9 * s.gate_rate, "asynchronous: achieved rate " + fmt("%.1f", a.rate) +
                                          "/s >= 0.9 x the rate gate (" + fmt("%.1f", 0.9 * s.gate_rate) +
                                          "/s)");
  expect(a.too_many == 0 && a.provider_too_many == 0,
         "asynchronous: no 429 (the rate gate kept under the limit)");
  expect(a.peak_in_flight >= std::max(3.0, 0.5 * expected_in_flight),
         "asynchronous: " + num(a.peak_in_flight) + " calls in flight at the peak >= 0.5 x rate x latency (" +
             fmt("%.1f", 0.5 * expected_in_flight) + ") on 2 worker threads");
  expect(y.peak_in_flight <= 2 && y.levee_peak_in_flight <= 2 && y.provider_peak <= 2,
         "synchronous: never more than 2 calls in flight (one per worker thread)");
  expect(y.rate <= 1.05 * 2 / latency_s && y.too_many == 0,
         "synchronous: achieved rate " + fmt("%.1f", y.rate) + "/s, bounded by 2 / latency (" +
             fmt("%.0f", 2 / latency_s) + "/s)");
  expect(c.timeouts == c.calls && c.dead_timeout == c.calls,
         "cancellation: every held call failed with attempt_errc::timeout");
  expect(c.aborted == c.calls && c.late == c.calls,
         "cancellation: every socket cancelled through the stop_token; the late completions counted");
  expect(
      c.slowest_abort_seconds < std::chrono::duration<double>(s.cancel_timeout).count() + 1.0,
      "cancellation: the sockets were cancelled within 1 s of the timeout, not when the provider answered");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  scenario s;
  try {
    example_support::arg_reader args(argc, argv);
    if (args.has("--smoke")) {
      s.provider_rate = 500;
      s.async_seconds = 1.5;
      s.sync_seconds = 0.5;
      s.cancel_timeout = 300ms;
    }
    while (auto flag = args.next()) {
      if (*flag == "--smoke") continue;
      if (*flag == "--help" || *flag == "-h") {
        print_usage();
        return 0;
      }
      if (*flag == "--rate") {
        s.provider_rate = example_support::parse_number("--rate", args.value(), 0, 5000);
      } else if (*flag == "--gate") {
        s.gate_fraction = example_support::parse_number("--gate", args.value(), 0, 2);
      } else if (*flag == "--seconds") {
        s.async_seconds = example_support::parse_number("--seconds", args.value(), 0, 600);
      } else if (*flag == "--latency") {
        s.latency = std::chrono::milliseconds(
            std::llround(example_support::parse_number("--latency", args.value(), 0, 1000)));
      } else {
        throw example_support::usage_error("unknown flag " + *flag);
      }
    }
    s.gate_rate = s.gate_fraction * s.provider_rate;
    if (s.jobs() < 10) throw example_support::usage_error("--rate x --seconds: fewer than 10 requests");
  } catch (const example_support::usage_error& e) {
    std::fprintf(stderr, "async_http: %s\n", e.what());
    print_usage();
    return 2;
  }

  try {
    return run(s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "async_http: %s\n", e.what());
    return 1;
  }
}
