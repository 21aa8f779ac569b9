// Job spec -> engine: turns a validated raptr.v1.JobSpec into the Trainer's TrainerConfig.
//
// The spec is the whole job's description and TrainerConfig the engine's, so the mapping is 1:1
// for every field the engine runs (model, data shards, mask id, training loop, optimizer, the
// schedule of every kind with its parameters and resolved stage steps, the seed). Conventions:
// - `training.batch` is the global micro-batch: TrainerConfig.batch gets it unchanged. Splitting
//   it over data-parallel ranks is the coordinator's business, not this function's.
// - `resources.min_workers`, `max_workers` and `priority` are scheduling fields: checked by
//   ValidateJobSpec, consumed by the coordinator, and not part of TrainerConfig.
// - `resources.backend` picks TrainerConfig.backend.kind (CPU or CUDA). A worker of a cluster
//   runs only jobs of its own backend (TrainerConfigForWorker); the coordinator schedules them so.
// - `model.vocab_size` is required by the spec (ValidateJobSpec), so it is never resolved from a
//   data directory's meta.json here; a caller that can read the data may cross-check it.
// - The weights' seed is `training.seed` (TrainerConfig.init_seed stays 0, "same as seed").
// - The local-run knobs of TrainerConfig (run_dir, resume, stop_after, log_every) are left at
//   their defaults for the caller to set.
// Any set field this function does not know (a field added to job.proto later, or an unknown
// field carried by a proto parsed from the wire) is UNIMPLEMENTED naming it, never ignored.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/data_roots.h"
#include "raptr/v1/job.pb.h"
#include "worker/engine/trainer.h"

namespace raptr {

// The TrainerConfig that runs `spec`. REQUIRES: the spec's defaults are filled (ParseJobSpecYaml
// or ApplyJobSpecDefaults). Runs ValidateJobSpec first and returns its error; fields the engine
// cannot honour are INVALID_ARGUMENT or UNIMPLEMENTED naming the field. TrainerConfig.backend is
// the spec's resources.backend (CUDA: device 0, no TF32).
absl::StatusOr<TrainerConfig> TrainerConfigFromJobSpec(const v1::JobSpec& spec);

// TrainerConfigFromJobSpec for a worker that runs `worker` (`raptr-worker serve --backend
// --device`): TrainerConfig.backend is `worker` (its device, its TF32 setting). A job of the
// other backend (a CUDA job on a CPU worker, or a CPU job on a CUDA worker) is
// FAILED_PRECONDITION naming both: the coordinator places jobs only on workers of their backend.
absl::StatusOr<TrainerConfig> TrainerConfigForWorker(const v1::JobSpec& spec,
                                                     const BackendOptions& worker);

// Checks every data path of `cfg` (train and val shards) against this worker's `roots`
// (--data-root) and replaces each with its resolved form, so the engine opens the very file that
// was checked, not one a symlink leads to later. A path outside is INVALID_ARGUMENT naming its
// spec field ("data.train_shards[3]: ..."), and `cfg` is left unchanged. Call it before
// anything opens the data (TrainingSession::Create).
absl::Status ConfineTrainerData(const DataRoots& roots, TrainerConfig* cfg);

}  // namespace raptr
