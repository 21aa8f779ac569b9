// FLOPs model: exactly the matmul-class work one training step does (shared/PAPER.md).
//
// Counted: every matmul as 2*m*n*k (forward), twice that backward (input and weight gradients),
// and attention's score and value products over the full T x T square (the CPU and CUDA kernels
// compute the square; the causal mask zeroes it). Per active block, plus the tied output head.
// Embedding lookups, LayerNorm, GELU and softmax are elementwise and not counted. The backend's
// flops_executed() counts the same things as they run; tests hold the two equal.
#pragma once

#include <cstdint>

#include "worker/engine/config.h"

namespace raptr {

// Forward FLOPs of one block over B sequences of T tokens.
uint64_t BlockForwardFlops(const ModelConfig& config, int B, int T);
// Forward FLOPs of the output head (logits) over B x T tokens.
uint64_t HeadForwardFlops(const ModelConfig& config, int B, int T);
// Forward + backward FLOPs of a micro-batch with `num_active` blocks on the path.
uint64_t TrainingFlops(const ModelConfig& config, int B, int T, int num_active);
// Forward-only FLOPs with `num_active` blocks (evaluation uses all of them).
uint64_t ForwardFlops(const ModelConfig& config, int B, int T, int num_active);

}  // namespace raptr
