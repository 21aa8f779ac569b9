// ProgressWatchdog: finds the ranks of a worker group that stopped making progress even though
// their heartbeats go on (a deadlock, a GPU hang, a read stalled on a network filesystem, a peer
// blocked in a collective with one of those). Leases catch a worker that goes silent; this
// catches one that is alive and stuck.
//
// A rank makes progress when it reports a step, an evaluation or a checkpoint. Its deadline is
// derived from the job's own step times: max(floor, factor x the median of the recent steps),
// plus the time an outstanding evaluation may take (its batches x the median step, a bound: an
// evaluation batch is a forward pass only) and a fixed allowance while a checkpoint is being
// written. Before a rank's first step of the generation (rendezvous, checkpoint restore, the
// first step's warm-up) its deadline is the startup timeout instead.
//
// A plain value class: no clock, no locks, no I/O; the caller passes the time.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

namespace raptr {

struct ProgressWatchdogOptions {
  double floor_seconds = 30;            // The least deadline once steps have run.
  double factor = 10;                   // Deadline in median step times.
  double startup_seconds = 120;         // Deadline for the generation's first step.
  double checkpoint_seconds = 120;      // Added while a checkpoint is outstanding.
  int window = 32;                      // Recent steps the median is taken over.
};

class ProgressWatchdog {
 public:
  ProgressWatchdog(ProgressWatchdogOptions options, int world, double now);

  // Rank `rank` reported a step, an evaluation or a checkpoint at `now`.
  void RankProgressed(int rank, double now);
  // Every rank reported a step; its time (the slowest rank's) enters the median. Until the first
  // one, every rank's deadline is the startup timeout.
  void StepCompleted(double step_seconds);

  struct Stall {
    int rank = -1;
    double silent_seconds = 0;  // since the rank's last progress
    double deadline_seconds = 0;
    std::string why;               // how the deadline was derived
    // "rank 1 made no progress for 31.2 s (deadline 30.0 s: max(30 s, 10 x median ...))"
    std::string Describe() const;
  };
  // The rank that has been without progress the longest, if it is past its deadline.
  // `eval_batches_outstanding`: batches of an evaluation requested and not answered by that
  // rank (0: none); `checkpoint_outstanding`: a checkpoint requested and not yet answered.
  // REQUIRES: the vectors have one entry per rank.
  std::optional<Stall> Check(double now, const std::vector<int>& eval_batches_outstanding,
                             const std::vector<bool>& checkpoint_outstanding) const;

  // The median of the recent complete steps' times; 0 before the first.
  double MedianStepSeconds() const;

 private:
  ProgressWatchdogOptions options_;
  std::vector<double> last_progress_;  // per rank
  std::deque<double> recent_;          // recent complete steps' times
};

}  // namespace raptr
