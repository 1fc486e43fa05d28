// benchmarks/bench_support.hpp - what every benchmark program shares.
#pragma once

#include <algorithm>
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

}  // namespace levee_bench
