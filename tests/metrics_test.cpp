// Tests for levee/metrics.hpp: the histogram layout and quantiles, and the
// Prometheus text exposition.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <levee/metrics.hpp>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using levee::detail::metrics_histogram;
using levee::detail::metrics_histogram_counts;
using levee::detail::metrics_histogram_layout;

namespace {

levee::histogram_snapshot snapshot_of(const metrics_histogram& h) {
  metrics_histogram_counts c;
  h.add_to(c);
  return levee::histogram_snapshot(c);
}

// Exact quantile by the same definition (smallest x with >= ceil(q n) values <= x).
std::uint64_t exact_quantile(std::vector<std::uint64_t> v, double q) {
  std::sort(v.begin(), v.end());
  auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
  rank = std::clamp<std::size_t>(rank, 1, v.size());
  return v[rank - 1];
}

}  // namespace

TEST_CASE("histogram layout: every value lands in a bucket whose bounds contain it, buckets are contiguous") {
  using L = metrics_histogram_layout;
  for (std::size_t i = 0; i + 1 < L::bucket_count; ++i) {
    CHECK(L::upper_of(i) + 1 == L::lower_of(i + 1));
    REQUIRE(L::lower_of(i) <= L::upper_of(i));
  }
  std::mt19937_64 gen(42);
  for (int i = 0; i < 200000; ++i) {
    const std::uint64_t v = gen() >> (gen() % 64);
    const std::size_t idx = L::index_of(v);
    REQUIRE(idx < L::bucket_count);
    REQUIRE(L::lower_of(idx) <= v);
    REQUIRE(v <= L::upper_of(idx));
    // bucket width bounded by 1/32 of its lower bound (values >= 32)
    if (v >= 32)
      REQUIRE(static_cast<double>(L::upper_of(idx) - L::lower_of(idx) + 1) <=
              static_cast<double>(L::lower_of(idx)) / 32.0 + 1e-9);
  }
  for (std::uint64_t v = 0; v < 32; ++v) CHECK(L::lower_of(L::index_of(v)) == L::upper_of(L::index_of(v)));
}

TEST_CASE("histogram quantiles are within 3.2% above the exact quantile, count/sum/min/max exact") {
  std::mt19937_64 gen(7);
  std::lognormal_distribution<double> dist(13.0, 1.5);  // ~0.4 ms median, heavy tail
  metrics_histogram h;
  std::vector<std::uint64_t> values;
  std::uint64_t sum = 0;
  for (int i = 0; i < 100000; ++i) {
    const auto v = static_cast<std::uint64_t>(dist(gen));
    values.push_back(v);
    sum += v;
    h.record(v);
  }
  const auto s = snapshot_of(h);
  CHECK(s.count() == values.size());
  CHECK(static_cast<std::uint64_t>(s.sum().count()) == sum);
  CHECK(static_cast<std::uint64_t>(s.min().count()) == *std::min_element(values.begin(), values.end()));
  CHECK(static_cast<std::uint64_t>(s.max().count()) == *std::max_element(values.begin(), values.end()));
  for (double q : {0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0}) {
    const double exact = static_cast<double>(exact_quantile(values, q));
    const double est = static_cast<double>(s.quantile(q).count());
    CAPTURE(q);
    CHECK(est >= exact);
    CHECK(est <= exact * 1.032 + 1);
  }
  CHECK(s.p50() == s.quantile(0.5));
  CHECK(s.p90() == s.quantile(0.9));
  CHECK(s.p99() == s.quantile(0.99));
  CHECK(s.quantile(1.0) == s.max());
  std::uint64_t in_buckets = 0;
  for (const auto& b : s.buckets()) {
    CHECK(b.count > 0);
    in_buckets += b.count;
  }
  CHECK(in_buckets == values.size());
}

TEST_CASE("histogram: small values are exact, empty histogram is all zero, bad q throws") {
  metrics_histogram h;
  CHECK(snapshot_of(h).count() == 0);
  CHECK(snapshot_of(h).quantile(0.5) == 0ns);
  CHECK(snapshot_of(h).max() == 0ns);
  for (std::uint64_t v = 1; v <= 10; ++v) h.record(v);
  const auto s = snapshot_of(h);
  CHECK(s.p50() == 5ns);
  CHECK(s.p90() == 9ns);
  CHECK(s.quantile(1.0) == 10ns);
  CHECK(s.min() == 1ns);
  CHECK(s.mean() == 5ns);  // 55 / 10, truncated
  CHECK_THROWS_AS((void)s.quantile(-0.1), std::invalid_argument);
  CHECK_THROWS_AS((void)s.quantile(1.5), std::invalid_argument);
  CHECK_THROWS_AS((void)s.quantile(std::nan("")), std::invalid_argument);
}

TEST_CASE("histogram: concurrent recording loses nothing") {
  metrics_histogram h;
  constexpr int threads = 4;
  constexpr std::uint64_t per_thread = 20000;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      for (std::uint64_t i = 0; i < per_thread; ++i) h.record(i * 1000 + static_cast<std::uint64_t>(t));
    });
  for (auto& t : ts) t.join();
  const auto s = snapshot_of(h);
  CHECK(s.count() == threads * per_thread);
  CHECK(s.max().count() == static_cast<std::int64_t>((per_thread - 1) * 1000 + threads - 1));
  CHECK(s.min() == 0ns);
}

namespace {

levee::metrics_snapshot sample_snapshot() {
  levee::metrics_snapshot m;
  m.submitted = 120;
  m.accepted = 100;
  m.rejected.full = 11;
  m.rejected.closed = 5;
  m.rejected.would_miss_deadline = 3;
  m.rejected.timeout = 1;
  m.started = 104;
  m.succeeded = 90;
  m.failed = 8;
  m.retried = 4;
  m.dead_lettered.failed = 4;
  m.dead_lettered.expired = 2;
  m.dead_lettered.dropped = 1;
  m.dead_lettered.cancelled = 3;
  m.queue_depth = 7;
  m.queue_capacity = 64;
  m.rate_limit = 1000.0;
  m.burst = 10;
  m.concurrency_limit = 4;
  m.workers = 2;
  levee::backend_metrics b1;
  b1.id = 1;
  b1.weight = 5;
  b1.in_flight = 2;
  b1.started = 60;
  levee::backend_metrics b2;
  b2.id = 2;
  b2.weight = 3;
  b2.ejected = true;
  b2.latency_ewma = 1500us;
  m.backends = {b1, b2};
  m.ejected_backends = 1;
  metrics_histogram h;
  for (int i = 1; i <= 100; ++i) h.record(static_cast<std::uint64_t>(i) * 1'000'000);  // 1..100 ms
  metrics_histogram_counts c;
  h.add_to(c);
  m.dwell_time = levee::histogram_snapshot(c);
  m.arrival_rate = 1500.5;
  m.dispatch_rate = 1000;
  m.drain_rate = 1000;
  m.drain_eta = std::nullopt;
  m.trailing_behind = true;
  m.closed = true;
  m.stopped = false;
  return m;
}

}  // namespace

TEST_CASE("to_prometheus: valid exposition format, one HELP/TYPE per family, values as given") {
  const std::string text = levee::to_prometheus(sample_snapshot(), "svc_jobs");
  std::istringstream in(text);
  std::string line;
  const std::regex help(R"(^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+$)");
  const std::regex type(R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|summary|histogram|untyped)$)");
  const std::regex sample(
      R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*\})? (-?[0-9.eE+-]+|\+Inf|-Inf|NaN)$)");
  std::set<std::string> typed;
  std::map<std::string, std::string> values;  // "name{labels}" -> value
  std::string current;
  while (std::getline(in, line)) {
    std::smatch mt;
    if (std::regex_match(line, mt, help)) {
      current = mt[1];
      continue;
    }
    if (std::regex_match(line, mt, type)) {
      CHECK(mt[1] == current);
      CHECK(typed.insert(mt[1]).second);  // each family typed once
      continue;
    }
    REQUIRE_MESSAGE(std::regex_match(line, mt, sample), line);
    const std::string name = mt[1];
    // every sample belongs to the family announced last (summary adds _sum/_count)
    CHECK((name == current || name == current + "_sum" || name == current + "_count"));
    CHECK(name.rfind("svc_jobs_", 0) == 0);
    values[name + mt[2].str()] = mt[4];
  }
  CHECK(values.at("svc_jobs_jobs_submitted_total") == "120");
  CHECK(values.at("svc_jobs_jobs_accepted_total") == "100");
  CHECK(values.at(R"(svc_jobs_jobs_rejected_total{reason="full"})") == "11");
  CHECK(values.at(R"(svc_jobs_jobs_rejected_total{reason="would_miss_deadline"})") == "3");
  CHECK(values.at(R"(svc_jobs_jobs_dead_lettered_total{reason="cancelled"})") == "3");
  CHECK(values.at(R"(svc_jobs_jobs_dead_lettered_total{reason="expired"})") == "2");
  CHECK(values.at("svc_jobs_queue_depth") == "7");
  CHECK(values.at("svc_jobs_rate_limit_per_second") == "1000");
  CHECK(values.at("svc_jobs_concurrency_limit") == "4");
  CHECK(values.at(R"(svc_jobs_backend_in_flight{backend="1"})") == "2");
  CHECK(values.at(R"(svc_jobs_backend_ejected{backend="2"})") == "1");
  CHECK(std::stod(values.at(R"(svc_jobs_backend_latency_ewma_seconds{backend="2"})")) ==
        doctest::Approx(0.0015));
  CHECK(std::stod(values.at(R"(svc_jobs_queue_dwell_seconds{quantile="0.5"})")) ==
        doctest::Approx(0.050).epsilon(0.035));
  CHECK(std::stod(values.at(R"(svc_jobs_queue_dwell_seconds{quantile="0.99"})")) ==
        doctest::Approx(0.099).epsilon(0.035));
  CHECK(values.at("svc_jobs_queue_dwell_seconds_count") == "100");
  CHECK(std::stod(values.at("svc_jobs_queue_dwell_seconds_sum")) == doctest::Approx(5.05));
  CHECK(std::stod(values.at("svc_jobs_queue_dwell_max_seconds")) == doctest::Approx(0.1));
  CHECK(values.at("svc_jobs_drain_eta_seconds") == "+Inf");
  // the service-time histogram is empty: its quantiles are NaN, not 0
  CHECK(values.at(R"(svc_jobs_service_seconds{quantile="0.5"})") == "NaN");
  CHECK(values.at(R"(svc_jobs_service_seconds{quantile="0.9"})") == "NaN");
  CHECK(values.at(R"(svc_jobs_service_seconds{quantile="0.99"})") == "NaN");
  CHECK(values.at("svc_jobs_service_seconds_count") == "0");
  CHECK(values.at("svc_jobs_service_seconds_sum") == "0");
  CHECK(values.at("svc_jobs_closed") == "1");
  CHECK(values.at("svc_jobs_stopped") == "0");
  CHECK(values.at("svc_jobs_trailing_behind") == "1");
  CHECK(std::stod(values.at("svc_jobs_arrival_rate_per_second")) == doctest::Approx(1500.5));
  CHECK(text.back() == '\n');
}

TEST_CASE("to_prometheus: optional gauges are omitted when unset; default prefix; bad prefix throws") {
  levee::metrics_snapshot m;
  const std::string text = levee::to_prometheus(m);
  CHECK(text.find("levee_jobs_submitted_total 0\n") != std::string::npos);
  CHECK(text.find("rate_limit_per_second") == std::string::npos);
  CHECK(text.find("concurrency_limit") == std::string::npos);
  CHECK(text.find("backend_in_flight") == std::string::npos);
  CHECK(text.find("levee_drain_eta_seconds 0\n") != std::string::npos);
  CHECK(text.find("levee_closed 0\n") != std::string::npos);
  CHECK(text.find("levee_stopped 0\n") != std::string::npos);
  CHECK(text.find("levee_queue_dwell_seconds{quantile=\"0.99\"} NaN\n") != std::string::npos);
  m.stopped = true;
  m.closed = true;
  const std::string stopped = levee::to_prometheus(m);
  CHECK(stopped.find("levee_stopped 1\n") != std::string::npos);
  CHECK(stopped.find("levee_closed 1\n") != std::string::npos);
  CHECK_THROWS_AS((void)levee::to_prometheus(m, ""), std::invalid_argument);
  CHECK_THROWS_AS((void)levee::to_prometheus(m, "9lives"), std::invalid_argument);
  CHECK_THROWS_AS((void)levee::to_prometheus(m, "bad-name"), std::invalid_argument);
  CHECK_NOTHROW((void)levee::to_prometheus(m, "ns:sub_system"));
}
