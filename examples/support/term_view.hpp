// A live terminal view for the examples: detects whether stdout is a
// terminal that can be redrawn, draws text bars, and redraws a block of lines
// in place. When stdout is not a terminal (ctest, CI, a pipe) or TERM=dumb,
// callers print plain periodic lines instead; NO_COLOR turns colors off.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace example_support {

struct terminal {
  bool tty = false;    // stdout is a terminal that can be redrawn in place
  bool color = false;  // ANSI colors allowed (not when NO_COLOR is set)

  // ANSI sequences, or "" without colors.
  [[nodiscard]] const char* bold() const { return color ? "\x1b[1m" : ""; }
  [[nodiscard]] const char* orange() const { return color ? "\x1b[33m" : ""; }
  [[nodiscard]] const char* cyan() const { return color ? "\x1b[36m" : ""; }
  [[nodiscard]] const char* magenta() const { return color ? "\x1b[35m" : ""; }
  [[nodiscard]] const char* reset() const { return color ? "\x1b[0m" : ""; }
};

// live = false forces plain lines (a --no-live flag).
inline terminal detect_terminal(bool live) {
  terminal t;
  const char* name = std::getenv("TERM");
  t.tty = live && ::isatty(STDOUT_FILENO) == 1 && !(name && std::string_view(name) == "dumb");
  t.color = t.tty && std::getenv("NO_COLOR") == nullptr;
  return t;
}

// A bar of `width` cells filled to `fraction` (clamped to [0, 1]): block
// characters when unicode, else '#' and '.'.
inline std::string bar(double fraction, int width, bool unicode) {
  fraction = std::clamp(fraction, 0.0, 1.0);
  const int full = static_cast<int>(std::lround(fraction * width));
  std::string s;
  for (int i = 0; i < width; ++i) s += i < full ? (unicode ? "\u2588" : "#") : (unicode ? "\u2591" : ".");
  return s;
}

// Redraws a block of lines in place: each draw() moves the cursor back to the
// first line of the previous block and overwrites it. Every draw must have
// the same number of lines.
class live_frame {
 public:
  void draw(const std::vector<std::string>& lines) {
    std::string out;
    if (drawn_lines_ > 0) out += "\x1b[" + std::to_string(drawn_lines_) + "F";
    for (const std::string& l : lines) out += "\x1b[2K" + l + "\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);
    drawn_lines_ = lines.size();
  }

 private:
  std::size_t drawn_lines_ = 0;
};

}  // namespace example_support
