// Path schedules (see path_schedule.h).
#include "common/path_schedule.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/random.h"

namespace raptr {
namespace {

// Domains of the counter-based draws, one per use, so no two schedules share a uniform.
constexpr uint64_t kRaptrBernoulliDomain = 0x7061746800ULL;  // "path\0"
constexpr uint64_t kRaptrExactDomain = 0x65786163ULL;        // "exac"
constexpr uint64_t kPldDomain = 0x706c6400ULL;               // "pld\0"
constexpr uint64_t kLayerDropDomain = 0x6c64726f70ULL;       // "ldrop"

using Kind = PathScheduleConfig::Kind;

// The 0-based stage holding `t` steps after the warmup, and the step its stage began at
// (relative to the end of the warmup). Steps past the last stage stay in it.
std::pair<size_t, int64_t> StageAt(const std::vector<RaptrStage>& stages, int64_t t) {
  size_t s = 0;
  int64_t start = 0;
  while (s + 1 < stages.size() && t - start >= stages[s].steps) {
    start += stages[s].steps;
    ++s;
  }
  return {s, start};
}

absl::Status CheckStageDurations(const std::vector<RaptrStage>& stages) {
  for (size_t i = 0; i < stages.size(); ++i) {
    if (stages[i].steps <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("schedule.stages[", i, "].steps must be > 0, got ", stages[i].steps));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int PathPlan::num_active() const {
  return static_cast<int>(std::count(active.begin(), active.end(), true));
}

const char* PathScheduleKindName(Kind kind) {
  switch (kind) {
    case Kind::kFull:
      return "full";
    case Kind::kRaptr:
      return "raptr";
    case Kind::kPld:
      return "pld";
    case Kind::kLayerDrop:
      return "layerdrop";
    case Kind::kStacking:
      return "stacking";
  }
  return "unknown";
}

std::string DescribePathSchedule(const PathScheduleConfig& s) {
  auto stages = [&s] {
    return absl::StrJoin(s.stages, ",", [](std::string* out, const RaptrStage& st) {
      absl::StrAppend(out, st.path_length, ":", st.steps);
    });
  };
  auto scaled = [](bool on) { return on ? "inverse_keep_prob" : "none"; };
  std::string text = PathScheduleKindName(s.kind);
  switch (s.kind) {
    case Kind::kFull:
      break;
    case Kind::kRaptr:
      absl::StrAppend(&text, " stages ", stages(), " fixed {", absl::StrJoin(s.fixed_layers, ","),
                      "} sampling ", s.sampling == PathSampling::kExact ? "exact" : "bernoulli",
                      " scaling ", scaled(s.scaling == PathScaling::kInverseKeepProb));
      if (s.full_warmup_steps > 0) absl::StrAppend(&text, " full_warmup ", s.full_warmup_steps);
      break;
    case Kind::kPld:
      absl::StrAppend(&text, " theta_bar ", s.pld_theta_bar, " gamma ", s.pld_gamma,
                      " indexing ", s.pld_indexing == PldIndexing::kDeepSpeed ? "deepspeed" : "paper");
      break;
    case Kind::kLayerDrop:
      absl::StrAppend(&text, " keep_prob ", s.keep_prob, " fixed {",
                      absl::StrJoin(s.fixed_layers, ","), "} scale ", scaled(s.layerdrop_scale));
      if (s.full_warmup_steps > 0) absl::StrAppend(&text, " full_warmup ", s.full_warmup_steps);
      break;
    case Kind::kStacking:
      absl::StrAppend(&text, " stages ", stages());
      break;
  }
  return text;
}

absl::Status ParsePathScheduleKind(const std::string& text, Kind* out) {
  for (Kind k : {Kind::kFull, Kind::kRaptr, Kind::kPld, Kind::kLayerDrop, Kind::kStacking}) {
    if (text == PathScheduleKindName(k)) {
      *out = k;
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "schedule.kind: '", text, "' is not one of full, raptr, pld, layerdrop, stacking"));
}

// Stage s of k equal stages ends after floor(total * (s+1) / k) steps: the rule job specs use for
// stage fractions (common/job_spec.cc), so a default schedule is the same from flags or a spec.
int64_t EqualStageSteps(int64_t total, int k, int s) {
  return total * (s + 1) / k - total * s / k;
}

PathScheduleConfig DefaultRaptrSchedule(int L, int64_t total_steps) {
  PathScheduleConfig c;
  c.kind = PathScheduleConfig::Kind::kRaptr;
  c.fixed_layers = L >= 2 ? std::vector<int>{0, L - 1} : std::vector<int>{0};
  const double fractions[4] = {1.0 / 2, 2.0 / 3, 5.0 / 6, 1.0};
  for (int s = 0; s < 4; ++s) {
    RaptrStage stage;
    stage.path_length = std::max(static_cast<int>(c.fixed_layers.size()),
                                 static_cast<int>(std::lround(fractions[s] * L)));
    stage.steps = EqualStageSteps(total_steps, 4, s);
    c.stages.push_back(stage);
  }
  return c;
}

PathScheduleConfig DefaultStackingSchedule(int L, int64_t total_steps) {
  PathScheduleConfig c;
  c.kind = Kind::kStacking;
  const double fractions[3] = {1.0 / 2, 3.0 / 4, 1.0};
  for (int s = 0; s < 3; ++s) {
    RaptrStage stage;
    stage.path_length = std::max(1, static_cast<int>(std::lround(fractions[s] * L)));
    stage.steps = EqualStageSteps(total_steps, 3, s);
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

// Fixed layers in range and distinct.
static absl::Status CheckFixedLayers(const std::vector<int>& fixed_layers, int L) {
  std::vector<bool> seen(L, false);
  for (int l : fixed_layers) {
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
  return absl::OkStatus();
}

absl::Status ValidatePathSchedule(const PathScheduleConfig& c, int L) {
  if (c.full_warmup_steps < 0) {
    return absl::InvalidArgumentError("schedule.full_warmup_steps must be >= 0");
  }
  if (c.kind == Kind::kFull) return absl::OkStatus();
  const char* kind = PathScheduleKindName(c.kind);
  if (c.kind != Kind::kRaptr && c.kind != Kind::kLayerDrop && !c.fixed_layers.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "schedule.fixed_layers: only the raptr and layerdrop schedules have fixed layers, not ",
        kind));
  }
  if ((c.kind == Kind::kPld || c.kind == Kind::kStacking) && c.full_warmup_steps != 0) {
    return absl::InvalidArgumentError(absl::StrCat("schedule.full_warmup_steps must be 0 for the ",
                                                   kind, " schedule, got ", c.full_warmup_steps));
  }
  if ((c.kind == Kind::kPld || c.kind == Kind::kLayerDrop) && !c.stages.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("schedule.stages: the ", kind, " schedule has no stages"));
  }
  switch (c.kind) {
    case Kind::kPld:
      if (!(c.pld_theta_bar > 0 && c.pld_theta_bar <= 1)) {
        return absl::InvalidArgumentError(
            absl::StrCat("schedule.pld_theta_bar must be in (0, 1], got ", c.pld_theta_bar));
      }
      if (!(c.pld_gamma >= 0 && std::isfinite(c.pld_gamma))) {
        return absl::InvalidArgumentError(
            absl::StrCat("schedule.pld_gamma must be finite and >= 0, got ", c.pld_gamma));
      }
      return absl::OkStatus();
    case Kind::kLayerDrop:
      if (!(c.keep_prob > 0 && c.keep_prob <= 1)) {
        return absl::InvalidArgumentError(
            absl::StrCat("schedule.keep_prob must be in (0, 1], got ", c.keep_prob));
      }
      return CheckFixedLayers(c.fixed_layers, L);
    case Kind::kStacking: {
      if (c.stages.empty()) return absl::InvalidArgumentError("schedule.stages: no stage given");
      for (size_t i = 0; i < c.stages.size(); ++i) {
        const int k = c.stages[i].path_length;
        if (k < 1 || k > L) {
          return absl::InvalidArgumentError(absl::StrCat("schedule.stages[", i, "].path_length ", k,
                                                         " (stacking depth) must be in [1, ", L,
                                                         " (the model's layers)]"));
        }
        if (i > 0 && k < c.stages[i - 1].path_length) {
          return absl::InvalidArgumentError(absl::StrCat(
              "schedule.stages[", i, "].path_length ", k, " is below the previous stage's ",
              c.stages[i - 1].path_length, ": a stacked model only grows"));
        }
      }
      return CheckStageDurations(c.stages);
    }
    case Kind::kFull:
    case Kind::kRaptr:
      break;
  }
  if (absl::Status fixed = CheckFixedLayers(c.fixed_layers, L); !fixed.ok()) return fixed;
  if (c.stages.empty()) return absl::InvalidArgumentError("schedule.stages: no stage given");
  const int fixed = static_cast<int>(c.fixed_layers.size());
  for (size_t i = 0; i < c.stages.size(); ++i) {
    const RaptrStage& s = c.stages[i];
    if (s.path_length < fixed || s.path_length > L) {
      return absl::InvalidArgumentError(
          absl::StrCat("schedule.stages[", i, "].path_length ", s.path_length, " must be in [",
                       fixed, " (the fixed layers), ", L, " (the model's layers)]"));
    }
  }
  return CheckStageDurations(c.stages);
}

PathPlan PlanPath(const PathScheduleConfig& c, int L, uint64_t seed, int64_t step) {
  PathPlan plan;
  plan.active.assign(L, true);
  plan.scale.assign(L, 1.0f);
  plan.stage = -1;
  if (c.kind == Kind::kFull || step < c.full_warmup_steps) return plan;

  if (c.kind == Kind::kPld || c.kind == Kind::kLayerDrop) {
    const bool pld = c.kind == Kind::kPld;
    plan.keep_prob = pld ? PldTheta(c, step) : c.keep_prob;
    std::vector<bool> fixed(L, false);
    for (int l : c.fixed_layers) fixed[l] = true;  // LayerDrop's (PLD has none)
    for (int l = 0; l < L; ++l) {
      if (fixed[l]) continue;  // on, scale 1
      const double p = pld ? PldKeepProbability(c, L, step, l) : c.keep_prob;
      // One independent uniform per (step, block). p > 0 (theta_bar, keep_prob > 0): 1/p is finite.
      const uint64_t bits =
          HashCounters(seed, pld ? kPldDomain : kLayerDropDomain, step, static_cast<uint64_t>(l));
      plan.active[l] = ToUnitDouble(bits) < p;
      if (plan.active[l] && pld) {
        plan.scale[l] = static_cast<float>(PldScale(c, L, step, l));
      } else if (plan.active[l] && c.layerdrop_scale) {
        plan.scale[l] = static_cast<float>(1.0 / p);
      }
    }
    return plan;
  }

  const size_t s = StageAt(c.stages, step - c.full_warmup_steps).first;
  plan.stage = static_cast<int>(s);
  if (c.kind == Kind::kStacking) {
    for (int l = 0; l < L; ++l) plan.active[l] = l < c.stages[s].path_length;
    return plan;
  }
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
      plan.active[l] =
          ToUnitDouble(HashCounters(seed, kRaptrBernoulliDomain, step, l)) < plan.keep_prob;
    }
  } else {
    // Partial Fisher-Yates: the first `want` of a uniform shuffle of the others.
    CounterRng rng(HashCounters(seed, kRaptrExactDomain, step), 0);
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

double PldTheta(const PathScheduleConfig& c, int64_t step) {
  // DeepSpeed updates theta from the step counter before the step increments it, starting from
  // 1: step t trains with theta(t - 1).
  const int64_t t = c.pld_indexing == PldIndexing::kDeepSpeed ? step - 1 : step;
  if (t <= 0) return 1.0;
  return (1.0 - c.pld_theta_bar) * std::exp(-c.pld_gamma * static_cast<double>(t)) +
         c.pld_theta_bar;
}

double PldKeepProbability(const PathScheduleConfig& c, int L, int64_t step, int layer) {
  // 1-based in Zhang & He; DeepSpeed draws block l before decrementing its running p.
  const double i = c.pld_indexing == PldIndexing::kDeepSpeed ? layer : layer + 1;
  return 1.0 - i * (1.0 - PldTheta(c, step)) / L;
}

double PldScale(const PathScheduleConfig& c, int L, int64_t step, int layer) {
  return 1.0 / (1.0 - (layer + 1) * (1.0 - PldTheta(c, step)) / L);
}

namespace {

// sum_{t<n} exp(-gamma t), in closed form (n when gamma is 0).
double DecaySum(double gamma, int64_t n) {
  if (n <= 0) return 0;
  if (gamma == 0) return static_cast<double>(n);
  return std::expm1(-gamma * static_cast<double>(n)) / std::expm1(-gamma);
}

// The per-block share of PLD's keep probabilities summed over steps [0, T): the mean over
// blocks of p_l is 1 - (1 - theta_t) * k / (2L), with k = L + 1 (paper) or L - 1 (DeepSpeed),
// and 1 - theta_t = (1 - theta_bar)(1 - e^{-gamma u}) with u = t (paper) or t - 1 (DeepSpeed,
// where steps 0 and 1 keep everything). So the sum of (1 - theta) over the run is
// (1 - theta_bar) * (n - DecaySum(gamma, n)) with n = T (paper) or T - 1 (DeepSpeed).
struct PldShareTerms {
  double k_over_2l;
  int64_t n;
};
PldShareTerms ShareTerms(const PathScheduleConfig& c, int L, int64_t T) {
  const bool deepspeed = c.pld_indexing == PldIndexing::kDeepSpeed;
  return {static_cast<double>(deepspeed ? L - 1 : L + 1) / (2.0 * L),
          deepspeed ? std::max<int64_t>(T - 1, 0) : T};
}

}  // namespace

double PldMeanShare(const PathScheduleConfig& c, int L, int64_t T) {
  if (T <= 0) return 1.0;
  const PldShareTerms terms = ShareTerms(c, L, T);
  const double drops = static_cast<double>(terms.n) - DecaySum(c.pld_gamma, terms.n);
  return 1.0 - terms.k_over_2l * (1.0 - c.pld_theta_bar) * drops / static_cast<double>(T);
}

absl::StatusOr<double> PldGammaForMeanKeep(PathScheduleConfig c, int L, int64_t total_steps,
                                           double mean_keep) {
  c.kind = Kind::kPld;
  if (mean_keep == 1) return 0.0;  // gamma 0: theta stays 1, every block every step
  // The share falls monotonically from 1 (gamma 0) to its limit at an immediate decay, where
  // the decay sum is its first term alone (1).
  const PldShareTerms terms = ShareTerms(c, L, total_steps);
  const double lowest =
      1.0 - terms.k_over_2l * (1.0 - c.pld_theta_bar) *
                static_cast<double>(std::max<int64_t>(terms.n - 1, 0)) /
                static_cast<double>(std::max<int64_t>(total_steps, 1));
  if (!(mean_keep > lowest && mean_keep < 1)) {
    if (lowest >= 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "schedule.pld.mean_keep: over ", total_steps, " steps PLD keeps every block whatever "
          "its gamma; only 1 is possible, got ", mean_keep));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "schedule.pld.mean_keep must be in (", lowest, ", 1] for theta_bar ", c.pld_theta_bar,
        " over ", total_steps, " steps (the least PLD reaches), got ", mean_keep));
  }
  // Bisection in log(gamma) over [1e-15, 1e3] on the closed form: O(1) an evaluation.
  double lo = std::log(1e-15), hi = std::log(1e3);
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    c.pld_gamma = std::exp(mid);
    (PldMeanShare(c, L, total_steps) > mean_keep ? lo : hi) = mid;
    if (hi - lo < 1e-13) break;
  }
  return std::exp(0.5 * (lo + hi));
}

double LayerDropKeepProbMatchingRaptr(const PathScheduleConfig& c, int L, int64_t total_steps) {
  if (total_steps <= 0 || c.kind == Kind::kFull) return 1.0;
  const int64_t warm = std::min(c.full_warmup_steps, total_steps);
  // Expected active blocks over the run. Integer sums stay exact in double far beyond any run.
  double blocks = static_cast<double>(warm) * L;
  int64_t left = total_steps - warm;
  switch (c.kind) {
    case Kind::kRaptr:
    case Kind::kStacking:
      for (size_t s = 0; s < c.stages.size() && left > 0; ++s) {
        const bool last = s + 1 == c.stages.size();
        const int64_t n = last ? left : std::min(left, c.stages[s].steps);
        blocks += static_cast<double>(n) * c.stages[s].path_length;
        left -= n;
      }
      break;
    case Kind::kLayerDrop: {
      const double fixed = static_cast<double>(c.fixed_layers.size());
      blocks += static_cast<double>(left) * (fixed + (L - fixed) * c.keep_prob);
      break;
    }
    case Kind::kPld:
      if (warm == 0) return PldMeanShare(c, L, total_steps);
      for (int64_t t = warm; t < total_steps; ++t) {
        for (int l = 0; l < L; ++l) blocks += PldKeepProbability(c, L, t, l);
      }
      break;
    case Kind::kFull:
      break;
  }
  return blocks / (static_cast<double>(L) * static_cast<double>(total_steps));
}

// The depths were validated against the model's layer count, so it is not needed here.
std::vector<std::pair<int, int>> StackingCopiesAtStep(const PathScheduleConfig& c,
                                                      int /*num_layers*/, int64_t step) {
  std::vector<std::pair<int, int>> copies;
  if (c.kind != Kind::kStacking || step <= 0) return copies;
  const auto [s, start] = StageAt(c.stages, step);
  if (s == 0 || step != start) return copies;
  const int a = c.stages[s - 1].path_length, b = c.stages[s].path_length;
  const int n = b - a;
  for (int j = 0; j < n; ++j) {
    const int src = ((a - n + j) % a + a) % a;
    copies.emplace_back(a + j, src);
  }
  return copies;
}

}  // namespace raptr
