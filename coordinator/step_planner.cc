// Step plans from a job spec (see step_planner.h).
#include "coordinator/step_planner.h"

#include "common/job_plan.h"
#include "common/status.h"

namespace raptr {

absl::StatusOr<StepPlanner> StepPlanner::Create(const v1::JobSpec& spec) {
  StepPlanner planner;
  ASSIGN_OR_RETURN(planner.schedule_, PathScheduleFromJobSpec(spec));
  ASSIGN_OR_RETURN(planner.optimizer_, OptimizerConfigFromJobSpec(spec));
  planner.num_layers_ = spec.model().layers();
  planner.seed_ = spec.training().seed();
  planner.steps_ = spec.training().steps();
  planner.eval_every_ = spec.training().eval_every();
  planner.checkpoint_every_ = spec.training().checkpoint_every();
  planner.eval_batches_ = spec.training().eval_batches();
  return planner;
}

void StepPlanner::Fill(int64_t step, v1::StepPlan* plan) const {
  const PathPlan path = PlanPath(schedule_, num_layers_, seed_, step);
  plan->set_step(step);
  plan->set_stage(path.stage);
  plan->clear_active_layers();
  plan->clear_layer_scales();
  bool all_one = true;
  for (int l = 0; l < num_layers_; ++l) {
    if (!path.active[l]) continue;
    plan->add_active_layers(l);
    plan->add_layer_scales(path.scale[l]);
    all_one = all_one && path.scale[l] == 1.0f;
  }
  // Scales of 1 are the common case (raptr's default, full training, stacking): send none.
  if (all_one) plan->clear_layer_scales();
  plan->set_learning_rate(LearningRate(optimizer_, step));
  plan->set_data_seed(seed_);
  plan->clear_layer_copies();
  for (const auto& [dst, src] : StackingCopiesAtStep(schedule_, num_layers_, step)) {
    v1::LayerCopy* copy = plan->add_layer_copies();
    copy->set_from_layer(src);
    copy->set_to_layer(dst);
  }
}

bool StepPlanner::EvalAfter(int64_t step) const {
  return step == steps_ - 1 || (eval_every_ > 0 && (step + 1) % eval_every_ == 0);
}

bool StepPlanner::CheckpointAfter(int64_t step) const {
  return step == steps_ - 1 || (checkpoint_every_ > 0 && (step + 1) % checkpoint_every_ == 0);
}

std::vector<int> StepPlanner::EvalLayers(int64_t step) const {
  std::vector<int> layers;
  if (schedule_.kind != PathScheduleConfig::Kind::kStacking) return layers;
  const PathPlan path = PlanPath(schedule_, num_layers_, seed_, step);
  for (int l = 0; l < num_layers_; ++l) {
    if (path.active[l]) layers.push_back(l);
  }
  return layers;
}

}  // namespace raptr
