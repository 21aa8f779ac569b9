// BERT-style masked-LM corruption of a token batch, as a pure function of (seed, step, position).
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace raptr {

struct MlmOptions {
  int vocab_size = 0;         // random replacements are drawn from [0, vocab_size)
  int mask_id = -1;           // Tokenizer::mask_id()
  double select_prob = 0.15;  // chance that a position is predicted
};

// vocab_size > 0, mask_id in [0, vocab_size), select_prob in [0, 1]; errors name the field.
absl::Status ValidateMlmOptions(const MlmOptions& opts);

// Masks a micro-batch of B sequences of T tokens in place. Each position is selected
// independently with probability select_prob; a selected position becomes mask_id (80%), a
// uniformly random id in [0, vocab_size) (10%) or stays as is (10%), and its target is the
// original token; unselected positions get target -1 (ignored by the loss).
//
// Every random draw is keyed on (seed, step, global sequence index, position) where the global
// sequence index of row b is rank_sequence_offset + b, the row's index in the step's global
// batch (BatchSpec::sequence_offset()). So the masks do not depend on rank, world size or
// gradient-accumulation grouping, and recomputing a batch gives the same masks.
// `opts` must be valid (ValidateMlmOptions); inputs/targets hold B*T values.
void ApplyMlmMask(const MlmOptions& opts, uint64_t seed, int64_t step, int rank_sequence_offset,
                  int B, int T, int32_t* inputs, int32_t* targets);

}  // namespace raptr
