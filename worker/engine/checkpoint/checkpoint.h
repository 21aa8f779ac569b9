// Training checkpoints: HF-named weights plus optimizer moments and counters, committed atomically.
//
// On disk, under run_dir/checkpoints/:
//   step_%08d/model.safetensors  parameters under HF names (hf_names.h), loadable by transformers;
//                                metadata: format "pt", format_version, config (JSON), step
//   step_%08d/state.safetensors  adam.m, adam.v: raw F32 [layout.total()] in flat-layout order,
//                                so moments round-trip bitwise; metadata: format_version, config,
//                                step, seed, tokens_seen, flops_spent, flops_full, rng_state,
//                                extra_json
//   LATEST                       the name of the newest committed step directory
//
// Commit protocol: both files are written (each fsynced) into step_N.tmp/, which is renamed to
// step_N/ and its parent fsynced; only then is LATEST replaced (tmp + fsync + rename). LATEST is
// the commit point: a crash at any moment leaves LATEST naming a complete directory, and stray
// *.tmp directories are ignored and cleaned up by the next save of that step.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/engine/config.h"
#include "worker/engine/param_layout.h"

namespace raptr {

inline constexpr int kCheckpointFormatVersion = 1;

struct TrainState {
  int64_t step = 0;
  uint64_t seed = 0;
  int64_t tokens_seen = 0;
  double flops_spent = 0;  // FLOPs actually computed (skipped layers cost nothing)
  double flops_full = 0;   // FLOPs the full network would have cost for the same tokens
  uint64_t rng_state = 0;  // reserved
  std::string extra_json;  // opaque to this layer (e.g. data-loader positions); must be UTF-8
};

// "step_%08d".
std::string CheckpointDirName(int64_t step);

// run_dir/checkpoints, where a run's checkpoints and its LATEST file live.
std::string CheckpointsRoot(const std::string& run_dir);

// run_dir/checkpoints/step_%08d: where SaveCheckpoint puts the checkpoint of `step`.
std::string CheckpointPath(const std::string& run_dir, int64_t step);

// ModelConfig as a JSON object {"kind": "gpt"|"bert", "num_layers": .., "d_model": ..,
// "num_heads": .., "d_ff": .., "vocab_size": .., "max_seq": ..}, and back. Parsing requires
// exactly these fields.
std::string ModelConfigToJson(const ModelConfig& config);
absl::StatusOr<ModelConfig> ModelConfigFromJson(const std::string& json);

// Writes and commits run_dir/checkpoints/step_%08d for state.step (creating directories as
// needed). `layout` must be ParamLayout(config); params, adam_m and adam_v each hold
// layout.total() floats. On error the previously committed checkpoint and LATEST are untouched.
// Saving a step that is already the committed latest is AlreadyExists; any other directory of
// that step (left by a crash before LATEST was updated, or by a run that later resumed from an
// older checkpoint) is replaced once the new one is fully written.
absl::Status SaveCheckpoint(const std::string& run_dir, const ModelConfig& config,
                            const ParamLayout& layout, const float* params, const float* adam_m,
                            const float* adam_v, const TrainState& state);

// The path of the newest committed checkpoint directory: the one LATEST names if it is complete,
// else (LATEST lost or dangling) the complete step_N directory with the largest N. NotFound if
// there is none.
absl::StatusOr<std::string> LatestCheckpoint(const std::string& run_dir);

// Loads a checkpoint directory. The stored config must equal `expected` (the error names the
// first differing field) and `layout` must be ParamLayout(expected). adam_m, adam_v and state may
// be null to skip them. Everything is validated before any output is written.
absl::Status LoadCheckpoint(const std::string& ckpt_dir, const ModelConfig& expected,
                            const ParamLayout& layout, float* params, float* adam_m, float* adam_v,
                            TrainState* state);

// Loads parameters alone from an HF-named safetensors file: a checkpoint's model.safetensors or
// one from the HF hub. If the file records a raptr config it must equal `config`.
absl::Status LoadWeights(const std::string& safetensors_path, const ModelConfig& config,
                         const ParamLayout& layout, float* params);

}  // namespace raptr
