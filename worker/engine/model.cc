// Model forward/backward over the active blocks only (see model.h).
#include "worker/engine/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/random.h"

namespace raptr {

template <typename T>
struct Model<T>::Slot {
  T* ln1 = nullptr;       // (N,C)
  T* ln1_mean = nullptr;  // (N)
  T* ln1_rstd = nullptr;  // (N)
  T* qkv = nullptr;       // (N,3C)
  T* att = nullptr;       // (B,NH,T,T), kMaterialized
  T* lse = nullptr;       // (B,NH,T), kFlash
  T* atty = nullptr;      // (N,C)
  T* resmid = nullptr;    // (N,C) residual after attention
  T* ln2 = nullptr;       // (N,C)
  T* ln2_mean = nullptr;  // (N)
  T* ln2_rstd = nullptr;  // (N)
  T* fch = nullptr;       // (N,F) pre-GELU
  T* fchg = nullptr;      // (N,F) post-GELU
};

template <typename T>
Model<T>::Model(const ModelConfig& config, Backend<T>* backend, AttentionKind attention)
    : config_(config), layout_(config), backend_(backend), attention_(attention) {
  params_ = backend_->AllocTensor(layout_.total(), "parameters");
  try {
    grads_ = backend_->AllocTensor(layout_.total(), "gradients");
  } catch (...) {
    backend_->FreeBytes(params_);  // no destructor runs for a constructor that throws
    throw;
  }
}

template <typename T>
Model<T>::~Model() {
  FreeActivations();
  backend_->FreeBytes(params_);
  backend_->FreeBytes(grads_);
}

template <typename T>
void Model<T>::FreeSlot(Slot& s) {
  for (T* p : {s.ln1, s.ln1_mean, s.ln1_rstd, s.qkv, s.att, s.lse, s.atty, s.resmid, s.ln2,
               s.ln2_mean, s.ln2_rstd, s.fch, s.fchg}) {
    if (p != nullptr) backend_->FreeBytes(p);  // null: not allocated (a failed allocation)
  }
  s = Slot{};
}

template <typename T>
void Model<T>::FreeActivations() {
  for (auto& s : slots_) FreeSlot(*s);
  slots_.clear();
  for (T* p : residual_) backend_->FreeBytes(p);
  residual_.clear();
  for (void* p :
       {static_cast<void*>(lnf_), static_cast<void*>(lnf_mean_), static_cast<void*>(lnf_rstd_),
        static_cast<void*>(head_in_), static_cast<void*>(head_rows_dev_),
        static_cast<void*>(logits_), static_cast<void*>(losses_), static_cast<void*>(inputs_),
        static_cast<void*>(targets_), static_cast<void*>(dres_), static_cast<void*>(dln_),
        static_cast<void*>(datty_), static_cast<void*>(dqkv_), static_cast<void*>(dfch_),
        static_cast<void*>(datt_)}) {
    if (p != nullptr) backend_->FreeBytes(p);
  }
  lnf_ = lnf_mean_ = lnf_rstd_ = head_in_ = logits_ = losses_ = nullptr;
  dres_ = dln_ = datty_ = dqkv_ = dfch_ = datt_ = nullptr;
  inputs_ = targets_ = head_rows_dev_ = nullptr;
  B_ = T_ = 0;
}

template <typename T>
void Model<T>::EnsureBuffers(int B, int Tn, int num_slots) {
  const size_t C = config_.d_model, F = config_.d_ff, V = config_.vocab_size;
  const size_t NH = config_.num_heads;
  if (B != B_ || Tn != T_) {
    FreeActivations();
    const size_t N = static_cast<size_t>(B) * Tn;
    lnf_ = backend_->AllocTensor(N * C, "final LayerNorm output (B,T,C)");
    lnf_mean_ = backend_->AllocTensor(N, "final LayerNorm mean (B,T)");
    lnf_rstd_ = backend_->AllocTensor(N, "final LayerNorm rstd (B,T)");
    logits_ = backend_->AllocTensor(N * V, "logits (B,T,V)");
    losses_ = backend_->AllocTensor(N, "losses (B,T)");
    auto alloc_ids = [&](const char* what) {
      try {
        return static_cast<int32_t*>(backend_->AllocBytes(N * sizeof(int32_t)));
      } catch (const std::bad_alloc&) {
        throw BackendOutOfMemory(
            absl::StrCat(backend_->name(), " out of memory allocating ", what));
      }
    };
    inputs_ = alloc_ids("input token ids (B,T)");
    targets_ = alloc_ids("target token ids (B,T)");
    if (config_.kind == ModelKind::kBert) {
      // Sized for every position masked; a step uses the top M rows.
      head_in_ = backend_->AllocTensor(N * C, "head input: masked rows of the final LayerNorm");
      head_rows_dev_ = alloc_ids("head row indices (masked positions)");
    }
    host_losses_.assign(N, T(0));
    // Only now: a failed allocation above leaves B_ = 0, so the next call allocates afresh.
    B_ = B;
    T_ = Tn;
  }
  const size_t N = static_cast<size_t>(B_) * T_;
  // Slots and the residual stream grow with the longest path seen so far, never beyond it.
  while (static_cast<int>(slots_.size()) < num_slots) {
    auto slot = std::make_unique<Slot>();
    Slot* s = slot.get();
    const std::string at = absl::StrCat("activations of path position ", slots_.size(), ": ");
    try {
      s->ln1 = backend_->AllocTensor(N * C, at + "ln1 (B,T,C)");
      s->ln1_mean = backend_->AllocTensor(N, at + "ln1 mean (B,T)");
      s->ln1_rstd = backend_->AllocTensor(N, at + "ln1 rstd (B,T)");
      s->qkv = backend_->AllocTensor(N * 3 * C, at + "qkv (B,T,3C)");
      if (attention_ == AttentionKind::kFlash) {
        s->lse = backend_->AllocTensor(static_cast<size_t>(B_) * NH * T_, at + "lse (B,NH,T)");
      } else {
        s->att =
            backend_->AllocTensor(static_cast<size_t>(B_) * NH * T_ * T_, at + "att (B,NH,T,T)");
      }
      s->atty = backend_->AllocTensor(N * C, at + "attention output (B,T,C)");
      s->resmid = backend_->AllocTensor(N * C, at + "mid-block residual (B,T,C)");
      s->ln2 = backend_->AllocTensor(N * C, at + "ln2 (B,T,C)");
      s->ln2_mean = backend_->AllocTensor(N, at + "ln2 mean (B,T)");
      s->ln2_rstd = backend_->AllocTensor(N, at + "ln2 rstd (B,T)");
      s->fch = backend_->AllocTensor(N * F, at + "fc (B,T,F)");
      s->fchg = backend_->AllocTensor(N * F, at + "GELU output (B,T,F)");
    } catch (...) {
      // A slot is whole or absent: free what this one got, so the next call allocates it again.
      FreeSlot(*s);
      throw;
    }
    slots_.push_back(std::move(slot));
  }
  while (static_cast<int>(residual_.size()) < std::max(2, num_slots + 1)) {
    residual_.push_back(backend_->AllocTensor(N * C, "residual stream (B,T,C)"));
  }
}

const char* AttentionKindName(AttentionKind kind) {
  return kind == AttentionKind::kFlash ? "flash" : "materialized";
}

absl::StatusOr<AttentionKind> ParseAttentionKind(const std::string& name) {
  if (name == "materialized") return AttentionKind::kMaterialized;
  if (name == "flash") return AttentionKind::kFlash;
  return absl::InvalidArgumentError(
      absl::StrCat("attention \"", name, "\" is not one of materialized, flash"));
}

template <typename T>
size_t Model<T>::ParameterBytes(const ModelConfig& config) {
  return 2 * ParamLayout(config).total() * sizeof(T);  // params + grads
}

template <typename T>
size_t Model<T>::ActivationBytes(const ModelConfig& config, int B, int Tn, int max_path,
                                 AttentionKind attention) {
  // Mirrors EnsureBuffers (shared buffers, one Slot per path position, the residual stream) and
  // Backward's scratch, element for element.
  const size_t C = config.d_model, F = config.d_ff, V = config.vocab_size;
  const size_t NH = config.num_heads, N = static_cast<size_t>(B) * Tn;
  const bool flash = attention == AttentionKind::kFlash;
  const size_t att = static_cast<size_t>(B) * NH * Tn * (flash ? 1 : Tn);  // att, or lse
  const size_t slots = static_cast<size_t>(std::max(1, max_path));
  const size_t shared = N * C + 2 * N + N * V + N;            // lnf, its mean/rstd, logits, losses
  // BERT's head runs on the masked rows, gathered into a buffer of their own (up to N of them).
  const bool bert = config.kind == ModelKind::kBert;
  const size_t head_in = bert ? N * C : 0;
  // Token ids (inputs, targets) and BERT's head row indices, int32 each.
  const size_t id_bytes = (2 + (bert ? 1 : 0)) * N * sizeof(int32_t);
  const size_t per_slot = 4 * N * C + 4 * N + 3 * N * C + att + 2 * N * F;
  const size_t residual = static_cast<size_t>(std::max<size_t>(2, slots + 1)) * N * C;
  // dres dln datty, dqkv, dfch, and datt when materialized.
  const size_t backward = 3 * N * C + 3 * N * C + N * F + (flash ? 0 : att);
  return (shared + head_in + slots * per_slot + residual + backward) * sizeof(T) + id_bytes;
}

template <typename T>
void Model<T>::EnsureBackwardScratch() {
  // Each on first use (after a failed allocation, the rest on the next call), for (B_, T_).
  Backend<T>* be = backend_;
  const size_t N = static_cast<size_t>(B_) * T_, C = config_.d_model, F = config_.d_ff;
  const size_t NH = config_.num_heads, NC = N * C;
  if (!dres_) dres_ = be->AllocTensor(NC, "backward scratch: dresidual (B,T,C)");
  if (!dln_) dln_ = be->AllocTensor(NC, "backward scratch: dln (B,T,C)");
  if (!datty_) datty_ = be->AllocTensor(NC, "backward scratch: datt_out (B,T,C)");
  if (!dqkv_) dqkv_ = be->AllocTensor(3 * NC, "backward scratch: dqkv (B,T,3C)");
  if (!dfch_) dfch_ = be->AllocTensor(N * F, "backward scratch: dfc (B,T,F)");
  if (!datt_ && attention_ == AttentionKind::kMaterialized) {
    datt_ = be->AllocTensor(static_cast<size_t>(B_) * NH * T_ * T_,
                            "backward scratch: datt (B,NH,T,T)");
  }
}

template <typename T>
void Model<T>::Reserve(int B, int Tn, int max_path) {
  EnsureBuffers(B, Tn, std::max(1, max_path));
  EnsureBackwardScratch();
}

template <typename T>
void Model<T>::InitWeights(uint64_t seed) {
  std::vector<T> host(layout_.total(), T(0));
  const double residual_std = 0.02 / std::sqrt(2.0 * config_.num_layers);
  for (size_t ti = 0; ti < layout_.tensors().size(); ++ti) {
    const ParamTensor& t = layout_.tensors()[ti];
    T* p = host.data() + t.offset;
    const bool is_ln_weight =
        t.name.find("ln_") != std::string::npos && t.name.find(".weight") != std::string::npos;
    if (is_ln_weight) {
      for (size_t i = 0; i < t.numel; ++i) p[i] = T(1);
    } else if (t.shape.size() == 2) {
      const bool residual_proj = t.name.find("attn.proj.weight") != std::string::npos ||
                                 t.name.find("mlp.proj.weight") != std::string::npos;
      const double stddev = residual_proj ? residual_std : 0.02;
      // Box-Muller over counter-based uniforms: element pair j of tensor ti depends only on
      // (seed, ti, j), so the fill is parallel yet identical for any thread count.
      const int64_t pairs = static_cast<int64_t>((t.numel + 1) / 2);
#pragma omp parallel for schedule(static)
      for (int64_t j = 0; j < pairs; ++j) {
        double u1 = ToUnitDouble(HashCounters(seed, ti, static_cast<uint64_t>(j), 0));
        const double u2 = ToUnitDouble(HashCounters(seed, ti, static_cast<uint64_t>(j), 1));
        if (u1 < 1e-300) u1 = 1e-300;
        const double r = stddev * std::sqrt(-2.0 * std::log(u1));
        const double a = 6.283185307179586 * u2;
        p[2 * j] = static_cast<T>(r * std::cos(a));
        if (static_cast<size_t>(2 * j + 1) < t.numel)
          p[2 * j + 1] = static_cast<T>(r * std::sin(a));
      }
    }  // biases stay 0
  }
  backend_->CopyToDevice(params_, host.data(), host.size() * sizeof(T));
}

template <typename T>
absl::StatusOr<double> Model<T>::Forward(const int32_t* inputs, const int32_t* targets, int B,
                                         int Tn, const ActiveLayerSet& active, bool training) {
  const ModelConfig& cfg = config_;
  have_forward_ = false;  // whatever happens below, an earlier training Forward is gone
  if (B <= 0 || Tn <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch shape must be positive, got B=", B, " T=", Tn));
  }
  if (static_cast<int64_t>(B) * Tn > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch of ", B, "x", Tn, " tokens is too large"));
  }
  if (Tn > cfg.max_seq) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence length ", Tn, " exceeds model.max_seq ", cfg.max_seq));
  }
  if (active.num_layers() != cfg.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("active layer set has ", active.num_layers(),
                                                   " layers, model has ", cfg.num_layers));
  }
  const int N = B * Tn;
  int64_t num_targets = 0;
  for (int i = 0; i < N; ++i) {
    if (inputs[i] < 0 || inputs[i] >= cfg.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("input token ", inputs[i], " at position ", i,
                                                     " is outside the vocabulary [0, ",
                                                     cfg.vocab_size, ")"));
    }
    if (targets[i] >= cfg.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("target token ", targets[i], " at position ",
                                                     i, " is outside the vocabulary"));
    }
    if (targets[i] >= 0) ++num_targets;
  }

  const std::vector<int> path = active.ActiveLayers();
  const int K = static_cast<int>(path.size());
  // Training keeps one slot per path position for Backward; evaluation reuses slot 0 and
  // ping-pongs between two residual buffers.
  EnsureBuffers(B, Tn, training ? K : std::min(K, 1));
  const int C = cfg.d_model, F = cfg.d_ff, V = cfg.vocab_size, NH = cfg.num_heads;
  Backend<T>* be = backend_;
  const T* P = params_;
  be->CopyToDevice(inputs_, inputs, sizeof(int32_t) * N);
  // BERT trains its head on the masked positions only (about 15%): the final LayerNorm's rows
  // with a target are gathered into head_in_ before the head, so the logits, the cross-entropy
  // and their gradients cover M = num_targets rows, not B*T. Evaluation keeps the whole (B,T,V)
  // logits (LogitsToHost). GPT scores (nearly) every position: no gather.
  const bool gather = training && cfg.kind == ModelKind::kBert;
  head_rows_.clear();
  if (gather) {
    std::vector<int32_t> compact;
    compact.reserve(static_cast<size_t>(num_targets));
    for (int i = 0; i < N; ++i) {
      if (targets[i] >= 0) {
        head_rows_.push_back(i);
        compact.push_back(targets[i]);
      }
    }
    if (!compact.empty()) {
      be->CopyToDevice(targets_, compact.data(), sizeof(int32_t) * compact.size());
    }
  } else {
    be->CopyToDevice(targets_, targets, sizeof(int32_t) * N);
  }
  const int head_n = gather ? static_cast<int>(head_rows_.size()) : N;

  be->EncoderForward(residual_[0], inputs_, P + layout_.wte(), P + layout_.wpe(), B, Tn, C);
  for (int k = 0; k < K; ++k) {
    const int l = path[k];
    const T s = static_cast<T>(active.scale(l));
    Slot& a = *slots_[training ? k : 0];
    const T* x = training ? residual_[k] : residual_[k % 2];
    T* y = training ? residual_[k + 1] : residual_[(k + 1) % 2];
    be->LayerNormForward(a.ln1, a.ln1_mean, a.ln1_rstd, x, P + layout_.block(l, kLn1W),
                         P + layout_.block(l, kLn1B), N, C);
    be->MatmulForward(a.qkv, a.ln1, P + layout_.block(l, kQkvW), P + layout_.block(l, kQkvB), N, C,
                      3 * C, T(1), false);
    if (attention_ == AttentionKind::kFlash) {
      be->FlashAttentionForward(a.atty, a.lse, a.qkv, B, Tn, C, NH, cfg.causal());
    } else {
      be->AttentionForward(a.atty, a.att, a.qkv, B, Tn, C, NH, cfg.causal());
    }
    be->Copy(a.resmid, x, static_cast<size_t>(N) * C);
    be->MatmulForward(a.resmid, a.atty, P + layout_.block(l, kAttnProjW),
                      P + layout_.block(l, kAttnProjB), N, C, C, s, true);
    be->LayerNormForward(a.ln2, a.ln2_mean, a.ln2_rstd, a.resmid, P + layout_.block(l, kLn2W),
                         P + layout_.block(l, kLn2B), N, C);
    be->MatmulForward(a.fch, a.ln2, P + layout_.block(l, kFcW), P + layout_.block(l, kFcB), N, C, F,
                      T(1), false);
    be->GeluForward(a.fchg, a.fch, static_cast<size_t>(N) * F);
    be->Copy(y, a.resmid, static_cast<size_t>(N) * C);
    be->MatmulForward(y, a.fchg, P + layout_.block(l, kFcProjW), P + layout_.block(l, kFcProjB), N,
                      F, C, s, true);
  }
  const T* final_residual = training ? residual_[K] : residual_[K % 2];
  be->LayerNormForward(lnf_, lnf_mean_, lnf_rstd_, final_residual, P + layout_.lnf_w(),
                       P + layout_.lnf_b(), N, C);
  // The head's input (head_n, C): lnf_ itself, or BERT's masked rows of it, gathered.
  const T* head_in = lnf_;
  if (gather && head_n > 0) {
    be->CopyToDevice(head_rows_dev_, head_rows_.data(), sizeof(int32_t) * head_n);
    be->GatherRows(head_in_, lnf_, head_rows_dev_, head_n, C);
    head_in = head_in_;
  }
  double total = 0;
  if (head_n > 0) {
    be->MatmulForward(logits_, head_in, P + layout_.wte(), nullptr, head_n, C, V, T(1), false);
    // Training fuses the gradient of the summed loss into the logits buffer; Backward's
    // grad_scale normalises it.
    be->CrossEntropyForward(logits_, losses_, targets_, head_n, V, T(1), training);
    be->CopyToHost(host_losses_.data(), losses_, sizeof(T) * head_n);
    for (int i = 0; i < head_n; ++i) total += static_cast<double>(host_losses_[i]);
  }

  have_forward_ = training;
  last_B_ = B;
  last_T_ = Tn;
  last_path_ = path;
  last_scales_.clear();
  for (int l : path) last_scales_.push_back(static_cast<T>(active.scale(l)));
  last_num_targets_ = num_targets;
  last_head_rows_ = head_n;
  last_gathered_ = gather;
  return num_targets > 0 ? total / static_cast<double>(num_targets) : 0.0;
}

template <typename T>
absl::Status Model<T>::Backward(T grad_scale) {
  if (!have_forward_) {
    return absl::FailedPreconditionError(
        "Backward needs a successful training Forward just before it (none pending)");
  }
  have_forward_ = false;
  const ModelConfig& cfg = config_;
  const int B = last_B_, Tn = last_T_, N = B * Tn;
  const int C = cfg.d_model, F = cfg.d_ff, V = cfg.vocab_size, NH = cfg.num_heads;
  const int K = static_cast<int>(last_path_.size());
  Backend<T>* be = backend_;
  const T* P = params_;
  T* G = grads_;
  EnsureBackwardScratch();
  // Head (tied to wte): logits_ holds dloss/dlogits from the fused cross-entropy, over the
  // head's rows (all N, or BERT's M masked ones, whose input is head_in_).
  const int M = last_head_rows_;
  if (last_gathered_) {
    // The head's input gradient (M,C) goes to the top rows of dres_, free until the final
    // LayerNorm's backward (which zeroes it below), and is scattered from there into dln_:
    // positions without a target get zero.
    if (M > 0) {
      be->MatmulBackward(dres_, G + layout_.wte(), nullptr, logits_, head_in_, P + layout_.wte(), M,
                         C, V, grad_scale);
    }
    be->ScatterRows(dln_, dres_, head_rows_dev_, M, N, C);
  } else if (M > 0) {
    be->MatmulBackward(dln_, G + layout_.wte(), nullptr, logits_, lnf_, P + layout_.wte(), M, C, V,
                       grad_scale);
  } else {
    be->Zero(dln_, static_cast<size_t>(N) * C);
  }
  be->Zero(dres_, static_cast<size_t>(N) * C);
  be->LayerNormBackward(dres_, G + layout_.lnf_w(), G + layout_.lnf_b(), dln_, residual_[K],
                        P + layout_.lnf_w(), lnf_mean_, lnf_rstd_, N, C);
  for (int k = K - 1; k >= 0; --k) {
    const int l = last_path_[k];
    const T s = last_scales_[k];
    Slot& a = *slots_[k];
    // y = resmid + s * proj(gelu(fc(ln2(resmid)))): dres is dy and becomes d resmid.
    be->MatmulBackward(dfch_, G + layout_.block(l, kFcProjW), G + layout_.block(l, kFcProjB), dres_,
                       a.fchg, P + layout_.block(l, kFcProjW), N, F, C, s);
    be->GeluBackward(dfch_, a.fch, dfch_, static_cast<size_t>(N) * F);
    be->MatmulBackward(dln_, G + layout_.block(l, kFcW), G + layout_.block(l, kFcB), dfch_, a.ln2,
                       P + layout_.block(l, kFcW), N, C, F, T(1));
    be->LayerNormBackward(dres_, G + layout_.block(l, kLn2W), G + layout_.block(l, kLn2B), dln_,
                          a.resmid, P + layout_.block(l, kLn2W), a.ln2_mean, a.ln2_rstd, N, C);
    // resmid = x + s * proj(attn(qkv(ln1(x)))): dres becomes dx.
    be->MatmulBackward(datty_, G + layout_.block(l, kAttnProjW), G + layout_.block(l, kAttnProjB),
                       dres_, a.atty, P + layout_.block(l, kAttnProjW), N, C, C, s);
    if (attention_ == AttentionKind::kFlash) {
      be->FlashAttentionBackward(dqkv_, datty_, a.qkv, a.atty, a.lse, B, Tn, C, NH, cfg.causal());
    } else {
      be->AttentionBackward(dqkv_, datt_, datty_, a.qkv, a.att, B, Tn, C, NH);
    }
    be->MatmulBackward(dln_, G + layout_.block(l, kQkvW), G + layout_.block(l, kQkvB), dqkv_, a.ln1,
                       P + layout_.block(l, kQkvW), N, C, 3 * C, T(1));
    be->LayerNormBackward(dres_, G + layout_.block(l, kLn1W), G + layout_.block(l, kLn1B), dln_,
                          residual_[k], P + layout_.block(l, kLn1W), a.ln1_mean, a.ln1_rstd, N, C);
  }
  be->EncoderBackward(G + layout_.wte(), G + layout_.wpe(), dres_, inputs_, B, Tn, C);
  return absl::OkStatus();
}

template <typename T>
std::vector<T> Model<T>::LogitsToHost() const {
  std::vector<T> out(static_cast<size_t>(B_) * T_ * config_.vocab_size);
  backend_->CopyToHost(out.data(), logits_, out.size() * sizeof(T));
  return out;
}

template <typename T>
void Model<T>::ZeroGrads() {
  backend_->Zero(grads_, layout_.total());
}

template class Model<float>;
template class Model<double>;

}  // namespace raptr
