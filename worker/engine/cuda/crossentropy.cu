// Fused softmax + cross-entropy over the logits, one block per row: the row's max, the sum of
// exponentials, the loss, and (if asked) the gradient written over the logits in place. The
// CPU backend's formulas (max-shifted exp, the log in double).
#include <cmath>
#include <cstdint>

#include "worker/engine/cuda/common.cuh"
#include "worker/engine/cuda/cuda_backend.h"

namespace raptr {
namespace {

using cuda::BlockMax;
using cuda::BlockSum;
using cuda::kWarp;

// logits (N,V), losses (N), targets (N); one block per row. Rows with target < 0 get loss 0 and
// (with compute_grad) a zero gradient.
__global__ void CrossEntropyKernel(float* logits, float* losses, const int32_t* targets, int V,
                                   float grad_scale, bool compute_grad) {
  __shared__ float shared[kWarp];
  const int row = blockIdx.x;
  float* x = logits + static_cast<size_t>(row) * V;
  const int32_t target = targets[row];
  if (target < 0) {
    if (threadIdx.x == 0) losses[row] = 0.f;
    if (compute_grad) {
      for (int j = threadIdx.x; j < V; j += blockDim.x) x[j] = 0.f;
    }
    return;
  }
  // Read before the reductions' barriers, so before any thread overwrites the row.
  const float target_logit = x[target];
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, x[j]);
  mx = BlockMax(mx, shared);
  float sum = 0.f;
  for (int j = threadIdx.x; j < V; j += blockDim.x) sum += expf(x[j] - mx);
  sum = BlockSum(sum, shared);
  if (threadIdx.x == 0) {
    losses[row] = static_cast<float>(log(static_cast<double>(sum))) + mx - target_logit;
  }
  if (compute_grad) {
    const float inv = grad_scale / sum;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
      float g = expf(x[j] - mx) * inv;
      if (j == target) g -= grad_scale;
      x[j] = g;
    }
  }
}

}  // namespace

void CudaBackend::CrossEntropyForward(float* logits, float* losses, const int32_t* targets, int N,
                                      int V, float grad_scale, bool compute_grad) {
  if (N == 0) return;
  // Threads per row from V alone, so the reduction order does not depend on the device.
  int threads = 1024;
  while (threads > kWarp && threads / 2 >= V) threads /= 2;
  CrossEntropyKernel<<<N, threads, 0, stream_>>>(logits, losses, targets, V, grad_scale,
                                                 compute_grad);
  CUDA_CHECK_LAUNCH("CrossEntropyKernel");
}

}  // namespace raptr
