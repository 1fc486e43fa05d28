// Command-line flags for the examples: `--flag value` or `--flag=value`,
// numbers checked for range, and a usage_error that names the flag.
#pragma once

#include <charconv>
#include <cmath>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace example_support {

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A finite number in (min_exclusive, max_inclusive], or usage_error naming the flag.
inline double parse_number(std::string_view flag, std::string_view text, double min_exclusive,
                           double max_inclusive) {
  double v = 0;
  const auto* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc{} || p != end || !std::isfinite(v))
    throw usage_error(std::string(flag) + ": not a number: '" + std::string(text) + "'");
  if (!(v > min_exclusive) || v > max_inclusive) {
    std::ostringstream os;
    os << flag << ": " << v << " is out of range (" << min_exclusive << ", " << max_inclusive << "]";
    throw usage_error(os.str());
  }
  return v;
}

// Walks argv: next() yields each flag (the part before '=' of --flag=value),
// value() the flag's value (after '=' or the next argument).
class arg_reader {
 public:
  arg_reader(int argc, char** argv) : args_(argv + 1, argv + argc) {}

  [[nodiscard]] bool has(std::string_view flag) const {
    for (const auto& a : args_)
      if (a == flag) return true;
    return false;
  }

  // The next flag, or nullopt at the end.
  std::optional<std::string> next() {
    if (i_ >= args_.size()) return std::nullopt;
    std::string flag = args_[i_++];
    inline_value_.reset();
    if (auto eq = flag.find('='); flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      inline_value_ = flag.substr(eq + 1);
      flag.resize(eq);
    }
    flag_ = flag;
    return flag;
  }

  // The current flag's value; usage_error when it has none.
  std::string value() {
    if (inline_value_) return *std::exchange(inline_value_, std::nullopt);
    if (i_ >= args_.size()) throw usage_error(flag_ + ": missing value");
    return args_[i_++];
  }

 private:
  std::vector<std::string> args_;
  std::size_t i_ = 0;
  std::string flag_;
  std::optional<std::string> inline_value_;
};

}  // namespace example_support
