// levee/detail/cache.hpp - cache-line sizes used for padding.
#pragma once

#include <cstddef>

// Forces inlining of small hot functions whose result must stay in
// registers: GCC 12 returns a std::optional<std::size_t> from a call through
// a 1-byte store and an 8-byte reload of the same stack slot, which stalls
// store forwarding (~12 cycles) on every pick; inlined, the optional vanishes.
#if defined(__GNUC__) || defined(__clang__)
#define LEVEE_DETAIL_ALWAYS_INLINE [[gnu::always_inline]]
#else
#define LEVEE_DETAIL_ALWAYS_INLINE
#endif

namespace levee::detail {

// Size of one cache line on the targets we measure (x86-64, most ARM64).
inline constexpr std::size_t cache_line_size = 64;

// Separation that keeps two independently written variables from sharing a
// line *or* an adjacent-line prefetch pair (Intel's spatial prefetcher pulls
// lines in 128-byte pairs). Chosen by measurement: see benchmarks/README.md.
inline constexpr std::size_t false_sharing_range = 128;

}  // namespace levee::detail
