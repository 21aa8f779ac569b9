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
#include "common/optimizer_config.h"
#include "worker/engine/active_layer_set.h"
#include "worker/engine/backend.h"
#include "worker/engine/param_layout.h"

namespace raptr {

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
  OptimizerStepInfo Step(DeviceSpan<T> params, DeviceSpan<T> grads, const ActiveLayerSet& active,
                         int64_t step, std::optional<double> learning_rate = std::nullopt);

  // Squared L2 norm of the gradient slices written under `active`.
  double GradNormSquared(DeviceSpan<T> grads, const ActiveLayerSet& active) const;

  // The moments, as backend memory laid out like the parameters (see Model::params()).
  DeviceSpan<T> m() const { return DeviceSpan<T>(m_, layout_.total()); }
  DeviceSpan<T> v() const { return DeviceSpan<T>(v_, layout_.total()); }
  Backend<T>* backend() const { return backend_; }
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
