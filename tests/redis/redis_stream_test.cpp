// Tests of levee/redis/stream_producer.hpp and levee/redis/stream_ingress.hpp
// against a real redis-server: backpressure and safe length limiting, end to
// end acknowledgement and dead letters, kill -9 of a consumer mid-batch, a
// poison entry that crashes every consumer, and stop() handing entries over.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <levee/leveler.hpp>
#include <levee/redis/stream_ingress.hpp>
#include <levee/redis/stream_producer.hpp>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "redis_test_support.hpp"

using namespace std::chrono_literals;
using levee::redis::connection;
using levee::redis::produce_status;
using levee::redis::stream_ingress;
using levee::redis::stream_ingress_options;
using levee::redis::stream_job;
using levee::redis::stream_producer;
using levee::redis::stream_producer_options;
using levee::redis::string_codec;
using namespace levee_redis_test;

namespace {

using job = stream_job<std::string>;
using ingress = stream_ingress<std::string, string_codec>;
using leveler = levee::leveler<job>;

std::uint64_t pending_count(connection& c, const std::string& stream, const std::string& group) {
  auto r = c.run("XPENDING", stream, group);
  r.expect_ok("XPENDING");
  return static_cast<std::uint64_t>(r.at(0)->integer);
}
std::uint64_t xlen(connection& c, const std::string& stream) {
  return static_cast<std::uint64_t>(c.run("XLEN", stream).integer());
}
std::set<std::string> pending_ids(connection& c, const std::string& stream, const std::string& group,
                                  const std::string& consumer) {
  auto r = c.run("XPENDING", stream, group, "-", "+", 100000, consumer);
  r.expect_ok("XPENDING");
  std::set<std::string> out;
  for (std::size_t i = 0; i < r.size(); ++i) out.emplace(levee::redis::reply::text(r.at(i)->element[0]));
  return out;
}
std::vector<std::string> produce(const levee::redis::test_server& srv, const std::string& stream,
                                 const std::string& group, int n, const std::string& prefix = "job") {
  stream_producer_options po;
  po.connection = conn_opts(srv);
  po.stream = stream;
  po.group = group;
  stream_producer<std::string, string_codec> p(po);
  std::vector<std::string> ids;
  for (int i = 0; i < n; ++i) {
    auto r = p.try_add(prefix + std::to_string(i));
    REQUIRE_MESSAGE(r.status == produce_status::ok, r.message);
    ids.push_back(r.id);
  }
  return ids;
}
stream_ingress_options ingress_opts(const levee::redis::test_server& srv, const std::string& consumer) {
  stream_ingress_options o;
  o.connection = conn_opts(srv);
  o.stream = "jobs";
  o.group = "workers";
  o.consumer = consumer;
  o.block = 20ms;
  o.min_idle = 300ms;
  o.claim_interval = 50ms;
  o.heartbeat = 100ms;
  o.max_deliveries = 5;
  return o;
}
leveler::options lev_opts(std::size_t capacity, std::size_t workers) {
  leveler::options o;
  o.capacity = capacity;
  o.workers = workers;
  return o;
}
std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

}  // namespace

TEST_CASE("stream_producer: backpressure from the group's lag; the length limit never drops work") {
  auto srv = start_server();
  connection c(conn_opts(srv));
  c.run("XGROUP", "CREATE", "s", "g", "0", "MKSTREAM").expect_ok("XGROUP");

  stream_producer_options po;
  po.connection = conn_opts(srv);
  po.stream = "s";
  po.group = "g";
  po.max_lag = 3;
  stream_producer<std::string, string_codec> lagged(po);
  for (int i = 0; i < 3; ++i) CHECK(lagged.try_add("x").status == produce_status::ok);
  auto r = lagged.try_add("x");
  CHECK(r.status == produce_status::backpressure);
  CHECK(r.lag == 3);
  c.run("XREADGROUP", "GROUP", "g", "c", "COUNT", 2, "STREAMS", "s", ">").expect_ok("XREADGROUP");
  CHECK(lagged.try_add("x").status == produce_status::ok);  // lag 1 -> 2
  CHECK(xlen(c, "s") == 4);

  po.stream = "t";
  po.max_lag = 0;
  po.max_len = 3;
  c.run("XGROUP", "CREATE", "t", "g", "0", "MKSTREAM").expect_ok("XGROUP");
  stream_producer<std::string, string_codec> bounded(po);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(bounded.try_add("y" + std::to_string(i)).id);
  CHECK(bounded.try_add("y3").status == produce_status::full);  // the oldest was never delivered
  c.run("XREADGROUP", "GROUP", "g", "c", "COUNT", 3, "STREAMS", "t", ">").expect_ok("XREADGROUP");
  CHECK(bounded.try_add("y3").status == produce_status::full);  // delivered, still pending
  c.run("XACK", "t", "g", ids[1]).expect_ok("XACK");
  CHECK(bounded.try_add("y3").status == produce_status::full);  // done, but not the oldest
  c.run("XACK", "t", "g", ids[0]).expect_ok("XACK");
  auto ok = bounded.try_add("y3");
  CHECK(ok.status == produce_status::ok);
  CHECK(xlen(c, "t") == 3);
  CHECK(c.run("XRANGE", "t", ids[0], ids[0]).size() == 0);  // only the done entry went
  CHECK(c.run("XRANGE", "t", ids[2], ids[2]).size() == 1);
}

TEST_CASE("stream_ingress: successes acknowledged, failures and undecodable entries dead-lettered") {
  auto srv = start_server();
  connection c(conn_opts(srv));
  const auto ids = produce(srv, "jobs", "workers", 200);
  c.run("XADD", "jobs", "*", "not-a-job", "1").expect_ok("XADD");  // no "job" field: undecodable
  std::mutex m;
  std::multiset<std::string> handled;
  ingress in(ingress_opts(srv, "c1"));
  auto lo = lev_opts(16, 2);
  lo.dead_letter = in.dead_letter_sink();
  leveler lev(lo, in.wrap([&](job& j) {
    if (j.job.ends_with('7')) throw std::runtime_error("boom");
    std::lock_guard lock(m);
    handled.insert(j.id);
  }));
  in.start(lev);
  REQUIRE(wait_for(
      [&] {
        const auto mt = in.metrics();
        return mt.acknowledged + mt.dead_lettered == 201;
      },
      20'000ms));
  lev.close();
  lev.drain();
  in.stop();
  const auto mt = in.metrics();
  CHECK(mt.read == 201);
  CHECK(mt.acknowledged == 180);
  CHECK(mt.dead_lettered == 21);  // 20 failures ("...7") + 1 undecodable
  CHECK(handled.size() == 180);
  CHECK(pending_count(c, "jobs", "workers") == 0);
  CHECK(xlen(c, "jobs:dead") == 21);
  // Every dead letter names its source entry and reason and carries the entry's fields.
  auto dead = c.run("XRANGE", "jobs:dead", "-", "+");
  std::map<std::string, std::map<std::string, std::string>> by_source;
  for (std::size_t e = 0; e < dead.size(); ++e) {
    const auto* fields = dead.at(e)->element[1];
    std::map<std::string, std::string> f;
    for (std::size_t i = 0; i + 1 < fields->elements; i += 2)
      f[std::string(levee::redis::reply::text(fields->element[i]))] =
          levee::redis::reply::text(fields->element[i + 1]);
    by_source[f["source_id"]] = f;
  }
  REQUIRE(by_source.size() == 21);
  CHECK(by_source[ids[7]]["reason"] == "failed");
  CHECK(by_source[ids[7]]["job"] == "job7");
  CHECK(by_source[ids[17]]["reason"] == "failed");
  std::size_t decode = 0;
  for (auto& [src, f] : by_source)
    if (f["reason"] == "decode" && f["not-a-job"] == "1") ++decode;
  CHECK(decode == 1);
}

TEST_CASE(
    "stream_ingress: kill -9 of a consumer mid-batch loses nothing; duplicates are exactly the "
    "processed but unacknowledged entries") {
  auto srv = start_server();
  connection c(conn_opts(srv));
  const auto ids = produce(srv, "jobs", "workers", 300);
  c.run("XGROUP", "CREATE", "jobs", "workers", "0").expect_ok("XGROUP");
  char tmpl[] = "/tmp/levee-kill-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string log_a = std::string(tmpl) + "/a.log";

  const pid_t a = fork_child([&]() -> int {
    const int fd = ::open(log_a.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0) return 3;
    auto io = ingress_opts(srv, "a");
    io.batch = 32;
    io.ack_interval = 100ms;  // a kill finds processed entries not yet acknowledged
    ingress in(io);
    auto lo = lev_opts(32, 2);
    lo.dead_letter = in.dead_letter_sink();
    leveler lev(lo, in.wrap([&](job& j) {
      std::this_thread::sleep_for(1ms);  // the work
      const std::string line = j.id + "\n";
      if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) std::_Exit(4);
    }));
    in.start(lev);
    for (;;) std::this_thread::sleep_for(1s);  // killed by the parent
  });
  REQUIRE(wait_for([&] { return read_lines(log_a).size() >= 100; }, 30'000ms));
  ::kill(a, SIGKILL);
  CHECK(wait_child(a, 10'000ms) == -SIGKILL);

  const auto lines = read_lines(log_a);
  const std::set<std::string> processed_a(lines.begin(), lines.end());
  CHECK(processed_a.size() == lines.size());  // A never ran an entry twice
  const auto pending_a = pending_ids(c, "jobs", "workers", "a");
  std::set<std::string> unacked;  // processed by A, acknowledgement lost with it
  for (const auto& id : processed_a)
    if (pending_a.count(id) != 0) unacked.insert(id);

  std::mutex m;
  std::multiset<std::string> processed_b;
  ingress in(ingress_opts(srv, "b"));
  auto lo = lev_opts(32, 2);
  lo.dead_letter = in.dead_letter_sink();
  leveler lev(lo, in.wrap([&](job& j) {
    std::lock_guard lock(m);
    processed_b.insert(j.id);
  }));
  in.start(lev);
  REQUIRE(wait_for(
      [&] {
        return pending_count(c, "jobs", "workers") == 0 && in.metrics().acknowledged > 0 &&
               lev.outstanding() == 0 && in.metrics().read + in.metrics().claimed > 0;
      },
      30'000ms));
  REQUIRE(wait_for(
      [&] {
        std::lock_guard lock(m);
        std::set<std::string> all(processed_a);
        all.insert(processed_b.begin(), processed_b.end());
        return all.size() == ids.size();
      },
      30'000ms));
  lev.close();
  lev.drain();
  in.stop();

  std::set<std::string> all(processed_a);
  all.insert(processed_b.begin(), processed_b.end());
  CHECK(all == std::set<std::string>(ids.begin(), ids.end()));  // nothing lost
  std::set<std::string> duplicates;
  for (const auto& id : processed_b) {
    CHECK(processed_b.count(id) == 1);  // B ran each once
    if (processed_a.count(id) != 0) duplicates.insert(id);
  }
  MESSAGE("kill -9: A processed " << processed_a.size() << ", " << pending_a.size()
                                  << " pending at the kill, " << unacked.size()
                                  << " processed but unacknowledged; B processed " << processed_b.size()
                                  << ", duplicates " << duplicates.size());
  CHECK(duplicates == unacked);
  CHECK(!unacked.empty());  // the kill did hit a batch not yet acknowledged
  CHECK(pending_count(c, "jobs", "workers") == 0);
  CHECK(xlen(c, "jobs:dead") == 0);
  std::remove(log_a.c_str());
  ::rmdir(tmpl);
}

TEST_CASE("stream_ingress: a poison entry that crashes every consumer is dead-lettered after N deliveries") {
  auto srv = start_server();
  connection c(conn_opts(srv));
  c.run("XGROUP", "CREATE", "jobs", "workers", "0", "MKSTREAM").expect_ok("XGROUP");
  produce(srv, "jobs", "workers", 5, "good");
  const auto poison = produce(srv, "jobs", "workers", 1, "poison");
  produce(srv, "jobs", "workers", 5, "fine");
  constexpr std::uint64_t max_deliveries = 3;
  int crashes = 0;
  bool clean = false;
  for (int round = 0; round < 6 && !clean; ++round) {
    const pid_t child = fork_child([&, round]() -> int {
      auto io = ingress_opts(srv, "c" + std::to_string(round));
      io.max_deliveries = max_deliveries;
      io.min_idle = 100ms;
      io.heartbeat = 50ms;
      io.claim_interval = 20ms;
      ingress in(io);
      auto lo = lev_opts(4, 1);
      lo.dead_letter = in.dead_letter_sink();
      leveler lev(lo, in.wrap([](job& j) {
        if (j.job.starts_with("poison")) std::_Exit(3);  // the entry crashes its consumer
      }));
      in.start(lev);
      connection cc(conn_opts(srv));
      // Done when nothing is pending, the stream is fully read and the poison is dead.
      const bool done = wait_for(
          [&] {
            return pending_count(cc, "jobs", "workers") == 0 && xlen(cc, "jobs:dead") == 1 &&
                   lev.outstanding() == 0;
          },
          20'000ms);
      lev.close();
      lev.drain();
      in.stop();
      if (!done) {
        const auto mt = in.metrics();
        std::fprintf(
            stderr, "consumer %d: pending %llu dead %llu read %llu claimed %llu dl %llu errors %llu\n", round,
            static_cast<unsigned long long>(pending_count(cc, "jobs", "workers")),
            static_cast<unsigned long long>(xlen(cc, "jobs:dead")), static_cast<unsigned long long>(mt.read),
            static_cast<unsigned long long>(mt.claimed), static_cast<unsigned long long>(mt.dead_lettered),
            static_cast<unsigned long long>(mt.errors));
      }
      return done ? 0 : 5;
    });
    const int rc = wait_child(child, 30'000ms);
    if (std::getenv("LEVEE_DEBUG_POISON") != nullptr) {
      auto pe = c.run("XPENDING", "jobs", "workers", "-", "+", 100);
      for (std::size_t i = 0; i < pe.size(); ++i)
        std::fprintf(stderr, "round %d rc %d: %s owner %s count %lld\n", round, rc,
                     std::string(levee::redis::reply::text(pe.at(i)->element[0])).c_str(),
                     std::string(levee::redis::reply::text(pe.at(i)->element[1])).c_str(),
                     pe.at(i)->element[3]->integer);
    }
    if (rc == 3)
      ++crashes;
    else if (rc == 0)
      clean = true;
    else
      FAIL("consumer exited with " << rc);
  }
  CHECK(clean);
  CHECK(crashes == static_cast<int>(max_deliveries));
  auto dead = c.run("XRANGE", "jobs:dead", "-", "+");
  REQUIRE(dead.size() == 1);
  const auto* fields = dead.at(0)->element[1];
  std::map<std::string, std::string> f;
  for (std::size_t i = 0; i + 1 < fields->elements; i += 2)
    f[std::string(levee::redis::reply::text(fields->element[i]))] =
        levee::redis::reply::text(fields->element[i + 1]);
  CHECK(f["reason"] == "deliveries");
  CHECK(f["source_id"] == poison[0]);
  CHECK(pending_count(c, "jobs", "workers") == 0);
}

TEST_CASE("stream_ingress: a consumer's stop() leaves its entries for another consumer") {
  auto srv = start_server();
  connection c(conn_opts(srv));
  const auto ids = produce(srv, "jobs", "workers", 20);
  std::atomic<bool> release{false};
  std::atomic<int> started{0};
  {
    auto io = ingress_opts(srv, "a");
    io.batch = 8;
    ingress in_a(io);
    auto lo = lev_opts(8, 1);
    lo.dead_letter = in_a.dead_letter_sink();
    leveler lev_a(lo, in_a.wrap([&](job&) {
      started.fetch_add(1);
      while (!release.load()) std::this_thread::sleep_for(1ms);  // held until released
    }));
    in_a.start(lev_a);
    REQUIRE(wait_for([&] { return started.load() == 1 && in_a.metrics().submitted >= 8; }, 10'000ms));
    CHECK(in_a.metrics().read == 8);  // only as much as the leveler had room for
    in_a.stop();                      // no more reads, no more heartbeats
    release.store(true);
    lev_a.stop();  // the queued jobs are cancelled: left pending
    CHECK(in_a.metrics().acknowledged == 0);
    CHECK(pending_ids(c, "jobs", "workers", "a").size() == 8);
  }
  std::mutex m;
  std::multiset<std::string> got;
  ingress in_b(ingress_opts(srv, "b"));
  auto lo = lev_opts(16, 2);
  lo.dead_letter = in_b.dead_letter_sink();
  leveler lev_b(lo, in_b.wrap([&](job& j) {
    std::lock_guard lock(m);
    got.insert(j.id);
  }));
  in_b.start(lev_b);
  REQUIRE(wait_for(
      [&] {
        std::lock_guard lock(m);
        return got.size() == ids.size();
      },
      20'000ms));
  REQUIRE(wait_for([&] { return pending_count(c, "jobs", "workers") == 0; }, 10'000ms));
  lev_b.close();
  lev_b.drain();
  in_b.stop();
  CHECK(std::set<std::string>(got.begin(), got.end()) == std::set<std::string>(ids.begin(), ids.end()));
  CHECK(got.size() == ids.size());  // each once
  CHECK(in_b.metrics().claimed == 8);
}

TEST_CASE("stream_ingress: heartbeats keep a long-running job from being claimed by another consumer") {
  auto srv = start_server();
  connection c(conn_opts(srv));
  const auto ids = produce(srv, "jobs", "workers", 1);
  std::atomic<int> runs{0};
  std::atomic<bool> b_ready{false};
  auto handler = [&](job&) {
    runs.fetch_add(1);
    // Runs for 4 x min_idle, and at least until the other consumer has looked for idle entries a few times.
    const auto until = std::chrono::steady_clock::now() + 1200ms;
    while (std::chrono::steady_clock::now() < until || !b_ready.load()) std::this_thread::sleep_for(1ms);
  };
  ingress in_a(ingress_opts(srv, "a"));
  auto lo = lev_opts(4, 1);
  lo.dead_letter = in_a.dead_letter_sink();
  leveler lev_a(lo, in_a.wrap(handler));
  in_a.start(lev_a);
  REQUIRE(wait_for([&] { return runs.load() == 1; }, 10'000ms));
  ingress in_b(ingress_opts(srv, "b"));  // min_idle 300 ms, claims every 50 ms
  auto lo_b = lev_opts(4, 1);
  lo_b.dead_letter = in_b.dead_letter_sink();
  leveler lev_b(lo_b, in_b.wrap(handler));
  in_b.start(lev_b);
  b_ready.store(true);
  REQUIRE(wait_for([&] { return in_a.metrics().acknowledged == 1; }, 10'000ms));
  lev_a.close();
  lev_a.drain();
  in_a.stop();
  lev_b.close();
  lev_b.drain();
  in_b.stop();
  CHECK(runs.load() == 1);
  CHECK(in_b.metrics().claimed == 0);
  CHECK(in_a.metrics().heartbeats >= 5);
  CHECK(pending_count(c, "jobs", "workers") == 0);
}

TEST_CASE("stream_ingress: bad options throw std::invalid_argument naming them") {
  stream_ingress_options o;
  o.stream = "s";
  o.group = "g";
  CHECK_THROWS_WITH_AS(ingress{o}, doctest::Contains("consumer"), std::invalid_argument);
  o.consumer = "c";
  o.heartbeat = o.min_idle;
  CHECK_THROWS_WITH_AS(ingress{o}, doctest::Contains("heartbeat"), std::invalid_argument);
  o.heartbeat = 1ms;
  o.block = o.connection.command_timeout;
  CHECK_THROWS_WITH_AS(ingress{o}, doctest::Contains("command_timeout"), std::invalid_argument);
}
