// Deterministic batches over a token stream: a pure function of (seed, step, rank, world).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/engine/data/mlm.h"

namespace raptr {

// Which micro-batch of which optimizer step one rank asks for.
//
// The global batch of step `step` is global_batch() = world * micro_batches * B sequences. The
// rank's micro-batch `micro` is the contiguous slice starting at sequence_offset(), so any
// regrouping of the same global batch (other world / micro_batches) reads the same sequences.
struct BatchSpec {
  uint64_t seed = 0;
  int64_t step = 0;
  int rank = 0;
  int world = 1;
  int micro_batches = 1;
  int micro = 0;
  int B = 1;  // sequences per micro-batch
  int T = 1;  // tokens per sequence

  int64_t global_batch() const { return int64_t{world} * micro_batches * B; }
  // Index, within the step's global batch, of this micro-batch's first sequence.
  int64_t sequence_offset() const { return (int64_t{rank} * micro_batches + micro) * B; }
};

// Checks B, T > 0, world > 0, 0 <= rank < world, micro_batches > 0, 0 <= micro < micro_batches
// and step >= 0; errors name the field and its value.
absl::Status ValidateBatchSpec(const BatchSpec& spec);

// A bijection of [0, n) that is a pure, portable function of (seed, epoch): a keyed Feistel
// network over the next even power of two, cycle-walked back into range. Unlike a stored
// Fisher-Yates shuffle it costs O(1) memory however many windows the corpus has. i < n.
uint64_t PermuteIndex(uint64_t seed, uint64_t epoch, uint64_t n, uint64_t i);

// The tokens of one or more shards, concatenated in the given order (llm.c shards start every
// document with a separator, so the seams are document boundaries). Immutable after creation,
// so concurrent Get*Batch calls are safe.
class TokenDataset {
 public:
  // Reads the shards with ReadShard; errors name the failing path.
  static absl::StatusOr<TokenDataset> Open(const std::vector<std::string>& shard_paths);
  explicit TokenDataset(std::vector<uint16_t> tokens) : tokens_(std::move(tokens)) {}

  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }
  const std::vector<uint16_t>& tokens() const { return tokens_; }

  // Training windows of T+1 tokens start at multiples of T: (num_tokens - 1) / T of them.
  int64_t NumWindows(int T) const;

  // Causal-LM micro-batch: row b is window W(g) where g = step * global_batch +
  // sequence_offset + b is the global sequence index, epoch = g / NumWindows(T) and
  // W(g) = PermuteIndex(seed, epoch, NumWindows(T), g % NumWindows(T)). inputs[b*T + t] is the
  // window's token t, targets[b*T + t] its token t+1. Each buffer holds B*T values.
  absl::Status GetBatch(const BatchSpec& spec, int32_t* inputs, int32_t* targets) const;

  // Masked-LM micro-batch over the same windows: inputs are the first T tokens of each window
  // masked by ApplyMlmMask(opts, seed, step, sequence_offset, ...); targets are the original
  // tokens at selected positions and -1 elsewhere.
  absl::Status GetMlmBatch(const BatchSpec& spec, const MlmOptions& opts, int32_t* inputs,
                           int32_t* targets) const;

  // Evaluation walks the stream in order: batch `index` holds windows index*B .. index*B+B-1
  // (modulo NumWindows(T), so a split smaller than one batch still yields one). Batches
  // 0 .. NumEvalBatches(B, T)-1 cover distinct windows except in that small case.
  int64_t NumEvalBatches(int B, int T) const;
  absl::Status GetEvalBatch(int64_t index, int B, int T, int32_t* inputs, int32_t* targets) const;

 private:
  absl::Status CheckFits(int T) const;
  void CopyWindow(int64_t window, int T, int32_t* inputs, int32_t* targets) const;

  std::vector<uint16_t> tokens_;
};

}  // namespace raptr
