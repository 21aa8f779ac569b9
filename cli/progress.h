// Pure formatting for `raptrctl watch`'s live progress line: no terminal, no RPC, so every
// string can be checked in unit tests.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace raptr::cli {

// Everything one redraw of the progress line shows.
struct ProgressView {
  std::string job_id;
  std::string state;  // e.g. "RUNNING"
  int64_t step = 0;   // steps completed
  int64_t total_steps = 0;
  // 0-based stage of the last step; -1 for full-model steps (or before the first step).
  int stage = -1;
  // Stages of a staged schedule (RaPTr, stacking); 0 when the schedule has none.
  int num_stages = 0;
  // Whether stage -1 means "full model" and is shown as "stage full". PLD and LayerDrop report
  // -1 for every step although they drop blocks, so for them the stage is left out.
  bool stage_minus_one_is_full = true;
  int path_length = 0;  // 0 before the first step: stage and path are left out
  int layers = 0;       // L; 0 when unknown
  double loss = 0;      // shown once step > 0
  std::optional<double> eval_loss;
  double tokens_per_second = 0;  // <= 0: not known yet, left out
  double flops = 0;
  double flops_full = 0;
  double eta_seconds = -1;   // < 0: unknown, left out
  double train_seconds = 0;  // for the summary line
};

// "850", "1.23k", "12.3k", "456k", "7.89M": three significant digits and an SI suffix.
std::string FormatRate(double value);

// Whole seconds as "42s", "3m10s", "2h05m" or "3d04h"; negative or non-finite: "-".
std::string FormatDuration(double seconds);

// 1 - flops / flops_full: the share of full training's FLOPs the schedule did not spend; 0 when
// flops_full is 0 (nothing measured yet).
double FlopsSavedFraction(double flops, double flops_full);

// The progress line, at most `width` characters (no '\r', no escape codes). The bar takes the
// room the other fields leave; when even a minimal bar does not fit it is dropped, then fields are
// dropped from the end, and as a last resort the line is cut.
std::string FormatProgressLine(const ProgressView& view, int width);

// The one-line summary printed once the stream ends, e.g.
// "job-000001 SUCCEEDED: 1000/1000 steps, eval loss 4.601, FLOPs saved 21.4%, wall 3m10s".
std::string FormatSummaryLine(const ProgressView& view);

// Tokens/s and steps/s from the cumulative counters each step summary carries. Rates come from
// deltas between summaries (so a watcher attached mid-run is not skewed by old history), smoothed
// with a time-weighted exponential moving average so one slow step (an eval, a checkpoint) does
// not make the display jump. Before the first delta the cumulative averages stand in.
class ThroughputEstimator {
 public:
  // `time_constant_seconds`: training seconds over which an old rate's weight decays by 1/e.
  explicit ThroughputEstimator(double time_constant_seconds = 10.0);

  // One summary: steps completed, tokens consumed and training seconds so far, all cumulative.
  // Counters that go back (a restart replaying steps) restart the deltas from there.
  void Add(int64_t step, int64_t tokens, double train_seconds);

  double TokensPerSecond() const;
  double StepsPerSecond() const;

 private:
  double time_constant_;
  bool has_sample_ = false;
  bool has_rate_ = false;
  int64_t last_step_ = 0;
  int64_t last_tokens_ = 0;
  double last_seconds_ = 0;
  double tokens_rate_ = 0;
  double steps_rate_ = 0;
};

}  // namespace raptr::cli
