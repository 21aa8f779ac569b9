// The progress deadlines (see progress_watchdog.h).
#include "coordinator/progress_watchdog.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace raptr {

ProgressWatchdog::ProgressWatchdog(ProgressWatchdogOptions options, int world, double now)
    : options_(options), last_progress_(world, now) {}

void ProgressWatchdog::RankProgressed(int rank, double now) {
  if (rank < 0 || rank >= static_cast<int>(last_progress_.size())) return;
  last_progress_[rank] = std::max(last_progress_[rank], now);
}

void ProgressWatchdog::StepCompleted(double step_seconds) {
  if (!(step_seconds >= 0)) return;  // NaN or negative: a broken report, not a time
  recent_.push_back(step_seconds);
  while (static_cast<int>(recent_.size()) > options_.window) recent_.pop_front();
}

double ProgressWatchdog::MedianStepSeconds() const {
  if (recent_.empty()) return 0;
  std::vector<double> sorted(recent_.begin(), recent_.end());
  std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2, sorted.end());
  return sorted[sorted.size() / 2];
}

std::string ProgressWatchdog::Stall::Describe() const {
  return absl::StrFormat("rank %d made no progress for %.1f s (deadline %.1f s: %s)", rank,
                         silent_seconds, deadline_seconds, why);
}

std::optional<ProgressWatchdog::Stall> ProgressWatchdog::Check(
    double now, const std::vector<int>& eval_batches_outstanding,
    const std::vector<bool>& checkpoint_outstanding) const {
  const double median = MedianStepSeconds();
  std::optional<Stall> worst;
  for (int rank = 0; rank < static_cast<int>(last_progress_.size()); ++rank) {
    Stall stall;
    stall.rank = rank;
    stall.silent_seconds = now - last_progress_[rank];
    if (recent_.empty()) {
      stall.deadline_seconds = options_.startup_seconds;
      stall.why = "the generation's first step, startup timeout";
    } else {
      const double by_steps = options_.factor * median;
      stall.deadline_seconds = std::max(options_.floor_seconds, by_steps);
      stall.why = absl::StrFormat("max(%.0f s, %.0f x median step %.3f s)", options_.floor_seconds,
                                  options_.factor, median);
    }
    if (eval_batches_outstanding[rank] > 0) {
      stall.deadline_seconds += eval_batches_outstanding[rank] * median;
      absl::StrAppendFormat(&stall.why, " + evaluation of %d batches", eval_batches_outstanding[rank]);
    }
    if (checkpoint_outstanding[rank]) {
      stall.deadline_seconds += options_.checkpoint_seconds;
      absl::StrAppendFormat(&stall.why, " + %.0f s for a checkpoint", options_.checkpoint_seconds);
    }
    if (stall.silent_seconds <= stall.deadline_seconds) continue;
    if (!worst.has_value() || stall.silent_seconds > worst->silent_seconds) worst = stall;
  }
  return worst;
}

}  // namespace raptr
