// The coordinator's StepPlanner: its plans are exactly what the local trainer would run (PlanPath,
// LearningRate, stacking copies) for every step, evaluation and checkpoint cadence follow the
// spec, and a second planner (a restarted coordinator) plans the same steps.
#include "coordinator/step_planner.h"

#include <string>
#include <vector>

#include "common/job_spec.h"
#include "gtest/gtest.h"
#include "tests/unit/test_files.h"
#include "worker/job_config.h"

namespace raptr {
namespace {

using ::raptr::testing::ExamplesDir;
using ::raptr::testing::ReadFile;

v1::JobSpec Example(const std::string& file) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(ReadFile(ExamplesDir() / file));
  EXPECT_TRUE(spec.ok()) << file << ": " << spec.status();
  return spec.ok() ? *spec : v1::JobSpec{};
}

TEST(StepPlanner, PlansWhatTheLocalTrainerRuns) {
  for (const char* file : {"gpt-raptr.yaml", "gpt-pld.yaml", "gpt-layerdrop.yaml",
                           "gpt-stacking.yaml", "gpt-full.yaml", "bert-raptr.yaml"}) {
    const v1::JobSpec spec = Example(file);
    absl::StatusOr<StepPlanner> planner = StepPlanner::Create(spec);
    ASSERT_TRUE(planner.ok()) << file << ": " << planner.status();
    absl::StatusOr<TrainerConfig> cfg = TrainerConfigFromJobSpec(spec);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    const int L = cfg->model.num_layers;
    int copies_seen = 0;
    for (int64_t step = 0; step < cfg->steps; ++step) {
      v1::StepPlan plan;
      planner->Fill(step, &plan);
      const PathPlan want = PlanPath(cfg->schedule, L, cfg->seed, step);
      ASSERT_EQ(plan.step(), step);
      ASSERT_EQ(plan.stage(), want.stage) << file << " step " << step;
      std::vector<int> active;
      std::vector<float> scales;
      for (int l = 0; l < L; ++l) {
        if (!want.active[l]) continue;
        active.push_back(l);
        scales.push_back(want.scale[l]);
      }
      ASSERT_EQ(std::vector<int>(plan.active_layers().begin(), plan.active_layers().end()), active)
          << file << " step " << step;
      if (plan.layer_scales_size() > 0) {
        ASSERT_EQ(std::vector<float>(plan.layer_scales().begin(), plan.layer_scales().end()),
                  scales);
      } else {
        for (float s : scales) ASSERT_EQ(s, 1.0f);
      }
      ASSERT_DOUBLE_EQ(plan.learning_rate(), LearningRate(cfg->optimizer, step));
      ASSERT_EQ(plan.data_seed(), cfg->seed);
      const auto want_copies = StackingCopiesAtStep(cfg->schedule, L, step);
      ASSERT_EQ(plan.layer_copies_size(), static_cast<int>(want_copies.size()));
      for (size_t i = 0; i < want_copies.size(); ++i) {
        EXPECT_EQ(plan.layer_copies(i).to_layer(), want_copies[i].first);
        EXPECT_EQ(plan.layer_copies(i).from_layer(), want_copies[i].second);
      }
      copies_seen += plan.layer_copies_size();
    }
    if (std::string(file) == "gpt-stacking.yaml") {
      EXPECT_GT(copies_seen, 0);
    }
  }
}

TEST(StepPlanner, EvaluationAndCheckpointCadence) {
  const v1::JobSpec spec = Example("gpt-raptr.yaml");  // 600 steps, both every 100
  absl::StatusOr<StepPlanner> planner = StepPlanner::Create(spec);
  ASSERT_TRUE(planner.ok());
  std::vector<int64_t> evals, checkpoints;
  for (int64_t step = 0; step < planner->steps(); ++step) {
    if (planner->EvalAfter(step)) evals.push_back(step);
    if (planner->CheckpointAfter(step)) checkpoints.push_back(step);
  }
  const std::vector<int64_t> want = {99, 199, 299, 399, 499, 599};
  EXPECT_EQ(evals, want);
  EXPECT_EQ(checkpoints, want);
  EXPECT_TRUE(planner->EvalLayers(599).empty());  // the full model

  v1::JobSpec only_last = spec;
  only_last.mutable_training()->set_eval_every(0);
  only_last.mutable_training()->set_checkpoint_every(0);
  absl::StatusOr<StepPlanner> last = StepPlanner::Create(only_last);
  ASSERT_TRUE(last.ok());
  for (int64_t step = 0; step + 1 < last->steps(); ++step) {
    ASSERT_FALSE(last->EvalAfter(step));
    ASSERT_FALSE(last->CheckpointAfter(step));
  }
  EXPECT_TRUE(last->EvalAfter(599));
  EXPECT_TRUE(last->CheckpointAfter(599));
}

TEST(StepPlanner, StackingEvaluatesItsCurrentStack) {
  absl::StatusOr<StepPlanner> planner = StepPlanner::Create(Example("gpt-stacking.yaml"));
  ASSERT_TRUE(planner.ok());
  // 6-9-12 over 600 steps: the first stage's model is blocks 0..5.
  EXPECT_EQ(planner->EvalLayers(99), (std::vector<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(planner->EvalLayers(599).size(), 12u);
}

TEST(StepPlanner, ARestartedPlannerPlansTheSameSteps) {
  const v1::JobSpec spec = Example("gpt-raptr.yaml");
  absl::StatusOr<StepPlanner> a = StepPlanner::Create(spec);
  absl::StatusOr<StepPlanner> b = StepPlanner::Create(spec);
  ASSERT_TRUE(a.ok() && b.ok());
  for (int64_t step : {0, 1, 149, 150, 300, 599}) {
    v1::StepPlan pa, pb;
    a->Fill(step, &pa);
    b->Fill(step, &pb);
    EXPECT_EQ(pa.SerializeAsString(), pb.SerializeAsString()) << step;
  }
}

}  // namespace
}  // namespace raptr
