// LayerNorm forward and backward: one warp per row for the row work, the deterministic column
// sums of common.cuh for the weight and bias gradients. Same formulas, in the same precision,
// as the CPU backend (the rstd's square root in double).
#include <cstdint>

#include "worker/engine/cuda/common.cuh"
#include "worker/engine/cuda/cuda_backend.h"

namespace raptr {
namespace {

using cuda::CeilDiv;
using cuda::kWarp;
using cuda::WarpSum;

constexpr double kLayerNormEps = 1e-5;
constexpr int kRowsPerBlock = 8;  // warps per block

// out (N,C) = (inp - mean) * rstd * w + b; mean (N), rstd (N). One warp per row.
// kVec: C % 4 == 0 and every pointer 16-byte aligned.
template <bool kVec>
__global__ void LayerNormForwardKernel(float* out, float* mean, float* rstd, const float* inp,
                                       const float* w, const float* b, int N, int C) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= N) return;
  const float* x = inp + static_cast<size_t>(row) * C;
  float* o = out + static_cast<size_t>(row) * C;
  float sum = 0.f;
  if constexpr (kVec) {
    for (int c = lane * 4; c < C; c += kWarp * 4) {
      const float4 v = *reinterpret_cast<const float4*>(x + c);
      sum += (v.x + v.y) + (v.z + v.w);
    }
  } else {
    for (int c = lane; c < C; c += kWarp) sum += x[c];
  }
  const float m = WarpSum(sum) / C;
  float var = 0.f;
  if constexpr (kVec) {
    for (int c = lane * 4; c < C; c += kWarp * 4) {
      const float4 v = *reinterpret_cast<const float4*>(x + c);
      const float a = v.x - m, bb = v.y - m, cc = v.z - m, d = v.w - m;
      var += (a * a + bb * bb) + (cc * cc + d * d);
    }
  } else {
    for (int c = lane; c < C; c += kWarp) var += (x[c] - m) * (x[c] - m);
  }
  var = WarpSum(var);
  const float s = static_cast<float>(1.0 / sqrt(static_cast<double>(var / C) + kLayerNormEps));
  if constexpr (kVec) {
    for (int c = lane * 4; c < C; c += kWarp * 4) {
      const float4 v = *reinterpret_cast<const float4*>(x + c);
      const float4 wv = *reinterpret_cast<const float4*>(w + c);
      const float4 bv = *reinterpret_cast<const float4*>(b + c);
      float4 r;
      r.x = (v.x - m) * s * wv.x + bv.x;
      r.y = (v.y - m) * s * wv.y + bv.y;
      r.z = (v.z - m) * s * wv.z + bv.z;
      r.w = (v.w - m) * s * wv.w + bv.w;
      *reinterpret_cast<float4*>(o + c) = r;
    }
  } else {
    for (int c = lane; c < C; c += kWarp) o[c] = (x[c] - m) * s * w[c] + b[c];
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = s;
  }
}

// dinp (N,C) += rstd * (dout * w - mean(dout * w) - norm * mean(dout * w * norm)), norm the
// normalised input. One warp per row.
__global__ void LayerNormBackwardInputKernel(float* dinp, const float* dout, const float* inp,
                                             const float* w, const float* mean, const float* rstd,
                                             int N, int C) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= N) return;
  const size_t off = static_cast<size_t>(row) * C;
  const float* x = inp + off;
  const float* d = dout + off;
  float* dx = dinp + off;
  const float m = mean[row], s = rstd[row];
  float sum_dn = 0.f, sum_dn_n = 0.f;
  for (int c = lane; c < C; c += kWarp) {
    const float dn = d[c] * w[c];
    sum_dn += dn;
    sum_dn_n += dn * (x[c] - m) * s;
  }
  const float mean_dn = WarpSum(sum_dn) / C, mean_dn_n = WarpSum(sum_dn_n) / C;
  for (int c = lane; c < C; c += kWarp) {
    const float n = (x[c] - m) * s;
    dx[c] += s * (d[c] * w[c] - mean_dn - n * mean_dn_n);
  }
}

// The two column-summed quantities of the parameter gradients: dout * norm (for w), dout (b).
struct LayerNormParamGrads {
  const float* dout;
  const float* inp;
  const float* mean;
  const float* rstd;
  int C;
  __device__ void operator()(int i, int c, float* v) const {
    const size_t k = static_cast<size_t>(i) * C + c;
    v[0] = dout[k] * (inp[k] - mean[i]) * rstd[i];
    v[1] = dout[k];
  }
};

}  // namespace

void CudaBackend::LayerNormForward(float* out, float* mean, float* rstd, const float* inp,
                                   const float* w, const float* b, int N, int C) {
  if (N == 0) return;
  const unsigned blocks = CeilDiv(N, kRowsPerBlock);
  if (C % 4 == 0 && cuda::AllAligned16(out, inp, w, b)) {
    LayerNormForwardKernel<true>
        <<<blocks, kRowsPerBlock * kWarp, 0, stream_>>>(out, mean, rstd, inp, w, b, N, C);
  } else {
    LayerNormForwardKernel<false>
        <<<blocks, kRowsPerBlock * kWarp, 0, stream_>>>(out, mean, rstd, inp, w, b, N, C);
  }
  CUDA_CHECK_LAUNCH("LayerNormForwardKernel");
}

void CudaBackend::LayerNormBackward(float* dinp, float* dw, float* db, const float* dout,
                                    const float* inp, const float* w, const float* mean,
                                    const float* rstd, int N, int C) {
  if (N == 0) return;
  LayerNormBackwardInputKernel<<<CeilDiv(N, kRowsPerBlock), kRowsPerBlock * kWarp, 0, stream_>>>(
      dinp, dout, inp, w, mean, rstd, N, C);
  CUDA_CHECK_LAUNCH("LayerNormBackwardInputKernel");
  auto* partial = static_cast<float*>(
      Scratch(2 * sizeof(float) * static_cast<size_t>(cuda::ColumnSumChunks(N)) * C));
  cuda::ColumnSums<2>({{dw, db}}, partial, N, C, 1.f, LayerNormParamGrads{dout, inp, mean, rstd, C},
                      stream_);
}

}  // namespace raptr
