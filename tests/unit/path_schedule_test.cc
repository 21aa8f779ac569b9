// RaPTr path schedules: the paper's default stages, stage boundaries and warmup, exact and
// Bernoulli sampling statistics, purity in (seed, step), scaling, validation and parsing.
#include "common/path_schedule.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace raptr {
namespace {

constexpr uint64_t kSeed = 1234;

std::vector<int> Lengths(const PathScheduleConfig& c) {
  std::vector<int> out;
  for (const RaptrStage& s : c.stages) out.push_back(s.path_length);
  return out;
}

std::vector<int64_t> Durations(const PathScheduleConfig& c) {
  std::vector<int64_t> out;
  for (const RaptrStage& s : c.stages) out.push_back(s.steps);
  return out;
}

PathScheduleConfig OneStage(int path_length, PathSampling sampling, std::vector<int> fixed) {
  PathScheduleConfig c;
  c.kind = PathScheduleConfig::Kind::kRaptr;
  c.stages = {{path_length, 1000000}};
  c.fixed_layers = std::move(fixed);
  c.sampling = sampling;
  return c;
}

bool IsFixed(const PathScheduleConfig& c, int l) {
  for (int f : c.fixed_layers) {
    if (f == l) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Default schedule and stage boundaries.

TEST(PathScheduleDefault, TwelveLayers) {
  const PathScheduleConfig c = DefaultRaptrSchedule(12, 1000);
  EXPECT_EQ(c.kind, PathScheduleConfig::Kind::kRaptr);
  EXPECT_EQ(Lengths(c), (std::vector<int>{6, 8, 10, 12}));
  EXPECT_EQ(Durations(c), (std::vector<int64_t>{250, 250, 250, 250}));
  EXPECT_EQ(c.fixed_layers, (std::vector<int>{0, 11}));
  EXPECT_EQ(c.full_warmup_steps, 0);
  EXPECT_TRUE(ValidatePathSchedule(c, 12).ok());
}

TEST(PathScheduleDefault, TwentyFourLayers) {
  const PathScheduleConfig c = DefaultRaptrSchedule(24, 1000);
  EXPECT_EQ(Lengths(c), (std::vector<int>{12, 16, 20, 24}));
  EXPECT_EQ(Durations(c), (std::vector<int64_t>{250, 250, 250, 250}));
  EXPECT_EQ(c.fixed_layers, (std::vector<int>{0, 23}));
  EXPECT_TRUE(ValidatePathSchedule(c, 24).ok());
}

TEST(PathScheduleDefault, LastStageAbsorbsRemainder) {
  const PathScheduleConfig c = DefaultRaptrSchedule(12, 1003);
  EXPECT_EQ(Durations(c), (std::vector<int64_t>{250, 250, 250, 253}));
}

TEST(PathScheduleStages, Boundaries) {
  const PathScheduleConfig c = DefaultRaptrSchedule(12, 1000);
  const std::vector<std::pair<int64_t, int>> expected = {
      {0, 0},   {249, 0}, {250, 1},  {499, 1},  {500, 2},    {749, 2},
      {750, 3}, {999, 3}, {1000, 3}, {5000, 3}, {1000000, 3}};
  for (const auto& [step, stage] : expected) {
    const PathPlan plan = PlanPath(c, 12, kSeed, step);
    EXPECT_EQ(plan.stage, stage) << "step " << step;
    EXPECT_EQ(plan.active.size(), 12u);
    EXPECT_EQ(plan.scale.size(), 12u);
  }
}

TEST(PathScheduleStages, FullWarmupShiftsStages) {
  PathScheduleConfig c = DefaultRaptrSchedule(12, 1000);
  c.full_warmup_steps = 100;
  ASSERT_TRUE(ValidatePathSchedule(c, 12).ok());
  for (int64_t step : {0, 1, 50, 99}) {
    const PathPlan plan = PlanPath(c, 12, kSeed, step);
    EXPECT_EQ(plan.stage, -1) << "warmup step " << step;
    EXPECT_EQ(plan.num_active(), 12) << "warmup step " << step;
    EXPECT_EQ(plan.scale, std::vector<float>(12, 1.0f)) << "warmup step " << step;
    EXPECT_EQ(plan.keep_prob, 1.0);
  }
  const std::vector<std::pair<int64_t, int>> expected = {
      {100, 0}, {349, 0}, {350, 1}, {599, 1}, {600, 2}, {849, 2}, {850, 3}, {1099, 3}, {9999, 3}};
  for (const auto& [step, stage] : expected) {
    EXPECT_EQ(PlanPath(c, 12, kSeed, step).stage, stage) << "step " << step;
  }
}

TEST(PathScheduleStages, FullKindIsAlwaysTheWholeModel) {
  PathScheduleConfig c;  // kFull by default
  ASSERT_EQ(c.kind, PathScheduleConfig::Kind::kFull);
  c.stages = {{3, 10}};  // ignored by kFull
  for (int64_t step : {0, 1, 10, 1000}) {
    const PathPlan plan = PlanPath(c, 12, kSeed, step);
    EXPECT_EQ(plan.stage, -1);
    EXPECT_EQ(plan.active, std::vector<bool>(12, true));
    EXPECT_EQ(plan.scale, std::vector<float>(12, 1.0f));
    EXPECT_EQ(plan.keep_prob, 1.0);
  }
}

// ---------------------------------------------------------------------------------------------
// Sampling.

TEST(PathScheduleSampling, ExactGivesExactlyPathLength) {
  PathScheduleConfig c = DefaultRaptrSchedule(12, 1000);
  c.sampling = PathSampling::kExact;
  for (int64_t step = 0; step < 1000; ++step) {
    const PathPlan plan = PlanPath(c, 12, kSeed, step);
    ASSERT_EQ(plan.num_active(), c.stages[plan.stage].path_length) << "step " << step;
    ASSERT_TRUE(plan.active[0]) << "step " << step;
    ASSERT_TRUE(plan.active[11]) << "step " << step;
  }
  // Boundary path lengths: only the fixed layers, and every layer.
  for (int p : {2, 12}) {
    const PathScheduleConfig one = OneStage(p, PathSampling::kExact, {0, 11});
    for (int64_t step = 0; step < 50; ++step) {
      const PathPlan plan = PlanPath(one, 12, kSeed, step);
      ASSERT_EQ(plan.num_active(), p);
      ASSERT_TRUE(plan.active[0] && plan.active[11]);
    }
  }
}

// Activation frequencies over `n` steps of a single-stage schedule, and the checks of the
// marginals shared by both sampling modes. Returns the per-step activity for further checks.
std::vector<std::vector<bool>> CheckMarginals(const PathScheduleConfig& c, int L, int64_t first,
                                              int64_t n, int p) {
  const int fixed = static_cast<int>(c.fixed_layers.size());
  const double q = static_cast<double>(p - fixed) / (L - fixed);
  std::vector<int64_t> count(L, 0);
  double length_sum = 0;
  std::vector<std::vector<bool>> history;
  for (int64_t step = first; step < first + n; ++step) {
    const PathPlan plan = PlanPath(c, L, kSeed, step);
    EXPECT_DOUBLE_EQ(plan.keep_prob, q);
    for (int l = 0; l < L; ++l) count[l] += plan.active[l];
    length_sum += plan.num_active();
    history.push_back(plan.active);
  }
  const double se = std::sqrt(q * (1 - q) / n);
  double worst_z = 0;
  for (int l = 0; l < L; ++l) {
    if (IsFixed(c, l)) {
      EXPECT_EQ(count[l], n) << "fixed layer " << l << " must always be on";
      continue;
    }
    const double freq = static_cast<double>(count[l]) / n;
    worst_z = std::max(worst_z, std::abs(freq - q) / se);
    EXPECT_LT(std::abs(freq - q), 5 * se) << "layer " << l << " freq " << freq << " q " << q;
  }
  // Path length = |I| + Binomial(L - |I|, q): standard error of its mean over n steps.
  const double mean_length = length_sum / n;
  const double length_se = std::sqrt((L - fixed) * q * (1 - q) / n);
  EXPECT_LT(std::abs(mean_length - p), 5 * length_se) << "mean path length " << mean_length;
  ::testing::Test::RecordProperty("marginals_from_step" + std::to_string(first),
                                  "max layer z " + std::to_string(worst_z) + ", path length z " +
                                      std::to_string(std::abs(mean_length - p) / length_se));
  return history;
}

double Correlation(const std::vector<bool>& a, const std::vector<bool>& b) {
  const double n = static_cast<double>(a.size());
  double sa = 0, sb = 0, sab = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sa += a[i];
    sb += b[i];
    sab += a[i] && b[i];
  }
  const double ma = sa / n, mb = sb / n;
  return (sab / n - ma * mb) / std::sqrt(ma * (1 - ma) * mb * (1 - mb));
}

TEST(PathScheduleSampling, BernoulliMarginals) {
  // 20000 steps per stage: stage 0 (p=6, q=0.4) and stage 2 (p=10, q=0.8) of the default.
  const int L = 12;
  const int64_t n = 20000;
  const PathScheduleConfig c = DefaultRaptrSchedule(L, 4 * n);
  ASSERT_EQ(c.sampling, PathSampling::kBernoulli);
  for (int s : {0, 2}) {
    SCOPED_TRACE("stage " + std::to_string(s));
    const auto history = CheckMarginals(c, L, s * n, n, c.stages[s].path_length);
    // Independence sanity: per-layer activity series, then pairwise correlations between
    // non-fixed layers (same step) and of each layer with itself one step later.
    std::vector<std::vector<bool>> series(L, std::vector<bool>(n));
    for (int64_t t = 0; t < n; ++t) {
      for (int l = 0; l < L; ++l) series[l][t] = history[t][l];
    }
    const double bound = 5 / std::sqrt(static_cast<double>(n));  // 5 standard errors of r ~ 0
    double worst = 0;
    for (int a = 1; a < L - 1; ++a) {
      for (int b = a + 1; b < L - 1; ++b) {
        const double r = Correlation(series[a], series[b]);
        worst = std::max(worst, std::abs(r));
        EXPECT_LT(std::abs(r), bound) << "layers " << a << "," << b;
      }
      const std::vector<bool> now(series[a].begin(), series[a].end() - 1);
      const std::vector<bool> next(series[a].begin() + 1, series[a].end());
      EXPECT_LT(std::abs(Correlation(now, next)), bound) << "layer " << a << " lag 1";
    }
    ::testing::Test::RecordProperty("max_abs_pair_corr_stage" + std::to_string(s),
                                    std::to_string(worst));
  }
}

TEST(PathScheduleSampling, ExactMarginals) {
  // Exact sampling picks a uniform subset, so its marginals are q_s too.
  const PathScheduleConfig c = OneStage(7, PathSampling::kExact, {0, 11});
  CheckMarginals(c, 12, 0, 20000, 7);
}

TEST(PathScheduleSampling, BernoulliExtremes) {
  // p = |I|: only the fixed layers; p = L: every layer.
  const PathScheduleConfig only_fixed = OneStage(3, PathSampling::kBernoulli, {0, 5, 11});
  const PathScheduleConfig all = OneStage(12, PathSampling::kBernoulli, {0, 11});
  for (int64_t step = 0; step < 200; ++step) {
    const PathPlan a = PlanPath(only_fixed, 12, kSeed, step);
    ASSERT_EQ(a.num_active(), 3);
    ASSERT_TRUE(a.active[0] && a.active[5] && a.active[11]);
    ASSERT_EQ(PlanPath(all, 12, kSeed, step).num_active(), 12);
  }
}

TEST(PathScheduleSampling, PureInSeedAndStep) {
  for (PathSampling sampling : {PathSampling::kBernoulli, PathSampling::kExact}) {
    PathScheduleConfig c = DefaultRaptrSchedule(12, 1000);
    c.sampling = sampling;
    std::vector<std::vector<bool>> forward_order;
    for (int64_t step = 0; step < 300; ++step) {
      forward_order.push_back(PlanPath(c, 12, kSeed, step).active);
    }
    // Same (seed, step) in reverse order, and again: identical.
    for (int64_t step = 299; step >= 0; --step) {
      const PathPlan plan = PlanPath(c, 12, kSeed, step);
      ASSERT_EQ(plan.active, forward_order[step]) << "step " << step;
      ASSERT_EQ(plan.active, PlanPath(c, 12, kSeed, step).active) << "step " << step;
    }
    // A different seed gives a different sequence (stage 0: p=6 of 12, many possible paths).
    int differing = 0;
    for (int64_t step = 0; step < 200; ++step) {
      differing += PlanPath(c, 12, kSeed + 1, step).active != forward_order[step];
    }
    EXPECT_GT(differing, 150) << "of 200 steps";
    // And consecutive steps are not all the same path.
    int changes = 0;
    for (int64_t step = 1; step < 200; ++step)
      changes += forward_order[step] != forward_order[step - 1];
    EXPECT_GT(changes, 150) << "of 199 steps";
  }
}

// ---------------------------------------------------------------------------------------------
// Scaling.

TEST(PathScheduleScaling, InverseKeepProb) {
  PathScheduleConfig c = DefaultRaptrSchedule(12, 1000);
  c.scaling = PathScaling::kInverseKeepProb;
  for (PathSampling sampling : {PathSampling::kBernoulli, PathSampling::kExact}) {
    c.sampling = sampling;
    for (int64_t step : {0, 100, 249, 250, 600, 999}) {
      const PathPlan plan = PlanPath(c, 12, kSeed, step);
      const double q = static_cast<double>(c.stages[plan.stage].path_length - 2) / 10;
      EXPECT_DOUBLE_EQ(plan.keep_prob, q);
      for (int l = 0; l < 12; ++l) {
        if (l == 0 || l == 11) {
          EXPECT_EQ(plan.scale[l], 1.0f) << "fixed layer " << l << " step " << step;
        } else if (plan.active[l]) {
          EXPECT_FLOAT_EQ(plan.scale[l], static_cast<float>(1.0 / q))
              << "layer " << l << " step " << step;
        }
      }
    }
  }
  // Stage 0 of L=12: q = 4/10, scale exactly 2.5.
  const PathPlan plan = PlanPath(c, 12, kSeed, 0);
  for (int l = 1; l < 11; ++l) {
    if (plan.active[l]) {
      EXPECT_EQ(plan.scale[l], 2.5f) << "layer " << l;
    }
  }
  // Warmup steps stay unscaled.
  c.full_warmup_steps = 10;
  EXPECT_EQ(PlanPath(c, 12, kSeed, 5).scale, std::vector<float>(12, 1.0f));
}

TEST(PathScheduleScaling, NoneLeavesScaleOne) {
  const PathScheduleConfig c = DefaultRaptrSchedule(12, 1000);
  ASSERT_EQ(c.scaling, PathScaling::kNone);
  for (int64_t step : {0, 300, 999}) {
    EXPECT_EQ(PlanPath(c, 12, kSeed, step).scale, std::vector<float>(12, 1.0f));
  }
}

// ---------------------------------------------------------------------------------------------
// Validation and parsing.

void ExpectInvalid(const PathScheduleConfig& c, int L, const std::string& field) {
  const absl::Status st = ValidatePathSchedule(c, L);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find(field), std::string::npos)
      << "message should name '" << field << "': " << st.message();
}

TEST(PathScheduleValidate, AcceptsBoundaries) {
  PathScheduleConfig c = DefaultRaptrSchedule(12, 1000);
  c.stages[0].path_length = 2;   // == |I|
  c.stages[3].path_length = 12;  // == L
  EXPECT_TRUE(ValidatePathSchedule(c, 12).ok());
}

TEST(PathScheduleValidate, RejectsPathLongerThanModel) {
  PathScheduleConfig c = DefaultRaptrSchedule(12, 1000);
  c.stages[1].path_length = 13;
  ExpectInvalid(c, 12, "stages[1].path_length");
  // The same schedule on a deeper model is fine.
  EXPECT_TRUE(ValidatePathSchedule(c, 13).ok());
}

TEST(PathScheduleValidate, RejectsPathShorterThanFixed) {
  PathScheduleConfig c = DefaultRaptrSchedule(12, 1000);
  c.stages[2].path_length = 1;
  ExpectInvalid(c, 12, "stages[2].path_length");
  // The lower bound is |I|: 3 is fine with two fixed layers, not with four.
  c.stages[2].path_length = 10;
  c.stages[0].path_length = 3;
  EXPECT_TRUE(ValidatePathSchedule(c, 12).ok());
  c.fixed_layers = {0, 5, 6, 11};
  ExpectInvalid(c, 12, "stages[0].path_length");
}

TEST(PathScheduleValidate, RejectsFixedLayerOutOfRange) {
  PathScheduleConfig c = DefaultRaptrSchedule(12, 1000);
  c.fixed_layers = {0, 12};
  ExpectInvalid(c, 12, "fixed_layers");
  c.fixed_layers = {-1, 11};
  ExpectInvalid(c, 12, "fixed_layers");
}

TEST(PathScheduleValidate, RejectsDuplicateFixedLayer) {
  PathScheduleConfig c = DefaultRaptrSchedule(12, 1000);
  c.fixed_layers = {0, 11, 0};
  ExpectInvalid(c, 12, "fixed_layers");
}

TEST(PathScheduleValidate, RejectsNonPositiveStageDuration) {
  PathScheduleConfig c = DefaultRaptrSchedule(12, 1000);
  c.stages[2].steps = 0;
  ExpectInvalid(c, 12, "stages[2].steps");
  c.stages[2].steps = -5;
  ExpectInvalid(c, 12, "stages[2].steps");
}

TEST(PathScheduleValidate, RejectsNoStagesAndNegativeWarmup) {
  PathScheduleConfig c = DefaultRaptrSchedule(12, 1000);
  c.stages.clear();
  ExpectInvalid(c, 12, "stages");
  c = DefaultRaptrSchedule(12, 1000);
  c.full_warmup_steps = -1;
  ExpectInvalid(c, 12, "full_warmup_steps");
}

TEST(PathScheduleParse, ParsesStages) {
  std::vector<RaptrStage> stages;
  ASSERT_TRUE(ParseStages("6:10,8:20", &stages).ok());
  ASSERT_EQ(stages.size(), 2u);
  EXPECT_EQ(stages[0].path_length, 6);
  EXPECT_EQ(stages[0].steps, 10);
  EXPECT_EQ(stages[1].path_length, 8);
  EXPECT_EQ(stages[1].steps, 20);
  // The default schedule round-trips through its text form.
  ASSERT_TRUE(ParseStages("6:250,8:250,10:250,12:250", &stages).ok());
  const PathScheduleConfig d = DefaultRaptrSchedule(12, 1000);
  ASSERT_EQ(stages.size(), d.stages.size());
  for (size_t i = 0; i < stages.size(); ++i) {
    EXPECT_EQ(stages[i].path_length, d.stages[i].path_length);
    EXPECT_EQ(stages[i].steps, d.stages[i].steps);
  }
}

TEST(PathScheduleParse, RejectsMalformed) {
  for (const char* text : {"6-10", "6:10,8-20", "6:10:3", "a:10", "6:b", "6:", ":10", ""}) {
    std::vector<RaptrStage> stages;
    const absl::Status st = ParseStages(text, &stages);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << "'" << text << "': " << st;
  }
}

}  // namespace
}  // namespace raptr
