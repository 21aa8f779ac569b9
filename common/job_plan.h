// The parts of a job spec that decide each step's plan, in the engine's terms: the optimizer
// settings (whose schedule gives each step's learning rate) and the path schedule. The worker's
// trainer and the coordinator's step planner both build on these, so they cannot disagree.
#pragma once

#include "absl/status/statusor.h"
#include "common/optimizer_config.h"
#include "common/path_schedule.h"
#include "raptr/v1/job.pb.h"

namespace raptr {

// REQUIRES: `spec` passed ValidateJobSpec (defaults filled). Errors: an enum value this build does
// not know, naming the field.
absl::StatusOr<OptimizerConfig> OptimizerConfigFromJobSpec(const v1::JobSpec& spec);

// The schedule with every stage's step count resolved. REQUIRES: as above. Errors: as above, or a
// schedule the engine rejects (ValidatePathSchedule).
absl::StatusOr<PathScheduleConfig> PathScheduleFromJobSpec(const v1::JobSpec& spec);

}  // namespace raptr
