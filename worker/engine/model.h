// Model: a GPT-2 style causal LM or a BERT-style masked LM, trained one ActiveLayerSet at a time.
//
// Parameters, gradients live in two flat buffers laid out by ParamLayout (llm.c style); the
// optimizer keeps its moments beside them. Activations are kept only for the blocks that run:
// they live in per-path-position "slots" allocated on first use, so a run whose paths are k
// blocks long never holds more than k blocks of activations.
//
// Usage per micro-batch: Forward(..., training=true) then Backward(). Gradients accumulate in
// grads() until the caller zeroes them (ZeroGrads / ZeroGradRanges). Not thread-safe; the
// backend threads internally.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/active_layer_set.h"
#include "worker/engine/backend.h"
#include "worker/engine/config.h"
#include "worker/engine/param_layout.h"

namespace raptr {

// How a block's attention runs. kMaterialized keeps the (B,NH,T,T) probabilities of every block
// on the path for the backward pass (AttentionForward); kFlash keeps only a (B,NH,T) log-sum-exp
// and recomputes the probabilities in the backward pass (FlashAttentionForward): T times less
// memory per block, about 40% more attention FLOPs in the backward pass.
enum class AttentionKind { kMaterialized, kFlash };
const char* AttentionKindName(AttentionKind kind);  // "materialized" / "flash"
// The inverse of AttentionKindName; INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<AttentionKind> ParseAttentionKind(const std::string& name);

template <typename T>
class Model {
 public:
  // REQUIRES: config.Validate().ok(); backend outlives the model.
  Model(const ModelConfig& config, Backend<T>* backend,
        AttentionKind attention = AttentionKind::kMaterialized);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }
  Backend<T>* backend() const { return backend_; }
  AttentionKind attention() const { return attention_; }
  // The flat parameter and gradient buffers (layout()), as backend memory: read and write them
  // through the backend (backend.h: Download, Upload, WithHostView), never in place.
  DeviceSpan<T> params() const { return DeviceSpan<T>(params_, layout_.total()); }
  DeviceSpan<T> grads() const { return DeviceSpan<T>(grads_, layout_.total()); }

  // Backend bytes a model allocates for its parameters and gradients, and for the activations
  // of training paths up to `max_path` blocks at batch (B, Tn) plus evaluation and the backward
  // pass's scratch: what EnsureBuffers and Backward will have allocated at most.
  static size_t ParameterBytes(const ModelConfig& config);
  static size_t ActivationBytes(const ModelConfig& config, int B, int Tn, int max_path,
                                AttentionKind attention = AttentionKind::kMaterialized);

  // GPT-2 initialisation: weights N(0, 0.02), the two residual output projections of each block
  // N(0, 0.02/sqrt(2L)), biases 0, LayerNorm weight 1. A pure function of the seed.
  void InitWeights(uint64_t seed);

  // Runs the model over inputs (B,T) (host token ids in [0,V)) and returns the mean
  // cross-entropy over positions whose target (host, (B,T)) is >= 0. With training=true the
  // activations of the active blocks are kept for Backward(); evaluation passes
  // ActiveLayerSet::Full with training=false. Errors name bad shapes or token ids.
  absl::StatusOr<double> Forward(const int32_t* inputs, const int32_t* targets, int B, int Tn,
                                 const ActiveLayerSet& active, bool training);

  // Accumulates grad_scale * d(SUM of the last training Forward's per-position losses)/d(params)
  // into grads(). The caller normalises: for the mean over every target of a step's
  // micro-batches, grad_scale = 1 / (targets in all of them), so gradient accumulation and data
  // parallelism give the same gradient however the batch is split (BERT's masked-target counts
  // differ between micro-batches). Only the active blocks' slices and the shared tensors are
  // written. FailedPrecondition unless the last Forward was a successful training one.
  absl::Status Backward(T grad_scale);

  // Logits (B,T,V) of the last Forward, copied to the host. Valid after a Forward with
  // training=false: a training Forward overwrites them with the loss gradient.
  std::vector<T> LogitsToHost() const;

  void ZeroGrads();
  // Allocates now what training paths of up to `max_path` blocks at batch (B, Tn) will need
  // (ActivationBytes' worth), instead of as the paths first appear: on a device, an allocation
  // that cannot succeed then fails at the start, not at the first long stage. Throws
  // BackendOutOfMemory naming the tensor.
  void Reserve(int B, int Tn, int max_path);
  // Number of positions with a valid target in the last Forward.
  int64_t last_num_targets() const { return last_num_targets_; }
  // Rows the output head ran over in the last Forward: B*T, except a BERT training Forward's,
  // which runs the head on its masked positions only (last_num_targets()).
  int last_head_rows() const { return last_head_rows_; }

 private:
  struct Slot;  // activations of one block on the path
  void EnsureBuffers(int B, int Tn, int num_slots);
  void FreeActivations();
  void FreeSlot(Slot& slot);
  void EnsureBackwardScratch();

  ModelConfig config_;
  ParamLayout layout_;
  Backend<T>* backend_;
  AttentionKind attention_;
  T* params_ = nullptr;
  T* grads_ = nullptr;

  // Activation and scratch buffers, sized for (B_, T_).
  int B_ = 0, T_ = 0;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<T*> residual_;  // residual_[k] = input of path position k; [K] = final output
  T* lnf_ = nullptr;
  T* lnf_mean_ = nullptr;
  T* lnf_rstd_ = nullptr;
  // BERT only (null for GPT): the head's input, the masked rows of lnf_ gathered (at most B*T,
  // C), and their row indices on the device (B*T int32 at most).
  T* head_in_ = nullptr;
  int32_t* head_rows_dev_ = nullptr;
  T* logits_ = nullptr;
  T* losses_ = nullptr;
  int32_t* inputs_ = nullptr;
  int32_t* targets_ = nullptr;
  // Backward scratch, shared by all blocks.
  T* dres_ = nullptr;
  T* dln_ = nullptr;
  T* datty_ = nullptr;
  T* dqkv_ = nullptr;
  T* dfch_ = nullptr;
  T* datt_ = nullptr;
  std::vector<T> host_losses_;

  // What the last training Forward ran.
  bool have_forward_ = false;
  int last_B_ = 0, last_T_ = 0;
  std::vector<int> last_path_;
  std::vector<T> last_scales_;
  int64_t last_num_targets_ = 0;
  // The head's rows in the last training Forward: N, or BERT's masked positions (head_rows_,
  // ascending, also in head_rows_dev_), gathered from lnf_ into head_in_ (last_gathered_).
  int last_head_rows_ = 0;
  bool last_gathered_ = false;
  std::vector<int32_t> head_rows_;
};

extern template class Model<float>;
extern template class Model<double>;

}  // namespace raptr
