// expect: (limit_policy<Policy>|does not satisfy 'limit_policy')
// levee::adaptive_limit's policy must satisfy levee::limit_policy
// (update(limit, sample) returning the new limit).
#include <levee/adaptive_limit.hpp>

struct no_update {
  double adjust(double limit) { return limit; }
};

#ifdef LEVEE_COMPILE_FAIL_CONTROL
using policy = levee::aimd;
#else
using policy = no_update;
#endif

int main() {
  levee::adaptive_limit<policy> al;
  return al.limit() == 20 ? 0 : 1;
}
