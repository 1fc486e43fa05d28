// levee/leveler/completion.hpp - the asynchronous handler's side of an
// attempt: levee::completion, the one-shot handle that finishes it, and the
// errors an attempt can end with when its handler does not say how it went
// (levee::attempt_errc: timeout, abandoned).
//
//   levee::leveler<req> lev(o, [&](req& r, levee::completion done) {
//     client.async_get(r.url, [d = std::move(done)](std::error_code ec) mutable {
//       ec ? std::move(d).fail(ec) : std::move(d).succeed();
//     });
//   });
#pragma once

#include <concepts>
#include <cstddef>
#include <exception>
#include <stop_token>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

namespace levee {

// Why an attempt failed without its handler saying so. Attempts failed this
// way carry a std::system_error with this code as their error (handed to the
// dead-letter sink when the job runs out of attempts):
//   catch (const std::system_error& e) { if (e.code() == levee::attempt_errc::timeout) ... }
enum class attempt_errc {
  timeout = 1,    // not finished within the attempt timeout (options.attempt_timeout)
  abandoned = 2,  // its levee::completion was destroyed without being fired
};

namespace detail {
class attempt_category_impl final : public std::error_category {
 public:
  [[nodiscard]] const char* name() const noexcept override { return "levee.attempt"; }
  [[nodiscard]] std::string message(int c) const override {
    switch (static_cast<attempt_errc>(c)) {
      case attempt_errc::timeout:
        return "timeout: the attempt did not finish within its attempt timeout";
      case attempt_errc::abandoned:
        return "abandoned: the attempt's levee::completion was destroyed without being fired";
    }
    return "unknown levee attempt error";
  }
};
}  // namespace detail

[[nodiscard]] inline const std::error_category& attempt_category() noexcept {
  static const detail::attempt_category_impl category;
  return category;
}
[[nodiscard]] inline std::error_code make_error_code(attempt_errc e) noexcept {
  return {static_cast<int>(e), attempt_category()};
}

}  // namespace levee

template <>
struct std::is_error_code_enum<levee::attempt_errc> : std::true_type {};

namespace levee {

// What a handler may return instead of void: success, or failure with an
// optional error (handed to the dead-letter sink if the job runs out of
// attempts). Throwing from a handler is the same as returning failure with
// the thrown exception. A handler returning bool reports success with true.
class handler_result {
 public:
  [[nodiscard]] static handler_result success() noexcept { return handler_result(true, nullptr); }
  [[nodiscard]] static handler_result failure(std::exception_ptr error = nullptr) noexcept {
    return handler_result(false, std::move(error));
  }
  template <class E>
  requires(!std::same_as<std::decay_t<E>, std::exception_ptr> &&
           !std::same_as<std::decay_t<E>, std::nullptr_t>) [[nodiscard]] static handler_result
      failure(E&& error) {
    return handler_result(false, std::make_exception_ptr(std::forward<E>(error)));
  }

  [[nodiscard]] bool ok() const noexcept { return ok_; }
  [[nodiscard]] const std::exception_ptr& error() const noexcept { return error_; }

 private:
  handler_result(bool ok, std::exception_ptr e) noexcept : ok_(ok), error_(std::move(e)) {}
  bool ok_;
  std::exception_ptr error_;
};

class completion;
namespace detail {
class attempt_access;
// What a completion points at: one asynchronous attempt (leveler/attempts.hpp).
class attempt_base {
 public:
  // Finishes the attempt with r (called exactly once per completion, by
  // firing it, or by destroying it unfired: `abandoned`) and drops the
  // completion's reference. Thread-safe.
  virtual void complete(handler_result&& r, bool abandoned) noexcept = 0;
  [[nodiscard]] std::stop_token stop_token() const noexcept { return stop_.get_token(); }

 protected:
  attempt_base() = default;
  ~attempt_base() = default;
  std::stop_source stop_;
};
}  // namespace detail

// The right to finish one asynchronous attempt: an asynchronous handler
// (callable as void(Job&, levee::completion)) receives one, starts its work
// and returns; whoever holds the completion then fires it exactly once, from
// any thread, by one of the && members. Move-only; firing consumes it, so it
// can only fire once by construction.
//
//  - succeed(): the attempt succeeded.
//  - fail(...): it failed (with an optional error: an exception_ptr, an
//    exception object, or a std::error_code wrapped in std::system_error);
//    the job is retried or dead-lettered per options.retry.
//  - finish(handler_result): either, from a result.
//  - destroyed without firing: the attempt fails with attempt_errc::abandoned
//    (never a lost job, never a leaked permit or backend lease).
//
// Until it fires, the job stays alive at the address the handler was given,
// and the attempt holds its concurrency permit and backend lease; the permit,
// the lease, the latency sample, the adaptive limit's sample and the retry
// decision all settle when it fires, as for a synchronous handler returning.
//
// Firing inside the handler (synchronous completion) is fine: the attempt is
// settled by the worker after the handler returns, never recursively.
// Firing after the attempt timed out is ignored and counted in
// metrics().late_completions; so is firing after the leveler was destroyed
// (the completion keeps what it needs alive).
//
// stop_token() is requested when the attempt times out and when stop() runs,
// so the I/O can be cancelled (std::stop_callback); the attempt still ends
// only when the completion fires or its timeout passes.
//
// Blocking: firing never waits for other attempts; it runs the attempt's
// settlement (and the dead-letter sink, when the job runs out of attempts)
// on the firing thread, unless fired inside the handler.
// Memory ordering: everything the firing thread did before firing
// happens-before the job's retry, its dead-letter sink call, and drain()
// returning.
class [[nodiscard]] completion {
 public:
  completion() noexcept = default;  // empty: fires nothing
  completion(completion&& o) noexcept : attempt_(std::exchange(o.attempt_, nullptr)) {}
  // Abandons the attempt this one held (if any), then takes o's.
  completion& operator=(completion&& o) noexcept {
    if (this != &o) {
      abandon();
      attempt_ = std::exchange(o.attempt_, nullptr);
    }
    return *this;
  }
  completion(const completion&) = delete;
  completion& operator=(const completion&) = delete;
  ~completion() { abandon(); }

  inline void succeed() &&;
  inline void fail() &&;
  inline void fail(std::exception_ptr error) &&;
  inline void fail(std::error_code ec) &&;
  template <class E>
  requires(!std::is_same_v<std::decay_t<E>, std::exception_ptr> &&
           !std::is_same_v<std::decay_t<E>, std::error_code> &&
           !std::is_same_v<std::decay_t<E>, std::nullptr_t> &&
           !std::is_same_v<std::decay_t<E>, handler_result>) void fail(E&& error) && {
    std::move(*this).fail(std::make_exception_ptr(std::forward<E>(error)));
  }
  inline void finish(handler_result r) &&;

  // True until fired (or moved from).
  [[nodiscard]] bool valid() const noexcept { return attempt_ != nullptr; }
  explicit operator bool() const noexcept { return valid(); }

  // Requested when the attempt times out or stop() runs. Empty (never
  // requested) for an empty completion.
  [[nodiscard]] std::stop_token stop_token() const noexcept {
    return attempt_ != nullptr ? attempt_->stop_token() : std::stop_token{};
  }

 private:
  friend class detail::attempt_access;
  explicit completion(detail::attempt_base* a) noexcept : attempt_(a) {}
  inline void abandon() noexcept;

  detail::attempt_base* attempt_ = nullptr;
};

namespace detail {
// The leveler makes completions through this (the constructor is private).
class attempt_access {
 public:
  [[nodiscard]] static completion make(attempt_base* a) noexcept { return completion(a); }
};
}  // namespace detail

void completion::succeed() && { std::move(*this).finish(handler_result::success()); }
void completion::fail() && { std::move(*this).finish(handler_result::failure()); }
void completion::fail(std::exception_ptr error) && {
  std::move(*this).finish(handler_result::failure(std::move(error)));
}
void completion::fail(std::error_code ec) && {
  std::exception_ptr e;
  try {
    e = std::make_exception_ptr(std::system_error(ec));
  } catch (...) {
    e = std::current_exception();  // out of memory: that is the error now
  }
  std::move(*this).finish(handler_result::failure(std::move(e)));
}
void completion::finish(handler_result r) && {
  if (detail::attempt_base* a = std::exchange(attempt_, nullptr)) a->complete(std::move(r), false);
}
void completion::abandon() noexcept {
  if (detail::attempt_base* a = std::exchange(attempt_, nullptr)) {
    std::exception_ptr e;
    try {
      e = std::make_exception_ptr(std::system_error(make_error_code(attempt_errc::abandoned)));
    } catch (...) {
      e = std::current_exception();
    }
    a->complete(handler_result::failure(std::move(e)), true);
  }
}

}  // namespace levee
