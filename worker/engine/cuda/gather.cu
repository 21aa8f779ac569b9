// Row gather and scatter (BERT's head over its masked positions): one block per row, its threads
// walking the row's columns, so each warp reads and writes consecutive addresses; float4 where
// the row length and the buffers allow. Pure copies, so the results equal the CPU backend's
// bitwise.
#include <cstddef>
#include <cstdint>

#include "worker/engine/cuda/common.cuh"
#include "worker/engine/cuda/cuda_backend.h"

namespace raptr {
namespace {

using cuda::kWarp;

// Block i copies one row of Cv elements (V: float or float4): gather, dst row i = src row
// rows[i]; scatter, dst row rows[i] = src row i. Grid (M).
template <typename V, bool kScatter>
__global__ void CopyRowsKernel(V* dst, const V* src, const int32_t* rows, int Cv) {
  const size_t i = blockIdx.x;
  const size_t r = static_cast<size_t>(rows[i]);
  const V* s = src + (kScatter ? i : r) * Cv;
  V* d = dst + (kScatter ? r : i) * Cv;
  for (int c = threadIdx.x; c < Cv; c += blockDim.x) d[c] = s[c];
}

// Threads per row: the row's length rounded up to whole warps, at most 256.
inline int RowThreads(int Cv) {
  const int warps = (Cv + kWarp - 1) / kWarp;
  return kWarp * (warps < 1 ? 1 : (warps > 8 ? 8 : warps));
}

template <bool kScatter>
void CopyRows(float* dst, const float* src, const int32_t* rows, int M, int C,
              cudaStream_t stream) {
  if (C % 4 == 0 && cuda::AllAligned16(dst, src)) {
    const int C4 = C / 4;
    CopyRowsKernel<float4, kScatter><<<M, RowThreads(C4), 0, stream>>>(
        reinterpret_cast<float4*>(dst), reinterpret_cast<const float4*>(src), rows, C4);
    CUDA_CHECK_LAUNCH("CopyRowsKernel<float4>");
  } else {
    CopyRowsKernel<float, kScatter><<<M, RowThreads(C), 0, stream>>>(dst, src, rows, C);
    CUDA_CHECK_LAUNCH("CopyRowsKernel<float>");
  }
}

}  // namespace

void CudaBackend::GatherRows(float* dst, const float* src, const int32_t* rows, int M, int C) {
  if (M <= 0 || C <= 0) return;
  CopyRows<false>(dst, src, rows, M, C, stream_);
}

void CudaBackend::ScatterRows(float* dst, const float* src, const int32_t* rows, int M, int N,
                              int C) {
  if (N <= 0 || C <= 0) return;
  Zero(dst, static_cast<size_t>(N) * C);  // cudaMemsetAsync on the stream, before the scatter
  if (M > 0) CopyRows<true>(dst, src, rows, M, C, stream_);
}

}  // namespace raptr
