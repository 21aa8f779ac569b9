// StepPlanner: a job's step plans, evaluations and checkpoints as pure functions of its spec and
// the step. The coordinator streams what it computes; a restarted coordinator computes the same.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/optimizer_config.h"
#include "common/path_schedule.h"
#include "raptr/v1/control.pb.h"
#include "raptr/v1/job.pb.h"

namespace raptr {

class StepPlanner {
 public:
  // REQUIRES: `spec` passed ValidateJobSpec (the store only holds such specs). Errors name the
  // field the engine's planner rejects.
  static absl::StatusOr<StepPlanner> Create(const v1::JobSpec& spec);

  // The plan of 0-based step `step`: stage, active blocks and their scales (PlanPath), the
  // learning rate, the data seed and, at a stacking transition, the layer copies. Leaves
  // job_id and generation to the caller.
  void Fill(int64_t step, v1::StepPlan* plan) const;

  // Whether an evaluation follows `step`: every eval_every steps and after the last one.
  bool EvalAfter(int64_t step) const;
  // Whether a checkpoint follows `step`: every checkpoint_every steps and after the last one.
  bool CheckpointAfter(int64_t step) const;
  // Blocks to evaluate with after `step`: empty (the full model), except under stacking, whose
  // model at that step is its current stack.
  std::vector<int> EvalLayers(int64_t step) const;

  int64_t steps() const { return steps_; }
  int num_layers() const { return num_layers_; }
  int eval_batches() const { return eval_batches_; }

 private:
  StepPlanner() = default;

  PathScheduleConfig schedule_;
  OptimizerConfig optimizer_;
  int num_layers_ = 0;
  uint64_t seed_ = 0;
  int64_t steps_ = 0;
  int64_t eval_every_ = 0;
  int64_t checkpoint_every_ = 0;
  int eval_batches_ = 0;
};

}  // namespace raptr
