// Helpers shared by the redis tests: a private server per test, a watchdog
// wait for observable conditions, and forked child processes.
#pragma once

#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <levee/redis/connection.hpp>
#include <levee/redis/test_server.hpp>
#include <stdexcept>
#include <string>
#include <thread>

namespace levee_redis_test {

inline levee::redis::test_server start_server() {
  auto bin = levee::redis::test_server::find_binary();
  REQUIRE_MESSAGE(bin.has_value(), "no redis-server binary");
  return levee::redis::test_server(*bin);
}

inline levee::redis::connection_options conn_opts(const levee::redis::test_server& s) {
  levee::redis::connection_options o;
  o.endpoint = s.endpoint();
  o.connect_timeout = std::chrono::milliseconds(500);
  o.command_timeout = std::chrono::milliseconds(2000);
  return o;
}

// Polls `cond` until it holds; false after `limit` (the watchdog: a hang
// fails the test instead of hanging CI).
inline bool wait_for(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Runs `body` in a forked child; the child exits with body's return value
// (or 99 on an exception). Only async-signal-safe work is done between fork
// and body in a process that has no other threads at that point.
inline pid_t fork_child(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    int rc = 99;
    try {
      rc = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child %d: %s\n", static_cast<int>(::getpid()), e.what());
    }
    std::_Exit(rc);
  }
  return pid;
}

// Waits for a child (watchdog: SIGKILL after `limit`); returns its exit code, or -signal.
inline int wait_child(pid_t pid, std::chrono::milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    if (std::chrono::steady_clock::now() > until) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1000;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

}  // namespace levee_redis_test
