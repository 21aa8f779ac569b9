// Path schedules: which blocks train at each step. RaPTr (shared/PAPER.md), full training, and
// the baselines the paper compares against: progressive layer dropping (PLD), LayerDrop
// (stochastic depth with a constant keep probability) and gradual stacking.
//
// A step's path is a pure function of (job seed, step): a restarted or re-grouped job replays
// exactly the same paths, and every data-parallel rank computes the same one without talking.
// Stacking's block copies at stage transitions are a pure function of the step too.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace raptr {

enum class PathSampling {
  kBernoulli,  // fixed layers on; every other layer on independently with prob q_s (the paper's)
  kExact,      // fixed layers plus a uniform subset of exactly p_s - |I| others
};
enum class PathScaling {
  kNone,             // kept blocks unscaled (default)
  kInverseKeepProb,  // kept non-fixed blocks scaled by 1/q_s while training
};

// Which per-block keep probability PLD uses (Zhang & He 2020, and DeepSpeed's implementation of
// it, which differ by one index).
enum class PldIndexing {
  // The paper's formula, unbiased: 0-based block l is kept with p_l = 1 - (l+1)(1-theta(t))/L and
  // scaled by 1/p_l; step t uses theta(t). The default: each kept block's scale is the inverse of
  // its own keep probability, so a block's expected output is its full output.
  kPaper,
  // DeepSpeed's code (modelingpreln_layerdrop.py): block l is kept with 1 - l(1-theta)/L (block 0
  // always) but scaled by 1/(1 - (l+1)(1-theta)/L), and step t uses theta(t-1) (theta = 1 at
  // steps 0 and 1): it keeps (1-theta) more blocks a step in expectation and over-scales each.
  kDeepSpeed,
};

struct RaptrStage {
  int path_length = 0;  // p_s: expected number of active blocks (stacking: k_s, the depth)
  int64_t steps = 0;    // T_s
};

struct PathScheduleConfig {
  enum class Kind {
    kFull,       // every block every step
    kRaptr,      // random paths of growing length (shared/PAPER.md)
    kPld,        // progressive layer dropping (Zhang & He 2020): keep probability decays
    kLayerDrop,  // every block kept independently with the constant probability keep_prob
    kStacking,   // gradual stacking (Reddi et al. 2023): the first k_s blocks, grown by copying
  } kind = Kind::kFull;
  // kRaptr: stages in order; steps after the last stay in it. kStacking: path_length is k_s, the
  // number of (bottom) blocks trained in stage s, non-decreasing. Unused by the other kinds.
  std::vector<RaptrStage> stages;
  // kRaptr (default {0, L-1}) and kLayerDrop (default none): blocks always on, never scaled.
  std::vector<int> fixed_layers;
  PathSampling sampling = PathSampling::kBernoulli;  // kRaptr only
  PathScaling scaling = PathScaling::kNone;          // kRaptr only
  // Full-model steps before stage 1 (kRaptr) or before dropping starts (kLayerDrop). kPld and
  // kStacking have no warmup (PLD's keep probability starts at 1 by itself; a full model first
  // is the opposite of stacking): it must be 0 for them.
  int64_t full_warmup_steps = 0;
  // kPld: theta(t) = (1 - pld_theta_bar) * exp(-pld_gamma * t) + pld_theta_bar, t = step.
  double pld_theta_bar = 0.5;  // in (0, 1]
  double pld_gamma = 0.001;    // >= 0
  PldIndexing pld_indexing = PldIndexing::kPaper;
  // kLayerDrop: the constant keep probability of every block not fixed, in (0, 1], and whether
  // kept blocks' outputs are scaled by 1 / keep_prob while training (stochastic-depth style).
  // Unscaled by default, as Fan et al.'s LayerDrop and the job spec's default: every entry point
  // (job specs, `raptr-worker train`) runs the same LayerDrop unless told otherwise.
  double keep_prob = 0.75;
  bool layerdrop_scale = false;
};

struct PathPlan {
  // 0-based RaPTr or stacking stage; -1 during full warmup, full training, PLD and LayerDrop.
  int stage = 0;
  // kRaptr: q_s of the non-fixed layers. kPld: theta(t), the keep probability of the top block.
  // kLayerDrop: keep_prob. kFull, kStacking and warmup: 1.
  double keep_prob = 1.0;
  std::vector<bool> active;  // size L
  std::vector<float> scale;  // size L
  int num_active() const;
};

// "full", "raptr", "pld", "layerdrop", "stacking".
const char* PathScheduleKindName(PathScheduleConfig::Kind kind);
// The schedule and every parameter it runs with, on one line, as a person reads it: e.g.
// "raptr stages 6:1625,8:1625,10:1625,12:1625 fixed {0,11} sampling bernoulli scaling none" or
// "pld theta_bar 0.5 gamma 0.00871 indexing paper". A PLD gamma solved from mean_keep shows the
// solved value: this is how a user sees it.
std::string DescribePathSchedule(const PathScheduleConfig& schedule);
// The inverse of PathScheduleKindName; errors name `schedule.kind` and the accepted values.
absl::Status ParsePathScheduleKind(const std::string& text, PathScheduleConfig::Kind* out);

// The paper's default for L layers and `total_steps` steps: path lengths L/2, 2L/3, 5L/6, L
// (rounded to nearest), equal durations (the last stage absorbs the remainder); fixed {0, L-1}.
PathScheduleConfig DefaultRaptrSchedule(int num_layers, int64_t total_steps);

// Gradual stacking's default for L layers and `total_steps` steps: depths L/2, 3L/4, L (rounded
// to nearest, at least 1), equal durations (the last stage absorbs the remainder); e.g. 6-9-12
// for L=12.
PathScheduleConfig DefaultStackingSchedule(int num_layers, int64_t total_steps);

// Parses "6:250,8:250,10:250,12:250" (path_length:steps) into stages.
absl::Status ParseStages(const std::string& text, std::vector<RaptrStage>* out);

// Checks the schedule fits a model of `num_layers` blocks. kRaptr: path lengths in [|I|, L],
// fixed layers in range and distinct, durations positive. kPld: pld_theta_bar in (0, 1],
// pld_gamma >= 0. kLayerDrop: keep_prob in (0, 1]. kStacking: depths in [1, L] and
// non-decreasing, durations positive. Fields a kind does not use (stages for kPld / kLayerDrop,
// fixed_layers for all but kRaptr, a warmup for kPld / kStacking) must be left empty / 0, so a
// misplaced setting is an error rather than silently ignored. Errors are INVALID_ARGUMENT and
// name the offending field ("schedule.stages[1].path_length ...").
absl::Status ValidatePathSchedule(const PathScheduleConfig& config, int num_layers);

// The path of 0-based step `step`. REQUIRES: ValidatePathSchedule(config, num_layers).ok().
//   kPld: block l (0-based) is kept with probability PldKeepProbability(config, L, step, l), an
//     independent Bernoulli per (seed, step, block); kept blocks are scaled by 1 / that.
//   kLayerDrop: every block kept independently with probability keep_prob; kept blocks scaled
//     by 1 / keep_prob when layerdrop_scale.
//   kStacking: exactly the first k_s blocks of the current stage, scale 1.
PathPlan PlanPath(const PathScheduleConfig& config, int num_layers, uint64_t seed, int64_t step);

// PLD's global keep probability at `step`: theta(t) = (1 - theta_bar) * exp(-gamma * t) +
// theta_bar with t = step (kPaper) or t = step - 1, and 1 at step 0 (kDeepSpeed).
double PldTheta(const PathScheduleConfig& config, int64_t step);
// PLD's keep probability of 0-based block `layer` at `step`: kPaper: with i = layer + 1 (1-based,
// as in Zhang & He), p_i = 1 - i * (1 - theta) / L (block 0 keeps most often; the top block keeps
// with probability theta). kDeepSpeed: 1 - layer * (1 - theta) / L (block 0 always).
double PldKeepProbability(const PathScheduleConfig& config, int num_layers, int64_t step,
                          int layer);
// The factor a kept block's output is scaled by: 1 / (1 - (layer + 1) * (1 - theta) / L) for
// both indexings (for kPaper, the inverse of its keep probability).
double PldScale(const PathScheduleConfig& config, int num_layers, int64_t step, int layer);
// PLD's expected share of active blocks over steps [0, T) (no warmup), in closed form: what
// LayerDropKeepProbMatchingRaptr computes for a PLD config, O(1) instead of O(T L).
double PldMeanShare(const PathScheduleConfig& config, int num_layers, int64_t total_steps);
// The gamma with which PLD's expected share of active blocks over steps [0, total_steps) is
// `mean_keep` (its blocks' FLOPs then match a schedule with that share: RaPTr's default 6-8-10-12
// has 0.75), theta_bar and indexing as in `config`. INVALID_ARGUMENT naming
// schedule.pld.mean_keep when no gamma reaches it (above 1, or below what theta_bar allows even
// at once: the share at an immediate decay).
absl::StatusOr<double> PldGammaForMeanKeep(PathScheduleConfig config, int num_layers,
                                           int64_t total_steps, double mean_keep);

// The constant LayerDrop keep probability that trains, in expectation, as many blocks over
// steps [0, total_steps) as the schedule `raptr` does, so both spend the same FLOPs on average (a
// step's FLOPs are affine in its number of active blocks). A RaPTr step of stage s trains p_s
// blocks in expectation (both sampling modes), a warmup step L; steps past the last stage stay
// in it. Returns (sum of expected active blocks) / (L * total_steps), e.g. 9/12 = 0.75 for
// DefaultRaptrSchedule(12, T) (6-8-10-12). Meant for a LayerDrop config without warmup. Other
// kinds work too (full: 1; stacking: k_s a step; PLD: sum of its keep probabilities, O(steps);
// LayerDrop: its own keep_prob after any warmup). Returns 1 when total_steps <= 0.
// REQUIRES: ValidatePathSchedule(raptr, num_layers).ok().
double LayerDropKeepProbMatchingRaptr(const PathScheduleConfig& raptr, int num_layers,
                                      int64_t total_steps);

// Gradual stacking's block copies to apply BEFORE step `step` runs, as (dst, src) block pairs:
// empty except at the first step of a stage s > 0 whose depth grows from a = k_{s-1} to b = k_s.
// There the n = b - a new blocks a..b-1 are initialised from the top n trained blocks, in
// order: new block a + j copies block (a - n + j) mod a (the mathematical, non-negative modulo),
// j = 0..n-1. When n <= a these are blocks a-n..a-1 (e.g. 6 -> 9: blocks 6,7,8 copy 3,4,5);
// when more blocks are added than exist, the trained stack is repeated downward from its top
// so the highest new block still copies the top block (e.g. 2 -> 5: blocks 2,3,4 copy 1,0,1).
// Every source is below a and every destination at or above it, so the copies read only
// pre-transition weights whatever their order. Empty for every kind but kStacking.
// REQUIRES: ValidatePathSchedule(config, num_layers).ok().
std::vector<std::pair<int, int>> StackingCopiesAtStep(const PathScheduleConfig& config,
                                                      int num_layers, int64_t step);

}  // namespace raptr
