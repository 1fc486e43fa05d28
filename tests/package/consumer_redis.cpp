// Tiny consumer of the installed redis component (find_package(levee
// COMPONENTS redis), used by .ci/run): it must compile and link against
// hiredis through levee::redis, and run without a server.
#include <chrono>
#include <cstdio>
#include <levee/levee.hpp>
#include <levee/redis/connection.hpp>
#include <levee/redis/gcra.hpp>
#include <levee/redis/shared_rate_gate.hpp>
#include <levee/redis/stream_ingress.hpp>

static_assert(levee::rate_gate<levee::redis::shared_rate_gate<>>);

int main() {
  const levee::redis::gcra_config cfg(levee::rate::per_second(1000), 10, std::chrono::seconds(1), 64);
  if (cfg.offset_ns(0, 11) != 1'000'000) return 1;
  try {
    levee::redis::connection c({.endpoint = levee::redis::endpoint::unix_socket("/nonexistent/levee.sock"),
                                .connect_timeout = std::chrono::milliseconds(100),
                                .command_timeout = std::chrono::milliseconds(100)});
    return 2;  // there is no server there
  } catch (const levee::redis::io_error&) {
  }
  std::puts("levee redis consumer ok");
  return 0;
}
