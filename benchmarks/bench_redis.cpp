// benchmarks/bench_redis.cpp - the levee::redis component against a private
// redis-server (started here, test_server.hpp), in one run:
//  1. round trips per second, unix socket and TCP: PING (the floor) vs the
//     fleet GCRA script reserving 1 and 64 tokens;
//  2. stream entries per second end to end (XREADGROUP -> leveler -> handler
//     -> XACK) with batch 1 and 64, vs a hand-written XREADGROUP/XACK loop;
//  3. achieved fleet rate vs target: 3 gates (each with its own refill thread
//     and connection, as 3 processes would) sharing one key;
//  4. the same with a levee::leveler on each gate (options.gate), dispatching
//     a deep queue of no-op jobs: what a fleet of levelers achieves.
// Options: --smoke (short runs, CI), --runs N (default 3; medians reported).
// Without a redis-server binary it says so and exits 0.
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <levee/leveler.hpp>
#include <levee/redis/gcra.hpp>
#include <levee/redis/shared_rate_gate.hpp>
#include <levee/redis/stream_ingress.hpp>
#include <levee/redis/test_server.hpp>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"

namespace {

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
bool smoke = false;
int runs = 3;

double seconds_since(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

int free_tcp_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return 0;
  }
  const int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

levee::redis::connection_options opts_for(levee::redis::endpoint e) {
  levee::redis::connection_options o;
  o.endpoint = std::move(e);
  o.command_timeout = 5000ms;
  return o;
}

// 1. Round trips per second.
void table_round_trips(const levee::redis::test_server& srv, bool have_tcp) {
  const auto length = smoke ? 0.05 : 1.0;
  std::printf("\n1. Round trips per second (one client, sequential; median of %d runs of %.2f s)\n", runs,
              length);
  levee_bench::print_machine();
  std::printf("%-10s %-28s %14s %14s\n", "transport", "call", "calls/s", "tokens/s");
  std::vector<std::pair<const char*, levee::redis::endpoint>> eps = {{"unix", srv.endpoint()}};
  if (have_tcp) eps.emplace_back("tcp", srv.tcp_endpoint());
  for (const auto& [name, ep] : eps) {
    levee::redis::connection c(opts_for(ep));
    const levee::redis::gcra_config cfg(levee::rate::per_second(1'000'000'000), 1'000'000, 1s, 64);
    struct cell {
      const char* label;
      std::uint64_t k;  // 0: PING
    };
    for (const cell& cl :
         {cell{"PING (floor)", 0}, cell{"gcra_reserve k = 1", 1}, cell{"gcra_reserve k = 64", 64}}) {
      std::vector<double> calls, tokens;
      for (int r = 0; r < runs; ++r) {
        std::uint64_t n = 0, got = 0;
        const auto t0 = clk::now();
        while (seconds_since(t0) < length) {
          for (int i = 0; i < 32; ++i, ++n) {
            if (cl.k == 0)
              (void)c.run("PING");
            else
              got += levee::redis::gcra_reserve(c, "bench:gcra", cfg, cl.k).granted;
          }
        }
        const double s = seconds_since(t0);
        calls.push_back(static_cast<double>(n) / s);
        tokens.push_back(static_cast<double>(got) / s);
      }
      const auto cs = levee_bench::summarize(calls);
      const auto ts = levee_bench::summarize(tokens);
      std::printf("%-10s %-28s %14.0f %14.0f\n", name, cl.label, cs.median, cl.k == 0 ? 0.0 : ts.median);
    }
  }
}

// 2. Stream entries per second end to end.
void fill(levee::redis::connection& c, const std::string& stream, int n) {
  std::vector<levee::redis::command> cmds;
  for (int i = 0; i < n; ++i) {
    cmds.emplace_back("XADD", stream, "*", "job", "payload-" + std::to_string(i));
    if (cmds.size() == 512 || i + 1 == n) {
      for (auto& r : c.pipeline(cmds)) r.expect_ok("XADD");
      cmds.clear();
    }
  }
}

double run_ingress(const levee::redis::test_server& srv, std::size_t batch, int entries, int round) {
  levee::redis::connection c(opts_for(srv.endpoint()));
  const std::string stream = "bench:s" + std::to_string(batch) + ":" + std::to_string(round);
  fill(c, stream, entries);
  levee::redis::stream_ingress_options io;
  io.connection = opts_for(srv.endpoint());
  io.stream = stream;
  io.group = "g";
  io.consumer = "c";
  io.batch = batch;
  io.block = 10ms;
  io.ack_interval = batch == 1 ? 0ms : 10ms;
  using job = levee::redis::stream_job<std::string>;
  levee::redis::stream_ingress<std::string, levee::redis::string_codec> in(io);
  levee::leveler<job>::options lo;
  lo.capacity = std::max<std::size_t>(2 * batch, 2);
  lo.workers = 2;
  lo.dead_letter = in.dead_letter_sink();
  std::atomic<std::uint64_t> handled{0};
  levee::leveler<job> lev(lo, in.wrap([&](job&) { handled.fetch_add(1, std::memory_order_relaxed); }));
  const auto t0 = clk::now();
  in.start(lev);
  while (in.metrics().acknowledged < static_cast<std::uint64_t>(entries) && seconds_since(t0) < 120)
    std::this_thread::sleep_for(200us);
  const double s = seconds_since(t0);
  lev.close();
  lev.drain();
  in.stop();
  return static_cast<double>(entries) / s;
}

double run_raw_loop(const levee::redis::test_server& srv, std::size_t batch, int entries, int round) {
  levee::redis::connection c(opts_for(srv.endpoint()));
  const std::string stream = "bench:raw" + std::to_string(batch) + ":" + std::to_string(round);
  fill(c, stream, entries);
  c.run("XGROUP", "CREATE", stream, "g", "0").expect_ok("XGROUP");
  std::uint64_t handled = 0;
  const auto t0 = clk::now();
  while (handled < static_cast<std::uint64_t>(entries)) {
    auto r = c.run("XREADGROUP", "GROUP", "g", "c", "COUNT", batch, "STREAMS", stream, ">");
    if (!r.is_array()) break;
    const redisReply* es = r.at(0)->element[1];
    levee::redis::command ack("XACK", stream, "g");
    for (std::size_t i = 0; i < es->elements; ++i) {
      ack.push(levee::redis::reply::text(es->element[i]->element[0]));
      ++handled;
    }
    c.run(ack).expect_ok("XACK");
  }
  return static_cast<double>(handled) / seconds_since(t0);
}

void table_streams(const levee::redis::test_server& srv) {
  std::printf("\n2. Stream entries per second end to end, unix socket (median of %d runs)\n", runs);
  levee_bench::print_machine();
  std::printf("%-8s %22s %26s %8s\n", "batch", "levee stream_ingress", "hand-written XREADGROUP/XACK",
              "ratio");
  for (std::size_t batch : {std::size_t{1}, std::size_t{64}}) {
    const int entries = smoke ? 200 : (batch == 1 ? 5'000 : 50'000);
    std::vector<double> lv, raw;
    for (int r = 0; r < runs; ++r) {
      lv.push_back(run_ingress(srv, batch, entries, r));
      raw.push_back(run_raw_loop(srv, batch, entries, r));
    }
    const auto a = levee_bench::summarize(lv);
    const auto b = levee_bench::summarize(raw);
    std::printf("%-8zu %22.0f %26.0f %8.2f\n", batch, a.median, b.median, a.median / b.median);
  }
}

// 3. Achieved fleet rate vs target.
void table_fleet(const levee::redis::test_server& srv) {
  const auto length = smoke ? 0.3 : 3.0;
  std::printf("\n3. Achieved fleet rate: 3 gates share one key, 2 threads each always wanting permits\n");
  levee_bench::print_machine();
  std::printf("   (%.1f s per run, median of %d runs; burst = 1%% of a second, batch k = 32)\n", length,
              runs);
  std::printf("%12s %14s %10s %18s\n", "target/s", "achieved/s", "ratio", "round trips/job");
  for (std::int64_t target : {1'000, 10'000, 50'000}) {
    std::vector<double> rates, rtpj;
    for (int r = 0; r < runs; ++r) {
      levee::redis::shared_rate_gate_options o;
      o.connection = opts_for(srv.endpoint());
      o.key = "bench:fleet:" + std::to_string(target) + ":" + std::to_string(r);
      o.rate = levee::rate::per_second(target);
      o.burst = static_cast<std::uint64_t>(std::max<std::int64_t>(target / 100, 1));
      o.batch = 32;
      std::vector<std::unique_ptr<levee::redis::shared_rate_gate<>>> gates;
      for (int g = 0; g < 3; ++g) gates.push_back(std::make_unique<levee::redis::shared_rate_gate<>>(o));
      std::atomic<std::uint64_t> admitted{0};
      const auto t0 = clk::now() + 50ms;
      const auto t1 = t0 + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(length));
      std::vector<std::thread> threads;
      for (std::size_t g = 0; g < 3; ++g) {
        for (int t = 0; t < 2; ++t) {
          threads.emplace_back([&, g] {
            std::this_thread::sleep_until(t0);
            std::uint64_t mine = 0;
            for (auto now = clk::now(); now < t1; now = clk::now()) {
              if (gates[g]->try_acquire(1, now))
                ++mine;
              else
                std::this_thread::sleep_until(std::min(gates[g]->available_at(1, now), t1));
            }
            admitted.fetch_add(mine);
          });
        }
      }
      for (auto& th : threads) th.join();
      std::uint64_t trips = 0;
      for (auto& g : gates) trips += g->metrics().round_trips;
      const double a = static_cast<double>(admitted.load());
      rates.push_back(a / length);
      rtpj.push_back(a > 0 ? static_cast<double>(trips) / a : 0);
    }
    const auto rs = levee_bench::summarize(rates);
    const auto ts = levee_bench::summarize(rtpj);
    std::printf("%12lld %14.0f %10.3f %18.4f\n", static_cast<long long>(target), rs.median,
                rs.median / static_cast<double>(target), ts.median);
  }
}

// 4. Achieved fleet rate with levelers: 3 levelers (2 workers each), each
// paced by its own shared_rate_gate on one key, with a queue that never
// runs dry; dispatches counted in [t0, t1].
void table_fleet_levelers(const levee::redis::test_server& srv) {
  using gate_t = levee::redis::shared_rate_gate<>;
  using lev_t = levee::leveler<int, levee::round_robin, clk, gate_t>;
  const auto length = smoke ? 0.3 : 3.0;
  std::printf(
      "\n4. Achieved fleet rate with levelers: 3 levelers (2 workers each) on 3 gates sharing one key\n");
  levee_bench::print_machine();
  std::printf("   (%.1f s per run, median of %d runs; burst = 1%% of a second, batch k = 32)\n", length,
              runs);
  std::printf("%12s %14s %10s %18s\n", "target/s", "achieved/s", "ratio", "round trips/job");
  for (std::int64_t target : {1'000, 10'000, 50'000}) {
    std::vector<double> rates, rtpj;
    for (int r = 0; r < runs; ++r) {
      levee::redis::shared_rate_gate_options o;
      o.connection = opts_for(srv.endpoint());
      o.key = "bench:levelers:" + std::to_string(target) + ":" + std::to_string(r);
      o.rate = levee::rate::per_second(target);
      o.burst = static_cast<std::uint64_t>(std::max<std::int64_t>(target / 100, 1));
      o.batch = 32;
      o.fleet_size = 3;
      // The window [t0, t1) is set once every job is queued (the handler reads it).
      std::atomic<clk::rep> t0{clk::time_point::max().time_since_epoch().count()}, t1{t0.load()};
      std::atomic<std::uint64_t> admitted{0};
      std::vector<std::shared_ptr<gate_t>> gates;
      std::vector<std::unique_ptr<lev_t>> levs;
      // Enough jobs for the whole run at the full rate, whoever gets the tokens.
      const auto per = static_cast<std::size_t>(static_cast<double>(target) * (length + 0.5)) + 64;
      for (int g = 0; g < 3; ++g) {
        gates.push_back(std::make_shared<gate_t>(o));
        lev_t::options lo;
        lo.capacity = per;
        lo.workers = 2;
        lo.gate = gates.back();
        levs.push_back(std::make_unique<lev_t>(lo, [&](int&) {
          const auto now = clk::now().time_since_epoch().count();
          if (now >= t0.load(std::memory_order_relaxed) && now < t1.load(std::memory_order_relaxed))
            admitted.fetch_add(1, std::memory_order_relaxed);
        }));
      }
      for (std::size_t i = 0; i < per; ++i)
        for (auto& l : levs) (void)l->try_submit(static_cast<int>(i));
      // The count starts 100 ms later, after the start-up burst.
      const auto start = clk::now() + 100ms;
      const auto end =
          start + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(length));
      t1.store(end.time_since_epoch().count());
      t0.store(start.time_since_epoch().count());
      std::this_thread::sleep_until(end);
      for (auto& l : levs) l->stop();
      std::uint64_t trips = 0;
      for (auto& g : gates) trips += g->metrics().round_trips;
      const double a = static_cast<double>(admitted.load());
      rates.push_back(a / length);
      rtpj.push_back(a > 0 ? static_cast<double>(trips) / a : 0);
    }
    const auto rs = levee_bench::summarize(rates);
    const auto ts = levee_bench::summarize(rtpj);
    std::printf("%12lld %14.0f %10.3f %18.4f\n", static_cast<long long>(target), rs.median,
                rs.median / static_cast<double>(target), ts.median);
  }
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--smoke") == 0) {
      smoke = true;
    } else if (std::strcmp(argv[i], "--runs") == 0 && i + 1 < argc) {
      runs = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--smoke] [--runs N]\n", argv[0]);
      return 2;
    }
  }
  if (smoke) runs = 1;
  const auto bin = levee::redis::test_server::find_binary();
  if (!bin) {
    std::puts("bench_redis: no redis-server binary found (install redis-server); nothing measured");
    return 0;
  }
  const int port = free_tcp_port();
  levee::redis::test_server srv(*bin, port);
  std::printf("bench_redis: %s, private server (unix socket%s), hardware threads: %u\n", bin->c_str(),
              port != 0 ? " and TCP 127.0.0.1" : "", std::thread::hardware_concurrency());
  table_round_trips(srv, port != 0);
  table_streams(srv);
  table_fleet(srv);
  table_fleet_levelers(srv);
  return 0;
}
