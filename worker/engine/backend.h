// Backend: the device interface the model runs on. The CPU backend is the readable reference;
// a CUDA backend implements the same calls on device buffers and streams.
//
// Every kernel is a plain call over raw contiguous buffers owned by this backend (allocated with
// Alloc), shapes in the comment, llm.c style. Calls are ordered: a backend may run them
// asynchronously on its stream, and Synchronize() waits for all of them. Host pointers are only
// accepted by CopyToDevice / CopyToHost. A backend instance is used by one thread at a time; it may
// use many threads internally.
//
// Only the model and the optimizer hold raw buffer addresses (they hand them to kernels). What
// they show everyone else (the session, checkpoints, the all-reduce) is a DeviceSpan: an address
// and a length with no host access, read and written through the backend (Download, Upload,
// WithHostView below), so code above the model works unchanged whether the buffer is host
// memory or a GPU's. tests/unit/device_memory_test.cc runs whole sessions on a CPU backend whose
// buffers fault when touched from outside a backend call.
//
// Matmul-class work (matmuls, attention) is counted in flops_executed(), so tests can check that
// a skipped layer costs nothing and that the FLOPs model matches what actually ran.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace raptr {

// n elements of a backend buffer. Not a pointer: it cannot be dereferenced or iterated on the host.
template <typename T>
class DeviceSpan {
 public:
  DeviceSpan() = default;
  DeviceSpan(T* device_address, size_t n) : ptr_(device_address), n_(n) {}
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }
  bool empty() const { return n_ == 0; }
  // Elements [offset, offset + n). REQUIRES: offset + n <= size().
  DeviceSpan subspan(size_t offset, size_t n) const {
    assert(offset <= n_ && n <= n_ - offset);
    return DeviceSpan(ptr_ + offset, n);
  }
  // The device address, for device APIs only (the backend's kernels, NCCL). Never dereference it
  // on the host: on a GPU it is not host memory.
  T* device_data() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

// A backend allocation that failed, saying what it was for and its size. A std::bad_alloc, so
// the session's boundary reports it as RESOURCE_EXHAUSTED, with this message.
class BackendOutOfMemory : public std::bad_alloc {
 public:
  explicit BackendOutOfMemory(std::string message) : message_(std::move(message)) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

// Flash attention's query and key tile (both backends use it: it decides which causal tiles run
// and so the FLOPs counted).
inline constexpr int kFlashAttentionTile = 64;

// Score entries (query, key) one (batch, head) of flash attention evaluates over a sequence of
// Tn: Tn * Tn bidirectional; causal, every entry of the tiles on or below the diagonal (query
// tile q runs key tiles 0..q), which is between Tn (Tn + 1) / 2 and Tn * Tn.
inline uint64_t FlashAttentionScores(int Tn, bool causal) {
  const uint64_t T = static_cast<uint64_t>(Tn);
  if (!causal) return T * T;
  const uint64_t tile = kFlashAttentionTile;
  uint64_t scores = 0;
  for (uint64_t q0 = 0; q0 < T; q0 += tile) {
    const uint64_t q1 = q0 + tile < T ? q0 + tile : T;
    scores += (q1 - q0) * q1;  // rows q0..q1 against keys 0..q1 (the diagonal tile whole)
  }
  return scores;
}
// The FLOPs FlashAttentionForward / FlashAttentionBackward count (see their comments), with hs
// the real head size C/NH (padding of hs or T inside a kernel is not counted).
inline uint64_t FlashAttentionForwardFlops(int B, int Tn, int C, int NH, bool causal) {
  return 4ull * B * NH * static_cast<uint64_t>(C / NH) * FlashAttentionScores(Tn, causal);
}
inline uint64_t FlashAttentionBackwardFlops(int B, int Tn, int C, int NH, bool causal) {
  return 14ull * B * NH * static_cast<uint64_t>(C / NH) * FlashAttentionScores(Tn, causal);
}

template <typename T>
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // ---- memory ----
  virtual void* AllocBytes(size_t bytes) = 0;  // zero-initialised
  virtual void FreeBytes(void* ptr) = 0;
  virtual void CopyToDevice(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void CopyToHost(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void Copy(T* dst, const T* src, size_t n) = 0;  // device to device
  virtual void Zero(T* x, size_t n) = 0;
  virtual void Synchronize() = 0;
  T* Alloc(size_t n) { return static_cast<T*>(AllocBytes(n * sizeof(T))); }
  // Alloc for a named tensor: a failure throws BackendOutOfMemory naming `what`, its size and the
  // memory still free ("cuda out of memory allocating block activations: att (B,NH,T,T), 1.50
  // GiB; 0.80 GiB free").
  T* AllocTensor(size_t n, const std::string& what) {
    try {
      return Alloc(n);
    } catch (const std::bad_alloc&) {
      const std::optional<size_t> free_bytes = AvailableBytes();
      char sizes[96];
      std::snprintf(sizes, sizeof(sizes), "%.2f GiB",
                    static_cast<double>(n * sizeof(T)) / (1 << 30));
      std::string message = name() + " out of memory allocating " + what + ", " + sizes;
      if (free_bytes.has_value()) {
        std::snprintf(sizes, sizeof(sizes), "; %.2f GiB free",
                      static_cast<double>(*free_bytes) / (1 << 30));
        message += sizes;
      }
      throw BackendOutOfMemory(message);
    }
  }
  // True when this backend's buffers are ordinary host memory, so a caller may read them in
  // place (WithHostView) instead of staging a copy.
  virtual bool host_accessible() const { return false; }
  // Bytes the backend could still allocate (a GPU's free memory), or nullopt when it has no
  // fixed budget (host memory). The session's memory preflight compares against it.
  virtual std::optional<size_t> AvailableBytes() { return std::nullopt; }
  // Empty while the device is usable. Once an error has poisoned it (a sticky CUDA error: an
  // illegal address, a kernel fault), the reason: nothing may run on it again in this process,
  // so the worker reports the fault and exits for its supervisor to restart it.
  virtual std::string device_fault() const { return ""; }
  // Whether FlashAttentionForward/Backward run at this head size here (a GPU's shared memory
  // bounds its tiles). Checked when a session starts, not at the first step.
  virtual bool SupportsFlashAttention(int head_dim) const { return head_dim > 0; }

  // ---- row gather / scatter (BERT's head runs on its masked positions only) ----
  // dst (M,C) row i = src row rows[i], for i < M. rows (M) holds int32 row indices into src, in a
  // backend buffer (a device pointer, like the token ids). dst is a buffer of its own: it does
  // not overlap src. M may be 0 (nothing is written).
  virtual void GatherRows(T* dst, const T* src, const int32_t* rows, int M, int C) = 0;
  // GatherRows' inverse, for the gradient: dst (N,C) is set to zero everywhere, then dst row
  // rows[i] = src row i (src (M,C)), for i < M. REQUIRES: M <= N, and rows (M, a backend buffer)
  // distinct and increasing, each in [0, N); dst and src do not overlap. M may be 0 (dst all
  // zero).
  virtual void ScatterRows(T* dst, const T* src, const int32_t* rows, int M, int N, int C) = 0;

  // ---- forward / backward kernels ----
  // out (B,T,C) = wte[tokens] + wpe[0..T). tokens (B,T) in [0,V).
  virtual void EncoderForward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B,
                              int Tn, int C) = 0;
  // dwte[tokens] += dout, dwpe += sum over batch of dout.
  virtual void EncoderBackward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B,
                               int Tn, int C) = 0;

  // out (N,C) = LayerNorm(inp (N,C)) * w + b; saves mean (N) and rstd (N). eps = 1e-5.
  virtual void LayerNormForward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b,
                                int N, int C) = 0;
  // dinp += d/dinp; dw += ..; db += .. (all accumulate).
  virtual void LayerNormBackward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w,
                                 const T* mean, const T* rstd, int N, int C) = 0;

  // out (N,OC) = (accumulate ? out : 0) + alpha * (inp (N,C) @ w (OC,C)^T + bias (OC)).
  // bias may be null.
  virtual void MatmulForward(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC,
                             T alpha, bool accumulate) = 0;
  // For out = alpha * (inp @ w^T + bias): dinp (N,C) = alpha * dout @ w (overwritten, may be
  // null), dw (OC,C) += alpha * dout^T @ inp, dbias (OC) += alpha * colsum(dout) (may be null).
  virtual void MatmulBackward(T* dinp, T* dw, T* dbias, const T* dout, const T* inp, const T* w,
                              int N, int C, int OC, T alpha) = 0;

  // qkv (B,T,3C) holds [q|k|v] per position; out (B,T,C); att (B,NH,T,T) saves the softmax
  // probabilities (zero above the diagonal when causal).
  virtual void AttentionForward(T* out, T* att, const T* qkv, int B, int Tn, int C, int NH,
                                bool causal) = 0;
  // dqkv (B,T,3C) overwritten; datt (B,NH,T,T) is scratch.
  virtual void AttentionBackward(T* dqkv, T* datt, const T* dout, const T* qkv, const T* att, int B,
                                 int Tn, int C, int NH) = 0;

  // Flash attention: the same attention as above (scores q.k / sqrt(hs), hs = C/NH; causal masks
  // key j > query i) with no (B,NH,T,T) matrix anywhere, FlashAttention-2 style: queries and
  // keys in tiles of kFlashAttentionTile, an online softmax over the key tiles. qkv (B,T,3C) as
  // above; out (B,T,C); lse (B,NH,T) saves each softmax row's log-sum-exp,
  // log(sum_j exp(q_i.k_j / sqrt(hs))), for the backward. Causal, the key tiles wholly above the
  // diagonal are skipped; the tiles on it are computed whole and masked.
  // Counts 4 * hs * FlashAttentionScores(T, causal) FLOPs per (batch, head): QK^T and PV over the
  // score entries of the tiles that run (FlashAttentionForwardFlops below).
  virtual void FlashAttentionForward(T* out, T* lse, const T* qkv, int B, int Tn, int C, int NH,
                                     bool causal) = 0;
  // dqkv (B,T,3C) overwritten, from dout (B,T,C) and the forward's out (B,T,C) and lse (B,NH,T):
  // D_i = rowsum(dout_i * out_i), and P recomputed from q, k and lse, tile by tile (no (T,T)
  // buffer; scratch of O(B*NH*T) at most). Deterministic with no atomics: one pass over key tiles
  // gives dK and dV (summing over query tiles in order), a second over query tiles gives dQ, so
  // S and dP are computed twice. Counts 14 * hs * FlashAttentionScores(T, causal) FLOPs per
  // (batch, head): the dK/dV pass recomputes S and dP and forms dV and dK (8 hs per score), the
  // dQ pass recomputes S and dP and forms dQ (6 hs); D (2 T hs) is not matmul-class, uncounted.
  virtual void FlashAttentionBackward(T* dqkv, const T* dout, const T* qkv, const T* out,
                                      const T* lse, int B, int Tn, int C, int NH, bool causal) = 0;

  // GELU, tanh approximation. out may alias nothing; GeluBackward may run in place (dinp==dout).
  virtual void GeluForward(T* out, const T* inp, size_t n) = 0;
  virtual void GeluBackward(T* dinp, const T* inp, const T* dout, size_t n) = 0;

  // Fused softmax + cross-entropy over logits (N,V). losses (N): -log p[target], 0 where
  // target < 0 (ignored). If compute_grad, logits are overwritten with dloss/dlogits =
  // (softmax - onehot(target)) * grad_scale, and with 0 on ignored rows.
  virtual void CrossEntropyForward(T* logits, T* losses, const int32_t* targets, int N, int V,
                                   T grad_scale, bool compute_grad) = 0;

  // ---- optimizer and reductions ----
  // Sum of squares of x (n), accumulated in double.
  virtual double SumSquares(const T* x, size_t n) = 0;
  // One AdamW step over a slice: g = grads * grad_scale; m = b1 m + (1-b1) g;
  // v = b2 v + (1-b2) g^2; p -= lr * (m/bc1 / (sqrt(v/bc2) + eps) + wd * p) with
  // bc1 = 1-b1^t, bc2 = 1-b2^t. Decoupled weight decay (wd may be 0). The gradients are
  // consumed: set to zero in the same pass, which saves the optimizer a separate sweep.
  virtual void AdamW(T* params, T* grads, T* m, T* v, size_t n, float lr, float beta1, float beta2,
                     float eps, float weight_decay, int64_t t, float grad_scale) = 0;

  // Matmul-class FLOPs this backend has executed since construction (or ResetFlops).
  uint64_t flops_executed() const { return flops_executed_; }
  void ResetFlops() { flops_executed_ = 0; }

 protected:
  uint64_t flops_executed_ = 0;
};

// Copies `src` to the host (synchronous).
template <typename T>
std::vector<T> Download(Backend<T>& backend, DeviceSpan<T> src) {
  std::vector<T> host(src.size());
  backend.CopyToHost(host.data(), src.device_data(), src.bytes());
  return host;
}

// Copies host[0 .. dst.size()) into `dst`.
template <typename T>
void Upload(Backend<T>& backend, const T* host, DeviceSpan<T> dst) {
  backend.CopyToDevice(dst.device_data(), host, dst.bytes());
}

// Runs read(const T* host, n) over `src`'s contents: in place when the backend's memory is the
// host's, else over a staged copy. The view is valid only during the call.
template <typename T, typename F>
auto WithHostView(Backend<T>& backend, DeviceSpan<T> src, F read) {
  if (backend.host_accessible()) {
    backend.Synchronize();
    return read(static_cast<const T*>(src.device_data()), src.size());
  }
  const std::vector<T> staged = Download(backend, src);
  return read(staged.data(), staged.size());
}

// Runs write(T* host, n), then makes it `dst`'s contents: in place when the backend's memory is
// the host's, else through a staged copy that is uploaded after `write` returns true. `write`
// returning false leaves `dst` untouched on a staged backend (an error while filling it).
template <typename T, typename F>
bool WithHostBuffer(Backend<T>& backend, DeviceSpan<T> dst, F write) {
  if (backend.host_accessible()) {
    backend.Synchronize();
    return write(dst.device_data(), dst.size());
  }
  std::vector<T> staged(dst.size());
  if (!write(staged.data(), staged.size())) return false;
  Upload(backend, staged.data(), dst);
  return true;
}

}  // namespace raptr
