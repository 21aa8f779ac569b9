// Optimizer settings and the learning-rate schedule (see optimizer_config.h).
#include "common/optimizer_config.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace raptr {

absl::Status ParseLrDecay(const std::string& text, LrDecay* out) {
  if (text == "cosine") {
    *out = LrDecay::kCosine;
  } else if (text == "linear") {
    *out = LrDecay::kLinear;
  } else if (text == "constant") {
    *out = LrDecay::kConstant;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("lr decay '", text, "' is not one of cosine, linear, constant"));
  }
  return absl::OkStatus();
}

absl::Status ParseSkippedLayerPolicy(const std::string& text, SkippedLayerPolicy* out) {
  if (text == "zero_grad") {
    *out = SkippedLayerPolicy::kZeroGrad;
  } else if (text == "frozen") {
    *out = SkippedLayerPolicy::kFrozen;
  } else if (text == "zero_grad_no_decay") {
    *out = SkippedLayerPolicy::kZeroGradNoDecay;
  } else if (text == "moments_only") {
    *out = SkippedLayerPolicy::kMomentsOnly;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("skipped-layer policy '", text,
                     "' is not one of zero_grad, frozen, zero_grad_no_decay, moments_only"));
  }
  return absl::OkStatus();
}

const char* SkippedLayerPolicyName(SkippedLayerPolicy policy) {
  switch (policy) {
    case SkippedLayerPolicy::kZeroGrad:
      return "zero_grad";
    case SkippedLayerPolicy::kFrozen:
      return "frozen";
    case SkippedLayerPolicy::kZeroGradNoDecay:
      return "zero_grad_no_decay";
    case SkippedLayerPolicy::kMomentsOnly:
      return "moments_only";
  }
  return "?";
}

double LearningRate(const OptimizerConfig& c, int64_t step) {
  if (c.warmup_steps > 0 && step < c.warmup_steps) {
    return c.lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
  }
  const double min_lr = c.lr * c.min_lr_ratio;
  const int64_t decay_steps = c.total_steps - c.warmup_steps;
  if (c.decay == LrDecay::kConstant || decay_steps <= 0) return c.lr;
  const double progress =
      std::min(1.0, static_cast<double>(step - c.warmup_steps) / static_cast<double>(decay_steps));
  if (c.decay == LrDecay::kLinear) return c.lr - (c.lr - min_lr) * progress;
  return min_lr + 0.5 * (c.lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace raptr
