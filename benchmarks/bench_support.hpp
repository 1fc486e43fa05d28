// benchmarks/bench_support.hpp - what every benchmark program shares: the
// median/min/max of a cell, the one-line description of the machine every
// table is printed with, and the record of checked claims that decides the
// exit status.
#pragma once

#include <sys/utsname.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace levee_bench {

// Median, minimum and maximum of the runs of one cell (valid = at least one run).
struct stats {
  double median = 0, min = 0, max = 0;
  bool valid = false;
};

inline stats summarize(std::vector<double> v) {
  stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  s.min = v.front();
  s.max = v.back();
  s.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  s.valid = true;
  return s;
}

// First line of a file, or `fallback` if it cannot be read.
inline std::string first_line(const char* path, const char* fallback) {
  std::ifstream f(path);
  std::string line;
  if (!std::getline(f, line)) return fallback;
  while (!line.empty() && (line.back() == ' ' || line.back() == '\n')) line.pop_back();
  return line;
}

// The three load averages, e.g. "0.12 0.30 0.25".
inline std::string load_average() {
  const std::string l = first_line("/proc/loadavg", "unknown");
  std::size_t cut = 0;
  for (int fields = 0; fields < 3 && cut != std::string::npos; ++fields) cut = l.find(' ', cut + 1);
  return cut == std::string::npos ? l : l.substr(0, cut);
}

// One-minute load average, or -1 if unknown.
inline double load_1min() {
  std::ifstream f("/proc/loadavg");
  double v = -1;
  if (!(f >> v)) return -1;
  return v;
}

inline std::string run_command(const std::string& cmd) {
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[256];
    while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
    pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// The commit of the source tree the benchmark was built from (CMake passes
// its directory), with "+dirty" when tracked files differ from it.
inline std::string source_commit() {
#if defined(LEVEE_BENCH_SOURCE_DIR)
  const std::string git = std::string("git -C '") + LEVEE_BENCH_SOURCE_DIR + "' ";
  std::string c = run_command(git + "rev-parse --short=12 HEAD 2>/dev/null");
  if (c.empty()) return "unknown";
  if (!run_command(git + "status --porcelain --untracked-files=no 2>/dev/null").empty()) c += "+dirty";
  return c;
#else
  return "unknown";
#endif
}

inline std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

inline std::string compiler() {
#if defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "g++ " __VERSION__;
#else
  return "unknown compiler";
#endif
}

// "CPU ...; clocksource ...; load ...; Linux ...; compiler ...; commit ...":
// what a reader needs to judge a table. The load average is read when this
// is called: print it with every table.
inline std::string machine_line() {
  utsname u{};
  uname(&u);
  return "CPU " + cpu_model() + " (" + std::to_string(std::thread::hardware_concurrency()) +
         " hardware threads); clocksource " +
         first_line("/sys/devices/system/clocksource/clocksource0/current_clocksource", "unknown") +
         "; load average " + load_average() + "; Linux " + u.release + "; " + compiler() + "; commit " +
         source_commit();
}

inline void print_machine() { std::printf("Machine: %s.\n", machine_line().c_str()); }

// Claims a benchmark checks. A false claim is printed at once, listed again
// at the end, and makes the program exit with status 1 (--smoke runs in CI).
class claims {
 public:
  // Returns ok, so that callers can print their own verdict as well.
  bool check(bool ok, const std::string& what) {
    ++checked_;
    if (!ok) {
      failed_.push_back(what);
      std::printf("CLAIM FAILED: %s\n", what.c_str());
      std::fflush(stdout);
    }
    return ok;
  }
  // Prints the summary; returns the exit status for main().
  [[nodiscard]] int finish() const {
    if (failed_.empty()) {
      std::printf("\nAll %zu checked claims hold.\n", checked_);
      return 0;
    }
    std::printf("\n%zu of %zu checked claims FAILED:\n", failed_.size(), checked_);
    for (const auto& f : failed_) std::printf("  - %s\n", f.c_str());
    std::fprintf(stderr, "%zu checked claim(s) failed (see above)\n", failed_.size());
    return 1;
  }

 private:
  std::size_t checked_ = 0;
  std::vector<std::string> failed_;
};

}  // namespace levee_bench
