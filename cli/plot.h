// Line charts as SVG, for `raptrctl plot`: panels side by side, each with axes, ticks, gridlines
// and a legend. Pure formatting (no I/O), so it is unit-tested directly.
#pragma once

#include <string>
#include <vector>

namespace raptr::cli {

struct PlotSeries {
  std::string label;
  std::vector<double> x, y;  // same length; drawn as one polyline in x order given
  std::string color = "#1f77b4";
  bool dashed = false;
};

struct PlotPanel {
  std::string title, x_label, y_label;
  std::vector<PlotSeries> series;
};

// A fixed palette for jobs, in order.
const std::string& PlotColor(int index);

// Tick positions covering [lo, hi] at a 1/2/2.5/5 x 10^k spacing, about `target` of them.
std::vector<double> NiceTicks(double lo, double hi, int target = 5);

// Short tick text: "0", "1.5", "250", "2e+12".
std::string TickText(double value);

// The SVG document: `title` on top, the panels left to right. Non-finite points are skipped.
std::string RenderSvg(const std::string& title, const std::vector<PlotPanel>& panels);

// Trailing moving average over `window` points (window <= 1: unchanged).
std::vector<double> MovingAverage(const std::vector<double>& values, int window);

}  // namespace raptr::cli
