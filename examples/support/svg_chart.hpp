// An SVG line chart of a run over time, for the examples: rates (jobs/s) on
// the left axis, a backlog (jobs) as a shaded area on the right axis, plus
// optional decorations (a highlighted time band, a dashed limit line, a
// marked point, a vertical marker). Also the two series builders the charts
// need: event timestamps binned into rates, and the backlog between two logs.
// No dependency beyond the standard library; the file is self-contained.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "format.hpp"

namespace example_support {

struct series {
  std::vector<double> t;      // seconds since start (bin centres for rates)
  std::vector<double> value;  // jobs/s or jobs
};

// Sorted event timestamps (ns since start) counted in bins of `bin` seconds,
// as rates; only whole bins inside [0, duration].
inline series rate_series(const std::vector<std::int64_t>& sorted_ns, double bin, double duration) {
  series s;
  const auto nbins = static_cast<std::size_t>(std::floor(duration / bin + 1e-9));
  std::vector<double> counts(nbins, 0.0);
  for (std::int64_t ns : sorted_ns) {
    const auto i = static_cast<std::size_t>(static_cast<double>(ns) * 1e-9 / bin);
    if (i < nbins) counts[i] += 1.0;
  }
  for (std::size_t i = 0; i < nbins; ++i) {
    s.t.push_back((static_cast<double>(i) + 0.5) * bin);
    s.value.push_back(counts[i] / bin);
  }
  return s;
}

// The backlog (entered, not yet left) at `points` + 1 evenly spaced times over
// [0, duration], exactly from two sorted logs of timestamps (ns since start).
inline series backlog_series(const std::vector<std::int64_t>& entered, const std::vector<std::int64_t>& left,
                             double duration, int points = 600) {
  series s;
  const double step = duration / points;
  std::size_t ie = 0, il = 0;
  for (double t = 0; t <= duration + 1e-12; t += step) {
    const auto ns = static_cast<std::int64_t>(t * 1e9);
    while (ie < entered.size() && entered[ie] <= ns) ++ie;
    while (il < left.size() && left[il] <= ns) ++il;
    s.t.push_back(t);
    s.value.push_back(std::max(0.0, static_cast<double>(ie) - static_cast<double>(il)));
  }
  return s;
}

struct time_chart {
  struct line {
    std::string label;
    std::string color;
    double width = 2.0;
    series data;
  };
  struct band {  // a highlighted stretch of time, labelled at its top
    double begin = 0, end = 0;
    std::string label;
  };
  struct limit {  // a dashed horizontal line on the left axis
    double value = 0;
    double label_t = 0;  // where its label starts, seconds
    std::string label;
  };
  struct point {  // a marked point on the right axis
    double t = 0, value = 0;
    std::string label;
  };
  struct marker {  // a dotted vertical line with two lines of text left of it
    double t = 0;
    std::string line1, line2;
  };

  std::string title, subtitle, footer;
  std::string x_label = "time since start (s)";
  std::string left_label = "jobs per second";
  double duration = 1;      // the x axis ends here, seconds
  std::vector<line> lines;  // left axis, drawn in order
  series area;              // right axis
  std::string area_label;
  std::string area_axis_label = "queue depth (jobs)";
  std::string area_color = "#9334e6";
  double area_max_hint = 1;  // the right axis covers at least this
  std::optional<band> highlight;
  std::optional<limit> limit_line;
  std::string limit_color = "#d93025";
  std::optional<point> peak;
  std::optional<marker> vline;
};

namespace detail {

// A "nice" axis: ticks at 1, 2, 2.5 or 5 times a power of ten.
struct axis {
  double max = 1, step = 1;
};
inline axis nice_axis(double data_max, int target_ticks = 5) {
  data_max = std::max(data_max, 1e-9);
  const double raw = data_max / target_ticks;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  return {std::ceil(data_max / step - 1e-9) * step, step};
}

}  // namespace detail

// The chart as SVG text (1000 x 560).
inline std::string render_svg(const time_chart& c) {
  using detail::axis;
  using detail::nice_axis;
  const double W = 1000, H = 560;
  const double L = 84, R = W - 92, T = 112, B = H - 78;      // plot area
  const axis xa{c.duration, nice_axis(c.duration, 8).step};  // the axis ends where the data ends
  double rate_max = c.limit_line ? c.limit_line->value : 0.0;
  for (const auto& ln : c.lines)
    for (double v : ln.data.value) rate_max = std::max(rate_max, v);
  const axis ya = nice_axis(rate_max * 1.08, 5);
  double area_max = c.area_max_hint;
  for (double v : c.area.value) area_max = std::max(area_max, v);
  if (c.peak) area_max = std::max(area_max, c.peak->value);
  const axis yd = nice_axis(std::max(area_max, 1.0) * 1.08, 5);
  // Align the right axis's ticks with the left one's grid lines.
  const double n_ticks = std::round(ya.max / ya.step);
  const double yd_step = nice_axis(yd.max / n_ticks, 1).max;
  const double yd_max = yd_step * n_ticks;

  auto X = [&](double t) { return L + (R - L) * t / xa.max; };
  auto YR = [&](double v) { return B - (B - T) * v / ya.max; };
  auto YD = [&](double v) { return B - (B - T) * v / yd_max; };
  auto pt = [](double x, double y) { return fmt("%.1f", x) + "," + fmt("%.1f", y); };
  const auto& esc = xml_escape;
  const std::string& c_depth = c.area_color;

  const char* font =
      "font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif\"";
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 " << W << ' ' << H << "\" width=\"" << W
    << "\" height=\"" << H << "\" " << font << ">\n";
  s << "<title>" << esc(c.title) << "</title>\n";
  s << "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";
  s << "<text x=\"" << L << "\" y=\"36\" font-size=\"21\" font-weight=\"600\" fill=\"#202124\">"
    << esc(c.title) << "</text>\n";
  s << "<text x=\"" << L << "\" y=\"60\" font-size=\"13.5\" fill=\"#5f6368\">" << esc(c.subtitle)
    << "</text>\n";

  if (c.highlight) {
    const auto& b = *c.highlight;
    s << "<rect x=\"" << fmt("%.1f", X(b.begin)) << "\" y=\"" << T << "\" width=\""
      << fmt("%.1f", X(b.end) - X(b.begin)) << "\" height=\"" << (B - T)
      << "\" fill=\"#fce8d5\" opacity=\"0.75\"/>\n";
    s << "<text x=\"" << fmt("%.1f", (X(b.begin) + X(b.end)) / 2) << "\" y=\"" << (T + 16)
      << "\" font-size=\"12\" text-anchor=\"middle\" fill=\"#b4560a\" font-weight=\"600\">" << esc(b.label)
      << "</text>\n";
  }

  // Grid and axes.
  s << "<g font-size=\"12\" fill=\"#5f6368\">\n";
  for (double v = 0; v <= ya.max + 1e-9; v += ya.step) {
    const double y = YR(v);
    s << "<line x1=\"" << L << "\" x2=\"" << R << "\" y1=\"" << fmt("%.1f", y) << "\" y2=\"" << fmt("%.1f", y)
      << "\" stroke=\"#e8eaed\"/>\n";
    s << "<text x=\"" << (L - 8) << "\" y=\"" << fmt("%.1f", y + 4) << "\" text-anchor=\"end\">" << num(v)
      << "</text>\n";
  }
  for (double v = 0; v <= yd_max + 1e-9; v += yd_step)
    s << "<text x=\"" << (R + 8) << "\" y=\"" << fmt("%.1f", YD(v) + 4) << "\" fill=\"" << c_depth << "\">"
      << num(v) << "</text>\n";
  for (double t = 0; t <= xa.max + 1e-9; t += xa.step) {
    const double x = X(t);
    s << "<line x1=\"" << fmt("%.1f", x) << "\" x2=\"" << fmt("%.1f", x) << "\" y1=\"" << B << "\" y2=\""
      << (B + 5) << "\" stroke=\"#9aa0a6\"/>\n";
    s << "<text x=\"" << fmt("%.1f", x) << "\" y=\"" << (B + 20) << "\" text-anchor=\"middle\">" << num(t)
      << "</text>\n";
  }
  s << "</g>\n";
  s << "<line x1=\"" << L << "\" x2=\"" << R << "\" y1=\"" << B << "\" y2=\"" << B
    << "\" stroke=\"#9aa0a6\"/>\n";
  s << "<text x=\"" << ((L + R) / 2) << "\" y=\"" << (B + 44)
    << "\" font-size=\"13\" text-anchor=\"middle\" fill=\"#3c4043\">" << esc(c.x_label) << "</text>\n";
  s << "<text transform=\"translate(" << (L - 60) << "," << ((T + B) / 2)
    << ") rotate(-90)\" font-size=\"13\" text-anchor=\"middle\" fill=\"#3c4043\">" << esc(c.left_label)
    << "</text>\n";
  s << "<text transform=\"translate(" << (R + 72) << "," << ((T + B) / 2)
    << ") rotate(90)\" font-size=\"13\" text-anchor=\"middle\" fill=\"" << c_depth << "\">"
    << esc(c.area_axis_label) << "</text>\n";

  // The backlog: a soft area on the right axis.
  if (!c.area.t.empty()) {
    s << "<path d=\"M" << pt(X(c.area.t.front()), YD(0));
    for (std::size_t i = 0; i < c.area.t.size(); ++i) s << " L" << pt(X(c.area.t[i]), YD(c.area.value[i]));
    s << " L" << pt(X(c.area.t.back()), YD(0)) << " Z\" fill=\"" << c_depth
      << "\" fill-opacity=\"0.13\" stroke=\"" << c_depth
      << "\" stroke-width=\"1.6\" stroke-linejoin=\"round\"/>\n";
  }

  // The limit, under the rate lines: a line riding on it is the point.
  if (c.limit_line) {
    const auto& lim = *c.limit_line;
    s << "<line x1=\"" << L << "\" x2=\"" << R << "\" y1=\"" << fmt("%.1f", YR(lim.value)) << "\" y2=\""
      << fmt("%.1f", YR(lim.value)) << "\" stroke=\"" << c.limit_color
      << "\" stroke-width=\"1.5\" stroke-dasharray=\"7 5\"/>\n";
    s << "<text x=\"" << fmt("%.1f", X(lim.label_t) + 12) << "\" y=\"" << fmt("%.1f", YR(lim.value) - 7)
      << "\" font-size=\"12\" fill=\"" << c.limit_color << "\">" << esc(lim.label) << "</text>\n";
  }

  for (const auto& ln : c.lines) {
    s << "<polyline fill=\"none\" stroke=\"" << ln.color << "\" stroke-width=\"" << ln.width
      << "\" stroke-linejoin=\"round\" points=\"";
    for (std::size_t i = 0; i < ln.data.t.size(); ++i)
      s << (i ? " " : "") << pt(X(ln.data.t[i]), YR(ln.data.value[i]));
    s << "\"/>\n";
  }

  if (c.peak) {
    const double px = X(c.peak->t), py = YD(c.peak->value);
    s << "<circle cx=\"" << fmt("%.1f", px) << "\" cy=\"" << fmt("%.1f", py) << "\" r=\"4\" fill=\""
      << c_depth << "\"/>\n";
    s << "<text x=\"" << fmt("%.1f", px + 8) << "\" y=\"" << fmt("%.1f", py - 8)
      << "\" font-size=\"12\" fill=\"" << c_depth << "\" font-weight=\"600\">" << esc(c.peak->label)
      << "</text>\n";
  }
  if (c.vline) {
    const double dx = X(c.vline->t);
    s << "<line x1=\"" << fmt("%.1f", dx) << "\" x2=\"" << fmt("%.1f", dx) << "\" y1=\"" << (T + 24)
      << "\" y2=\"" << B << "\" stroke=\"#3c4043\" stroke-width=\"1\" stroke-dasharray=\"2 3\"/>\n";
    const double ly = YR(ya.max * 0.5);
    s << "<text x=\"" << fmt("%.1f", dx - 6) << "\" y=\"" << fmt("%.1f", ly)
      << "\" font-size=\"12\" text-anchor=\"end\" fill=\"#3c4043\">" << esc(c.vline->line1) << "</text>\n";
    s << "<text x=\"" << fmt("%.1f", dx - 6) << "\" y=\"" << fmt("%.1f", ly + 15)
      << "\" font-size=\"12\" text-anchor=\"end\" fill=\"#3c4043\">" << esc(c.vline->line2) << "</text>\n";
  }

  // Legend, above the plot: the lines, the area, the limit.
  struct item {
    std::string label, color;
    int kind;  // 0 line, 1 area, 2 dashed
  };
  std::vector<item> items;
  for (const auto& ln : c.lines) items.push_back({ln.label, ln.color, 0});
  if (!c.area_label.empty()) items.push_back({c.area_label, c_depth, 1});
  if (c.limit_line) items.push_back({"rate limit", c.limit_color, 2});
  double lx = L;
  const double ly = 88;
  for (const item& it : items) {
    if (it.kind == 1)
      s << "<rect x=\"" << lx << "\" y=\"" << (ly - 6) << "\" width=\"22\" height=\"11\" fill=\"" << it.color
        << "\" fill-opacity=\"0.18\" stroke=\"" << it.color << "\" stroke-width=\"1.4\"/>\n";
    else
      s << "<line x1=\"" << lx << "\" x2=\"" << (lx + 22) << "\" y1=\"" << ly << "\" y2=\"" << ly
        << "\" stroke=\"" << it.color << "\" stroke-width=\"2.4\""
        << (it.kind == 2 ? " stroke-dasharray=\"6 4\"" : "") << "/>\n";
    s << "<text x=\"" << (lx + 28) << "\" y=\"" << (ly + 4) << "\" font-size=\"12.5\" fill=\"#3c4043\">"
      << esc(it.label) << "</text>\n";
    lx += 28 + 7.0 * static_cast<double>(it.label.size()) + 26;
  }
  s << "<text x=\"" << L << "\" y=\"" << (H - 14) << "\" font-size=\"11\" fill=\"#80868b\">" << esc(c.footer)
    << "</text>\n";
  s << "</svg>\n";
  return s.str();
}

// Writes render_svg(c) to `path`; throws std::runtime_error when it cannot.
inline void write_svg(const std::string& path, const time_chart& c) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw std::runtime_error("cannot open '" + path + "' for writing");
  f << render_svg(c);
  f.close();
  if (!f) throw std::runtime_error("cannot write '" + path + "'");
}

}  // namespace example_support
