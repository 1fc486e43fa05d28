// expect: too many nested decorators for pick_context::max_filters
// Decorators push filters on a fixed-size pick_context: nesting more than
// pick_context::max_filters of them is rejected at compile time.
#include <cstddef>
#include <levee/balance.hpp>

// A strategy that declares it pushes more filters than a context holds.
struct deep : levee::round_robin {
#ifdef LEVEE_COMPILE_FAIL_CONTROL
  static constexpr std::size_t filter_depth = levee::pick_context::max_filters;
#else
  static constexpr std::size_t filter_depth = levee::pick_context::max_filters + 1;
#endif
};

int main() { return levee::strategy_traits<deep>::filter_depth > 0 ? 0 : 1; }
