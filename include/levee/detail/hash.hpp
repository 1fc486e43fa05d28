// levee/detail/hash.hpp - seeded, platform-stable 64-bit hashing.
//
// Every function here is defined on integer arithmetic only (byte input is
// read little-endian explicitly), so the same input and seed give the same
// value on every compiler, standard library and CPU. Hash tables built from
// these values (ring_hash, maglev) are therefore byte-identical in every
// process that sees the same member list. std::hash gives no such promise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace levee::detail {

// A bijective 64-bit finaliser (the SplitMix64 / Stafford "mix13" mixer):
// every input bit affects every output bit with probability close to 1/2.
[[nodiscard]] constexpr std::uint64_t mix64(std::uint64_t x) noexcept {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// The salt a seed turns into; hash64(v, seed) == hash64_salted(v, hash_salt(seed)),
// so a hot path can precompute the salt once.
[[nodiscard]] constexpr std::uint64_t hash_salt(std::uint64_t seed) noexcept {
  return mix64(seed + 0x9e3779b97f4a7c15ULL);
}
[[nodiscard]] constexpr std::uint64_t hash64_salted(std::uint64_t value, std::uint64_t salt) noexcept {
  return mix64(value ^ salt);
}

// Hash of one 64-bit value under a seed. Different seeds give independent-
// looking functions (the seed is mixed before it meets the value).
[[nodiscard]] constexpr std::uint64_t hash64(std::uint64_t value, std::uint64_t seed = 0) noexcept {
  return hash64_salted(value, hash_salt(seed));
}

// Hash of an ordered pair, e.g. (key, backend id) for rendezvous hashing or
// (backend id, replica number) for ring points. Not symmetric.
[[nodiscard]] constexpr std::uint64_t hash_pair(std::uint64_t a, std::uint64_t b,
                                                std::uint64_t seed = 0) noexcept {
  return mix64(hash64(a, seed) ^ (b * 0xc2b2ae3d27d4eb4fULL + 0x165667b19e3779f9ULL));
}

// Hash of a byte string (for turning string keys into levee keys). Reads
// 8-byte little-endian words regardless of the host byte order.
[[nodiscard]] constexpr std::uint64_t hash_bytes(std::string_view bytes, std::uint64_t seed = 0) noexcept {
  std::uint64_t h = mix64(seed ^ (static_cast<std::uint64_t>(bytes.size()) * 0x9e3779b97f4a7c15ULL));
  std::size_t i = 0;
  const std::size_t n = bytes.size();
  auto byte_at = [&](std::size_t k) {
    return static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[k]));
  };
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w = 0;
    for (std::size_t k = 0; k < 8; ++k) w |= byte_at(i + k) << (8 * k);
    h = mix64(h ^ (w * 0xff51afd7ed558ccdULL)) + 0x2545f4914f6cdd1dULL;
  }
  std::uint64_t tail = 0;
  for (std::size_t k = 0; i + k < n; ++k) tail |= byte_at(i + k) << (8 * k);
  return mix64(h ^ (tail * 0xc4ceb9fe1a85ec53ULL) ^ static_cast<std::uint64_t>(n - i));
}

}  // namespace levee::detail
