// quickstart: the smallest useful levee program (the README's first example):
// 100 e-mails to a provider that accepts 50 calls per second, 4 at a time.
// Half-way through, the provider slows down (150 ms a call instead of 5 ms):
// from then on the concurrency limit, not the rate, sets the pace.
//
// The program checks both limits from its own measurements (the times the
// calls started, the calls in flight at once) and exits non-zero when one was
// exceeded or a mail was not sent.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <levee/conformance.hpp>
#include <levee/leveler.hpp>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  using steady = std::chrono::steady_clock;
  const bool smoke = argc > 1 && std::string_view(argv[1]) == "--smoke";
  const int mails = smoke ? 40 : 100;

  levee::leveler<std::string>::options opts;
  opts.rate = levee::rate::per_second(50);  // what the provider allows
  opts.max_concurrency = 4;                 // calls in flight at once
  opts.workers = 8;                         // threads that make the calls

  std::mutex mutex;
  std::vector<steady::time_point> starts;  // when each call started
  std::atomic<int> in_flight{0}, most_in_flight{0};
  levee::leveler<std::string> mailer(opts, [&](std::string& address) {
    const int now_in_flight = in_flight.fetch_add(1) + 1;
    int most = most_in_flight.load();
    while (now_in_flight > most && !most_in_flight.compare_exchange_weak(most, now_in_flight)) {
    }
    std::size_t call = 0;
    {
      std::lock_guard lock(mutex);
      call = starts.size();
      starts.push_back(steady::now());
    }
    std::printf("sending to %s\n", address.c_str());  // call the provider here; throw = failure
    std::this_thread::sleep_for(call < static_cast<std::size_t>(mails / 2) ? 5ms : 150ms);
    in_flight.fetch_sub(1);
  });

  for (int i = 0; i < mails; ++i)  // returns at once: the queue (1024 jobs by default) absorbs the burst
    if (auto r = mailer.submit("user" + std::to_string(i) + "@example.com"); !r)
      std::printf("not queued (%s): %s\n", std::string(levee::to_string(r.status)).c_str(), r.job->c_str());

  mailer.drain();  // blocks until every accepted job is done: about 3 s here
  const levee::metrics_snapshot m = mailer.metrics();
  std::printf("sent %llu, dead-lettered %llu\n", static_cast<unsigned long long>(m.succeeded),
              static_cast<unsigned long long>(m.dead_lettered.total()));

  // The rate: no window [t, t + w] of start times holds more than
  // burst + 50 * w calls (levee::check_conformance). The times are read in
  // the handler, a moment after the rate gate let the call go; a thread
  // preempted in between can squeeze two readings together, so two extra
  // calls (40 ms of jitter) are allowed.
  const levee::conformance_report rate_report = levee::check_conformance(starts, *opts.rate, m.burst + 2);
  std::printf("rate: %zu start times against burst %llu + 2 + 50/s x w: %zu violations\n",
              rate_report.admissions, static_cast<unsigned long long>(m.burst), rate_report.violations);
  std::printf("concurrency: at most %d calls in flight (limit %zu)\n", most_in_flight.load(),
              opts.max_concurrency);

  bool ok = true;
  auto expect = [&](bool cond, const char* what) {
    std::printf("[%s] %s\n", cond ? " ok " : "FAIL", what);
    ok = ok && cond;
  };
  expect(m.succeeded == static_cast<unsigned long long>(mails) && starts.size() == m.succeeded,
         "every mail was sent once");
  expect(rate_report.ok, "never more than 50 calls per second (plus the burst)");
  expect(most_in_flight.load() <= static_cast<int>(opts.max_concurrency), "never more than 4 calls at once");
  return ok ? 0 : 1;
}
