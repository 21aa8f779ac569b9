// Matmuls on cuBLAS, and the bias forward / backward kernels around them.
//
// cuBLAS is column-major, our buffers row-major: a row-major (r,c) matrix is the column-major
// (c,r) matrix with the same leading dimension, its transpose. So row-major C = A @ B^T is
// computed as column-major C^T = B @ A^T, with the operands swapped (see each call).
#include <cstdint>

#include "worker/engine/cuda/common.cuh"
#include "worker/engine/cuda/cuda_backend.h"

namespace raptr {
namespace {

using cuda::CeilDiv;

// out (N,OC) = alpha * bias (OC), or out += alpha * bias when accumulating.
template <bool kAccumulate>
__global__ void BiasForwardKernel(float* out, const float* bias, size_t N, int OC, float alpha) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * OC) return;
  const float b = alpha * bias[i % OC];
  if constexpr (kAccumulate) {
    out[i] += b;
  } else {
    out[i] = b;
  }
}

// Column sums of dout (N,OC), for the bias gradient.
struct Elements {
  const float* x;
  int C;
  __device__ void operator()(int i, int c, float* v) const {
    v[0] = x[static_cast<size_t>(i) * C + c];
  }
};

}  // namespace

void CudaBackend::Gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* A,
                       int lda, int64_t stride_a, const float* B, int ldb, int64_t stride_b,
                       float beta, float* C, int ldc, int64_t stride_c, int batch) {
  if (m == 0 || n == 0 || batch == 0) return;
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasComputeType_t compute =
      options_.allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  if (batch == 1) {
    CUDA_CHECK(cublasGemmEx(cublas_, op_a, op_b, m, n, k, &alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F,
                            ldb, &beta, C, CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT));
  } else {
    CUDA_CHECK(cublasGemmStridedBatchedEx(
        cublas_, op_a, op_b, m, n, k, &alpha, A, CUDA_R_32F, lda, stride_a, B, CUDA_R_32F, ldb,
        stride_b, &beta, C, CUDA_R_32F, ldc, stride_c, batch, compute, CUBLAS_GEMM_DEFAULT));
  }
}

void CudaBackend::MatmulForward(float* out, const float* inp, const float* w, const float* bias,
                                int N, int C, int OC, float alpha, bool accumulate) {
  float beta = accumulate ? 1.f : 0.f;
  const size_t elements = static_cast<size_t>(N) * OC;
  if (bias != nullptr && elements > 0) {
    // Seed the output with the scaled bias, as the CPU backend does; the GEMM adds onto it.
    constexpr int kThreads = 256;
    if (accumulate) {
      BiasForwardKernel<true>
          <<<CeilDiv(elements, kThreads), kThreads, 0, stream_>>>(out, bias, N, OC, alpha);
    } else {
      BiasForwardKernel<false>
          <<<CeilDiv(elements, kThreads), kThreads, 0, stream_>>>(out, bias, N, OC, alpha);
    }
    CUDA_CHECK_LAUNCH("BiasForwardKernel");
    beta = 1.f;
  }
  // out^T (OC,N) = w (OC,C) @ inp^T (C,N): w is stored as column-major w^T, hence op T.
  Gemm(true, false, OC, N, C, alpha, w, C, 0, inp, C, 0, beta, out, OC, 0, 1);
  flops_executed_ += 2ull * N * C * OC;
}

void CudaBackend::MatmulBackward(float* dinp, float* dw, float* dbias, const float* dout,
                                 const float* inp, const float* w, int N, int C, int OC,
                                 float alpha) {
  if (dinp != nullptr) {
    // dinp^T (C,N) = w^T (C,OC) @ dout^T (OC,N).
    Gemm(false, false, C, N, OC, alpha, w, C, 0, dout, OC, 0, 0.f, dinp, C, 0, 1);
    flops_executed_ += 2ull * N * C * OC;
  }
  // dw^T (C,OC) += inp^T (C,N) @ dout (N,OC): dout is stored as column-major dout^T, hence op T.
  Gemm(false, true, C, OC, N, alpha, inp, C, 0, dout, OC, 0, 1.f, dw, C, 0, 1);
  flops_executed_ += 2ull * N * C * OC;
  if (dbias != nullptr && N > 0) {
    auto* partial = static_cast<float*>(
        Scratch(sizeof(float) * static_cast<size_t>(cuda::ColumnSumChunks(N)) * OC));
    cuda::ColumnSums<1>({{dbias}}, partial, N, OC, alpha, Elements{dout, OC}, stream_);
  }
}

}  // namespace raptr
