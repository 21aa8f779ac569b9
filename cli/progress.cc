#include "cli/progress.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace raptr::cli {
namespace {

// A bar narrower than this says little; the room is better spent on the fields.
constexpr int kMinBarInner = 10;
// Wider bars add no information and push the numbers far from the job id.
constexpr int kMaxBarInner = 40;

// One field of the progress line; fields of lower `keep` are dropped first when the line is too
// wide, but the survivors keep their display order.
struct Field {
  std::string text;
  int keep;
};

int Length(const std::string& text) { return static_cast<int>(text.size()); }

std::string Bar(int inner, int64_t step, int64_t total) {
  int filled = 0;
  if (total > 0) {
    filled = static_cast<int>(std::clamp<int64_t>(step, 0, total) * inner / total);
  }
  return absl::StrCat("[", std::string(filled, '#'), std::string(inner - filled, '.'), "]");
}

}  // namespace

std::string FormatRate(double value) {
  if (!std::isfinite(value) || value < 0) return "-";
  static const char* const kSuffixes[] = {"", "k", "M", "G", "T", "P"};
  int unit = 0;
  double scaled = value;
  // 999.5 rather than 1000: a value that would round to "1000" moves up a unit as "1.00k".
  while (scaled >= 999.5 && unit < 5) {
    scaled /= 1000;
    ++unit;
  }
  if (unit == 0) return absl::StrFormat("%.0f", scaled);
  if (scaled < 9.995) return absl::StrFormat("%.2f%s", scaled, kSuffixes[unit]);
  if (scaled < 99.95) return absl::StrFormat("%.1f%s", scaled, kSuffixes[unit]);
  return absl::StrFormat("%.0f%s", scaled, kSuffixes[unit]);
}

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "-";
  const int64_t total = std::llround(seconds);
  if (total < 60) return absl::StrFormat("%ds", total);
  if (total < 3600) return absl::StrFormat("%dm%02ds", total / 60, total % 60);
  if (total < 86400) return absl::StrFormat("%dh%02dm", total / 3600, total % 3600 / 60);
  return absl::StrFormat("%dd%02dh", total / 86400, total % 86400 / 3600);
}

double FlopsSavedFraction(double flops, double flops_full) {
  if (!(flops_full > 0)) return 0;
  return 1 - flops / flops_full;
}

std::string FormatProgressLine(const ProgressView& view, int width) {
  width = std::max(width, 0);
  const std::string prefix =
      view.job_id.empty() ? view.state : absl::StrCat(view.job_id, " ", view.state);

  // Drop order, first to go: the percentage (the bar and step/total say it too), path, stage,
  // throughput, eta, FLOPs saved, eval loss, loss. step/total always stays.
  std::vector<Field> fields;
  if (view.total_steps > 0) {
    fields.push_back({absl::StrCat(view.step, "/", view.total_steps), 100});
    fields.push_back({absl::StrCat(view.step * 100 / view.total_steps, "%"), 0});
  } else {
    fields.push_back({absl::StrCat(view.step), 100});
  }
  if (view.path_length > 0) {
    if (view.stage >= 0) {
      fields.push_back({view.num_stages > 0
                            ? absl::StrCat("stage ", view.stage + 1, "/", view.num_stages)
                            : absl::StrCat("stage ", view.stage + 1),
                        2});
    } else if (view.stage_minus_one_is_full) {
      fields.push_back({"stage full", 2});
    }
    fields.push_back({view.layers > 0 ? absl::StrCat("path ", view.path_length, "/", view.layers)
                                      : absl::StrCat("path ", view.path_length),
                      1});
  }
  if (view.step > 0) fields.push_back({absl::StrFormat("loss %.3f", view.loss), 7});
  if (view.eval_loss.has_value()) {
    fields.push_back({absl::StrFormat("eval %.3f", *view.eval_loss), 6});
  }
  if (view.tokens_per_second > 0) {
    fields.push_back({absl::StrCat(FormatRate(view.tokens_per_second), " tok/s"), 3});
  }
  fields.push_back(
      {absl::StrFormat("FLOPs saved %.1f%%", 100 * FlopsSavedFraction(view.flops, view.flops_full)),
       5});
  if (view.eta_seconds >= 0) {
    fields.push_back({absl::StrCat("eta ", FormatDuration(view.eta_seconds)), 4});
  }

  auto join = [&fields]() {
    std::vector<std::string> texts;
    for (const Field& field : fields) texts.push_back(field.text);
    return absl::StrJoin(texts, " ");
  };
  while (true) {
    const std::string rest = join();
    // prefix, space, [bar], space, rest.
    const int room = width - Length(prefix) - Length(rest) - 4;
    if (room >= kMinBarInner) {
      const int inner = std::min(room, kMaxBarInner);
      return absl::StrCat(prefix, " ", Bar(inner, view.step, view.total_steps), " ", rest);
    }
    if (fields.size() == 1) break;
    auto lowest = std::min_element(fields.begin(), fields.end(),
                                   [](const Field& a, const Field& b) { return a.keep < b.keep; });
    fields.erase(lowest);
  }
  // Too narrow for even a minimal bar: the id, state and step, cut to the width.
  std::string line = absl::StrCat(prefix, " ", join());
  if (Length(line) > width) line.resize(width);
  return line;
}

std::string FormatSummaryLine(const ProgressView& view) {
  std::string line = absl::StrCat(view.job_id, " ", view.state, ": ", view.step);
  if (view.total_steps > 0) absl::StrAppend(&line, "/", view.total_steps);
  absl::StrAppend(&line, " steps");
  if (view.eval_loss.has_value()) absl::StrAppendFormat(&line, ", eval loss %.3f", *view.eval_loss);
  absl::StrAppendFormat(&line, ", FLOPs saved %.1f%%, wall %s",
                        100 * FlopsSavedFraction(view.flops, view.flops_full),
                        FormatDuration(view.train_seconds));
  return line;
}

ThroughputEstimator::ThroughputEstimator(double time_constant_seconds)
    : time_constant_(time_constant_seconds > 0 ? time_constant_seconds : 1.0) {}

void ThroughputEstimator::Add(int64_t step, int64_t tokens, double train_seconds) {
  if (!has_sample_ || step < last_step_ || tokens < last_tokens_ || train_seconds < last_seconds_) {
    // First sample, or a restart rewound the counters: start the deltas over. A rate already
    // measured stays: the hardware did not change.
    has_sample_ = true;
    last_step_ = step;
    last_tokens_ = tokens;
    last_seconds_ = train_seconds;
    return;
  }
  const double dt = train_seconds - last_seconds_;
  // No training time passed (a repeated summary): keep the baseline so the next delta spans it.
  if (!(dt > 0)) return;
  const double tokens_now = static_cast<double>(tokens - last_tokens_) / dt;
  const double steps_now = static_cast<double>(step - last_step_) / dt;
  if (!has_rate_) {
    tokens_rate_ = tokens_now;
    steps_rate_ = steps_now;
    has_rate_ = true;
  } else {
    // Weighted by the time the delta spans, so the smoothing does not depend on --step-every.
    const double alpha = 1 - std::exp(-dt / time_constant_);
    tokens_rate_ += alpha * (tokens_now - tokens_rate_);
    steps_rate_ += alpha * (steps_now - steps_rate_);
  }
  last_step_ = step;
  last_tokens_ = tokens;
  last_seconds_ = train_seconds;
}

double ThroughputEstimator::TokensPerSecond() const {
  if (has_rate_) return tokens_rate_;
  if (has_sample_ && last_seconds_ > 0) return static_cast<double>(last_tokens_) / last_seconds_;
  return 0;
}

double ThroughputEstimator::StepsPerSecond() const {
  if (has_rate_) return steps_rate_;
  if (has_sample_ && last_seconds_ > 0) return static_cast<double>(last_step_) / last_seconds_;
  return 0;
}

}  // namespace raptr::cli
