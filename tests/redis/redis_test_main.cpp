// main() of the redis tests: runs doctest if a redis-server binary exists.
// Without one it exits with 77 (ctest: skipped) and says why, unless
// LEVEE_REQUIRE_REDIS=1, which turns the missing server into a failure (CI).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <levee/redis/test_server.hpp>

int main(int argc, char** argv) {
  if (!levee::redis::test_server::find_binary()) {
    const char* req = std::getenv("LEVEE_REQUIRE_REDIS");
    if (req != nullptr && std::strcmp(req, "1") == 0) {
      std::fprintf(stderr,
                   "FAIL: LEVEE_REQUIRE_REDIS=1 but no redis-server (or valkey-server) binary was found "
                   "on PATH or in $LEVEE_REDIS_SERVER\n");
      return 1;
    }
    std::fprintf(stderr,
                 "SKIP: no redis-server (or valkey-server) binary on PATH or in $LEVEE_REDIS_SERVER; "
                 "install redis-server to run the redis tests (LEVEE_REQUIRE_REDIS=1 makes this a "
                 "failure)\n");
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
