// Path schedules: which blocks train at each step. RaPTr (shared/PAPER.md) and full training.
//
// A step's path is a pure function of (job seed, step): a restarted or re-grouped job replays
// exactly the same paths, and every data-parallel rank computes the same one without talking.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace raptr {

enum class PathSampling {
  kBernoulli,  // fixed layers on; every other layer on independently with prob q_s (the paper's)
  kExact,      // fixed layers plus a uniform subset of exactly p_s - |I| others
};
enum class PathScaling {
  kNone,             // kept blocks unscaled (default)
  kInverseKeepProb,  // kept non-fixed blocks scaled by 1/q_s while training
};

struct RaptrStage {
  int path_length = 0;  // p_s: expected number of active blocks
  int64_t steps = 0;    // T_s
};

struct PathScheduleConfig {
  enum class Kind { kFull, kRaptr } kind = Kind::kFull;
  std::vector<RaptrStage> stages;  // RaPTr stages in order; steps after the last stay in it
  std::vector<int> fixed_layers;   // I: always on (default {0, L-1})
  PathSampling sampling = PathSampling::kBernoulli;
  PathScaling scaling = PathScaling::kNone;
  int64_t full_warmup_steps = 0;  // full-model steps before stage 1
};

struct PathPlan {
  int stage = 0;             // 0-based RaPTr stage; -1 during full warmup / full training
  double keep_prob = 1.0;    // q_s of the non-fixed layers
  std::vector<bool> active;  // size L
  std::vector<float> scale;  // size L
  int num_active() const;
};

// The paper's default for L layers and `total_steps` steps: path lengths L/2, 2L/3, 5L/6, L
// (rounded to nearest), equal durations (the last stage absorbs the remainder); fixed {0, L-1}.
PathScheduleConfig DefaultRaptrSchedule(int num_layers, int64_t total_steps);

// Parses "6:250,8:250,10:250,12:250" (path_length:steps) into stages.
absl::Status ParseStages(const std::string& text, std::vector<RaptrStage>* out);

// Checks the schedule fits a model of `num_layers` blocks: path lengths in [|I|, L], fixed
// layers in range and distinct, durations positive. Errors name the offending field.
absl::Status ValidatePathSchedule(const PathScheduleConfig& config, int num_layers);

// The path of 0-based step `step`. REQUIRES: ValidatePathSchedule(config, num_layers).ok().
PathPlan PlanPath(const PathScheduleConfig& config, int num_layers, uint64_t seed, int64_t step);

}  // namespace raptr
