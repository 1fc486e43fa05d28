// expect: job_handler
// A handler must be either synchronous (Job&) or asynchronous
// (Job&, levee::completion), not both: the form it runs in must be
// unambiguous.
#include <levee/leveler.hpp>

struct both {
  void operator()(int&) const {}
  void operator()(int&, levee::completion done) const { std::move(done).succeed(); }
};
struct async_only {
  void operator()(int&, levee::completion done) const { std::move(done).succeed(); }
};

#ifdef LEVEE_COMPILE_FAIL_CONTROL
using handler = async_only;
#else
using handler = both;
#endif

int main() {
  levee::leveler<int>::options o;
  o.workers = 0;
  levee::leveler<int> lev(o);
  (void)lev.add_backend(handler{});
  return 0;
}
