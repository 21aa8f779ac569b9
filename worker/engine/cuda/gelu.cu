// GELU (tanh approximation), forward and backward: elementwise, float4 where aligned. The same
// formulas as the CPU backend, including its cancellation-free tanh derivative.
#include <cstddef>

#include "worker/engine/cuda/common.cuh"
#include "worker/engine/cuda/cuda_backend.h"

namespace raptr {
namespace {

using cuda::CeilDiv;

constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluA = 0.044715f;
constexpr float kGeluA3 = static_cast<float>(3 * 0.044715);

__device__ inline float Gelu(float x) {
  const float u = kGeluK * (x + kGeluA * x * x * x);
  return 0.5f * x * (1.f + tanhf(u));
}

__device__ inline float GeluGrad(float x) {
  const float u = kGeluK * (x + kGeluA * x * x * x);
  // tanh(u) and 1 - tanh(u)^2 from e = exp(2u): 1 - t*t would magnify t's rounding near +-1.
  // The clamp keeps e finite (as the CPU's exp does), so e * inv never becomes inf * 0.
  const float e = expf(fminf(fmaxf(2.f * u, -87.f), 88.f));
  const float inv = 1.f / (e + 1.f);
  const float t = 1.f - 2.f * inv;
  const float sech2 = 4.f * (e * inv) * inv;
  return 0.5f * (1.f + t) + 0.5f * x * sech2 * kGeluK * (1.f + kGeluA3 * x * x);
}

// out (n) = gelu(inp (n)); the float4 variant covers n4 = n / 4 groups.
__global__ void GeluForwardKernel(float* out, const float* inp, size_t n) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = Gelu(inp[i]);
}
__global__ void GeluForwardKernel4(float4* out, const float4* inp, size_t n4) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n4) return;
  const float4 x = inp[i];
  out[i] = make_float4(Gelu(x.x), Gelu(x.y), Gelu(x.z), Gelu(x.w));
}

// dinp (n) = gelu'(inp) * dout; dinp may be dout (each element is read before it is written).
__global__ void GeluBackwardKernel(float* dinp, const float* inp, const float* dout, size_t n) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dinp[i] = GeluGrad(inp[i]) * dout[i];
}
__global__ void GeluBackwardKernel4(float4* dinp, const float4* inp, const float4* dout,
                                    size_t n4) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n4) return;
  const float4 x = inp[i], d = dout[i];
  dinp[i] = make_float4(GeluGrad(x.x) * d.x, GeluGrad(x.y) * d.y, GeluGrad(x.z) * d.z,
                        GeluGrad(x.w) * d.w);
}

constexpr int kThreads = 256;

}  // namespace

void CudaBackend::GeluForward(float* out, const float* inp, size_t n) {
  size_t done = 0;
  if (cuda::AllAligned16(out, inp) && n >= 4) {
    const size_t n4 = n / 4;
    GeluForwardKernel4<<<CeilDiv(n4, kThreads), kThreads, 0, stream_>>>(
        reinterpret_cast<float4*>(out), reinterpret_cast<const float4*>(inp), n4);
    CUDA_CHECK_LAUNCH("GeluForwardKernel4");
    done = n4 * 4;
  }
  if (done < n) {
    GeluForwardKernel<<<CeilDiv(n - done, kThreads), kThreads, 0, stream_>>>(out + done, inp + done,
                                                                             n - done);
    CUDA_CHECK_LAUNCH("GeluForwardKernel");
  }
}

void CudaBackend::GeluBackward(float* dinp, const float* inp, const float* dout, size_t n) {
  size_t done = 0;
  if (cuda::AllAligned16(dinp, inp, dout) && n >= 4) {
    const size_t n4 = n / 4;
    GeluBackwardKernel4<<<CeilDiv(n4, kThreads), kThreads, 0, stream_>>>(
        reinterpret_cast<float4*>(dinp), reinterpret_cast<const float4*>(inp),
        reinterpret_cast<const float4*>(dout), n4);
    CUDA_CHECK_LAUNCH("GeluBackwardKernel4");
    done = n4 * 4;
  }
  if (done < n) {
    GeluBackwardKernel<<<CeilDiv(n - done, kThreads), kThreads, 0, stream_>>>(
        dinp + done, inp + done, dout + done, n - done);
    CUDA_CHECK_LAUNCH("GeluBackwardKernel");
  }
}

}  // namespace raptr
