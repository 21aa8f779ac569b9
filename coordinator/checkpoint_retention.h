// Checkpoint retention: which of a job's committed checkpoints to keep, and removing the files of
// the others from the job's checkpoint directory.
//
// A job keeps its newest `keep` usable checkpoints (a corrupt newest one falls back to the one
// before, so keeping a few bounds what a bad disk costs) and deletes the rest: first their
// records (one store transaction), then their directories, so a crash in between leaves files
// the store does not reference (swept at the next commit), never a record without its files.
// Generations older than the job's current one hold only superseded checkpoints once none of
// theirs is kept: their directories go too, checkpoints written but never committed included.
// Nothing outside checkpoint_root/<job id>/ is ever removed, whatever path a worker reported.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "coordinator/store/job_store.h"

namespace raptr {

// The records to drop from `all` (a job's checkpoints, any order): all but the newest `keep`
// usable ones, and the rejected ones no newer than the oldest of those (newer rejected ones stay,
// for the record). keep <= 0 keeps everything.
std::vector<CheckpointRecord> CheckpointsToDrop(const std::vector<CheckpointRecord>& all,
                                                int keep);

struct RetentionResult {
  std::vector<std::string> removed;  // directories removed
  std::vector<std::string> errors;   // what could not be removed, and why
};

// Removes, inside `job_dir` only: the directory of each dropped checkpoint, and each
// "generation-N" directory with N < current_generation that holds no kept checkpoint. A path
// outside job_dir is not touched (it is reported in errors); a missing one is not an error.
RetentionResult RemoveUnreferencedCheckpoints(const std::string& job_dir,
                                              const std::vector<CheckpointRecord>& dropped,
                                              const std::vector<CheckpointRecord>& kept,
                                              int64_t current_generation);

}  // namespace raptr
