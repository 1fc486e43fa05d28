// web_queue_worker: the classic Web-Queue-Worker pattern in one process.
//
// A "web" thread answers every request at once: POST /reports queues the
// heavy work (rendering a report) in a levee::leveler and replies
// 202 Accepted with the job's URL, or 503 Service Unavailable with
// Retry-After when the queue is full, so the caller gets the job back at the
// door instead of waiting. Worker threads render the reports behind it, no
// more than two at a time. GET /reports/<id> tells the status.
//
// The program checks what the pattern promises and exits non-zero otherwise:
// the web thread's replies do not wait for the work, the bounded queue pushes
// back, every accepted report is rendered exactly once, and a refused one is
// never rendered.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <levee/leveler.hpp>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct report_job {
  std::uint64_t id = 0;
  std::string customer;
};

enum class status { queued, rendering, done };

// The job store a real service would keep in a database.
class job_store {
 public:
  void put(std::uint64_t id, status s) {
    std::lock_guard lock(mutex_);
    jobs_[id] = s;
  }
  // Marks a job as rendering; returns false if it was not queued (rendered twice?).
  bool start(std::uint64_t id) {
    std::lock_guard lock(mutex_);
    auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second != status::queued) return false;
    it->second = status::rendering;
    return true;
  }
  void erase(std::uint64_t id) {
    std::lock_guard lock(mutex_);
    jobs_.erase(id);
  }
  [[nodiscard]] std::optional<status> get(std::uint64_t id) const {
    std::lock_guard lock(mutex_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return std::nullopt;
    return it->second;
  }

 private:
  mutable std::mutex mutex_;
  std::unordered_map<std::uint64_t, status> jobs_;
};

struct http_reply {
  int code;
  std::string body;
};

const char* name(status s) {
  switch (s) {
    case status::queued:
      return "queued";
    case status::rendering:
      return "rendering";
    case status::done:
      return "done";
  }
  return "?";
}

}  // namespace

int main(int argc, char** argv) {
  const bool smoke = argc > 1 && std::string_view(argv[1]) == "--smoke";
  const std::size_t requests = smoke ? 60 : 200;
  const auto work = 20ms;  // rendering one report

  job_store store;
  std::atomic<std::uint64_t> rendered{0}, started{0};
  std::atomic<int> bad_starts{0};

  levee::leveler<report_job>::options opts;
  opts.capacity = 32;                              // at most 32 reports wait
  opts.overflow = levee::overflow_policy::reject;  // a full queue answers 503 at once
  opts.workers = 2;
  opts.max_concurrency = 2;  // the renderer can take two at a time
  levee::leveler<report_job> queue(opts, [&](report_job& job) {
    started.fetch_add(1);
    if (!store.start(job.id)) bad_starts.fetch_add(1);
    std::this_thread::sleep_for(work);  // the heavy part
    store.put(job.id, status::done);
    rendered.fetch_add(1);
  });

  // The web tier: answers POST /reports without doing the work.
  std::uint64_t next_id = 1;
  auto post_report = [&](std::string customer) -> http_reply {
    const std::uint64_t id = next_id++;
    store.put(id, status::queued);
    auto r = queue.try_submit(report_job{id, std::move(customer)});
    if (r.status == levee::submit_status::accepted) return {202, "Location: /reports/" + std::to_string(id)};
    store.erase(id);  // never queued: forget it
    return {503, "Retry-After: 1 (" + std::string(levee::to_string(r.status)) + ": " + r.job->customer +
                     "'s report was not queued)"};
  };
  auto get_report = [&](std::uint64_t id) -> http_reply {
    auto s = store.get(id);
    if (!s) return {404, "no such report"};
    return {200, name(*s)};
  };

  std::vector<double> reply_us;
  std::vector<std::uint64_t> accepted_ids, refused_ids;
  const auto t0 = steady::now();
  for (std::size_t i = 0; i < requests; ++i) {
    const auto begin = steady::now();
    http_reply reply = post_report("customer-" + std::to_string(i % 17));
    reply_us.push_back(std::chrono::duration<double, std::micro>(steady::now() - begin).count());
    (reply.code == 202 ? accepted_ids : refused_ids).push_back(next_id - 1);
    if (i < 3 || (reply.code == 503 && refused_ids.size() == 1))
      std::printf("request %3zu: POST /reports -> %d %s  (%.0f us)\n", i + 1, reply.code, reply.body.c_str(),
                  reply_us.back());
    // Requests come in bursts of 20, 50 ms apart.
    if (i % 20 == 19) std::this_thread::sleep_for(50ms);
  }
  const double web_seconds = std::chrono::duration<double>(steady::now() - t0).count();
  const std::uint64_t started_during_web = started.load();
  std::printf("GET /reports/%llu -> %s right after the burst\n",
              static_cast<unsigned long long>(accepted_ids.back()),
              get_report(accepted_ids.back()).body.c_str());

  queue.drain();  // wait until every accepted report is rendered
  const double total_seconds = std::chrono::duration<double>(steady::now() - t0).count();
  std::printf("GET /reports/%llu -> %s after drain()\n", static_cast<unsigned long long>(accepted_ids.back()),
              get_report(accepted_ids.back()).body.c_str());

  std::sort(reply_us.begin(), reply_us.end());
  const double p50 = reply_us[reply_us.size() / 2], worst = reply_us.back();
  const auto over_1ms =
      static_cast<std::size_t>(reply_us.end() - std::upper_bound(reply_us.begin(), reply_us.end(), 1000.0));
  const auto m = queue.metrics();
  std::printf("\n%zu requests answered in %.2f s by the web thread; rendering them took %.2f s.\n", requests,
              web_seconds, total_seconds);
  std::printf("reply time: median %.0f us, max %.0f us, %zu of %zu over 1 ms; one report takes %lld ms\n",
              p50, worst, over_1ms, requests, static_cast<long long>(work.count()));
  std::printf("accepted %zu (202), refused %zu (503), rendered %llu; queue dwell p99 %.1f ms\n",
              accepted_ids.size(), refused_ids.size(), static_cast<unsigned long long>(rendered.load()),
              static_cast<double>(m.dwell_time.p99().count()) / 1e6);

  bool ok = true;
  auto expect = [&](bool cond, const char* what) {
    std::printf("[%s] %s\n", cond ? " ok " : "FAIL", what);
    ok = ok && cond;
  };
  // A reply takes microseconds. A reply that waited for the work would wait
  // for a rendering to free a slot: once the queue is full, a large share of
  // the replies would take milliseconds. One slow reply proves nothing (the
  // web thread can be preempted on a loaded machine), so the check is on the
  // median and on the share of replies over 1 ms.
  expect(p50 < 1000.0 && over_1ms * 10 <= requests,
         "the web thread replies without waiting for the work (median and 90% of replies under 1 ms)");
  expect(!refused_ids.empty() && accepted_ids.size() <= opts.capacity + started_during_web,
         "the bounded queue pushed back: requests beyond its capacity were refused at once (503)");
  expect(rendered.load() == accepted_ids.size() && bad_starts.load() == 0,
         "every accepted report was rendered exactly once");
  bool all_done = std::all_of(accepted_ids.begin(), accepted_ids.end(),
                              [&](std::uint64_t id) { return store.get(id) == status::done; });
  expect(all_done, "GET shows every accepted report as done after drain()");
  expect(m.succeeded == accepted_ids.size() && m.rejected.full == refused_ids.size(),
         "the leveler's counters agree (succeeded, rejected as full)");
  return ok ? 0 : 1;
}
