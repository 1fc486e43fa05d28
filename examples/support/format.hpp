// Small text helpers shared by the examples: printf-style formatting of one
// number, integers with thousands separators, and XML escaping.
#pragma once

#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>

namespace example_support {

// One number through a printf format, e.g. fmt("%.1f s", 2.04) == "2.0 s".
inline std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// Whole numbers with thousands separators ("11,490"), others with one decimal.
inline std::string num(double v) {
  char buf[32];
  if (std::fabs(v - std::round(v)) < 1e-9) {
    const long long i = std::llround(v);
    const std::string digits = std::to_string(i < 0 ? -i : i);
    std::string out = i < 0 ? "-" : "";
    for (std::size_t k = 0; k < digits.size(); ++k) {
      if (k != 0 && (digits.size() - k) % 3 == 0) out.push_back(',');
      out.push_back(digits[k]);
    }
    return out;
  }
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

// Escapes text for XML/SVG content and attribute values.
inline std::string xml_escape(std::string_view s) {
  std::string o;
  for (char ch : s) {
    switch (ch) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&quot;";
        break;
      default:
        o += ch;
    }
  }
  return o;
}

}  // namespace example_support
