// Multi-head attention over the packed qkv (B,T,3C), forward and backward, the CPU backend's
// algorithm on the GPU: the four products per (batch, head) run as strided-batched cuBLAS GEMMs
// reading q, k, v in place (row stride 3C, no repacking), and the softmax and its backward are
// one warp per row of the (T,T) score matrix.
//
// The (batch, head) pairs are not one strided batch (a head steps by hs floats, a batch by T*3C),
// so the GEMMs batch over the larger of B and NH and loop over the smaller: min(B, NH) calls each.
#include <cmath>
#include <cstdint>

#include "worker/engine/cuda/common.cuh"
#include "worker/engine/cuda/cuda_backend.h"

namespace raptr {
namespace {

using cuda::CeilDiv;
using cuda::kWarp;
using cuda::WarpMax;
using cuda::WarpSum;

constexpr int kRowsPerBlock = 8;  // warps per block

// In place on att (B*NH*T rows of T): softmax over the first `valid` entries of row i (i + 1 if
// causal, else T), zero after them. One warp per row.
__global__ void SoftmaxForwardKernel(float* att, size_t rows, int T, bool causal) {
  const size_t r = static_cast<size_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= rows) return;
  float* row = att + r * T;
  const int i = static_cast<int>(r % T);
  const int valid = causal ? i + 1 : T;
  float mx = -INFINITY;
  for (int j = lane; j < valid; j += kWarp) mx = fmaxf(mx, row[j]);
  mx = WarpMax(mx);
  float sum = 0.f;
  for (int j = lane; j < valid; j += kWarp) {
    const float e = expf(row[j] - mx);
    row[j] = e;
    sum += e;
  }
  const float inv = 1.f / WarpSum(sum);
  for (int j = lane; j < valid; j += kWarp) row[j] *= inv;
  for (int j = valid + lane; j < T; j += kWarp) row[j] = 0.f;
}

// In place on datt: dS = P * (dP - rowsum(P * dP)) * scale, over whole rows. One warp per row.
__global__ void SoftmaxBackwardKernel(float* datt, const float* att, size_t rows, int T,
                                      float scale) {
  const size_t r = static_cast<size_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= rows) return;
  const float* p = att + r * T;
  float* d = datt + r * T;
  float dot = 0.f;
  for (int j = lane; j < T; j += kWarp) dot += p[j] * d[j];
  dot = WarpSum(dot);
  for (int j = lane; j < T; j += kWarp) d[j] = p[j] * (d[j] - dot) * scale;
}

// How the B*NH (batch, head) products are issued: `calls` strided-batched GEMMs of `batch`
// products each. A tensor whose (b, h) block starts at b * b_stride + h * h_stride starts call o
// at o * outer and steps by inner within it.
struct HeadBatches {
  bool loop_heads;  // loop over heads, batch over sequences (when NH < B)
  int calls, batch;
  int64_t Outer(int64_t b_stride, int64_t h_stride) const {
    return loop_heads ? h_stride : b_stride;
  }
  int64_t Inner(int64_t b_stride, int64_t h_stride) const {
    return loop_heads ? b_stride : h_stride;
  }
};

HeadBatches MakeHeadBatches(int B, int NH) {
  HeadBatches hb;
  hb.loop_heads = NH < B;
  hb.calls = hb.loop_heads ? NH : B;
  hb.batch = hb.loop_heads ? B : NH;
  return hb;
}

}  // namespace

void CudaBackend::AttentionForward(float* out, float* att, const float* qkv, int B, int Tn, int C,
                                   int NH, bool causal) {
  const int hs = C / NH;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hs)));
  const int64_t T = Tn, TT = T * T, C3 = 3 * static_cast<int64_t>(C);
  const HeadBatches hb = MakeHeadBatches(B, NH);
  // Element strides per sequence (b) and per head (h) of each tensor.
  const int64_t qkv_o = hb.Outer(T * C3, hs), qkv_i = hb.Inner(T * C3, hs);
  const int64_t out_o = hb.Outer(T * C, hs), out_i = hb.Inner(T * C, hs);
  const int64_t att_o = hb.Outer(NH * TT, TT), att_i = hb.Inner(NH * TT, TT);
  for (int o = 0; o < hb.calls; ++o) {
    const float* q = qkv + o * qkv_o;
    const float* k = q + C;
    float* s = att + o * att_o;
    // S (T,T) = scale * Q (T,hs) @ K^T, column-major S^T = K @ Q^T.
    Gemm(true, false, Tn, Tn, hs, scale, k, C3, qkv_i, q, C3, qkv_i, 0.f, s, Tn, att_i, hb.batch);
  }
  const size_t rows = static_cast<size_t>(B) * NH * Tn;
  if (rows > 0) {
    SoftmaxForwardKernel<<<CeilDiv(rows, kRowsPerBlock), kRowsPerBlock * kWarp, 0, stream_>>>(
        att, rows, Tn, causal);
    CUDA_CHECK_LAUNCH("SoftmaxForwardKernel");
  }
  for (int o = 0; o < hb.calls; ++o) {
    const float* v = qkv + o * qkv_o + 2 * C;
    const float* p = att + o * att_o;
    float* y = out + o * out_o;
    // Y (T,hs) = P (T,T) @ V (T,hs), column-major Y^T = V^T @ P^T.
    Gemm(false, false, hs, Tn, Tn, 1.f, v, C3, qkv_i, p, Tn, att_i, 0.f, y, C, out_i, hb.batch);
  }
  flops_executed_ += 4ull * B * NH * static_cast<uint64_t>(TT) * hs;
}

void CudaBackend::AttentionBackward(float* dqkv, float* datt, const float* dout, const float* qkv,
                                    const float* att, int B, int Tn, int C, int NH) {
  const int hs = C / NH;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hs)));
  const int64_t T = Tn, TT = T * T, C3 = 3 * static_cast<int64_t>(C);
  const HeadBatches hb = MakeHeadBatches(B, NH);
  const int64_t qkv_o = hb.Outer(T * C3, hs), qkv_i = hb.Inner(T * C3, hs);
  const int64_t out_o = hb.Outer(T * C, hs), out_i = hb.Inner(T * C, hs);
  const int64_t att_o = hb.Outer(NH * TT, TT), att_i = hb.Inner(NH * TT, TT);
  for (int o = 0; o < hb.calls; ++o) {
    const float* v = qkv + o * qkv_o + 2 * C;
    const float* dy = dout + o * out_o;
    const float* p = att + o * att_o;
    float* dp = datt + o * att_o;
    float* dv = dqkv + o * qkv_o + 2 * C;
    // dP (T,T) = dY (T,hs) @ V^T, column-major dP^T = V @ dY^T.
    Gemm(true, false, Tn, Tn, hs, 1.f, v, C3, qkv_i, dy, C, out_i, 0.f, dp, Tn, att_i, hb.batch);
    // dV (T,hs) = P^T @ dY, column-major dV^T = dY^T @ P.
    Gemm(false, true, hs, Tn, Tn, 1.f, dy, C, out_i, p, Tn, att_i, 0.f, dv, C3, qkv_i, hb.batch);
  }
  const size_t rows = static_cast<size_t>(B) * NH * Tn;
  if (rows > 0) {
    SoftmaxBackwardKernel<<<CeilDiv(rows, kRowsPerBlock), kRowsPerBlock * kWarp, 0, stream_>>>(
        datt, att, rows, Tn, scale);
    CUDA_CHECK_LAUNCH("SoftmaxBackwardKernel");
  }
  for (int o = 0; o < hb.calls; ++o) {
    const float* q = qkv + o * qkv_o;
    const float* k = q + C;
    const float* ds = datt + o * att_o;
    float* dq = dqkv + o * qkv_o;
    float* dk = dq + C;
    // dQ (T,hs) = dS (T,T) @ K, column-major dQ^T = K^T @ dS^T.
    Gemm(false, false, hs, Tn, Tn, 1.f, k, C3, qkv_i, ds, Tn, att_i, 0.f, dq, C3, qkv_i, hb.batch);
    // dK (T,hs) = dS^T @ Q, column-major dK^T = Q^T @ dS.
    Gemm(false, true, hs, Tn, Tn, 1.f, q, C3, qkv_i, ds, Tn, att_i, 0.f, dk, C3, qkv_i, hb.batch);
  }
  flops_executed_ += 8ull * B * NH * static_cast<uint64_t>(TT) * hs;
}

}  // namespace raptr
