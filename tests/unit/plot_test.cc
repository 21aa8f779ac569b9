// raptrctl plot's SVG charts: tick placement, smoothing, and the document itself.
#include "cli/plot.h"

#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace raptr::cli {
namespace {

int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(Plot, NiceTicksCoverTheRangeAtRoundSteps) {
  EXPECT_EQ(NiceTicks(0, 1500), (std::vector<double>{0, 500, 1000, 1500}));
  EXPECT_EQ(NiceTicks(4.9, 6.1), (std::vector<double>{5, 5.25, 5.5, 5.75, 6}));
  EXPECT_EQ(NiceTicks(0, 0).front(), 0);  // a degenerate range still gets ticks
  EXPECT_EQ(TickText(0), "0");
  EXPECT_EQ(TickText(2.5e12), "2.5e+12");
  EXPECT_EQ(TickText(1500), "1500");
  EXPECT_EQ(TickText(5.25), "5.25");
}

TEST(Plot, MovingAverageIsTrailing) {
  EXPECT_EQ(MovingAverage({1, 2, 3, 4}, 2), (std::vector<double>{1, 1.5, 2.5, 3.5}));
  EXPECT_EQ(MovingAverage({1, 2, 3}, 1), (std::vector<double>{1, 2, 3}));
}

TEST(Plot, RendersPanelsSeriesLegendAndEscapes) {
  PlotPanel a{"loss <step>", "step", "loss", {}};
  a.series.push_back({"job-1 a&b", {1, 2, 3}, {3, 2, NAN}, PlotColor(0), false});
  a.series.push_back({"job-1 eval", {3}, {2.5}, PlotColor(0), true});
  PlotPanel b{"loss against FLOPs", "FLOPs", "loss", {}};
  b.series.push_back({"job-2", {1e12, 2e12}, {3, 2}, PlotColor(1), false});
  const std::string svg = RenderSvg("raptr", {a, b});
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1120\"", 0), 0u);
  EXPECT_EQ(Count(svg, "<polyline"), 3);
  EXPECT_EQ(Count(svg, "stroke-dasharray"), 2);  // the dashed series and its legend entry
  EXPECT_NE(svg.find("loss &lt;step&gt;"), std::string::npos);
  EXPECT_NE(svg.find("job-1 a&amp;b"), std::string::npos);
  EXPECT_EQ(svg.find("nan"), std::string::npos);  // the non-finite point is skipped
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
}

}  // namespace
}  // namespace raptr::cli
