// expect: T's move constructor must be noexcept
// levee::mpmc_queue rejects an element whose move constructor may throw
// (a push claims its slot before moving in; a throw would strand the slot).
#include <levee/mpmc_queue.hpp>

struct throwing_move {
  throwing_move() = default;
  throwing_move(throwing_move&&) {}  // not noexcept
  throwing_move& operator=(throwing_move&&) { return *this; }
};

#ifdef LEVEE_COMPILE_FAIL_CONTROL
using element = int;
#else
using element = throwing_move;
#endif

int main() {
  levee::mpmc_queue<element> q(1);
  return q.capacity() == 1 ? 0 : 1;
}
