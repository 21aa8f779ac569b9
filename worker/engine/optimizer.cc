// AdamW, schedule and clipping (see optimizer.h).
#include "worker/engine/optimizer.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace raptr {

template <typename T>
AdamWOptimizer<T>::AdamWOptimizer(const OptimizerConfig& config, const ParamLayout& layout,
                                  Backend<T>* backend)
    : config_(config), layout_(layout), backend_(backend) {
  m_ = backend_->AllocTensor(layout_.total(), "AdamW first moments");
  try {
    v_ = backend_->AllocTensor(layout_.total(), "AdamW second moments");
  } catch (...) {
    backend_->FreeBytes(m_);  // no destructor runs for a constructor that throws
    throw;
  }
  int layers = 0;
  for (const ParamTensor& t : layout_.tensors()) layers = std::max(layers, t.layer + 1);
  layer_steps_.assign(layers, 0);
}

template <typename T>
absl::Status AdamWOptimizer<T>::RestoreStepCounts(int64_t shared_steps,
                                                  const std::vector<int64_t>& layer_steps) {
  if (layer_steps.size() != layer_steps_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer state has step counts for ",
                                                   layer_steps.size(), " blocks, model has ",
                                                   layer_steps_.size()));
  }
  shared_steps_ = shared_steps;
  layer_steps_ = layer_steps;
  return absl::OkStatus();
}

template <typename T>
AdamWOptimizer<T>::~AdamWOptimizer() {
  backend_->FreeBytes(m_);
  backend_->FreeBytes(v_);
}

template <typename T>
double AdamWOptimizer<T>::GradNormSquared(DeviceSpan<T> grad_span,
                                          const ActiveLayerSet& active) const {
  const T* grads = grad_span.device_data();
  double total = 0;
  for (const ParamRange& r : layout_.SharedRanges()) {
    total += backend_->SumSquares(grads + r.begin, r.size());
  }
  for (int l : active.ActiveLayers()) {
    const ParamRange r = layout_.LayerRange(l);
    total += backend_->SumSquares(grads + r.begin, r.size());
  }
  return total;
}

template <typename T>
OptimizerStepInfo AdamWOptimizer<T>::Step(DeviceSpan<T> param_span, DeviceSpan<T> grad_span,
                                          const ActiveLayerSet& active, int64_t step,
                                          std::optional<double> learning_rate) {
  T* params = param_span.device_data();
  T* grads = grad_span.device_data();
  OptimizerStepInfo info;
  info.lr = learning_rate.has_value() ? *learning_rate : LearningRate(config_, step);
  info.grad_norm = std::sqrt(GradNormSquared(grad_span, active));
  if (config_.grad_clip > 0 && info.grad_norm > config_.grad_clip) {
    info.clip_scale = config_.grad_clip / (info.grad_norm + 1e-6);
  }
  const bool frozen = config_.skipped == SkippedLayerPolicy::kFrozen;
  ++shared_steps_;
  for (size_t l = 0; l < layer_steps_.size(); ++l) {
    if (!frozen || active.active(static_cast<int>(l))) ++layer_steps_[l];
  }
  for (const ParamTensor& t : layout_.tensors()) {
    const bool skipped = t.layer >= 0 && !active.active(t.layer);
    if (frozen && skipped) continue;  // untouched, grads zero
    // A skipped block's gradient is zero. zero_grad_no_decay drops its weight decay that step;
    // moments_only also its step: a learning rate of 0 moves no parameter (p - 0 * x = p for
    // the finite update x), while the moments decay and the step counts as zero_grad's does.
    const bool no_decay = skipped && (config_.skipped == SkippedLayerPolicy::kZeroGradNoDecay ||
                                      config_.skipped == SkippedLayerPolicy::kMomentsOnly);
    const bool no_move = skipped && config_.skipped == SkippedLayerPolicy::kMomentsOnly;
    backend_->AdamW(params + t.offset, grads + t.offset, m_ + t.offset, v_ + t.offset, t.numel,
                    no_move ? 0.0f : static_cast<float>(info.lr), static_cast<float>(config_.beta1),
                    static_cast<float>(config_.beta2), static_cast<float>(config_.eps),
                    t.decay && !no_decay ? static_cast<float>(config_.weight_decay) : 0.0f,
                    t.layer >= 0 ? layer_steps_[t.layer] : shared_steps_,
                    static_cast<float>(info.clip_scale));
  }
  // AdamW zeroed every slice it read; under `frozen` the skipped slices were zero already. So
  // the invariant holds again: every gradient slice is zero before the next step.
  return info;
}

template class AdamWOptimizer<float>;
template class AdamWOptimizer<double>;

}  // namespace raptr
