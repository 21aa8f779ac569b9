// Backend: the device interface the model runs on. The CPU backend is the readable reference;
// a CUDA backend implements the same calls on device buffers and streams.
//
// Every kernel is a plain call over raw contiguous buffers owned by this backend (allocated with
// Alloc), shapes in the comment, llm.c style. Calls are ordered: a backend may run them
// asynchronously on its stream, and Synchronize() waits for all of them. Host pointers are only
// accepted by CopyToDevice / CopyToHost. A backend instance is used by one thread at a time; it may
// use many threads internally.
//
// Matmul-class work (matmuls, attention) is counted in flops_executed(), so tests can check that
// a skipped layer costs nothing and that the FLOPs model matches what actually ran.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace raptr {

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

}  // namespace raptr
