// levee/detail/cache.hpp - cache-line sizes used for padding.
#pragma once

#include <cstddef>

namespace levee::detail {

// Size of one cache line on the targets we measure (x86-64, most ARM64).
inline constexpr std::size_t cache_line_size = 64;

// Separation that keeps two independently written variables from sharing a
// line *or* an adjacent-line prefetch pair (Intel's spatial prefetcher pulls
// lines in 128-byte pairs). Chosen by measurement: see benchmarks/README.md.
inline constexpr std::size_t false_sharing_range = 128;

}  // namespace levee::detail
