// tests/eventually.hpp - waiting for an observable condition with a watchdog.
//
// Tests never sleep as synchronisation: a thread that must be blocked before
// the test goes on is waited for through a racy query (waiters_approx() and
// the like) with eventually(), which polls the condition and gives up after
// a real-time limit, so a hang fails the test instead of hanging CI.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <mutex>
#include <thread>
#include <utility>

namespace levee_test {

// Polls `done` until it returns true (-> true) or `limit` of real time has
// passed (-> false). Yields between polls, then naps briefly so that a
// long wait does not burn a CPU the awaited thread needs.
template <class Pred>
[[nodiscard]] bool eventually(Pred done, std::chrono::milliseconds limit = std::chrono::seconds(20)) {
  const auto give_up = std::chrono::steady_clock::now() + limit;
  for (unsigned i = 0;; ++i) {
    if (done()) return true;
    if (std::chrono::steady_clock::now() >= give_up) return false;
    if (i < 100)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// Runs f on another thread; if it has not returned within `limit`, reports
// `what` and ends the process (a hung leveler cannot be unwound, and CI must
// not wait for ctest's timeout). Rethrows what f threw.
template <class F>
void within(std::chrono::seconds limit, const char* what, F&& f) {
  auto done = std::async(std::launch::async, std::forward<F>(f));
  if (done.wait_for(limit) != std::future_status::ready) {
    std::fprintf(stderr, "WATCHDOG: \"%s\" did not finish within %lld s (hang)\n", what,
                 static_cast<long long>(limit.count()));
    std::fflush(stderr);
    std::quick_exit(3);
  }
  done.get();
}

// A gate a handler can wait on, opened by the test.
class gate {
 public:
  void open() {
    {
      std::lock_guard l(m_);
      open_ = true;
    }
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock l(m_);
    cv_.wait(l, [&] { return open_; });
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool open_ = false;
};

}  // namespace levee_test
