// fleet: one rate for a whole fleet of worker processes, fed by a durable
// queue, surviving a worker killed mid-run. The pieces:
//
//   load generator --POST /jobs--> HTTP front --XADD--> Redis stream "jobs"
//   (httplib client threads)       (cpp-httplib, 202)        |  consumer group "workers"
//                                                            v
//        worker 0 .. N-1: separate processes, each a levee::leveler fed by
//        levee::redis::stream_ingress and paced by one fleet-wide
//        levee::redis::shared_rate_gate (a GCRA on the Redis server)
//
// The program starts its own redis-server (levee::redis::test_server, a
// temporary unix socket), runs the front and the load generator itself and
// re-executes itself (posix_spawn, no shell) as `fleet --role worker ...`
// for each worker. It drives a spike against the front, kills one worker
// with SIGKILL when the spike ends, waits until every accepted job has been
// processed, then checks and charts:
//  - nothing lost: every id the front answered 202 for was processed at
//    least once; duplicates are counted and must all come from the killed
//    worker (processed there, never acknowledged, claimed by a survivor);
//  - the global envelope: the merged dispatch log of all workers conforms to
//    burst + min(N x k, burst + r x h) + jitter over r x w in every window
//    (levee::check_conformance);
//  - the fleet's dispatch rate while the backlog lasts is the global limit
//    (reported; checked outside --smoke, where a starved CI machine may not
//    give the workers the CPU).
// Exits non-zero when a claim does not hold. Without a redis-server binary
// it says so and exits 0, unless LEVEE_REQUIRE_REDIS=1 (then 1).
#include <fcntl.h>
#include <httplib.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <levee/conformance.hpp>
#include <levee/leveler.hpp>
#include <levee/redis/shared_rate_gate.hpp>
#include <levee/redis/stream_ingress.hpp>
#include <levee/redis/stream_producer.hpp>
#include <levee/redis/test_server.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "support/args.hpp"
#include "support/format.hpp"
#include "support/svg_chart.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using example_support::fmt;
using example_support::num;
using example_support::usage_error;

using job_t = levee::redis::stream_job<std::string>;
using gate_t = levee::redis::shared_rate_gate<>;
using ingress_t = levee::redis::stream_ingress<std::string, levee::redis::string_codec>;
using producer_t = levee::redis::stream_producer<std::string, levee::redis::string_codec>;
// The leveler paced by the fleet-wide gate (fourth template parameter).
using leveler_t = levee::leveler<job_t, levee::round_robin, clk, gate_t>;

constexpr const char* stream_key = "jobs";
constexpr const char* group_name = "workers";
constexpr const char* rate_key = "fleet:rate";

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clk::now().time_since_epoch()).count();
}

struct config {
  bool smoke = false;
  int workers = 3;           // processes
  double rate = 400;         // the fleet-wide limit, jobs/s
  double base = 150;         // base load, jobs/s
  double spike = 3;          // spike = spike x rate
  double lead = 2;           // s of base load before the spike
  double spike_len = 2;      // s
  double tail = 2;           // s of base load after the spike
  std::uint64_t batch = 16;  // k: tokens per round trip
  double work_ms = 5;        // a job's handler time (the downstream call)
  std::string out;           // chart path
  // worker role
  bool worker = false;
  int index = 0;
  std::string socket, dir;
};

void print_usage(std::ostream& os) {
  os << "usage: fleet [--smoke] [--workers N] [--rate R] [--spike X] [--svg PATH]\n"
        "  --smoke        a short run (~6 s) for CI\n"
        "  --workers N    worker processes (2..16, default 3); one of them is killed mid-run\n"
        "  --rate R       the fleet-wide dispatch limit, jobs/s (default 400)\n"
        "  --spike X      the spike's arrival rate as a multiple of R (default 3)\n"
        "  --svg PATH     where to write the chart (default fleet.svg; --smoke: a temporary file)\n";
}

std::optional<config> parse_flags(int argc, char** argv) {
  example_support::arg_reader args(argc, argv);
  config c;
  if (args.has("--smoke")) {
    c.smoke = true;
    c.rate = 200;
    c.base = 60;
    c.spike = 2.5;
    c.lead = 0.5;
    c.spike_len = 1;
    c.tail = 0.5;
  }
  while (auto f = args.next()) {
    if (*f == "--smoke") continue;
    if (*f == "--help" || *f == "-h") return std::nullopt;
    if (*f == "--workers") {
      c.workers = static_cast<int>(example_support::parse_number(*f, args.value(), 1, 16));
      if (c.workers < 2) throw usage_error("--workers: at least 2 (one is killed)");
    } else if (*f == "--rate") {
      c.rate = example_support::parse_number(*f, args.value(), 0, 5000);
    } else if (*f == "--spike") {
      c.spike = example_support::parse_number(*f, args.value(), 1, 20);
    } else if (*f == "--svg") {
      c.out = std::string(args.value());
    } else if (*f == "--role") {
      if (args.value() != "worker") throw usage_error("--role: only 'worker'");
      c.worker = true;
    } else if (*f == "--index") {
      c.index = static_cast<int>(example_support::parse_number(*f, args.value(), -1, 16));
    } else if (*f == "--socket") {
      c.socket = std::string(args.value());
    } else if (*f == "--dir") {
      c.dir = std::string(args.value());
    } else if (*f == "--batch") {
      c.batch = static_cast<std::uint64_t>(example_support::parse_number(*f, args.value(), 0, 1024));
    } else if (*f == "--work-ms") {
      c.work_ms = example_support::parse_number(*f, args.value(), -1, 1000);
    } else {
      throw usage_error("unknown flag " + *f);
    }
  }
  if (c.base >= c.rate) c.base = c.rate / 2;
  return c;
}

levee::redis::connection_options conn_opts(const std::string& socket) {
  levee::redis::connection_options o;
  o.endpoint = levee::redis::endpoint::unix_socket(socket);
  o.connect_timeout = 1000ms;
  o.command_timeout = 2000ms;
  return o;
}

// The gate every worker builds alike: the fleet's rate on one key.
levee::redis::shared_rate_gate_options gate_options(const config& c) {
  levee::redis::shared_rate_gate_options g;
  g.connection = conn_opts(c.socket);
  g.key = rate_key;
  g.rate = levee::rate::per_second(static_cast<std::int64_t>(c.rate));
  g.burst = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(c.rate / 100));  // 10 ms worth
  g.batch = c.batch;
  g.lease = 1s;
  g.on_failure = levee::redis::failure_policy::fail_closed;
  g.fleet_size = static_cast<std::uint64_t>(c.workers);
  return g;
}

// Claims: entries of a dead worker are taken over after min_idle.
constexpr auto min_idle = 1000ms;

// ------------------------------------------------------------------ worker --
// One worker process: a leveler fed by the stream, paced by the fleet gate.
// Each dispatch is appended to <dir>/worker-<i>.log at once with one write(2)
// ("<steady ns> <entry id>"), so the log survives a SIGKILL. The gate's
// largest reply delay goes to <dir>/worker-<i>.rtt every 200 ms. SIGTERM:
// close, drain, acknowledge, exit 0.
int run_worker(const config& c) {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);  // before any thread: sigwait below takes them

  const std::string base = c.dir + "/worker-" + std::to_string(c.index);
  const int log_fd = ::open((base + ".log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    std::perror("fleet worker: open log");
    return 2;
  }
  auto gate = std::make_shared<gate_t>(gate_options(c));

  levee::redis::stream_ingress_options io;
  io.connection = conn_opts(c.socket);
  io.connection.command_timeout = 3000ms;  // > block
  io.stream = stream_key;
  io.group = group_name;
  io.consumer = "worker-" + std::to_string(c.index);
  io.batch = 64;
  io.block = 100ms;
  io.min_idle = min_idle;
  io.claim_interval = 200ms;
  io.heartbeat = 300ms;
  ingress_t in(io);

  leveler_t::options o;
  o.capacity = 128;  // what a worker holds locally; the rest waits in the stream
  o.workers = 2;
  o.gate = gate;
  o.dead_letter = in.dead_letter_sink();
  const auto work = std::chrono::microseconds(static_cast<std::int64_t>(c.work_ms * 1000));
  leveler_t lev(o, in.wrap([&](job_t& j) {
    char line[96];
    const int n =
        std::snprintf(line, sizeof line, "%lld %s\n", static_cast<long long>(now_ns()), j.id.c_str());
    if (n <= 0 || ::write(log_fd, line, static_cast<std::size_t>(n)) != n)
      throw std::runtime_error("log write");
    std::this_thread::sleep_for(work);  // the downstream call
  }));
  in.start(lev);
  { std::ofstream(base + ".ready") << ::getpid() << '\n'; }

  auto write_rtt = [&] {
    const auto m = gate->metrics();
    const std::string tmp = base + ".rtt.tmp";
    {
      std::ofstream(tmp) << m.max_round_trip.count() << ' ' << m.round_trips << ' ' << m.errors << ' '
                         << m.tokens_granted << ' ' << m.tokens_spent << ' ' << m.tokens_expired << ' '
                         << lev.metrics().started << '\n';
    }
    std::filesystem::rename(tmp, base + ".rtt");
  };
  for (;;) {
    const timespec poll{0, 200'000'000};
    const int sig = ::sigtimedwait(&stop_signals, nullptr, &poll);
    write_rtt();
    if (sig == SIGTERM || sig == SIGINT) break;
  }
  lev.close();
  const bool drained = lev.drain_for(20s);
  in.stop();
  write_rtt();
  ::close(log_fd);
  return drained ? 0 : 3;
}

// ----------------------------------------------------------------- parent --
struct child {
  pid_t pid = -1;
  int index = 0;
};

pid_t spawn_worker(const config& c, int index) {
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<std::string> args{exe,
                                "--role",
                                "worker",
                                "--index",
                                std::to_string(index),
                                "--socket",
                                c.socket,
                                "--dir",
                                c.dir,
                                "--rate",
                                fmt("%.0f", c.rate),
                                "--workers",
                                std::to_string(c.workers),
                                "--batch",
                                std::to_string(c.batch),
                                "--work-ms",
                                fmt("%g", c.work_ms)};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv.data(), environ);
  if (rc != 0) throw std::runtime_error(std::string("posix_spawn: ") + std::strerror(rc));
  return pid;
}

// Waits for a child to exit (SIGKILL after `limit`); its exit code, or -signal.
int reap(pid_t pid, std::chrono::milliseconds limit) {
  const auto until = clk::now() + limit;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    if (r < 0) return -1000;
    if (clk::now() > until) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1001;
    }
    std::this_thread::sleep_for(5ms);
  }
}

// Polls `cond` every 5 ms until it holds or `limit` passes (the watchdog).
template <class F>
bool wait_for(F&& cond, std::chrono::milliseconds limit) {
  const auto until = clk::now() + limit;
  while (!cond()) {
    if (clk::now() > until) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// The consumer group's lag (entries never delivered) and pending count
// (delivered, not acknowledged), from XINFO GROUPS.
struct group_state {
  std::int64_t lag = 0, pending = 0;
};
std::optional<group_state> read_group(levee::redis::connection& conn) {
  levee::redis::reply r = conn.run("XINFO", "GROUPS", stream_key);
  if (r.is_error()) return std::nullopt;
  for (std::size_t g = 0; g < r.size(); ++g) {
    const redisReply* info = r.at(g);
    if (info == nullptr || info->type != REDIS_REPLY_ARRAY) continue;
    group_state s;
    bool mine = false;
    for (std::size_t i = 0; i + 1 < info->elements; i += 2) {
      const auto field = levee::redis::reply::text(info->element[i]);
      const redisReply* v = info->element[i + 1];
      if (field == "name") mine = levee::redis::reply::text(v) == group_name;
      if (field == "pending" && v->type == REDIS_REPLY_INTEGER) s.pending = v->integer;
      if (field == "lag" && v->type == REDIS_REPLY_INTEGER) s.lag = v->integer;
    }
    if (mine) return s;
  }
  return std::nullopt;
}

// The front: POST /jobs -> XADD -> 202 with the entry id. One producer
// (connection) per request in flight, from a pool: hiredis contexts are not
// thread-safe. Records each accepted id with its arrival time.
class front {
 public:
  explicit front(std::string socket) : socket_(std::move(socket)) {
    server_.new_task_queue = [] { return new httplib::ThreadPool(24); };
    server_.set_tcp_nodelay(true);
    server_.Post("/jobs", [this](const httplib::Request& req, httplib::Response& res) {
      auto p = take();
      const auto r = p->try_add(req.body);
      give(std::move(p));
      if (!r) {
        res.status = 503;
        res.set_header("Retry-After", "1");
        res.set_content(std::string(levee::redis::to_string(r.status)) + "\n", "text/plain");
        return;
      }
      {
        std::lock_guard lock(mutex_);
        accepted_.emplace_back(now_ns(), r.id);
      }
      res.status = 202;
      res.set_content(r.id + "\n", "text/plain");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    if (port_ <= 0) throw std::runtime_error("front: cannot bind 127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  front(const front&) = delete;
  front& operator=(const front&) = delete;
  ~front() {
    server_.stop();
    thread_.join();
  }
  [[nodiscard]] int port() const { return port_; }
  [[nodiscard]] std::vector<std::pair<std::int64_t, std::string>> accepted() const {
    std::lock_guard lock(mutex_);
    return accepted_;
  }

 private:
  std::unique_ptr<producer_t> take() {
    {
      std::lock_guard lock(mutex_);
      if (!pool_.empty()) {
        auto p = std::move(pool_.back());
        pool_.pop_back();
        return p;
      }
    }
    levee::redis::stream_producer_options po;
    po.connection = conn_opts(socket_);
    po.stream = stream_key;
    po.group = group_name;
    return std::make_unique<producer_t>(po);
  }
  void give(std::unique_ptr<producer_t> p) {
    std::lock_guard lock(mutex_);
    pool_.push_back(std::move(p));
  }

  std::string socket_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<producer_t>> pool_;
  std::vector<std::pair<std::int64_t, std::string>> accepted_;
};

// The built-in load generator: arrival times (ns after start) of base load,
// spike, base load; `clients` threads each send every clients-th arrival at
// its time (late ones at once), with keep-alive connections.
struct load_result {
  std::uint64_t sent = 0, accepted = 0, refused = 0, errors = 0;
};
load_result drive(int port, const std::vector<std::int64_t>& arrivals, std::int64_t start_ns, int clients) {
  std::atomic<std::uint64_t> sent{0}, ok{0}, refused{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      httplib::Client cli("127.0.0.1", port);
      cli.set_keep_alive(true);
      cli.set_tcp_nodelay(true);  // headers and body go in two writes: no Nagle + delayed-ACK stalls
      cli.set_connection_timeout(2s);
      cli.set_read_timeout(5s);
      for (std::size_t i = static_cast<std::size_t>(t); i < arrivals.size();
           i += static_cast<std::size_t>(clients)) {
        std::this_thread::sleep_until(clk::time_point(std::chrono::nanoseconds(start_ns + arrivals[i])));
        const std::string body = "job-" + std::to_string(i);
        auto res = cli.Post("/jobs", body, "text/plain");
        sent.fetch_add(1, std::memory_order_relaxed);
        if (!res)
          errors.fetch_add(1, std::memory_order_relaxed);
        else if (res->status == 202)
          ok.fetch_add(1, std::memory_order_relaxed);
        else
          refused.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  for (auto& th : threads) th.join();
  return {sent.load(), ok.load(), refused.load(), errors.load()};
}

struct check {
  bool ok;
  std::string what;
};

int run_fleet(config c) {
  const auto server_binary = levee::redis::test_server::find_binary();
  if (!server_binary) {
    const char* req = std::getenv("LEVEE_REQUIRE_REDIS");
    const bool required = req != nullptr && std::strcmp(req, "1") == 0;
    std::fprintf(stderr,
                 "%s: fleet needs a redis-server (or valkey-server) binary on PATH or in "
                 "$LEVEE_REDIS_SERVER (Debian: apt-get install redis-server)%s\n",
                 required ? "FAIL" : "SKIP", required ? " and LEVEE_REQUIRE_REDIS=1" : "");
    return required ? 1 : 0;
  }
  levee::redis::test_server srv(*server_binary);
  c.socket = srv.socket_path();
  std::string tmpl = (std::filesystem::temp_directory_path() / "levee-fleet-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  c.dir = tmpl;
  struct dir_guard {
    std::string d;
    ~dir_guard() {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  } cleanup{c.dir};

  levee::redis::connection admin(conn_opts(c.socket));
  admin.run("XGROUP", "CREATE", stream_key, group_name, "0", "MKSTREAM").expect_ok("XGROUP CREATE");

  const auto gopts = gate_options(c);
  const std::uint64_t n = static_cast<std::uint64_t>(c.workers);
  const std::uint64_t slack =
      std::min(n * c.batch, gopts.burst + static_cast<std::uint64_t>(c.rate));  // r x h, h = 1 s
  std::printf(
      "fleet: %d worker processes, one limit of %.0f jobs/s (burst %llu, k = %llu tokens per round trip)\n",
      c.workers, c.rate, static_cast<unsigned long long>(gopts.burst),
      static_cast<unsigned long long>(c.batch));
  std::printf("  redis-server on %s\n", c.socket.c_str());

  // Workers. Whatever happens below, none outlives this function.
  struct children {
    std::vector<child> v;
    ~children() {
      for (auto& k : v)
        if (k.pid > 0) {
          ::kill(k.pid, SIGKILL);
          ::waitpid(k.pid, nullptr, 0);
        }
    }
  } guard;
  auto& kids = guard.v;
  for (int i = 0; i < c.workers; ++i) kids.push_back({spawn_worker(c, i), i});
  const bool ready = wait_for(
      [&] {
        for (int i = 0; i < c.workers; ++i)
          if (!std::filesystem::exists(c.dir + "/worker-" + std::to_string(i) + ".ready")) return false;
        return true;
      },
      15s);
  if (!ready) {
    std::fprintf(stderr, "fleet: the workers did not start within 15 s\n");
    return 1;
  }

  // The front, the load and the group sampler.
  front fr(c.socket);
  std::vector<std::int64_t> arrivals;
  const auto add_arrivals = [&](double from, double to, double per_s) {
    for (double t = from; t < to; t += 1.0 / per_s) arrivals.push_back(static_cast<std::int64_t>(t * 1e9));
  };
  const double spike_begin = c.lead, spike_end = c.lead + c.spike_len, load_end = spike_end + c.tail;
  add_arrivals(0, spike_begin, c.base);
  add_arrivals(spike_begin, spike_end, c.spike * c.rate);
  add_arrivals(spike_end, load_end, c.base);
  std::printf(
      "  load: %.0f/s for %.1f s, spike %.0f/s for %.1f s, %.0f/s for %.1f s: %zu requests to "
      "POST /jobs on 127.0.0.1:%d\n",
      c.base, c.lead, c.spike * c.rate, c.spike_len, c.base, c.tail, arrivals.size(), fr.port());

  const std::int64_t t0 = now_ns() + 100'000'000;
  std::mutex sample_mutex;
  std::vector<std::pair<double, group_state>> samples;
  std::atomic<bool> sampling{true};
  std::thread sampler([&] {
    levee::redis::connection conn(conn_opts(c.socket));
    while (sampling.load()) {
      if (auto s = read_group(conn)) {
        std::lock_guard lock(sample_mutex);
        samples.emplace_back(static_cast<double>(now_ns() - t0) / 1e9, *s);
      }
      std::this_thread::sleep_for(c.smoke ? 20ms : 50ms);
    }
  });
  // One worker is killed with SIGKILL when the spike ends: it holds a full
  // local queue and jobs running, none of which it will acknowledge.
  const int victim = 0;
  double killed_at = 0;
  std::thread killer([&] {
    std::this_thread::sleep_until(
        clk::time_point(std::chrono::nanoseconds(t0 + static_cast<std::int64_t>(spike_end * 1e9))));
    ::kill(kids[victim].pid, SIGKILL);
    killed_at = static_cast<double>(now_ns() - t0) / 1e9;
  });
  const load_result load = drive(fr.port(), arrivals, t0, 16);
  killer.join();
  const int victim_status = reap(kids[victim].pid, 5s);
  kids[victim].pid = -1;
  std::printf("  worker %d killed (SIGKILL) at %.2f s (exit status %d)\n", victim, killed_at, victim_status);
  std::printf("  load done: %llu sent, %llu accepted (202), %llu refused, %llu errors\n",
              static_cast<unsigned long long>(load.sent), static_cast<unsigned long long>(load.accepted),
              static_cast<unsigned long long>(load.refused), static_cast<unsigned long long>(load.errors));

  // Until everything accepted is acknowledged (lag 0, nothing pending).
  const auto backlog_limit = std::chrono::milliseconds(
      static_cast<std::int64_t>((static_cast<double>(load.accepted) / c.rate * 3 + 20) * 1000));
  const bool settled = wait_for(
      [&] {
        auto s = read_group(admin);
        return s && s->lag == 0 && s->pending == 0;
      },
      backlog_limit);
  const double settled_at = static_cast<double>(now_ns() - t0) / 1e9;
  sampling.store(false);
  sampler.join();
  std::vector<int> exit_codes(kids.size(), 0);
  for (auto& k : kids) {
    if (k.pid <= 0) continue;
    ::kill(k.pid, SIGTERM);
  }
  for (auto& k : kids) {
    if (k.pid <= 0) continue;
    exit_codes[static_cast<std::size_t>(k.index)] = reap(k.pid, 30s);
    k.pid = -1;
  }
  const auto dead_letters = admin.run("XLEN", std::string(stream_key) + ":dead").integer();

  // The logs.
  struct dispatch {
    std::int64_t ns;
    std::string id;
    int worker;
  };
  std::vector<dispatch> log;
  std::int64_t max_rtt = 0;
  for (int i = 0; i < c.workers; ++i) {
    std::ifstream in(c.dir + "/worker-" + std::to_string(i) + ".log");
    long long t = 0;
    std::string id;
    while (in >> t >> id) log.push_back({t, id, i});
    std::ifstream rtt(c.dir + "/worker-" + std::to_string(i) + ".rtt");
    std::int64_t r = 0;
    std::uint64_t trips = 0, errs = 0, granted = 0, spent = 0, expired = 0, started = 0;
    if (rtt >> r >> trips >> errs >> granted >> spent >> expired >> started) {
      max_rtt = std::max(max_rtt, r);
      std::printf(
          "  worker %d%s: %llu dispatched; gate: %llu round trips, %llu tokens granted, %llu spent, "
          "%llu expired, %llu errors\n",
          i, i == victim ? " (killed; last report)" : "", static_cast<unsigned long long>(started),
          static_cast<unsigned long long>(trips), static_cast<unsigned long long>(granted),
          static_cast<unsigned long long>(spent), static_cast<unsigned long long>(expired),
          static_cast<unsigned long long>(errs));
    }
  }
  std::sort(log.begin(), log.end(), [](const dispatch& a, const dispatch& b) { return a.ns < b.ns; });
  const auto accepted = fr.accepted();
  std::unordered_map<std::string, std::vector<int>> runs;
  for (const auto& d : log) runs[d.id].push_back(d.worker);
  std::uint64_t lost = 0, duplicates = 0, foreign_duplicates = 0, unknown = 0;
  for (const auto& [t, id] : accepted) {
    auto it = runs.find(id);
    if (it == runs.end()) {
      ++lost;
      continue;
    }
    if (it->second.size() > 1) {
      duplicates += it->second.size() - 1;
      // A duplicate is an entry the victim ran but never acknowledged: one
      // run there, one by the survivor that claimed it.
      const auto victim_runs = std::count(it->second.begin(), it->second.end(), victim);
      if (victim_runs != 1 || it->second.size() != 2) ++foreign_duplicates;
    }
  }
  {
    std::unordered_map<std::string, bool> known;
    for (const auto& [t, id] : accepted) known[id] = true;
    for (const auto& [id, w] : runs)
      if (!known.count(id)) ++unknown;
  }

  // The envelope, and the rate while the backlog lasted.
  std::vector<clk::time_point> times;
  for (const auto& d : log) times.emplace_back(std::chrono::nanoseconds(d.ns));
  const auto rate = levee::rate::per_second(static_cast<std::int64_t>(c.rate));
  const auto jitter = static_cast<std::uint64_t>(static_cast<double>(max_rtt) * c.rate / 1e9) + 1;
  const std::uint64_t envelope = gopts.burst + slack + jitter;
  const auto conf =
      log.empty() ? levee::conformance_report{} : levee::check_conformance(times, rate, envelope);
  const auto strict =
      log.empty() ? levee::conformance_report{} : levee::check_conformance(times, rate, gopts.burst);
  // The backlog is deep from one second into the spike until it empties: the
  // dispatch rate there is what the fleet's limit allows.
  double busy_end = spike_end;
  {
    std::lock_guard lock(sample_mutex);
    for (const auto& [t, s] : samples)
      if (t > spike_end && s.lag > 0) busy_end = t;
  }
  const double busy_begin = spike_begin + 1.0 * std::min(1.0, c.spike_len / 2);
  std::uint64_t in_busy = 0;
  for (const auto& d : log) {
    const double t = static_cast<double>(d.ns - t0) / 1e9;
    if (t >= busy_begin && t < busy_end) ++in_busy;
  }
  const double busy_rate = busy_end > busy_begin ? static_cast<double>(in_busy) / (busy_end - busy_begin) : 0;

  std::printf(
      "  settled at %.2f s: %zu dispatches for %zu accepted ids; %llu duplicates, %lld dead letters\n",
      settled_at, log.size(), accepted.size(), static_cast<unsigned long long>(duplicates),
      static_cast<long long>(dead_letters));
  std::printf(
      "  fleet dispatch rate while the stream had a backlog (%.2f s .. %.2f s): %.1f jobs/s (limit %.0f)\n",
      busy_begin, busy_end, busy_rate, c.rate);
  std::printf(
      "  envelope: burst %llu + min(N x k, b + r x h) %llu + jitter %llu (largest reply delay %lld us); "
      "largest excess over the bare burst: %lld\n",
      static_cast<unsigned long long>(gopts.burst), static_cast<unsigned long long>(slack),
      static_cast<unsigned long long>(jitter), static_cast<long long>(max_rtt / 1000),
      static_cast<long long>(strict.max_excess));

  std::vector<check> checks;
  checks.push_back({ready && load.accepted > 0 && load.errors == 0,
                    "the front accepted the load (202 after XADD), no transport errors"});
  checks.push_back({settled, "the stream settled: lag 0 and nothing pending"});
  checks.push_back(
      {lost == 0 && unknown == 0,
       "nothing lost: every accepted id was processed at least once (" + std::to_string(lost) + " missing)"});
  checks.push_back({foreign_duplicates == 0, "duplicates (" + std::to_string(duplicates) +
                                                 ") only from the killed worker's unacknowledged entries"});
  checks.push_back({dead_letters == 0, "no job dead-lettered"});
  checks.push_back({conf.ok, "the global envelope held over the merged dispatch log of all workers"});
  bool survivors_ok = true;
  for (int i = 0; i < c.workers; ++i)
    if (i != victim && exit_codes[static_cast<std::size_t>(i)] != 0) survivors_ok = false;
  checks.push_back({survivors_ok, "the surviving workers drained and exited cleanly on SIGTERM"});
  const bool rate_ok = busy_rate >= 0.9 * c.rate;
  if (c.smoke && !rate_ok) {
    std::printf(
        "  (rate below 90%% of the limit: reported, not failed, in --smoke: the workers did not get the "
        "CPU)\n");
  } else {
    checks.push_back(
        {rate_ok, "the fleet's dispatch rate held at the global limit while the backlog lasted (>= 90%)"});
  }

  // The chart.
  std::string path = c.out;
  if (path.empty())
    path = c.smoke ? (std::filesystem::temp_directory_path() / "fleet_smoke.svg").string() : "fleet.svg";
  const double duration = std::max(settled_at, load_end) + 0.5;
  const double bin = c.smoke ? 0.1 : 0.25;
  std::vector<std::int64_t> arr_ns, disp_ns;
  for (const auto& [t, id] : accepted) arr_ns.push_back(t - t0);
  std::sort(arr_ns.begin(), arr_ns.end());
  for (const auto& d : log) disp_ns.push_back(d.ns - t0);
  using example_support::time_chart;
  time_chart ch;
  ch.duration = duration;
  ch.lines.push_back(
      {"arrivals (202 from the front)", "#1a73e8", 1.5, example_support::rate_series(arr_ns, bin, duration)});
  ch.lines.push_back({"fleet dispatch rate (all workers)", "#188038", 2.5,
                      example_support::rate_series(disp_ns, bin, duration)});
  {
    std::lock_guard lock(sample_mutex);
    for (const auto& [t, s] : samples) {
      ch.area.t.push_back(t);
      ch.area.value.push_back(static_cast<double>(s.lag + s.pending));
      ch.area_max_hint = std::max(ch.area_max_hint, static_cast<double>(s.lag + s.pending));
    }
  }
  ch.area_label = "stream backlog: lag + pending (right axis)";
  ch.area_axis_label = "stream backlog (entries)";
  ch.highlight = time_chart::band{spike_begin, spike_end, "spike " + num(c.spike) + "\u00d7"};
  ch.limit_line = time_chart::limit{c.rate, spike_end + 0.2, "fleet limit " + num(c.rate) + "/s"};
  ch.vline = time_chart::marker{killed_at, "worker " + std::to_string(victim) + " killed", "(SIGKILL)"};
  ch.title = "levee fleet: " + std::to_string(c.workers) + " worker processes, one rate of " + num(c.rate) +
             " jobs/s through Redis";
  ch.subtitle = num(static_cast<double>(accepted.size())) + " jobs accepted over HTTP, " +
                std::to_string(lost) + " lost, " + std::to_string(duplicates) +
                " run twice (the killed worker's unacknowledged ones); dispatch " + fmt("%.0f", busy_rate) +
                "/s while backlogged";
  ch.footer = "fleet: redis::stream_ingress -> levee::leveler -> redis::shared_rate_gate (burst " +
              std::to_string(gopts.burst) + ", k " + std::to_string(c.batch) + "); rates in " +
              fmt("%.0f", bin * 1000) + " ms bins, backlog sampled with XINFO GROUPS";
  try {
    example_support::write_svg(path, ch);
    std::printf("  chart written to %s\n", std::filesystem::absolute(path).string().c_str());
  } catch (const std::exception& e) {
    checks.push_back({false, std::string("the chart was written: ") + e.what()});
  }

  bool all = true;
  std::printf("\nchecks\n");
  for (const auto& ck : checks) {
    std::printf("  [%s] %s\n", ck.ok ? " ok " : "FAIL", ck.what.c_str());
    all = all && ck.ok;
  }
  std::printf("%s\n", all ? "all claims hold" : "SOME CLAIMS DO NOT HOLD");
  return all ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<config> cfg;
  try {
    cfg = parse_flags(argc, argv);
  } catch (const usage_error& e) {
    std::cerr << "fleet: " << e.what() << "\n(try --help)\n";
    return 2;
  }
  if (!cfg) {
    print_usage(std::cout);
    return 0;
  }
  try {
    return cfg->worker ? run_worker(*cfg) : run_fleet(*cfg);
  } catch (const std::exception& e) {
    std::cerr << "fleet" << (cfg->worker ? " worker" : "") << ": " << e.what() << "\n";
    return 1;
  }
}
