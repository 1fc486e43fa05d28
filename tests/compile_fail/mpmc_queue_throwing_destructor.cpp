// expect: T's destructor must be noexcept
// levee::mpmc_queue rejects an element whose destructor may throw.
#include <levee/mpmc_queue.hpp>

struct throwing_destructor {
  throwing_destructor() = default;
  throwing_destructor(throwing_destructor&&) noexcept {}
  throwing_destructor& operator=(throwing_destructor&&) noexcept { return *this; }
  ~throwing_destructor() noexcept(false) {}
};

#ifdef LEVEE_COMPILE_FAIL_CONTROL
using element = int;
#else
using element = throwing_destructor;
#endif

int main() {
  levee::mpmc_queue<element> q(1);
  return q.capacity() == 1 ? 0 : 1;
}
