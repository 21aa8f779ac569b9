// AdamW with decoupled weight decay, learning-rate schedule and global-norm clipping, over the
// flat parameter buffer, aware of which blocks were skipped this step.
//
// Invariant it keeps with the model: gradient slices that were not written this step are zero.
// Step() zeroes the gradients in the same pass that reads them (Backend::AdamW), so a skipped
// block's gradient reads as zero without a separate full-buffer memset every step.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "worker/engine/active_layer_set.h"
#include "worker/engine/backend.h"
#include "worker/engine/param_layout.h"

namespace raptr {

enum class LrDecay { kCosine, kLinear, kConstant };

// What AdamW does to a block that was skipped this step (shared/PAPER.md).
enum class SkippedLayerPolicy {
  kZeroGrad,  // AdamW sees a zero gradient: moments decay, weight decay applies
  kFrozen,    // parameters and moments untouched
};

absl::Status ParseLrDecay(const std::string& text, LrDecay* out);
absl::Status ParseSkippedLayerPolicy(const std::string& text, SkippedLayerPolicy* out);

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

struct OptimizerStepInfo {
  double lr = 0;
  double grad_norm = 0;  // before clipping
  double clip_scale = 1;
};

template <typename T>
class AdamWOptimizer {
 public:
  AdamWOptimizer(const OptimizerConfig& config, const ParamLayout& layout, Backend<T>* backend);
  ~AdamWOptimizer();
  AdamWOptimizer(const AdamWOptimizer&) = delete;
  AdamWOptimizer& operator=(const AdamWOptimizer&) = delete;

  // Applies one update for 0-based step `step` (which sets the learning rate; bias correction
  // uses the per-tensor update counts) and leaves all gradients zero. `active` is the path the
  // gradients came from. `learning_rate`, when set, replaces the schedule's rate for this step (a
  // coordinator's step plan carries it).
  OptimizerStepInfo Step(T* params, T* grads, const ActiveLayerSet& active, int64_t step,
                         std::optional<double> learning_rate = std::nullopt);

  // Squared L2 norm of the gradient slices written under `active`.
  double GradNormSquared(const T* grads, const ActiveLayerSet& active) const;

  T* m() { return m_; }
  T* v() { return v_; }
  // Updates applied so far to the shared tensors and to each block. Bias correction uses these,
  // not the global step: under `frozen` a block skipped for a while must not see its first
  // update shrunk as if its moments had been averaging all along (PyTorch's per-parameter step).
  int64_t shared_steps() const { return shared_steps_; }
  const std::vector<int64_t>& layer_steps() const { return layer_steps_; }
  // For resuming from a checkpoint. Error if the block count differs.
  absl::Status RestoreStepCounts(int64_t shared_steps, const std::vector<int64_t>& layer_steps);
  const OptimizerConfig& config() const { return config_; }

 private:
  OptimizerConfig config_;
  const ParamLayout& layout_;
  Backend<T>* backend_;
  T* m_ = nullptr;
  T* v_ = nullptr;
  int64_t shared_steps_ = 0;
  std::vector<int64_t> layer_steps_;
};

extern template class AdamWOptimizer<float>;
extern template class AdamWOptimizer<double>;

}  // namespace raptr
