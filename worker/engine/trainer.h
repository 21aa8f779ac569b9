// Trainer: the training loop of one process: batches, paths, micro-batch accumulation, AdamW,
// evaluation of the full model, checkpoints and bitwise resume.
//
// Everything a step consumes is a pure function of (seed, step): the data batch (TokenDataset),
// the path (PlanPath) and the learning rate. With checkpoints holding weights, moments and the
// step, a resumed run continues bitwise identically to one that never stopped.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/path_schedule.h"
#include "worker/engine/backend_factory.h"
#include "worker/engine/config.h"
#include "worker/engine/model.h"
#include "worker/engine/optimizer.h"

namespace raptr {

struct TrainerConfig {
  // The backend the session trains on (CPU by default). Not part of the run fingerprint: a job may
  // resume a CPU checkpoint on a GPU (both are fp32 master weights), within fp32 tolerance.
  BackendOptions backend;
  // How attention runs (model.h); nullopt: flash on a CUDA backend, materialized on the CPU
  // (ResolvedAttention). Not in the fingerprint either: both compute the same function.
  std::optional<AttentionKind> attention;
  ModelConfig model;
  OptimizerConfig optimizer;
  PathScheduleConfig schedule;
  std::vector<std::string> train_shards;
  std::vector<std::string> val_shards;
  int mask_id = -1;  // BERT: the tokenizer's [MASK] id
  int batch = 8;     // sequences per micro-batch (B)
  int seq = 64;      // tokens per sequence (T)
  int micro_batches = 1;
  int64_t steps = 100;
  uint64_t seed = 1;
  uint64_t init_seed = 0;  // weights; 0 means "same as seed"
  int64_t eval_every = 0;  // 0: only at the end
  int eval_batches = 8;
  int64_t checkpoint_every = 0;  // 0: only at the end (when run_dir is set)
  int64_t stop_after = -1;       // stop (with a checkpoint) after this step; tests use it
  std::string run_dir;           // checkpoints + metrics.csv; empty: nothing written
  bool resume = true;            // continue from run_dir's latest checkpoint when present
  int log_every = 10;            // progress line cadence on stderr; 0: silent
};

// A PathPlan's blocks and scales as the ActiveLayerSet a step runs.
ActiveLayerSet ToActiveSet(const PathPlan& plan);

// config.attention, or its default for config.backend.
AttentionKind ResolvedAttention(const TrainerConfig& config);

struct StepReport {
  int64_t step = 0;
  int stage = -1;
  int path_length = 0;
  double loss = 0;
  double lr = 0;
  double grad_norm = 0;
  int64_t tokens = 0;           // this step, all micro-batches
  double flops = 0;             // this step, spent
  double flops_full = 0;        // this step, had every block trained
  double total_flops = 0;       // cumulative
  double total_flops_full = 0;  // cumulative
  double seconds = 0;           // the training step alone (batch, forward, backward, optimizer)
  double eval_seconds = 0;
  double forward_seconds = 0;
  double backward_seconds = 0;
  double optimizer_seconds = 0;
  double eval_loss = -1;  // >= 0 when this step ran an evaluation
};

struct TrainResult {
  int64_t steps_done = 0;
  double final_loss = 0;
  double final_eval_loss = -1;
  double total_flops = 0;
  double total_flops_full = 0;
  double seconds = 0;
  std::vector<float> final_params;  // filled when keep_params was requested
};

using StepCallback = std::function<void(const StepReport&)>;

absl::Status Train(const TrainerConfig& config, const StepCallback& on_step, TrainResult* result,
                   bool keep_params = false);

// Gradual stacking's growth (StackingCopiesAtStep gives the pairs): for each (dst, src), block
// dst's parameters become a copy of block src's, and block dst starts with fresh AdamW state
// (zero moments, zero update count). Train() calls it at the start of each step that has copies,
// before its forward, so a run resumed from the checkpoint written at the end of the step before a
// transition still grows the model. `params` and the optimizer's moments are buffers of the
// optimizer's backend laid out by `layout`, copied on the device. Errors (nothing changed): a
// block out of range, or a destination that is also a source (the result would depend on the
// order).
absl::Status ApplyStackingCopies(const std::vector<std::pair<int, int>>& copies,
                                 const ParamLayout& layout, DeviceSpan<float> params,
                                 AdamWOptimizer<float>& optimizer);

}  // namespace raptr
