// FLOPs model: exactly the matmul-class work one training step does (shared/PAPER.md).
//
// Counted: every matmul as 2*m*n*k (forward), twice that backward (input and weight gradients),
// and attention's score and value products over the full T x T square (the CPU and CUDA kernels
// compute the square; the causal mask zeroes it). Per active block, plus the tied output head
// (over every position for GPT; over the masked positions only for a BERT training step).
// Embedding lookups, LayerNorm, GELU and softmax are elementwise and not counted. The backend's
// flops_executed() counts the same things as they run; tests hold the two equal.
#pragma once

#include <cstdint>

#include "worker/engine/config.h"

namespace raptr {

// Forward FLOPs of one block over B sequences of T tokens.
uint64_t BlockForwardFlops(const ModelConfig& config, int B, int T);
// Forward FLOPs of the output head (logits) over `rows` positions.
uint64_t HeadForwardFlops(const ModelConfig& config, int64_t rows);
// Forward + backward FLOPs of a micro-batch with `num_active` blocks on the path, the head over
// `head_rows` positions: B x T (the default, -1) for GPT; a BERT micro-batch's masked positions
// (Model::last_head_rows), since BERT's head runs on those only.
uint64_t TrainingFlops(const ModelConfig& config, int B, int T, int num_active,
                       int64_t head_rows = -1);
// Forward-only FLOPs with `num_active` blocks (evaluation uses all of them).
uint64_t ForwardFlops(const ModelConfig& config, int B, int T, int num_active);

}  // namespace raptr
