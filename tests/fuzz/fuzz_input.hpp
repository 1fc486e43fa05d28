// tests/fuzz/fuzz_input.hpp - reads a libFuzzer input as a stream of small
// integers (exhausted input reads as zeros), and the check macro every
// harness uses: a broken property prints what broke and aborts, which
// libFuzzer reports as a crash and saves the input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace levee_fuzz {

class input {
 public:
  input(const std::uint8_t* data, std::size_t size) noexcept : data_(data), size_(size) {}

  [[nodiscard]] bool empty() const noexcept { return pos_ >= size_; }

  [[nodiscard]] std::uint8_t u8() noexcept { return pos_ < size_ ? data_[pos_++] : 0; }
  [[nodiscard]] std::uint16_t u16() noexcept {
    return static_cast<std::uint16_t>(u8() | (static_cast<unsigned>(u8()) << 8));
  }
  [[nodiscard]] std::uint32_t u32() noexcept {
    return static_cast<std::uint32_t>(u16()) | (static_cast<std::uint32_t>(u16()) << 16);
  }
  [[nodiscard]] std::uint64_t u64() noexcept {
    return static_cast<std::uint64_t>(u32()) | (static_cast<std::uint64_t>(u32()) << 32);
  }
  // A value in [0, n), n > 0.
  [[nodiscard]] std::size_t below(std::size_t n) noexcept { return n <= 256 ? u8() % n : u32() % n; }
  [[nodiscard]] bool boolean() noexcept { return (u8() & 1U) != 0; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

// LEVEE_FUZZ_TRACE=1 in the environment makes harnesses print every
// operation (for reproducing a saved input by hand).
inline bool trace_enabled() {
  static const bool on = std::getenv("LEVEE_FUZZ_TRACE") != nullptr;
  return on;
}

}  // namespace levee_fuzz

#define LEVEE_FUZZ_TRACE(...)                                           \
  do {                                                                  \
    if (levee_fuzz::trace_enabled()) std::fprintf(stderr, __VA_ARGS__); \
  } while (false)

// Checks a property of the code under test; on failure prints the condition
// and the location, then aborts (libFuzzer saves the crashing input).
#define LEVEE_FUZZ_CHECK(cond, ...)                                                              \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      std::fprintf(stderr, "levee fuzz check failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, "  " __VA_ARGS__);                                                    \
      std::fprintf(stderr, "\n");                                                                \
      std::abort();                                                                              \
    }                                                                                            \
  } while (false)
