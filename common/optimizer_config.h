// Optimizer settings and the learning-rate schedule: plain data and pure functions, shared by the
// engine's AdamW and the coordinator, whose step plans carry each step's learning rate.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace raptr {

enum class LrDecay { kCosine, kLinear, kConstant };

// What AdamW does to a block that was skipped this step (shared/PAPER.md).
enum class SkippedLayerPolicy {
  kZeroGrad,  // AdamW sees a zero gradient: moments decay, weight decay applies
  kFrozen,    // parameters and moments untouched
  // The variants that separate why zero_grad costs what it does (issue 14's study):
  kZeroGradNoDecay,  // as kZeroGrad, but no weight decay on a step the block is skipped
  kMomentsOnly,      // the moments see the zero gradient and decay; the parameters stay
};

absl::Status ParseLrDecay(const std::string& text, LrDecay* out);
absl::Status ParseSkippedLayerPolicy(const std::string& text, SkippedLayerPolicy* out);
// "zero_grad", "frozen", "zero_grad_no_decay", "moments_only": ParseSkippedLayerPolicy's names.
const char* SkippedLayerPolicyName(SkippedLayerPolicy policy);

struct OptimizerConfig {
  double lr = 6e-4;            // peak learning rate
  double min_lr_ratio = 0.1;   // final lr = lr * min_lr_ratio
  int64_t warmup_steps = 0;    // linear warmup from lr/warmup to lr
  int64_t total_steps = 1000;  // decay ends here
  LrDecay decay = LrDecay::kCosine;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  // matrices and embeddings only; no decay on biases / LayerNorm
  double grad_clip = 1.0;     // global L2 norm; <= 0 disables
  SkippedLayerPolicy skipped = SkippedLayerPolicy::kZeroGrad;
};

// Learning rate for 0-based optimizer step `step`.
double LearningRate(const OptimizerConfig& config, int64_t step);

}  // namespace raptr
