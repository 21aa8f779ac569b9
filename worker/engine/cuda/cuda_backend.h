// CudaBackend: the Backend<float> of backend.h on one NVIDIA GPU. Matmuls and attention's two
// products go to cuBLAS; every other op is a kernel of ours, one .cu file per op family
// (encoder, layernorm, matmul, attention, flash_attention, gelu, crossentropy, adamw, gather),
// llm.c / ggml style.
//
// Every call is enqueued on the backend's own stream and returns at once, except the few that
// hand a value to the host (CopyToHost, SumSquares, Synchronize) and EncoderBackward, which reads
// the token ids back to group positions by token (see encoder.cu).
//
// Numerics: fp32 everywhere, and cuBLAS with CUBLAS_COMPUTE_32F (no TF32) unless allow_tf32 is
// set, so results match CpuBackend<float> to fp32 rounding. Deterministic: no float atomics, every
// reduction has a fixed order that depends on the shape only (not on the device's SM count), and
// cuBLAS is bitwise reproducible for a given toolkit and GPU model; so the same inputs give
// bitwise the same outputs, run after run.
//
// Errors: the Backend interface has no status returns, so a failing CUDA or cuBLAS call (out of
// memory, a bad launch, a device fault surfacing at the next synchronising call) throws
// std::runtime_error naming the call and CUDA's error string. A backend that threw is unusable:
// a device fault poisons the context.
//
// Threading: one thread at a time, as backend.h says. The header is plain C++ (no CUDA headers),
// so host code can hold a CudaBackend without being compiled by nvcc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "worker/engine/backend.h"
#include "worker/engine/device_info.h"

// Opaque CUDA / cuBLAS handle types, declared as cuda_runtime.h and cublas_v2.h declare them.
struct CUstream_st;
struct cublasContext;

namespace raptr {

struct CudaBackendOptions {
  int device = 0;  // CUDA device ordinal
  // Let cuBLAS round matmul inputs to TF32 (CUBLAS_COMPUTE_32F_FAST_TF32): several times faster
  // on Ampere and later, but products then carry about 1e-3 relative error, so parity with the
  // CPU backend no longer holds at fp32 tolerance. Off by default.
  bool allow_tf32 = false;
};

class CudaBackend final : public Backend<float> {
 public:
  // Number of usable CUDA devices; 0 when there is no driver or no GPU (never throws).
  static int DeviceCount();
  // "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)" for `device`; empty if it cannot be queried.
  static std::string DeviceName(int device = 0);
  // The first sticky CUDA error seen in this process, by any backend or none (""): it outlives
  // the backend whose call met it.
  static std::string ProcessFault();
  // Fills `info` for `device`; returns "" on success, else the driver's reason (never throws).
  static std::string QueryDevice(int device, CudaDeviceInfo* info);

  // Creates the stream and the cuBLAS handle on options.device. Throws std::runtime_error if
  // there is no such device.
  explicit CudaBackend(const CudaBackendOptions& options = {});
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override { return "cuda"; }
  bool allow_tf32() const { return options_.allow_tf32; }
  // The stream every call is enqueued on (a cudaStream_t), for callers that time with events.
  CUstream_st* stream() const { return stream_; }
  cublasContext* cublas() const { return cublas_; }

  void* AllocBytes(size_t bytes) override;
  void FreeBytes(void* ptr) override;
  void CopyToDevice(void* dst, const void* host_src, size_t bytes) override;
  void CopyToHost(void* host_dst, const void* src, size_t bytes) override;
  void Copy(float* dst, const float* src, size_t n) override;
  void Zero(float* x, size_t n) override;
  void Synchronize() override;
  // hs <= 128 whose tiles fit this device's opt-in shared memory per block (kHs = 128 needs 166
  // KB: H100/H200 and A100 yes, sm_86/89's 99 KB no).
  bool SupportsFlashAttention(int head_dim) const override;
  // cudaMemGetInfo's free bytes on this device, less kReservedBytes.
  std::optional<size_t> AvailableBytes() override;
  // The first sticky CUDA error of this process (see common.cuh; the stream is probed), or "".
  std::string device_fault() const override;
  // Headroom kept out of AvailableBytes for what the backend allocates on its own (Scratch, the
  // staging events, cuBLAS's workspace).
  static constexpr size_t kReservedBytes = size_t{512} << 20;

  // One block per row, its threads across the columns (gather.cu); ScatterRows zeroes dst with
  // one cudaMemsetAsync first.
  void GatherRows(float* dst, const float* src, const int32_t* rows, int M, int C) override;
  void ScatterRows(float* dst, const float* src, const int32_t* rows, int M, int N, int C) override;

  void EncoderForward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                      int Tn, int C) override;
  void EncoderBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                       int Tn, int C) override;
  void LayerNormForward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                        const float* b, int N, int C) override;
  void LayerNormBackward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                         const float* w, const float* mean, const float* rstd, int N,
                         int C) override;
  void MatmulForward(float* out, const float* inp, const float* w, const float* bias, int N, int C,
                     int OC, float alpha, bool accumulate) override;
  void MatmulBackward(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                      const float* w, int N, int C, int OC, float alpha) override;
  void AttentionForward(float* out, float* att, const float* qkv, int B, int Tn, int C, int NH,
                        bool causal) override;
  void AttentionBackward(float* dqkv, float* datt, const float* dout, const float* qkv,
                         const float* att, int B, int Tn, int C, int NH) override;
  // Our own kernels (flash_attention.cu), deterministic; hs = C/NH up to 128, else they throw
  // std::runtime_error.
  void FlashAttentionForward(float* out, float* lse, const float* qkv, int B, int Tn, int C, int NH,
                             bool causal) override;
  void FlashAttentionBackward(float* dqkv, const float* dout, const float* qkv, const float* out,
                              const float* lse, int B, int Tn, int C, int NH, bool causal) override;
  void GeluForward(float* out, const float* inp, size_t n) override;
  void GeluBackward(float* dinp, const float* inp, const float* dout, size_t n) override;
  void CrossEntropyForward(float* logits, float* losses, const int32_t* targets, int N, int V,
                           float grad_scale, bool compute_grad) override;
  double SumSquares(const float* x, size_t n) override;
  void AdamW(float* params, float* grads, float* m, float* v, size_t n, float lr, float beta1,
             float beta2, float eps, float weight_decay, int64_t t, float grad_scale) override;

 private:
  // Column-major GEMM on the stream (cuBLAS's convention), `batch` products at the given element
  // strides: C = alpha * op(A) (m,k) @ op(B) (k,n) + beta * C. With beta == 0, C is not read.
  // Row-major callers swap operands (row-major X is column-major X^T); see matmul.cu.
  void Gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* A, int lda,
            int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta, float* C,
            int ldc, int64_t stride_c, int batch);
  // Device scratch of at least `bytes`, valid until the next Scratch call. Grows by
  // reallocating (which synchronises the device); never shrinks.
  void* Scratch(size_t bytes);
  // Makes options_.device the calling thread's current device: the runtime's device is per host
  // thread, and memory and copy calls may come from a thread other than the constructor's (a
  // checkpoint writer, a metrics thread).
  void UseDevice() const;
  // Pinned host staging for large copies (see CopyToHost): two buffers of kStagingBytes,
  // allocated on first use, so a checkpoint of 1.5 GB moves at pinned bandwidth with the D2H of
  // one chunk overlapping the host copy of the previous one.
  static constexpr size_t kStagingBytes = size_t{64} << 20;
  void* Staging(int i);

  CudaBackendOptions options_;
  CUstream_st* stream_ = nullptr;
  cublasContext* cublas_ = nullptr;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  void* staging_[2] = {nullptr, nullptr};
  struct CUevent_st* staging_done_[2] = {nullptr, nullptr};
  // EncoderBackward's host staging: token ids, and positions grouped by token.
  std::vector<int32_t> host_tokens_;
  std::vector<int32_t> host_groups_;
};

}  // namespace raptr
