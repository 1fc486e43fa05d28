// tests/eventually.hpp - waiting for an observable condition with a watchdog.
//
// Tests never sleep as synchronisation: a thread that must be blocked before
// the test goes on is waited for through a racy query (waiters_approx() and
// the like) with eventually(), which polls the condition and gives up after
// a real-time limit, so a hang fails the test instead of hanging CI.
#pragma once

#include <chrono>
#include <thread>

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

}  // namespace levee_test
