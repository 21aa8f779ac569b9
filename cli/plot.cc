// SVG line charts (see plot.h).
#include "cli/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace raptr::cli {
namespace {

constexpr double kPanelWidth = 560, kHeight = 420, kLeft = 70, kRight = 20, kTop = 50, kBottom = 50,
                 kLegendRow = 16;

std::string Escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '<') {
      out += "&lt;";
    } else if (c == '>') {
      out += "&gt;";
    } else if (c == '&') {
      out += "&amp;";
    } else if (c == '"') {
      out += "&quot;";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

const std::string& PlotColor(int index) {
  static const std::vector<std::string>* const kColors =
      new std::vector<std::string>{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  return (*kColors)[static_cast<size_t>(index) % kColors->size()];
}

std::vector<double> NiceTicks(double lo, double hi, int target) {
  if (!(hi > lo)) hi = lo + 1;
  const double raw = (hi - lo) / std::max(1, target);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = 10 * magnitude;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (m * magnitude >= raw) {
      step = m * magnitude;
      break;
    }
  }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
    ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
  }
  return ticks;
}

std::string TickText(double value) {
  if (value == 0) return "0";
  const double a = std::fabs(value);
  if (a >= 1e6 || a < 1e-2) return absl::StrFormat("%.2g", value);
  if (a >= 100) return absl::StrFormat("%.0f", value);
  return absl::StrFormat("%.3g", value);
}

std::vector<double> MovingAverage(const std::vector<double>& values, int window) {
  if (window <= 1) return values;
  std::vector<double> out(values.size());
  double sum = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    sum += values[i];
    if (i >= static_cast<size_t>(window)) sum -= values[i - window];
    out[i] = sum / static_cast<double>(std::min<size_t>(i + 1, window));
  }
  return out;
}

std::string RenderSvg(const std::string& title, const std::vector<PlotPanel>& panels) {
  size_t legend_rows = 0;
  for (const PlotPanel& panel : panels) legend_rows = std::max(legend_rows, panel.series.size());
  const double width = kPanelWidth * std::max<size_t>(1, panels.size());
  const double height = kHeight + kLegendRow * static_cast<double>(legend_rows) + 10;
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%.0f\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">%s</text>\n",
      width, height, width / 2, Escape(title));
  for (size_t p = 0; p < panels.size(); ++p) {
    const PlotPanel& panel = panels[p];
    const double x0p = kPanelWidth * static_cast<double>(p);
    const double left = x0p + kLeft, right = x0p + kPanelWidth - kRight;
    const double top = kTop, bottom = kHeight - kBottom;
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    for (const PlotSeries& s : panel.series) {
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
        if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
        xlo = std::min(xlo, s.x[i]);
        xhi = std::max(xhi, s.x[i]);
        ylo = std::min(ylo, s.y[i]);
        yhi = std::max(yhi, s.y[i]);
      }
    }
    if (!std::isfinite(xlo)) xlo = 0, xhi = 1, ylo = 0, yhi = 1;
    if (!(xhi > xlo)) xhi = xlo + 1;
    const double pad = (yhi - ylo) * 0.05 + 1e-9;
    ylo -= pad;
    yhi += pad;
    auto px = [&](double x) { return left + (x - xlo) / (xhi - xlo) * (right - left); };
    auto py = [&](double y) { return bottom - (y - ylo) / (yhi - ylo) * (bottom - top); };
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
                          (left + right) / 2, top - 10, Escape(panel.title));
    for (double t : NiceTicks(xlo, xhi)) {
      absl::StrAppendFormat(
          &svg,
          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>"
          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
          px(t), top, px(t), bottom, px(t), bottom + 16, TickText(t));
    }
    for (double t : NiceTicks(ylo, yhi)) {
      absl::StrAppendFormat(
          &svg,
          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>"
          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
          left, py(t), right, py(t), left - 6, py(t) + 4, TickText(t));
    }
    absl::StrAppendFormat(
        &svg,
        "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
        "stroke=\"#333\"/>\n"
        "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n"
        "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" "
        "text-anchor=\"middle\">%s</text>\n",
        left, top, right - left, bottom - top, (left + right) / 2, bottom + 36,
        Escape(panel.x_label), x0p + 16, (top + bottom) / 2, Escape(panel.y_label));
    for (size_t i = 0; i < panel.series.size(); ++i) {
      const PlotSeries& s = panel.series[i];
      std::string points;
      for (size_t k = 0; k < s.x.size() && k < s.y.size(); ++k) {
        if (!std::isfinite(s.x[k]) || !std::isfinite(s.y[k])) continue;
        absl::StrAppendFormat(&points, "%s%.1f,%.1f", points.empty() ? "" : " ", px(s.x[k]),
                              py(s.y[k]));
      }
      const std::string dash = s.dashed ? " stroke-dasharray=\"6,3\"" : "";
      absl::StrAppendFormat(&svg,
                            "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\" "
                            "stroke-width=\"1.6\"%s/>\n",
                            points, s.color, dash);
      const double ly = kHeight + kLegendRow * static_cast<double>(i);
      absl::StrAppendFormat(&svg,
                            "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                            "stroke-width=\"2\"%s/><text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                            left, ly - 4, left + 24, ly - 4, s.color, dash, left + 30, ly,
                            Escape(s.label));
    }
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace raptr::cli
