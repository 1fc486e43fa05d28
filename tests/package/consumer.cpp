// Tiny consumer used by the packaging tests in .ci/run: it must compile
// against an installed levee (find_package / pkg-config) or an
// add_subdirectory'd one, and run.
#include <cstdio>
#include <levee/levee.hpp>

int main() {
  levee::mpmc_queue<int> q(3);
  if (!q.try_push(42)) return 1;
  auto v = q.try_pop();
  if (!v || *v != 42) return 2;
  levee::manual_clock clock;
  clock.advance(std::chrono::seconds(1));
  std::puts("levee consumer ok");
  return 0;
}
