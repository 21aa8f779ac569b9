// Path schedules. RaPTr: the paper's default stages, stage boundaries and warmup, exact and
// Bernoulli sampling statistics, purity in (seed, step), scaling, validation and parsing. The
// baselines: PLD keep probabilities against DeepSpeed's formula (exactly and statistically),
// LayerDrop marginals and its FLOPs-matched keep probability, stacking's stages and block copies.
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

TEST(PathScheduleDefault, StagesEndAtFlooredQuarters) {
  // Stage s ends after floor(T * (s+1) / 4) steps, as job specs resolve equal fractions.
  const PathScheduleConfig c = DefaultRaptrSchedule(12, 1003);
  EXPECT_EQ(Durations(c), (std::vector<int64_t>{250, 251, 251, 251}));
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

// ---------------------------------------------------------------------------------------------
// Progressive layer dropping.

PathScheduleConfig Pld(double theta_bar = 0.5, double gamma = 0.001) {
  PathScheduleConfig c;
  c.kind = PathScheduleConfig::Kind::kPld;
  c.pld_theta_bar = theta_bar;
  c.pld_gamma = gamma;
  return c;
}

// Zhang & He's formula, written out independently of the implementation.
double PldFormula(double theta_bar, double gamma, int L, int64_t t, int layer_1_based) {
  const double theta = (1 - theta_bar) * std::exp(-gamma * static_cast<double>(t)) + theta_bar;
  return 1 - layer_1_based * (1 - theta) / L;
}

TEST(PathSchedulePld, KeepProbabilityMatchesFormula) {
  for (const auto& [theta_bar, gamma] :
       std::vector<std::pair<double, double>>{{0.5, 0.001}, {0.3, 0.01}, {1.0, 0.001}}) {
    const PathScheduleConfig c = Pld(theta_bar, gamma);
    ASSERT_TRUE(ValidatePathSchedule(c, 12).ok());
    for (int L : {1, 12, 24}) {
      for (int64_t t : {0, 1, 10, 100, 693, 1000, 5000, 100000}) {
        const double theta =
            (1 - theta_bar) * std::exp(-gamma * static_cast<double>(t)) + theta_bar;
        EXPECT_NEAR(PldTheta(c, t), theta, 1e-12) << "t " << t;
        for (int l = 0; l < L; ++l) {
          EXPECT_NEAR(PldKeepProbability(c, L, t, l), PldFormula(theta_bar, gamma, L, t, l + 1),
                      1e-12)
              << "L " << L << " t " << t << " layer " << l;
        }
        // The top block keeps with probability theta(t); keep probabilities fall with depth.
        EXPECT_NEAR(PldKeepProbability(c, L, t, L - 1), theta, 1e-12);
        for (int l = 1; l < L; ++l) {
          EXPECT_LE(PldKeepProbability(c, L, t, l), PldKeepProbability(c, L, t, l - 1));
        }
        EXPECT_EQ(PlanPath(c, L, kSeed, t).keep_prob, PldTheta(c, t));
      }
    }
  }
  // Spot values at the defaults: t = 0 keeps everything; t -> infinity reaches theta_bar = 0.5
  // at the top and 1 - 1/(2L) at the bottom.
  const PathScheduleConfig c = Pld();
  for (int l = 0; l < 12; ++l) EXPECT_EQ(PldKeepProbability(c, 12, 0, l), 1.0);
  EXPECT_NEAR(PldKeepProbability(c, 12, 1000000, 11), 0.5, 1e-12);
  EXPECT_NEAR(PldKeepProbability(c, 12, 1000000, 0), 1 - 0.5 / 12, 1e-12);
  // t = 1000 (gamma t = 1): theta = 0.5 e^-1 + 0.5; layer 6 (1-based) keeps 1 - 6 (1 - theta)/12.
  const double theta = 0.5 * std::exp(-1.0) + 0.5;
  EXPECT_NEAR(PldKeepProbability(c, 12, 1000, 5), 1 - 0.5 * (1 - theta), 1e-12);
}

TEST(PathSchedulePld, StepZeroKeepsEveryBlockUnscaled) {
  const PathPlan plan = PlanPath(Pld(), 12, kSeed, 0);
  EXPECT_EQ(plan.stage, -1);
  EXPECT_EQ(plan.active, std::vector<bool>(12, true));
  EXPECT_EQ(plan.scale, std::vector<float>(12, 1.0f));
}

// Frequency of each block being kept at `step`, over `seeds` seeds, within 5 standard errors
// of PldKeepProbability.
void CheckPldMarginalsAt(const PathScheduleConfig& c, int L, int64_t step, int seeds) {
  std::vector<int64_t> count(L, 0);
  for (int seed = 0; seed < seeds; ++seed) {
    const PathPlan plan = PlanPath(c, L, static_cast<uint64_t>(seed) * 7919 + 1, step);
    for (int l = 0; l < L; ++l) count[l] += plan.active[l];
  }
  double worst_z = 0;
  for (int l = 0; l < L; ++l) {
    const double p = PldKeepProbability(c, L, step, l);
    const double freq = static_cast<double>(count[l]) / seeds;
    if (p == 1.0) {
      EXPECT_EQ(count[l], seeds) << "step " << step << " layer " << l;
      continue;
    }
    const double se = std::sqrt(p * (1 - p) / seeds);
    worst_z = std::max(worst_z, std::abs(freq - p) / se);
    EXPECT_LT(std::abs(freq - p), 5 * se)
        << "step " << step << " layer " << l << " freq " << freq << " p " << p;
  }
  ::testing::Test::RecordProperty("pld_max_z_step" + std::to_string(step), std::to_string(worst_z));
}

TEST(PathSchedulePld, MarginalsOverSeedsMatchFormula) {
  const PathScheduleConfig c = Pld();
  for (int64_t step : {0, 300, 1000, 3000, 20000}) CheckPldMarginalsAt(c, 12, step, 20000);
  // A faster decay and a lower floor, on a deeper model.
  CheckPldMarginalsAt(Pld(0.2, 0.01), 24, 150, 20000);
}

TEST(PathSchedulePld, MarginalsOverStepsMatchFormula) {
  // Long after the decay (gamma t > 100), theta(t) = theta_bar to double precision, so every
  // step of one seed has the same keep probabilities: frequencies over 20000 steps.
  const PathScheduleConfig c = Pld();
  const int L = 12;
  const int64_t first = 200000, n = 20000;
  std::vector<int64_t> count(L, 0);
  for (int64_t step = first; step < first + n; ++step) {
    const PathPlan plan = PlanPath(c, L, kSeed, step);
    for (int l = 0; l < L; ++l) count[l] += plan.active[l];
  }
  for (int l = 0; l < L; ++l) {
    const double p = 1 - (l + 1) * 0.5 / L;
    ASSERT_NEAR(PldKeepProbability(c, L, first, l), p, 1e-15);
    const double se = std::sqrt(p * (1 - p) / n);
    const double freq = static_cast<double>(count[l]) / n;
    EXPECT_LT(std::abs(freq - p), 5 * se) << "layer " << l << " freq " << freq << " p " << p;
  }
}

TEST(PathSchedulePld, KeptBlocksScaledByInverseKeepProbability) {
  const PathScheduleConfig c = Pld();
  int kept = 0, skipped = 0;
  for (int64_t step : {1, 50, 500, 1000, 4000, 100000}) {
    for (uint64_t seed = 1; seed <= 20; ++seed) {
      const PathPlan plan = PlanPath(c, 12, seed, step);
      EXPECT_EQ(plan.stage, -1);
      for (int l = 0; l < 12; ++l) {
        if (plan.active[l]) {
          ++kept;
          EXPECT_EQ(plan.scale[l], static_cast<float>(1.0 / PldKeepProbability(c, 12, step, l)))
              << "step " << step << " layer " << l;
          EXPECT_GE(plan.scale[l], 1.0f);
        } else {
          ++skipped;
          EXPECT_EQ(plan.scale[l], 1.0f);
        }
      }
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(skipped, 0);
  // theta_bar = 1: nothing is ever dropped and nothing scaled.
  for (int64_t step : {0, 1000, 100000}) {
    const PathPlan plan = PlanPath(Pld(1.0, 0.001), 12, kSeed, step);
    EXPECT_EQ(plan.num_active(), 12);
    EXPECT_EQ(plan.scale, std::vector<float>(12, 1.0f));
  }
}

// DeepSpeed's indexing (modelingpreln_layerdrop.py), written out independently: p starts at 1,
// each layer draws with the current p, then p -= (1 - theta)/L, and the layer is scaled by
// 1/(the decremented p); theta is DeepSpeed's state, updated from the step before.
TEST(PathSchedulePld, DeepSpeedIndexingKeepsBeforeItDecrements) {
  PathScheduleConfig c = Pld(0.5, 0.01);
  c.pld_indexing = PldIndexing::kDeepSpeed;
  const int L = 12;
  for (int64_t step : {0, 1, 2, 100, 1000}) {
    const double theta = step <= 1 ? 1.0 : (1 - 0.5) * std::exp(-0.01 * (step - 1)) + 0.5;
    EXPECT_DOUBLE_EQ(PldTheta(c, step), theta) << step;
    double p = 1.0;
    const double decrement = (1 - theta) / L;
    for (int l = 0; l < L; ++l) {
      EXPECT_NEAR(PldKeepProbability(c, L, step, l), p, 1e-15) << step << " " << l;
      p -= decrement;
      EXPECT_NEAR(PldScale(c, L, step, l), 1 / p, 1e-12) << step << " " << l;
    }
  }
  // Block 0 is always kept, and kept blocks carry DeepSpeed's scale.
  for (int64_t step = 0; step < 2000; ++step) {
    const PathPlan plan = PlanPath(c, L, kSeed, step);
    ASSERT_TRUE(plan.active[0]);
    for (int l = 0; l < L; ++l) {
      if (plan.active[l]) {
        ASSERT_EQ(plan.scale[l], static_cast<float>(PldScale(c, L, step, l)));
      }
    }
  }
  // It keeps (1 - theta) more blocks a step than the paper's indexing: 9.25 against 8.75 of 12
  // at theta = 0.5.
  PathScheduleConfig paper = Pld(0.5, 50);
  PathScheduleConfig deepspeed = paper;
  deepspeed.pld_indexing = PldIndexing::kDeepSpeed;
  double kept_paper = 0, kept_deepspeed = 0;
  for (int l = 0; l < L; ++l) {
    kept_paper += PldKeepProbability(paper, L, 1000, l);
    kept_deepspeed += PldKeepProbability(deepspeed, L, 1000, l);
  }
  EXPECT_NEAR(kept_paper, 8.75, 1e-12);
  EXPECT_NEAR(kept_deepspeed, 9.25, 1e-12);
  CheckPldMarginalsAt(c, L, 300, 20000);
}

// PLD matched to a FLOPs budget: the gamma whose mean share of active blocks over the job is the
// target, for both indexings and several lengths; impossible targets are named.
TEST(PathSchedulePld, GammaForMeanKeepMatchesTheShare) {
  const int L = 12;
  for (PldIndexing indexing : {PldIndexing::kPaper, PldIndexing::kDeepSpeed}) {
    for (int64_t steps : {1500, 3000}) {
      PathScheduleConfig c = Pld();
      c.pld_indexing = indexing;
      // DeepSpeed's indexing keeps at least 9.25 of 12 blocks at theta_bar 0.5: 0.75 is beyond it.
      const double target = indexing == PldIndexing::kPaper ? 0.75 : 0.8;
      absl::StatusOr<double> gamma = PldGammaForMeanKeep(c, L, steps, target);
      ASSERT_TRUE(gamma.ok()) << gamma.status();
      c.pld_gamma = *gamma;
      EXPECT_NEAR(LayerDropKeepProbMatchingRaptr(c, L, steps), target, 1e-9);
      if (indexing == PldIndexing::kPaper && steps == 1500) {
        // The review's estimate for 1500 steps (study.md: about 0.0087).
        EXPECT_NEAR(*gamma, 0.0087, 0.0005);
      }
    }
  }
  EXPECT_EQ(*PldGammaForMeanKeep(Pld(), L, 1000, 1.0), 0.0);
  // theta_bar 0.5 keeps 1 - (13/24) * 0.5 = 0.73 of the blocks at the least: 0.5 is out of reach.
  absl::StatusOr<double> unreachable = PldGammaForMeanKeep(Pld(), L, 1000, 0.5);
  EXPECT_EQ(unreachable.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unreachable.status().message().find("schedule.pld.mean_keep"), std::string::npos);
}

// The closed form of PLD's share equals the sum of its keep probabilities, step by step, block by
// block; it answers for a billion steps at once, and a one-step run can only keep everything.
TEST(PathSchedulePld, MeanShareClosedFormMatchesTheSum) {
  const int L = 12;
  for (PldIndexing indexing : {PldIndexing::kPaper, PldIndexing::kDeepSpeed}) {
    for (double gamma : {0.0, 1e-4, 0.003, 0.5}) {
      for (int64_t T : {1, 2, 3, 700}) {
        PathScheduleConfig c = Pld(0.3, gamma);
        c.pld_indexing = indexing;
        double blocks = 0;
        for (int64_t t = 0; t < T; ++t) {
          for (int l = 0; l < L; ++l) blocks += PldKeepProbability(c, L, t, l);
        }
        EXPECT_NEAR(PldMeanShare(c, L, T), blocks / (L * static_cast<double>(T)), 1e-12)
            << "gamma " << gamma << " T " << T;
      }
    }
  }
  absl::StatusOr<double> huge = PldGammaForMeanKeep(Pld(), L, int64_t{1} << 30, 0.75);
  ASSERT_TRUE(huge.ok()) << huge.status();
  PathScheduleConfig c = Pld(0.5, *huge);
  EXPECT_NEAR(PldMeanShare(c, L, int64_t{1} << 30), 0.75, 1e-9);
  EXPECT_EQ(*PldGammaForMeanKeep(Pld(), L, 1, 1.0), 0.0);
  absl::StatusOr<double> one_step = PldGammaForMeanKeep(Pld(), L, 1, 0.9);
  ASSERT_FALSE(one_step.ok());
  EXPECT_NE(one_step.status().message().find("keeps every block whatever its gamma"),
            std::string_view::npos)
      << one_step.status();
}

TEST(PathSchedulePld, PureInSeedAndStepAndIndependentOfRaptrDraws) {
  const PathScheduleConfig c = Pld(0.5, 0.01);
  std::vector<std::vector<bool>> paths;
  for (int64_t step = 0; step < 400; ++step) paths.push_back(PlanPath(c, 12, kSeed, step).active);
  for (int64_t step = 399; step >= 0; --step) {
    ASSERT_EQ(PlanPath(c, 12, kSeed, step).active, paths[step]) << "step " << step;
  }
  int differing = 0;
  for (int64_t step = 200; step < 400; ++step) {
    differing += PlanPath(c, 12, kSeed + 1, step).active != paths[step];
  }
  EXPECT_GT(differing, 100) << "of 200 steps";
  // PLD and LayerDrop draw from their own domains: with equal keep probabilities their paths
  // still differ (same-domain draws would give identical paths).
  PathScheduleConfig flat = Pld(0.5, 1e9);  // theta = 0.5 from step 1 on
  PathScheduleConfig drop;
  drop.kind = PathScheduleConfig::Kind::kLayerDrop;
  drop.keep_prob = 0.5;
  int same = 0;
  for (int64_t step = 1; step < 201; ++step) {
    const PathPlan p = PlanPath(flat, 1, kSeed, step), q = PlanPath(drop, 1, kSeed, step);
    ASSERT_EQ(PldKeepProbability(flat, 1, step, 0), 0.5);
    same += p.active == q.active;
  }
  EXPECT_LT(same, 140) << "of 200 single-block paths agree";
}

// ---------------------------------------------------------------------------------------------
// LayerDrop.

PathScheduleConfig LayerDrop(double keep, bool scale = true) {
  PathScheduleConfig c;
  c.kind = PathScheduleConfig::Kind::kLayerDrop;
  c.keep_prob = keep;
  c.layerdrop_scale = scale;
  return c;
}

TEST(PathScheduleLayerDrop, Marginals) {
  for (double keep : {0.75, 0.3}) {
    SCOPED_TRACE("keep " + std::to_string(keep));
    const PathScheduleConfig c = LayerDrop(keep);
    ASSERT_TRUE(ValidatePathSchedule(c, 12).ok());
    const int L = 12;
    const int64_t n = 20000;
    std::vector<int64_t> count(L, 0);
    double length_sum = 0;
    for (int64_t step = 0; step < n; ++step) {
      const PathPlan plan = PlanPath(c, L, kSeed, step);
      ASSERT_EQ(plan.stage, -1);
      ASSERT_EQ(plan.keep_prob, keep);
      for (int l = 0; l < L; ++l) count[l] += plan.active[l];
      length_sum += plan.num_active();
    }
    const double se = std::sqrt(keep * (1 - keep) / n);
    for (int l = 0; l < L; ++l) {
      const double freq = static_cast<double>(count[l]) / n;
      EXPECT_LT(std::abs(freq - keep), 5 * se) << "layer " << l << " freq " << freq;
    }
    const double length_se = std::sqrt(L * keep * (1 - keep) / n);
    EXPECT_LT(std::abs(length_sum / n - L * keep), 5 * length_se);
  }
}

TEST(PathScheduleLayerDrop, ScalingOption) {
  for (bool scale : {true, false}) {
    const PathScheduleConfig c = LayerDrop(0.75, scale);
    for (int64_t step = 0; step < 100; ++step) {
      const PathPlan plan = PlanPath(c, 12, kSeed, step);
      for (int l = 0; l < 12; ++l) {
        const float want = scale && plan.active[l] ? static_cast<float>(1 / 0.75) : 1.0f;
        ASSERT_EQ(plan.scale[l], want) << "step " << step << " layer " << l;
      }
    }
  }
  // keep_prob = 1: every block, unscaled (1/1).
  for (int64_t step = 0; step < 50; ++step) {
    const PathPlan plan = PlanPath(LayerDrop(1.0), 12, kSeed, step);
    ASSERT_EQ(plan.num_active(), 12);
    ASSERT_EQ(plan.scale, std::vector<float>(12, 1.0f));
  }
}

// Fixed layers are always on and never scaled; the others keep with keep_prob. The matching keep
// probability counts them: with I = {0, 11} and q = 0.7, 2 + 10 * 0.7 = 9 blocks a step, the
// default RaPTr schedule's 9 of 12.
TEST(PathScheduleLayerDrop, FixedLayersAreAlwaysOnAndUnscaled) {
  PathScheduleConfig c = LayerDrop(0.7, /*scale=*/true);
  c.fixed_layers = {0, 11};
  const int L = 12;
  const int64_t n = 20000;
  std::vector<int64_t> count(L, 0);
  for (int64_t step = 0; step < n; ++step) {
    const PathPlan plan = PlanPath(c, L, kSeed, step);
    ASSERT_TRUE(plan.active[0] && plan.active[11]) << "step " << step;
    ASSERT_EQ(plan.scale[0], 1.0f);
    ASSERT_EQ(plan.scale[11], 1.0f);
    for (int l = 1; l < 11; ++l) {
      count[l] += plan.active[l];
      ASSERT_EQ(plan.scale[l], plan.active[l] ? static_cast<float>(1 / 0.7) : 1.0f);
    }
  }
  const double se = std::sqrt(0.7 * 0.3 / n);
  for (int l = 1; l < 11; ++l) {
    EXPECT_LT(std::abs(static_cast<double>(count[l]) / n - 0.7), 5 * se) << "layer " << l;
  }
  EXPECT_NEAR(LayerDropKeepProbMatchingRaptr(c, L, 1000), 9.0 / 12, 1e-12);
  EXPECT_NEAR(LayerDropKeepProbMatchingRaptr(DefaultRaptrSchedule(12, 1000), L, 1000), 9.0 / 12,
              1e-12);
}

// One default in every entry point: unscaled, as Fan et al.'s LayerDrop and the job spec's.
TEST(PathScheduleLayerDrop, UnscaledByDefault) {
  PathScheduleConfig c;
  EXPECT_FALSE(c.layerdrop_scale);
}

TEST(PathScheduleLayerDrop, FullWarmupComesFirst) {
  PathScheduleConfig c = LayerDrop(0.5);
  c.full_warmup_steps = 20;
  ASSERT_TRUE(ValidatePathSchedule(c, 12).ok());
  for (int64_t step = 0; step < 20; ++step) {
    const PathPlan plan = PlanPath(c, 12, kSeed, step);
    ASSERT_EQ(plan.num_active(), 12);
    ASSERT_EQ(plan.scale, std::vector<float>(12, 1.0f));
  }
  int dropped = 0;
  for (int64_t step = 20; step < 60; ++step)
    dropped += PlanPath(c, 12, kSeed, step).num_active() < 12;
  EXPECT_GT(dropped, 30);
}

TEST(PathScheduleLayerDrop, KeepProbMatchingRaptr) {
  // The paper's 6-8-10-12 averages 9 of 12 layers.
  EXPECT_DOUBLE_EQ(LayerDropKeepProbMatchingRaptr(DefaultRaptrSchedule(12, 1000), 12, 1000), 0.75);
  EXPECT_DOUBLE_EQ(LayerDropKeepProbMatchingRaptr(DefaultRaptrSchedule(24, 4000), 24, 4000),
                   0.75);  // 12-16-20-24
  // Sampling mode and the fixed layers do not change the expectation (p_s either way).
  PathScheduleConfig exact = DefaultRaptrSchedule(12, 1000);
  exact.sampling = PathSampling::kExact;
  exact.fixed_layers = {0};
  EXPECT_DOUBLE_EQ(LayerDropKeepProbMatchingRaptr(exact, 12, 1000), 0.75);
  // A full warmup counts L blocks a step: (100 * 12 + 250 * (6 + 8 + 10 + 12)) / (12 * 1100).
  PathScheduleConfig warm = DefaultRaptrSchedule(12, 1000);
  warm.full_warmup_steps = 100;
  EXPECT_DOUBLE_EQ(LayerDropKeepProbMatchingRaptr(warm, 12, 1100), 10200.0 / 13200.0);
  // A run shorter than the schedule stops in it; a longer one stays in the last stage.
  const PathScheduleConfig d = DefaultRaptrSchedule(12, 1000);
  EXPECT_DOUBLE_EQ(LayerDropKeepProbMatchingRaptr(d, 12, 500), 7.0 / 12);
  EXPECT_DOUBLE_EQ(LayerDropKeepProbMatchingRaptr(d, 12, 2000), 21000.0 / 24000);
  // Full training is 1, as is an empty run.
  EXPECT_EQ(LayerDropKeepProbMatchingRaptr(PathScheduleConfig{}, 12, 1000), 1.0);
  EXPECT_EQ(LayerDropKeepProbMatchingRaptr(d, 12, 0), 1.0);
  // Other kinds: stacking trains k_s blocks a step; LayerDrop its keep probability; PLD the
  // mean of its keep probabilities (gamma = 1e9: theta = theta_bar from step 1 on).
  EXPECT_DOUBLE_EQ(LayerDropKeepProbMatchingRaptr(DefaultStackingSchedule(12, 900), 12, 900),
                   9.0 / 12);
  EXPECT_DOUBLE_EQ(LayerDropKeepProbMatchingRaptr(LayerDrop(0.6), 12, 1000), 0.6);
  EXPECT_NEAR(LayerDropKeepProbMatchingRaptr(Pld(0.5, 1e9), 12, 1001),
              (12 + 1000 * (12 - 13 * 0.5 / 2)) / (12.0 * 1001), 1e-12);
  EXPECT_DOUBLE_EQ(LayerDropKeepProbMatchingRaptr(Pld(0.5, 0.0), 12, 1000), 1.0);
  // Cross-check against the plans: exact sampling trains exactly p_s blocks a step, so the
  // blocks it trains over an odd-sized run equal L * keep * steps.
  PathScheduleConfig odd = DefaultRaptrSchedule(12, 1003);
  odd.sampling = PathSampling::kExact;
  odd.full_warmup_steps = 7;
  int64_t blocks = 0;
  for (int64_t step = 0; step < 1010; ++step) blocks += PlanPath(odd, 12, kSeed, step).num_active();
  EXPECT_NEAR(LayerDropKeepProbMatchingRaptr(odd, 12, 1010) * 12 * 1010,
              static_cast<double>(blocks), 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Gradual stacking.

PathScheduleConfig Stacking(std::vector<RaptrStage> stages) {
  PathScheduleConfig c;
  c.kind = PathScheduleConfig::Kind::kStacking;
  c.stages = std::move(stages);
  return c;
}

using Copies = std::vector<std::pair<int, int>>;

TEST(PathScheduleStacking, DefaultSchedule) {
  const PathScheduleConfig c = DefaultStackingSchedule(12, 900);
  EXPECT_EQ(c.kind, PathScheduleConfig::Kind::kStacking);
  EXPECT_EQ(Lengths(c), (std::vector<int>{6, 9, 12}));
  EXPECT_EQ(Durations(c), (std::vector<int64_t>{300, 300, 300}));
  EXPECT_TRUE(c.fixed_layers.empty());
  EXPECT_TRUE(ValidatePathSchedule(c, 12).ok());
  EXPECT_EQ(Lengths(DefaultStackingSchedule(24, 10)), (std::vector<int>{12, 18, 24}));
  EXPECT_EQ(Durations(DefaultStackingSchedule(24, 10)), (std::vector<int64_t>{3, 3, 4}));
  // Tiny models stay valid: depths at least 1, never shrinking.
  for (int L : {1, 2, 3}) {
    EXPECT_TRUE(ValidatePathSchedule(DefaultStackingSchedule(L, 30), L).ok()) << "L " << L;
  }
}

TEST(PathScheduleStacking, FirstBlocksOfEachStage) {
  const PathScheduleConfig c = DefaultStackingSchedule(12, 900);
  for (int64_t step = 0; step < 1000; ++step) {
    const PathPlan plan = PlanPath(c, 12, kSeed + static_cast<uint64_t>(step), step);
    const int stage = step < 300 ? 0 : step < 600 ? 1 : 2;
    const int k = c.stages[stage].path_length;
    ASSERT_EQ(plan.stage, stage) << "step " << step;
    ASSERT_EQ(plan.keep_prob, 1.0);
    for (int l = 0; l < 12; ++l) ASSERT_EQ(plan.active[l], l < k) << "step " << step;
    ASSERT_EQ(plan.scale, std::vector<float>(12, 1.0f));
  }
}

TEST(PathScheduleStacking, CopiesAtTransitionsOnly) {
  const PathScheduleConfig c = DefaultStackingSchedule(12, 900);
  for (int64_t step = 0; step < 1200; ++step) {
    const Copies copies = StackingCopiesAtStep(c, 12, step);
    if (step == 300) {
      // 6 -> 9: the top three trained blocks, in order.
      EXPECT_EQ(copies, (Copies{{6, 3}, {7, 4}, {8, 5}}));
    } else if (step == 600) {
      EXPECT_EQ(copies, (Copies{{9, 6}, {10, 7}, {11, 8}}));
    } else {
      ASSERT_TRUE(copies.empty()) << "step " << step;
    }
  }
  // Doubling copies the whole stack; more new blocks than trained ones repeat the stack
  // downward from its top; an unchanged depth copies nothing.
  EXPECT_EQ(StackingCopiesAtStep(Stacking({{3, 5}, {6, 5}}), 6, 5),
            (Copies{{3, 0}, {4, 1}, {5, 2}}));
  EXPECT_EQ(StackingCopiesAtStep(Stacking({{2, 5}, {5, 5}}), 5, 5),
            (Copies{{2, 1}, {3, 0}, {4, 1}}));
  EXPECT_EQ(StackingCopiesAtStep(Stacking({{1, 4}, {4, 4}}), 4, 4),
            (Copies{{1, 0}, {2, 0}, {3, 0}}));
  EXPECT_TRUE(StackingCopiesAtStep(Stacking({{3, 5}, {3, 5}, {4, 5}}), 4, 5).empty());
  EXPECT_EQ(StackingCopiesAtStep(Stacking({{3, 5}, {3, 5}, {4, 5}}), 4, 10), (Copies{{3, 2}}));
  // Other kinds never copy.
  PathScheduleConfig raptr = DefaultRaptrSchedule(12, 900);
  for (int64_t step : {0, 225, 250, 300, 600}) {
    EXPECT_TRUE(StackingCopiesAtStep(raptr, 12, step).empty());
  }
}

TEST(PathScheduleStacking, CopiesFillExactlyTheNewBlocksFromTrainedOnes) {
  // Every grow of every small schedule: each new block is a destination exactly once, every
  // source is a trained block, and the highest new block copies the top trained block.
  for (int a = 1; a <= 8; ++a) {
    for (int b = a; b <= 12; ++b) {
      const PathScheduleConfig c = Stacking({{a, 3}, {b, 3}});
      ASSERT_TRUE(ValidatePathSchedule(c, 12).ok());
      const Copies copies = StackingCopiesAtStep(c, 12, 3);
      ASSERT_EQ(static_cast<int>(copies.size()), b - a);
      for (int j = 0; j < b - a; ++j) {
        EXPECT_EQ(copies[j].first, a + j);
        EXPECT_GE(copies[j].second, 0);
        EXPECT_LT(copies[j].second, a);
        if (b - a <= a) {
          EXPECT_EQ(copies[j].second, a - (b - a) + j);
        }
      }
      if (b > a) {
        EXPECT_EQ(copies.back().second, a - 1);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The baselines' validation and kind names.

TEST(PathScheduleValidate, PldFields) {
  EXPECT_TRUE(ValidatePathSchedule(Pld(), 12).ok());
  EXPECT_TRUE(ValidatePathSchedule(Pld(1.0, 0.0), 12).ok());
  ExpectInvalid(Pld(0.0), 12, "schedule.pld_theta_bar");
  ExpectInvalid(Pld(1.5), 12, "schedule.pld_theta_bar");
  ExpectInvalid(Pld(std::nan("")), 12, "schedule.pld_theta_bar");
  ExpectInvalid(Pld(0.5, -0.1), 12, "schedule.pld_gamma");
  ExpectInvalid(Pld(0.5, INFINITY), 12, "schedule.pld_gamma");
  PathScheduleConfig c = Pld();
  c.stages = {{6, 10}};
  ExpectInvalid(c, 12, "schedule.stages");
  c = Pld();
  c.fixed_layers = {0};
  ExpectInvalid(c, 12, "schedule.fixed_layers");
  c = Pld();
  c.full_warmup_steps = 5;
  ExpectInvalid(c, 12, "schedule.full_warmup_steps");
}

TEST(PathScheduleValidate, LayerDropFields) {
  EXPECT_TRUE(ValidatePathSchedule(LayerDrop(1.0), 12).ok());
  EXPECT_TRUE(ValidatePathSchedule(LayerDrop(0.01), 12).ok());
  ExpectInvalid(LayerDrop(0.0), 12, "schedule.keep_prob");
  ExpectInvalid(LayerDrop(-0.5), 12, "schedule.keep_prob");
  ExpectInvalid(LayerDrop(1.01), 12, "schedule.keep_prob");
  ExpectInvalid(LayerDrop(std::nan("")), 12, "schedule.keep_prob");
  PathScheduleConfig c = LayerDrop(0.5);
  c.stages = {{6, 10}};
  ExpectInvalid(c, 12, "schedule.stages");
  c = LayerDrop(0.5);
  c.fixed_layers = {0, 11};  // LayerDrop with RaPTr's fixed layers
  EXPECT_TRUE(ValidatePathSchedule(c, 12).ok());
  c.fixed_layers = {0, 12};
  ExpectInvalid(c, 12, "schedule.fixed_layers: layer 12 is out of range");
  c.fixed_layers = {3, 3};
  ExpectInvalid(c, 12, "schedule.fixed_layers: layer 3 is listed twice");
}

TEST(PathScheduleValidate, StackingFields) {
  EXPECT_TRUE(ValidatePathSchedule(Stacking({{1, 1}, {12, 1}}), 12).ok());
  ExpectInvalid(Stacking({}), 12, "schedule.stages");
  ExpectInvalid(Stacking({{0, 10}, {12, 10}}), 12, "schedule.stages[0].path_length");
  ExpectInvalid(Stacking({{6, 10}, {13, 10}}), 12, "schedule.stages[1].path_length");
  ExpectInvalid(Stacking({{6, 10}, {9, 10}, {8, 10}}), 12, "schedule.stages[2].path_length");
  ExpectInvalid(Stacking({{6, 10}, {9, 0}}), 12, "schedule.stages[1].steps");
  PathScheduleConfig c = DefaultStackingSchedule(12, 900);
  c.fixed_layers = {0};
  ExpectInvalid(c, 12, "schedule.fixed_layers");
  c = DefaultStackingSchedule(12, 900);
  c.full_warmup_steps = 10;
  ExpectInvalid(c, 12, "schedule.full_warmup_steps");
}

TEST(PathScheduleKindNames, RoundTrip) {
  using Kind = PathScheduleConfig::Kind;
  for (Kind k : {Kind::kFull, Kind::kRaptr, Kind::kPld, Kind::kLayerDrop, Kind::kStacking}) {
    Kind parsed = Kind::kFull;
    ASSERT_TRUE(ParsePathScheduleKind(PathScheduleKindName(k), &parsed).ok());
    EXPECT_EQ(parsed, k);
  }
  EXPECT_STREQ(PathScheduleKindName(Kind::kLayerDrop), "layerdrop");
  Kind k = Kind::kFull;
  const absl::Status st = ParsePathScheduleKind("dropout", &k);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("schedule.kind"), std::string::npos) << st;
}

// What `raptrctl get` and the worker's log show: every parameter the schedule runs with.
TEST(DescribePathSchedule, NamesEveryParameter) {
  EXPECT_EQ(DescribePathSchedule(PathScheduleConfig{}), "full");
  EXPECT_EQ(DescribePathSchedule(DefaultRaptrSchedule(12, 600)),
            "raptr stages 6:150,8:150,10:150,12:150 fixed {0,11} sampling bernoulli scaling none");
  PathScheduleConfig exact = DefaultRaptrSchedule(12, 600);
  exact.sampling = PathSampling::kExact;
  exact.scaling = PathScaling::kInverseKeepProb;
  exact.full_warmup_steps = 60;
  EXPECT_EQ(DescribePathSchedule(exact),
            "raptr stages 6:150,8:150,10:150,12:150 fixed {0,11} sampling exact scaling "
            "inverse_keep_prob full_warmup 60");
  PathScheduleConfig pld = Pld(0.5, 0.0);
  pld.pld_gamma = *PldGammaForMeanKeep(pld, 12, 6500, 0.75);
  EXPECT_EQ(DescribePathSchedule(pld),
            absl::StrCat("pld theta_bar 0.5 gamma ", pld.pld_gamma, " indexing paper"));
  pld.pld_indexing = PldIndexing::kDeepSpeed;
  EXPECT_NE(DescribePathSchedule(pld).find("indexing deepspeed"), std::string::npos);
  PathScheduleConfig drop;
  drop.kind = PathScheduleConfig::Kind::kLayerDrop;
  drop.keep_prob = 0.7;
  drop.fixed_layers = {0, 11};
  EXPECT_EQ(DescribePathSchedule(drop), "layerdrop keep_prob 0.7 fixed {0,11} scale none");
  EXPECT_EQ(DescribePathSchedule(DefaultStackingSchedule(12, 600)),
            "stacking stages 6:200,9:200,12:200");
}

}  // namespace
}  // namespace raptr
