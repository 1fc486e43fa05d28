// levee/redis/test_server.hpp - test support: a private redis-server (or
// valkey-server) child process on a unix socket in a temporary directory,
// persistence off. For tests, examples and benchmarks; not for production.
//
//   auto bin = levee::redis::test_server::find_binary();   // nullopt: none installed
//   levee::redis::test_server srv(*bin);                    // started, answered PING
//   levee::redis::connection c({.endpoint = srv.endpoint()});
//   srv.restart();                                          // same socket, empty data
//
// The binary is started directly (posix_spawn, no shell) with
//   --port <tcp_port or 0> --unixsocket <dir>/redis.sock --save '' --appendonly no
// and its output goes to <dir>/server.log. stop() sends SHUTDOWN NOSAVE and
// reaps the child; the destructor kills it (SIGKILL) if it is still running
// and removes the directory. Not thread-safe (one owner).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <levee/redis/connection.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

extern char** environ;

namespace levee::redis {

class test_server {
 public:
  // The server binary: $LEVEE_REDIS_SERVER if set, else redis-server or
  // valkey-server found on $PATH (or in /usr/bin, /usr/local/bin, /usr/sbin).
  [[nodiscard]] static std::optional<std::string> find_binary() {
    if (const char* env = std::getenv("LEVEE_REDIS_SERVER"); env != nullptr && *env != '\0') {
      if (::access(env, X_OK) == 0) return std::string(env);
      return std::nullopt;
    }
    std::vector<std::string> dirs;
    if (const char* path = std::getenv("PATH"); path != nullptr) {
      std::string_view p(path);
      while (!p.empty()) {
        const auto colon = p.find(':');
        dirs.emplace_back(p.substr(0, colon));
        if (colon == std::string_view::npos) break;
        p.remove_prefix(colon + 1);
      }
    }
    for (const char* d : {"/usr/bin", "/usr/local/bin", "/usr/sbin"}) dirs.emplace_back(d);
    for (const char* name : {"redis-server", "valkey-server"}) {
      for (const auto& d : dirs) {
        if (d.empty()) continue;
        const std::string candidate = d + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
      }
    }
    return std::nullopt;
  }

  // Starts the server and waits (at most `ready_timeout`) until it answers
  // PING. tcp_port 0: unix socket only. Throws std::runtime_error on failure.
  explicit test_server(std::string binary, int tcp_port = 0,
                       std::chrono::milliseconds ready_timeout = std::chrono::seconds(10))
      : binary_(std::move(binary)), tcp_port_(tcp_port), ready_timeout_(ready_timeout) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "levee-redis-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr)
      throw std::runtime_error(std::string("levee::redis::test_server: mkdtemp failed: ") +
                               std::strerror(errno));
    dir_ = tmpl;
    socket_ = dir_ + "/redis.sock";
    try {
      spawn();
    } catch (...) {
      cleanup();
      throw;
    }
  }
  test_server(const test_server&) = delete;
  test_server& operator=(const test_server&) = delete;
  ~test_server() { cleanup(); }

  [[nodiscard]] const std::string& socket_path() const noexcept { return socket_; }
  [[nodiscard]] redis::endpoint endpoint() const { return redis::endpoint::unix_socket(socket_); }
  [[nodiscard]] redis::endpoint tcp_endpoint() const { return redis::endpoint::tcp("127.0.0.1", tcp_port_); }
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }
  [[nodiscard]] bool running() const noexcept { return pid_ > 0; }

  // SHUTDOWN NOSAVE, then waits for the child to exit (SIGKILL after the
  // ready timeout). Blocking. No effect if not running.
  void stop() {
    if (pid_ <= 0) return;
    try {
      connection c({.endpoint = endpoint(),
                    .connect_timeout = std::chrono::milliseconds(500),
                    .command_timeout = std::chrono::milliseconds(500)});
      (void)c.run("SHUTDOWN", "NOSAVE");  // the server closes the socket: io_error expected
    } catch (const io_error&) {
    }
    const auto until = std::chrono::steady_clock::now() + ready_timeout_;
    while (std::chrono::steady_clock::now() < until) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_ || (r < 0 && errno == ECHILD)) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    kill_now();
  }

  // Stops (SHUTDOWN NOSAVE) and starts again on the same socket, with no data.
  void restart() {
    stop();
    spawn();
  }

  // Starts the server again after stop() or kill_now(), on the same socket
  // (no effect if running). Throws std::runtime_error on failure.
  void start() {
    if (pid_ > 0) return;
    spawn();
  }

  // SIGKILL and reap (no effect if not running).
  void kill_now() noexcept {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }

 private:
  void spawn() {
    ::unlink(socket_.c_str());
    const std::string log = dir_ + "/server.log";
    std::vector<std::string> args = {binary_,
                                     "--port",
                                     std::to_string(tcp_port_),
                                     "--bind",
                                     "127.0.0.1",
                                     "--unixsocket",
                                     socket_,
                                     "--unixsocketperm",
                                     "700",
                                     "--save",
                                     "",
                                     "--appendonly",
                                     "no",
                                     "--dir",
                                     dir_,
                                     "--daemonize",
                                     "no"};
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, binary_.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
      throw std::runtime_error("levee::redis::test_server: cannot start " + binary_ + ": " +
                               std::strerror(rc));
    pid_ = pid;
    // Wait for PING -> PONG (the socket appears once the server listens).
    const auto until = std::chrono::steady_clock::now() + ready_timeout_;
    std::string last = "no attempt";
    while (std::chrono::steady_clock::now() < until) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("levee::redis::test_server: " + binary_ + " exited at start (see " + log +
                                 ")");
      }
      try {
        connection c({.endpoint = endpoint(),
                      .connect_timeout = std::chrono::milliseconds(200),
                      .command_timeout = std::chrono::milliseconds(500)});
        if (c.run("PING").str() == "PONG") return;
      } catch (const io_error& e) {
        last = e.what();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    kill_now();
    throw std::runtime_error("levee::redis::test_server: no PONG from " + binary_ + " (" + last + ")");
  }

  void cleanup() noexcept {
    kill_now();
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  std::string binary_;
  int tcp_port_;
  std::chrono::milliseconds ready_timeout_;
  std::string dir_;
  std::string socket_;
  pid_t pid_ = -1;
};

}  // namespace levee::redis
