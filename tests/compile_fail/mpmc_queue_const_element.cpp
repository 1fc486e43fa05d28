// expect: T must be a non-const, non-volatile, non-array object type
// levee::mpmc_queue rejects const (and volatile, array, reference) element types.
#include <levee/mpmc_queue.hpp>

#ifdef LEVEE_COMPILE_FAIL_CONTROL
using element = int;
#else
using element = const int;
#endif

int main() {
  levee::mpmc_queue<element> q(1);
  return q.capacity() == 1 ? 0 : 1;
}
