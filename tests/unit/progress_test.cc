// `raptrctl watch`'s progress line: exact strings, width handling, and the throughput estimator.
#include "cli/progress.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

namespace raptr::cli {
namespace {

// The spec's example: a RaPTr job mid-run.
ProgressView Example() {
  ProgressView view;
  view.job_id = "job-000001";
  view.state = "RUNNING";
  view.step = 450;
  view.total_steps = 1000;
  view.stage = 1;
  view.num_stages = 3;
  view.path_length = 9;
  view.layers = 12;
  view.loss = 4.5123;
  view.eval_loss = 4.6009;
  view.tokens_per_second = 12345;
  view.flops = 78.6;
  view.flops_full = 100;
  view.eta_seconds = 190;
  view.train_seconds = 3723;
  return view;
}

TEST(ProgressFormatRate, ThreeSignificantDigitsAndSuffix) {
  EXPECT_EQ(FormatRate(0), "0");
  EXPECT_EQ(FormatRate(850.4), "850");
  EXPECT_EQ(FormatRate(999.7), "1.00k");
  EXPECT_EQ(FormatRate(1234), "1.23k");
  EXPECT_EQ(FormatRate(12345), "12.3k");
  EXPECT_EQ(FormatRate(99960), "100k");
  EXPECT_EQ(FormatRate(456000), "456k");
  EXPECT_EQ(FormatRate(7.891e6), "7.89M");
  EXPECT_EQ(FormatRate(2.5e9), "2.50G");
  EXPECT_EQ(FormatRate(-1), "-");
}

TEST(ProgressFormatDuration, EtaUnits) {
  EXPECT_EQ(FormatDuration(0), "0s");
  EXPECT_EQ(FormatDuration(42.4), "42s");
  EXPECT_EQ(FormatDuration(59.6), "1m00s");
  EXPECT_EQ(FormatDuration(190), "3m10s");
  EXPECT_EQ(FormatDuration(3599), "59m59s");
  EXPECT_EQ(FormatDuration(3723), "1h02m");
  EXPECT_EQ(FormatDuration(2 * 86400 + 3 * 3600 + 59), "2d03h");
  EXPECT_EQ(FormatDuration(-5), "-");
}

TEST(ProgressFlopsSaved, ZeroFlopsFullIsZero) {
  EXPECT_DOUBLE_EQ(FlopsSavedFraction(0, 0), 0);
  EXPECT_DOUBLE_EQ(FlopsSavedFraction(5, 0), 0);
  EXPECT_DOUBLE_EQ(FlopsSavedFraction(75, 100), 0.25);
  EXPECT_DOUBLE_EQ(FlopsSavedFraction(100, 100), 0);
}

TEST(ProgressLine, WideTerminalShowsEveryField) {
  // Everything but the bar takes 116 columns; 160 leaves more than the 40-column maximum bar.
  EXPECT_EQ(FormatProgressLine(Example(), 160),
            "job-000001 RUNNING [##################......................] 450/1000 45% "
            "stage 2/3 path 9/12 loss 4.512 eval 4.601 12.3k tok/s FLOPs saved 21.4% eta 3m10s");
}

TEST(ProgressLine, BarShrinksToFit) {
  // 130 - 116 columns: a 14-column bar, 450/1000 of it filled (6).
  const std::string line = FormatProgressLine(Example(), 130);
  EXPECT_EQ(line,
            "job-000001 RUNNING [######........] 450/1000 45% stage 2/3 path 9/12 "
            "loss 4.512 eval 4.601 12.3k tok/s FLOPs saved 21.4% eta 3m10s");
  EXPECT_EQ(line.size(), 130u);
}

TEST(ProgressLine, NarrowTerminalDropsLeastUsefulFieldsFirst) {
  // At 100 columns: the percentage, path, stage and throughput go; the display order stays.
  const std::string line = FormatProgressLine(Example(), 100);
  EXPECT_EQ(line,
            "job-000001 RUNNING [#########...........] 450/1000 loss 4.512 eval 4.601 "
            "FLOPs saved 21.4% eta 3m10s");
  EXPECT_LE(line.size(), 100u);
}

TEST(ProgressLine, NeverExceedsTheWidth) {
  for (int width = 0; width <= 200; ++width) {
    EXPECT_LE(FormatProgressLine(Example(), width).size(), static_cast<size_t>(width))
        << "width " << width;
  }
  EXPECT_EQ(FormatProgressLine(Example(), 40), "job-000001 RUNNING [####......] 450/1000");
  // Too narrow for any bar: cut.
  EXPECT_EQ(FormatProgressLine(Example(), 20), "job-000001 RUNNING 4");
}

TEST(ProgressLine, BeforeTheFirstStepAndZeroFlopsFull) {
  ProgressView view;
  view.job_id = "job-000002";
  view.state = "PENDING";
  view.total_steps = 200;
  view.num_stages = 4;
  view.layers = 12;
  // No stage or path before the first step, no loss, no rate, FLOPs saved 0 without flops_full.
  EXPECT_EQ(FormatProgressLine(view, 100),
            "job-000002 PENDING [........................................] 0/200 0% "
            "FLOPs saved 0.0%");
}

TEST(ProgressLine, FullModelStages) {
  ProgressView view = Example();
  view.eval_loss.reset();
  view.tokens_per_second = 0;
  view.eta_seconds = -1;
  view.stage = -1;
  view.path_length = 12;
  view.step = 1000;
  // A full-model step of a staged schedule (the warmup) or of the full schedule.
  EXPECT_EQ(FormatProgressLine(view, 140),
            "job-000001 RUNNING [########################################] 1000/1000 100% "
            "stage full path 12/12 loss 4.512 FLOPs saved 21.4%");
  // PLD / LayerDrop report stage -1 while dropping blocks: no stage at all.
  view.stage_minus_one_is_full = false;
  view.path_length = 7;
  EXPECT_EQ(FormatProgressLine(view, 140),
            "job-000001 RUNNING [########################################] 1000/1000 100% "
            "path 7/12 loss 4.512 FLOPs saved 21.4%");
}

TEST(ProgressSummary, FinalLine) {
  ProgressView view = Example();
  view.state = "SUCCEEDED";
  view.step = 1000;
  EXPECT_EQ(FormatSummaryLine(view),
            "job-000001 SUCCEEDED: 1000/1000 steps, eval loss 4.601, FLOPs saved 21.4%, "
            "wall 1h02m");
  view.eval_loss.reset();
  view.flops_full = 0;
  view.train_seconds = 0;
  EXPECT_EQ(FormatSummaryLine(view),
            "job-000001 SUCCEEDED: 1000/1000 steps, FLOPs saved 0.0%, wall 0s");
}

TEST(ProgressThroughput, CumulativeAverageUntilTheFirstDelta) {
  ThroughputEstimator estimator;
  EXPECT_EQ(estimator.TokensPerSecond(), 0);
  EXPECT_EQ(estimator.StepsPerSecond(), 0);
  // A watcher attaching mid-run: the snapshot's totals.
  estimator.Add(100, 51200, 50);
  EXPECT_DOUBLE_EQ(estimator.TokensPerSecond(), 1024);
  EXPECT_DOUBLE_EQ(estimator.StepsPerSecond(), 2);
}

TEST(ProgressThroughput, DeltasSmoothedOverTime) {
  ThroughputEstimator estimator(/*time_constant_seconds=*/10);
  estimator.Add(100, 51200, 50);
  // The first delta is taken as is: 10 steps of 512 tokens in 2 s.
  estimator.Add(110, 56320, 52);
  EXPECT_DOUBLE_EQ(estimator.TokensPerSecond(), 2560);
  EXPECT_DOUBLE_EQ(estimator.StepsPerSecond(), 5);
  // A slower stretch moves the estimate part of the way: 1 - exp(-10 / 10) of it.
  estimator.Add(120, 61440, 62);
  const double alpha = 1 - std::exp(-1.0);
  EXPECT_NEAR(estimator.TokensPerSecond(), 2560 + alpha * (512 - 2560), 1e-9);
  EXPECT_NEAR(estimator.StepsPerSecond(), 5 + alpha * (1 - 5), 1e-12);
  // A repeated summary (no time passed) changes nothing.
  const double before = estimator.TokensPerSecond();
  estimator.Add(120, 61440, 62);
  EXPECT_EQ(estimator.TokensPerSecond(), before);
}

TEST(ProgressThroughput, RestartRewindsTheBaseline) {
  ThroughputEstimator estimator(/*time_constant_seconds=*/10);
  estimator.Add(0, 0, 0);
  estimator.Add(10, 1000, 1);
  EXPECT_DOUBLE_EQ(estimator.TokensPerSecond(), 1000);
  // Recovery replays from step 5: the rate stays and no negative delta is taken.
  estimator.Add(5, 1000, 1);
  EXPECT_DOUBLE_EQ(estimator.TokensPerSecond(), 1000);
  estimator.Add(15, 2000, 2);
  EXPECT_DOUBLE_EQ(estimator.TokensPerSecond(), 1000);
  EXPECT_DOUBLE_EQ(estimator.StepsPerSecond(), 10);
}

}  // namespace
}  // namespace raptr::cli
