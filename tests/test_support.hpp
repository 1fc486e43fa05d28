// tests/test_support.hpp - what several test files share.
#pragma once

// LEVEE_TEST_SANITIZED is 1 under ThreadSanitizer or AddressSanitizer (g++ or
// clang): tests then scale their iteration counts down to keep CI short.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define LEVEE_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define LEVEE_TEST_SANITIZED 1
#endif
#endif
#ifndef LEVEE_TEST_SANITIZED
#define LEVEE_TEST_SANITIZED 0
#endif
