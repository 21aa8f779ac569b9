// The optimizer's device work: the AdamW update (which also zeroes the gradients it read) and the
// sum of squares behind the gradient norm, a fixed two-pass reduction in double.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "worker/engine/cuda/common.cuh"
#include "worker/engine/cuda/cuda_backend.h"

namespace raptr {
namespace {

using cuda::BlockSum;
using cuda::CeilDiv;
using cuda::kWarp;

struct AdamWParams {
  float lr, beta1, beta2, eps, weight_decay, bc1, bc2, grad_scale;
};

__device__ inline void AdamWElement(float& p, float& g_io, float& m, float& v,
                                    const AdamWParams& a) {
  const float g = g_io * a.grad_scale;
  g_io = 0.f;
  const float mi = a.beta1 * m + (1.f - a.beta1) * g;
  const float vi = a.beta2 * v + (1.f - a.beta2) * g * g;
  m = mi;
  v = vi;
  // lr 0 (the optimizer's moments_only policy on a skipped block): the parameter is not written,
  // so it stays bit for bit (p - 0 * x would turn -0 into +0 and inf into NaN).
  if (a.lr != 0.f) p -= a.lr * ((mi / a.bc1) / (sqrtf(vi / a.bc2) + a.eps) + a.weight_decay * p);
}

// params, grads, m, v (n): one AdamW step per element; grads are set to zero.
__global__ void AdamWKernel(float* params, float* grads, float* m, float* v, size_t n,
                            AdamWParams a) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) AdamWElement(params[i], grads[i], m[i], v[i], a);
}
// The same over float4 groups (n4 = n / 4).
__global__ void AdamWKernel4(float4* params, float4* grads, float4* m, float4* v, size_t n4,
                             AdamWParams a) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n4) return;
  float4 p = params[i], g = grads[i], mm = m[i], vv = v[i];
  AdamWElement(p.x, g.x, mm.x, vv.x, a);
  AdamWElement(p.y, g.y, mm.y, vv.y, a);
  AdamWElement(p.z, g.z, mm.z, vv.z, a);
  AdamWElement(p.w, g.w, mm.w, vv.w, a);
  params[i] = p;
  grads[i] = g;
  m[i] = mm;
  v[i] = vv;
}

constexpr int kThreads = 256;
constexpr int kMaxSumBlocks = 512;  // pass-1 blocks; the grid depends on n only

// Pass 1: partial[block] = sum of x[i]^2 (double) over a grid-stride slice of x (n).
__global__ void SumSquaresPartialKernel(double* partial, const float* x, size_t n) {
  __shared__ double shared[kWarp];
  double s = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double v = x[i];
    s += v * v;
  }
  s = BlockSum(s, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Pass 2, one block: *result = sum of partial (count <= 2 * blockDim.x).
__global__ void SumSquaresFinishKernel(double* result, const double* partial, int count) {
  __shared__ double shared[kWarp];
  double s = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
  s = BlockSum(s, shared);
  if (threadIdx.x == 0) *result = s;
}

}  // namespace

void CudaBackend::AdamW(float* params, float* grads, float* m, float* v, size_t n, float lr,
                        float beta1, float beta2, float eps, float weight_decay, int64_t t,
                        float grad_scale) {
  if (n == 0) return;
  AdamWParams a;
  a.lr = lr;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.weight_decay = weight_decay;
  a.grad_scale = grad_scale;
  // Bias corrections on the host in double, then rounded, as the CPU backend does.
  a.bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t)));
  a.bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t)));
  size_t done = 0;
  if (cuda::AllAligned16(params, grads, m, v) && n >= 4) {
    const size_t n4 = n / 4;
    AdamWKernel4<<<CeilDiv(n4, kThreads), kThreads, 0, stream_>>>(
        reinterpret_cast<float4*>(params), reinterpret_cast<float4*>(grads),
        reinterpret_cast<float4*>(m), reinterpret_cast<float4*>(v), n4, a);
    CUDA_CHECK_LAUNCH("AdamWKernel4");
    done = n4 * 4;
  }
  if (done < n) {
    AdamWKernel<<<CeilDiv(n - done, kThreads), kThreads, 0, stream_>>>(
        params + done, grads + done, m + done, v + done, n - done, a);
    CUDA_CHECK_LAUNCH("AdamWKernel");
  }
}

double CudaBackend::SumSquares(const float* x, size_t n) {
  if (n == 0) return 0.0;
  const int blocks = static_cast<int>(std::min<size_t>(kMaxSumBlocks, CeilDiv(n, kThreads)));
  auto* partial = static_cast<double*>(Scratch(sizeof(double) * (kMaxSumBlocks + 1)));
  double* result = partial + kMaxSumBlocks;
  SumSquaresPartialKernel<<<blocks, kThreads, 0, stream_>>>(partial, x, n);
  CUDA_CHECK_LAUNCH("SumSquaresPartialKernel");
  SumSquaresFinishKernel<<<1, kThreads, 0, stream_>>>(result, partial, blocks);
  CUDA_CHECK_LAUNCH("SumSquaresFinishKernel");
  double host = 0;
  CopyToHost(&host, result, sizeof(double));
  return host;
}

}  // namespace raptr
