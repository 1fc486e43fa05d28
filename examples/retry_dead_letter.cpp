// retry_dead_letter: a flaky backend, retries with backoff, and poison jobs
// in the dead-letter sink.
//
// Payment webhooks are delivered to a partner whose two endpoints fail now
// and then (a transient "503"). levee::leveler retries a failed delivery
// after an exponential backoff with full jitter, on another endpoint when
// one is left. Some webhooks are poison: their payload is malformed and every
// attempt throws. After max_attempts they land in the dead-letter sink with
// the reason and the last error, instead of being lost or retried forever.
//
// The program checks that every good webhook was delivered, every poison one
// was dead-lettered after exactly max_attempts attempts with its last error,
// and nothing else was; it exits non-zero when not.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <levee/leveler.hpp>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace std::chrono_literals;

struct webhook {
  std::uint64_t id = 0;
  bool malformed = false;
};

struct dead_letter {
  std::uint64_t id;
  levee::dead_letter_reason reason;
  std::string last_error;
};

}  // namespace

int main(int argc, char** argv) {
  const bool smoke = argc > 1 && std::string_view(argv[1]) == "--smoke";
  const std::uint64_t n = smoke ? 120 : 600;
  constexpr std::uint32_t max_attempts = 4;

  std::mutex mutex;
  std::map<std::uint64_t, std::uint32_t> attempts;  // per webhook
  std::map<std::uint64_t, std::uint32_t> delivered;
  std::vector<dead_letter> dead;

  levee::leveler<webhook>::options opts;
  opts.workers = 2;
  opts.capacity = 1024;
  opts.rate = levee::rate::per_second(smoke ? 2000 : 1000);  // the partner's limit
  opts.retry.max_attempts = max_attempts;
  opts.retry.base_backoff = 2ms;
  opts.retry.max_backoff = 20ms;
  opts.retry.budget_ratio = 1.0;  // retries may add up to 100% of first attempts
  opts.dead_letter = [&](webhook&& w, levee::dead_letter_reason why, std::exception_ptr error) {
    std::string what = "(no exception)";
    try {
      if (error) std::rethrow_exception(error);
    } catch (const std::exception& e) {
      what = e.what();
    }
    std::lock_guard lock(mutex);
    dead.push_back({w.id, why, what});
  };

  levee::leveler<webhook> lev(opts);
  // Two endpoints of the partner. Each fails the first delivery attempt of
  // every third webhook and the second attempt of every seventh; a malformed
  // payload fails every time.
  for (int endpoint = 0; endpoint < 2; ++endpoint)
    (void)lev.add_backend(
        [&, endpoint](webhook& w) {
          std::uint32_t attempt = 0;
          {
            std::lock_guard lock(mutex);
            attempt = ++attempts[w.id];
          }
          if (w.malformed)
            throw std::invalid_argument("webhook " + std::to_string(w.id) + ": malformed payload");
          if ((attempt == 1 && w.id % 3 == 0) || (attempt == 2 && w.id % 7 == 0))
            throw std::runtime_error("endpoint " + std::to_string(endpoint) + ": 503 Service Unavailable");
          std::lock_guard lock(mutex);
          ++delivered[w.id];
        },
        {});

  std::uint64_t poison = 0;
  for (std::uint64_t id = 0; id < n; ++id) {
    const bool malformed = id % 50 == 13;
    poison += malformed ? 1 : 0;
    (void)lev.submit(webhook{id, malformed});
  }
  lev.drain();  // returns when every webhook is delivered or dead-lettered, retries included

  const auto m = lev.metrics();
  std::printf("%llu webhooks, %llu of them malformed\n", static_cast<unsigned long long>(n),
              static_cast<unsigned long long>(poison));
  std::printf("delivered %llu, failed attempts %llu, retried %llu, dead-lettered %llu\n",
              static_cast<unsigned long long>(m.succeeded), static_cast<unsigned long long>(m.failed),
              static_cast<unsigned long long>(m.retried),
              static_cast<unsigned long long>(m.dead_lettered.total()));
  std::printf("dead-letter sink:\n");
  for (std::size_t i = 0; i < dead.size() && i < 4; ++i)
    std::printf("  webhook %llu: %s after %u attempts, last error \"%s\"\n",
                static_cast<unsigned long long>(dead[i].id),
                std::string(levee::to_string(dead[i].reason)).c_str(), attempts[dead[i].id],
                dead[i].last_error.c_str());
  if (dead.size() > 4) std::printf("  ... and %zu more\n", dead.size() - 4);

  bool ok = true;
  auto expect = [&](bool cond, const char* what) {
    std::printf("[%s] %s\n", cond ? " ok " : "FAIL", what);
    ok = ok && cond;
  };
  bool good_delivered_once = true;
  for (std::uint64_t id = 0; id < n; ++id)
    if (id % 50 != 13) good_delivered_once = good_delivered_once && delivered[id] == 1;
  expect(good_delivered_once, "every good webhook was delivered exactly once, despite the flaky endpoints");
  bool poison_dead = dead.size() == poison;
  for (const auto& d : dead)
    poison_dead = poison_dead && d.id % 50 == 13 && d.reason == levee::dead_letter_reason::failed &&
                  attempts[d.id] == max_attempts &&
                  d.last_error.find("malformed payload") != std::string::npos;
  expect(poison_dead,
         "every poison webhook was dead-lettered as failed after max_attempts, with its last error");
  // Expected retries: one for each good webhook whose first attempt failed
  // (id % 3 == 0), one more for those whose second failed too (id % 21 == 0),
  // and max_attempts - 1 for each poison one.
  std::uint64_t expected_retries = 0;
  for (std::uint64_t id = 0; id < n; ++id)
    expected_retries +=
        id % 50 == 13 ? max_attempts - 1u : (id % 3 == 0 ? 1u : 0u) + (id % 21 == 0 ? 1u : 0u);
  expect(m.retried == expected_retries && m.succeeded == n - poison,
         ("the leveler retried exactly the failed attempts (" + std::to_string(m.retried) + " of " +
          std::to_string(expected_retries) + " expected)")
             .c_str());
  expect(m.succeeded + m.dead_lettered.total() == n, "every webhook reached exactly one final state");
  return ok ? 0 : 1;
}
