// levee/detail/rng.hpp - small, fast, seedable, platform-stable random numbers.
//
// Nothing here uses <random>'s distributions: their output differs between
// standard libraries, and levee promises that a seed gives the same picks on
// every platform.
#pragma once

#include <cstdint>

#include "cache.hpp"

namespace levee::detail {

// SplitMix64 (Steele, Lea, Flood 2014): used to expand one 64-bit seed into
// generator state and as a cheap stateless stream.
[[nodiscard]] constexpr std::uint64_t splitmix64_next(std::uint64_t& state) noexcept {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// 64 x 64 -> high 64 bits of the 128-bit product (one MUL where the compiler
// has a 128-bit type; __extension__ keeps -Wpedantic quiet).
[[nodiscard]] constexpr std::uint64_t mul_high64(std::uint64_t a, std::uint64_t b) noexcept {
#if defined(__SIZEOF_INT128__)
  __extension__ using u128 = unsigned __int128;
  return static_cast<std::uint64_t>((static_cast<u128>(a) * b) >> 64);
#else
  const std::uint64_t a_lo = a & 0xffffffffULL, a_hi = a >> 32;
  const std::uint64_t b_lo = b & 0xffffffffULL, b_hi = b >> 32;
  const std::uint64_t lo_lo = a_lo * b_lo;
  const std::uint64_t hi_lo = a_hi * b_lo;
  const std::uint64_t lo_hi = a_lo * b_hi;
  const std::uint64_t hi_hi = a_hi * b_hi;
  const std::uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xffffffffULL) + lo_hi;
  return hi_hi + (hi_lo >> 32) + (cross >> 32);
#endif
}

// xoshiro256** 1.0 (Blackman, Vigna 2018): 256-bit state, period 2^256 - 1,
// a few instructions per number. Not thread-safe: one generator per thread
// (the leveler keeps one per worker, for backoff jitter and picks alike).
class xoshiro256 {
 public:
  using result_type = std::uint64_t;

  constexpr explicit xoshiro256(std::uint64_t seed = 0x6c65766565ULL) noexcept { reseed(seed); }

  constexpr void reseed(std::uint64_t seed) noexcept {
    std::uint64_t sm = seed;
    for (auto& w : s_) w = splitmix64_next(sm);
  }

  [[nodiscard]] static constexpr result_type min() noexcept { return 0; }
  [[nodiscard]] static constexpr result_type max() noexcept { return ~std::uint64_t{0}; }

  LEVEE_DETAIL_ALWAYS_INLINE constexpr result_type operator()() noexcept {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  // Uniform integer in [0, n) (Lemire 2019, unbiased); n == 0 returns 0.
  LEVEE_DETAIL_ALWAYS_INLINE constexpr std::uint64_t below(std::uint64_t n) noexcept {
    if (n == 0) return 0;
    std::uint64_t x = (*this)();
    std::uint64_t lo = x * n;
    if (lo < n) {
      const std::uint64_t threshold = (0 - n) % n;
      while (lo < threshold) {
        x = (*this)();
        lo = x * n;
      }
    }
    return mul_high64(x, n);
  }

  // Uniform double in [0, 1) with 53 random bits.
  constexpr double unit() noexcept { return static_cast<double>((*this)() >> 11) * 0x1.0p-53; }

 private:
  static constexpr std::uint64_t rotl(std::uint64_t x, int k) noexcept { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4]{};
};

}  // namespace levee::detail
