// expect: (strategy<S>|does not satisfy 'strategy')
// levee::balancer's strategy policy must satisfy levee::strategy (build()
// and pick()): a policy without pick() is rejected by the concept.
#include <levee/balance.hpp>

struct no_pick {
  using table_type = levee::no_table;
  [[nodiscard]] table_type build(const levee::backend_snapshot&) const { return {}; }
};

#ifdef LEVEE_COMPILE_FAIL_CONTROL
using policy = levee::round_robin;
#else
using policy = no_pick;
#endif

int main() {
  levee::balancer<policy> b;
  return b.size() == 0 ? 0 : 1;
}
