// Token + position embedding, forward and backward.
//
// The backward scatters rows of dout into dwte at the token ids, and tokens repeat, so rows
// collide. Float atomics would make the sum's order (and its rounding) vary run to run; instead
// the token ids are read back, positions are grouped by token on the host (a sort of B*T keys),
// and one block per distinct token adds its rows in position order. That is the CPU backend's
// order exactly, so dwte matches it bitwise. The read-back synchronises the stream, which costs
// little: EncoderBackward is the last op of a backward pass and the optimizer that follows
// synchronises anyway (its gradient norm).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "worker/engine/cuda/common.cuh"
#include "worker/engine/cuda/cuda_backend.h"

namespace raptr {
namespace {

using cuda::CeilDiv;

// out (N,C) = wte[tokens] + wpe[t]; tokens (N), wte (V,C), wpe (T,C). One thread per element.
__global__ void EncoderForwardKernel(float* out, const int32_t* tokens, const float* wte,
                                     const float* wpe, size_t N, int T, int C) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * C) return;
  const size_t bt = i / C, c = i % C;
  out[i] = wte[static_cast<size_t>(tokens[bt]) * C + c] + wpe[(bt % T) * C + c];
}

// The same over float4: C4 = C / 4.
__global__ void EncoderForwardKernel4(float4* out, const int32_t* tokens, const float4* wte,
                                      const float4* wpe, size_t N, int T, int C4) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * C4) return;
  const size_t bt = i / C4, c = i % C4;
  const float4 e = wte[static_cast<size_t>(tokens[bt]) * C4 + c];
  const float4 p = wpe[(bt % T) * C4 + c];
  out[i] = make_float4(e.x + p.x, e.y + p.y, e.z + p.z, e.w + p.w);
}

// dwte[token[g]] += sum of dout rows pos[starts[g] .. starts[g+1]), in that order.
// Grid (groups, column blocks); dout (N,C), dwte (V,C).
__global__ void EncoderBackwardWteKernel(float* dwte, const float* dout, const int32_t* starts,
                                         const int32_t* group_token, const int32_t* pos, int C) {
  const int g = blockIdx.x;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float* row = dwte + static_cast<size_t>(group_token[g]) * C;
  float acc = row[c];
  for (int p = starts[g]; p < starts[g + 1]; ++p) acc += dout[static_cast<size_t>(pos[p]) * C + c];
  row[c] = acc;
}

// dwpe (T,C) += sum over b of dout (B,T,C), b in order. One thread per (t, c).
__global__ void EncoderBackwardWpeKernel(float* dwpe, const float* dout, int B, int T, int C) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t TC = static_cast<size_t>(T) * C;
  if (i >= TC) return;
  float acc = dwpe[i];
  for (int b = 0; b < B; ++b) acc += dout[b * TC + i];
  dwpe[i] = acc;
}

}  // namespace

void CudaBackend::EncoderForward(float* out, const int32_t* tokens, const float* wte,
                                 const float* wpe, int B, int Tn, int C) {
  const size_t N = static_cast<size_t>(B) * Tn;
  if (N == 0 || C == 0) return;
  constexpr int kThreads = 256;
  if (C % 4 == 0 && cuda::AllAligned16(out, wte, wpe)) {
    const int C4 = C / 4;
    EncoderForwardKernel4<<<CeilDiv(N * C4, kThreads), kThreads, 0, stream_>>>(
        reinterpret_cast<float4*>(out), tokens, reinterpret_cast<const float4*>(wte),
        reinterpret_cast<const float4*>(wpe), N, Tn, C4);
    CUDA_CHECK_LAUNCH("EncoderForwardKernel4");
  } else {
    EncoderForwardKernel<<<CeilDiv(N * C, kThreads), kThreads, 0, stream_>>>(out, tokens, wte, wpe,
                                                                             N, Tn, C);
    CUDA_CHECK_LAUNCH("EncoderForwardKernel");
  }
}

void CudaBackend::EncoderBackward(float* dwte, float* dwpe, const float* dout,
                                  const int32_t* tokens, int B, int Tn, int C) {
  const int N = B * Tn;
  if (N == 0 || C == 0) return;
  constexpr int kThreads = 256;
  EncoderBackwardWpeKernel<<<CeilDiv(static_cast<size_t>(Tn) * C, kThreads), kThreads, 0,
                             stream_>>>(dwpe, dout, B, Tn, C);
  CUDA_CHECK_LAUNCH("EncoderBackwardWpeKernel");

  // Group positions by token: sort (token, position) keys, which are distinct.
  host_tokens_.resize(N);
  CopyToHost(host_tokens_.data(), tokens, sizeof(int32_t) * N);
  std::vector<uint64_t> keys(N);
  for (int i = 0; i < N; ++i) {
    keys[i] = (static_cast<uint64_t>(static_cast<uint32_t>(host_tokens_[i])) << 32) |
              static_cast<uint32_t>(i);
  }
  std::sort(keys.begin(), keys.end());
  // host_groups_ = [starts (G+1) | group_token (G) | pos (N)], G distinct tokens.
  std::vector<int32_t> starts, group_token;
  for (int i = 0; i < N; ++i) {
    const int32_t token = static_cast<int32_t>(keys[i] >> 32);
    if (i == 0 || token != group_token.back()) {
      starts.push_back(i);
      group_token.push_back(token);
    }
  }
  const int G = static_cast<int>(group_token.size());
  starts.push_back(N);
  host_groups_.clear();
  host_groups_.insert(host_groups_.end(), starts.begin(), starts.end());
  host_groups_.insert(host_groups_.end(), group_token.begin(), group_token.end());
  for (int i = 0; i < N; ++i) host_groups_.push_back(static_cast<int32_t>(keys[i] & 0xffffffffu));
  auto* groups = static_cast<int32_t*>(Scratch(host_groups_.size() * sizeof(int32_t)));
  CopyToDevice(groups, host_groups_.data(), host_groups_.size() * sizeof(int32_t));

  constexpr int kColumns = 128;
  const dim3 grid(G, CeilDiv(C, kColumns));
  EncoderBackwardWteKernel<<<grid, kColumns, 0, stream_>>>(dwte, dout, groups, groups + G + 1,
                                                           groups + 2 * G + 1, C);
  CUDA_CHECK_LAUNCH("EncoderBackwardWteKernel");
}

}  // namespace raptr
