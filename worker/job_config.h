// Job spec -> engine: turns a validated raptr.v1.JobSpec into the Trainer's TrainerConfig.
//
// The spec is the whole job's description and TrainerConfig the engine's, so the mapping is 1:1
// for every field the engine runs (model, data shards, mask id, training loop, optimizer, the
// schedule of every kind with its parameters and resolved stage steps, the seed). Conventions:
// - `training.batch` is the global micro-batch: TrainerConfig.batch gets it unchanged. Splitting
//   it over data-parallel ranks is the coordinator's business, not this function's.
// - `resources.min_workers`, `max_workers` and `priority` are scheduling fields: checked by
//   ValidateJobSpec, consumed by the coordinator, and not part of TrainerConfig.
// - `resources.backend` must be CPU: the Trainer runs the CPU backend only (CUDA is
//   UNIMPLEMENTED).
// - `model.vocab_size` is required by the spec (ValidateJobSpec), so it is never resolved from a
//   data directory's meta.json here; a caller that can read the data may cross-check it.
// - The weights' seed is `training.seed` (TrainerConfig.init_seed stays 0, "same as seed").
// - The local-run knobs of TrainerConfig (run_dir, resume, stop_after, log_every) are left at
//   their defaults for the caller to set.
// Any set field this function does not know (a field added to job.proto later, or an unknown
// field carried by a proto parsed from the wire) is UNIMPLEMENTED naming it, never ignored.
#pragma once

#include "absl/status/statusor.h"
#include "raptr/v1/job.pb.h"
#include "worker/engine/trainer.h"

namespace raptr {

// The TrainerConfig that runs `spec`. REQUIRES: the spec's defaults are filled (ParseJobSpecYaml
// or ApplyJobSpecDefaults). Runs ValidateJobSpec first and returns its error; fields the engine
// cannot honour are INVALID_ARGUMENT or UNIMPLEMENTED naming the field, e.g.
// "resources.backend: CUDA is not supported by the trainer yet (use cpu)".
absl::StatusOr<TrainerConfig> TrainerConfigFromJobSpec(const v1::JobSpec& spec);

}  // namespace raptr
