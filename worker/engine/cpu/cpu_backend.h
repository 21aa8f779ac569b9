// CpuBackend: the reference backend. Matmuls go to OpenBLAS (OpenMP build); every other kernel is
// ours, threaded with OpenMP over rows or channels and written so the compiler vectorises it.
//
// Deterministic: every reduction has a fixed order for a given thread count (no atomics), so the
// same inputs give bitwise the same outputs, run after run. Instantiated for float (training) and
// double (finite-difference gradient checks).
#pragma once

#include <cstddef>
#include <map>
#include <mutex>

#include "worker/engine/backend.h"

namespace raptr {

template <typename T>
class CpuBackend final : public Backend<T> {
 public:
  CpuBackend() = default;
  std::string name() const override { return "cpu"; }

  void* AllocBytes(size_t bytes) override;
  void FreeBytes(void* ptr) override;
  void CopyToDevice(void* dst, const void* host_src, size_t bytes) override;
  void CopyToHost(void* host_dst, const void* src, size_t bytes) override;
  void Copy(T* dst, const T* src, size_t n) override;
  void Zero(T* x, size_t n) override;
  void Synchronize() override {}
  bool host_accessible() const override { return true; }

  // One OpenMP iteration per row; ScatterRows zeroes each gap between two target rows in the
  // same pass (so every element of dst is written once), which is why it needs rows increasing.
  void GatherRows(T* dst, const T* src, const int32_t* rows, int M, int C) override;
  void ScatterRows(T* dst, const T* src, const int32_t* rows, int M, int N, int C) override;

  void EncoderForward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int Tn,
                      int C) override;
  void EncoderBackward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int Tn,
                       int C) override;
  void LayerNormForward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int N,
                        int C) override;
  void LayerNormBackward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w,
                         const T* mean, const T* rstd, int N, int C) override;
  void MatmulForward(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC, T alpha,
                     bool accumulate) override;
  void MatmulBackward(T* dinp, T* dw, T* dbias, const T* dout, const T* inp, const T* w, int N,
                      int C, int OC, T alpha) override;
  void AttentionForward(T* out, T* att, const T* qkv, int B, int Tn, int C, int NH,
                        bool causal) override;
  void AttentionBackward(T* dqkv, T* datt, const T* dout, const T* qkv, const T* att, int B, int Tn,
                         int C, int NH) override;
  // Tiled online softmax (cpu_backend.cc); one OpenMP task per (batch, head, query tile) forward
  // and per (batch, head, key tile) / (batch, head, query tile) in the backward's two passes. Each
  // output element is summed by one task in a fixed order, so the results are bitwise the same
  // for any thread count.
  void FlashAttentionForward(T* out, T* lse, const T* qkv, int B, int Tn, int C, int NH,
                             bool causal) override;
  void FlashAttentionBackward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse,
                              int B, int Tn, int C, int NH, bool causal) override;
  void GeluForward(T* out, const T* inp, size_t n) override;
  void GeluBackward(T* dinp, const T* inp, const T* dout, size_t n) override;
  void CrossEntropyForward(T* logits, T* losses, const int32_t* targets, int N, int V, T grad_scale,
                           bool compute_grad) override;
  double SumSquares(const T* x, size_t n) override;
  void AdamW(T* params, T* grads, T* m, T* v, size_t n, float lr, float beta1, float beta2,
             float eps, float weight_decay, int64_t t, float grad_scale) override;

 private:
  // Buffers of at least this many bytes are mapped directly (see AllocBytes).
  static constexpr size_t kMapBytes = size_t{1} << 21;
  std::mutex mapped_mu_;
  std::map<void*, size_t> mapped_;  // mapped buffers and their lengths
};

extern template class CpuBackend<float>;
extern template class CpuBackend<double>;

}  // namespace raptr
