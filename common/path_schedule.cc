// Path schedules (see path_schedule.h).
#include "common/path_schedule.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/random.h"

namespace raptr {

int PathPlan::num_active() const {
  return static_cast<int>(std::count(active.begin(), active.end(), true));
}

PathScheduleConfig DefaultRaptrSchedule(int L, int64_t total_steps) {
  PathScheduleConfig c;
  c.kind = PathScheduleConfig::Kind::kRaptr;
  c.fixed_layers = L >= 2 ? std::vector<int>{0, L - 1} : std::vector<int>{0};
  const double fractions[4] = {1.0 / 2, 2.0 / 3, 5.0 / 6, 1.0};
  const int64_t per_stage = total_steps / 4;
  for (int s = 0; s < 4; ++s) {
    RaptrStage stage;
    stage.path_length = std::max(static_cast<int>(c.fixed_layers.size()),
                                 static_cast<int>(std::lround(fractions[s] * L)));
    stage.steps = s < 3 ? per_stage : total_steps - 3 * per_stage;
    c.stages.push_back(stage);
  }
  return c;
}

absl::Status ParseStages(const std::string& text, std::vector<RaptrStage>* out) {
  out->clear();
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::vector<absl::string_view> parts = absl::StrSplit(item, ':');
    RaptrStage s;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &s.path_length) ||
        !absl::SimpleAtoi(parts[1], &s.steps)) {
      return absl::InvalidArgumentError(
          absl::StrCat("stages: '", item, "' is not path_length:steps (in '", text, "')"));
    }
    out->push_back(s);
  }
  if (out->empty()) return absl::InvalidArgumentError("stages: no stage given");
  return absl::OkStatus();
}

absl::Status ValidatePathSchedule(const PathScheduleConfig& c, int L) {
  if (c.full_warmup_steps < 0) {
    return absl::InvalidArgumentError("schedule.full_warmup_steps must be >= 0");
  }
  if (c.kind == PathScheduleConfig::Kind::kFull) return absl::OkStatus();
  std::vector<bool> seen(L, false);
  for (int l : c.fixed_layers) {
    if (l < 0 || l >= L) {
      return absl::InvalidArgumentError(
          absl::StrCat("schedule.fixed_layers: layer ", l, " is out of range [0, ", L, ")"));
    }
    if (seen[l]) {
      return absl::InvalidArgumentError(
          absl::StrCat("schedule.fixed_layers: layer ", l, " is listed twice"));
    }
    seen[l] = true;
  }
  if (c.stages.empty()) return absl::InvalidArgumentError("schedule.stages: no stage given");
  const int fixed = static_cast<int>(c.fixed_layers.size());
  for (size_t i = 0; i < c.stages.size(); ++i) {
    const RaptrStage& s = c.stages[i];
    if (s.path_length < fixed || s.path_length > L) {
      return absl::InvalidArgumentError(
          absl::StrCat("schedule.stages[", i, "].path_length ", s.path_length, " must be in [",
                       fixed, " (the fixed layers), ", L, " (the model's layers)]"));
    }
    if (s.steps <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("schedule.stages[", i, "].steps must be > 0, got ", s.steps));
    }
  }
  return absl::OkStatus();
}

PathPlan PlanPath(const PathScheduleConfig& c, int L, uint64_t seed, int64_t step) {
  PathPlan plan;
  plan.active.assign(L, true);
  plan.scale.assign(L, 1.0f);
  plan.stage = -1;
  if (c.kind == PathScheduleConfig::Kind::kFull || step < c.full_warmup_steps) return plan;

  int64_t t = step - c.full_warmup_steps;
  size_t s = 0;
  while (s + 1 < c.stages.size() && t >= c.stages[s].steps) {
    t -= c.stages[s].steps;
    ++s;
  }
  plan.stage = static_cast<int>(s);
  const int p = c.stages[s].path_length;
  std::vector<bool> fixed(L, false);
  for (int l : c.fixed_layers) fixed[l] = true;
  std::vector<int> others;
  for (int l = 0; l < L; ++l) {
    if (!fixed[l]) others.push_back(l);
  }
  const int want = p - static_cast<int>(c.fixed_layers.size());
  plan.keep_prob = others.empty() ? 1.0 : static_cast<double>(want) / others.size();
  plan.active = fixed;
  if (c.sampling == PathSampling::kBernoulli) {
    for (int l : others) {
      // One independent uniform per (step, layer).
      plan.active[l] = ToUnitDouble(HashCounters(seed, 0x7061746800ULL, step, l)) < plan.keep_prob;
    }
  } else {
    // Partial Fisher-Yates: the first `want` of a uniform shuffle of the others.
    CounterRng rng(HashCounters(seed, 0x65786163ULL, step), 0);
    for (int i = 0; i < want; ++i) {
      const int j = i + static_cast<int>(rng.Below(others.size() - i));
      std::swap(others[i], others[j]);
      plan.active[others[i]] = true;
    }
  }
  if (c.scaling == PathScaling::kInverseKeepProb && plan.keep_prob > 0) {
    for (int l = 0; l < L; ++l) {
      if (!fixed[l]) plan.scale[l] = static_cast<float>(1.0 / plan.keep_prob);
    }
  }
  return plan;
}

}  // namespace raptr
