// Shared pieces of the CUDA backend's .cu files: error checks that throw, launch sizing, and the
// fixed-order warp / block reductions every row kernel uses.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace raptr::cuda {

// Throws std::runtime_error("<call> failed: <error> (<file>:<line>)").
[[noreturn]] void ThrowError(const char* call, const char* error, const char* file, int line);

// A failed runtime call also sets the calling thread's last error, which only
// cudaGetLastError() resets; left set, the next CUDA_CHECK_LAUNCH would report this failure
// again (a caught cudaMalloc OOM would fail the next kernel launch). A sticky error (the context
// is broken) is not cleared by this and keeps failing every call, as it should.
//
// Sticky errors are also remembered (NoteIfSticky), process-wide since they poison the whole
// context: CudaBackend::device_fault() reports them, and the worker exits rather than run another
// job on the device.
void NoteIfSticky(cudaError_t e, const char* call);
inline void Check(cudaError_t e, const char* call, const char* file, int line) {
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    NoteIfSticky(e, call);
    ThrowError(call, cudaGetErrorString(e), file, line);
  }
}
// The first sticky error seen in this process ("" if none): "cudaStreamSynchronize(...): an
// illegal memory access was encountered".
std::string StickyFault();
inline void Check(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS) ThrowError(call, cublasGetStatusString(s), file, line);
}

}  // namespace raptr::cuda

// Every CUDA runtime and cuBLAS call goes through CUDA_CHECK; every kernel launch is followed by
// CUDA_CHECK_LAUNCH (launch errors are reported at once, faults inside a kernel at the next
// synchronising call).
#define CUDA_CHECK(call) ::raptr::cuda::Check((call), #call, __FILE__, __LINE__)
#define CUDA_CHECK_LAUNCH(kernel) ::raptr::cuda::CheckLaunch("launch of " kernel, __FILE__, __LINE__)

namespace raptr::cuda {

// RAPTR_CUDA_SYNC=1 (read once): wait for every kernel right after its launch, so a fault inside
// it is reported by its own launch site instead of by the next synchronising call (a copy, a
// reduction) far from it. For triage without compute-sanitizer; slow.
bool SyncAfterEachLaunch();

inline void CheckLaunch(const char* what, const char* file, int line) {
  Check(cudaGetLastError(), what, file, line);
  if (SyncAfterEachLaunch()) Check(cudaDeviceSynchronize(), what, file, line);
}

}  // namespace raptr::cuda

namespace raptr::cuda {

constexpr int kWarp = 32;

inline unsigned CeilDiv(size_t a, size_t b) { return static_cast<unsigned>((a + b - 1) / b); }

// True when float4 loads and stores are legal on all of these pointers.
inline bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
template <typename... P>
inline bool AllAligned16(const P*... p) {
  return (Aligned16(p) && ...);
}

// Butterfly reductions: every lane ends with the same value, combined in a fixed order.
template <typename T>
__device__ inline T WarpSum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float WarpMax(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `shared` holds at least 32 T. Contains __syncthreads: call from all threads.
template <typename T>
__device__ inline T BlockSum(T v, T* shared) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  v = WarpSum(v);
  __syncthreads();  // `shared` may still be read by a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : T(0);
  return WarpSum(v);
}

// Max over the block, like BlockSum.
__device__ inline float BlockMax(float v, float* shared) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : -INFINITY;
  return WarpMax(v);
}

}  // namespace raptr::cuda

namespace raptr::cuda {

// ---- Column sums over rows, deterministic (two passes, no atomics) ----
// Pass 1: the rows are cut into chunks of ColumnSumRows(N); block (32, 8) sums one chunk for 32
// columns (threadIdx.y takes every 8th row, then a fixed tree over y) and writes NQ partials,
// partial[(q * chunks + chunk) * C + c]. Pass 2: one thread per column adds the chunks in order.
// The chunking depends on N only, so the result does not depend on the device.
inline int ColumnSumRows(int N) { return N <= 64 * 32768 ? 64 : (N + 32767) / 32768; }
inline int ColumnSumChunks(int N) { return (N + ColumnSumRows(N) - 1) / ColumnSumRows(N); }

// Values(i, c, v) fills v[0..NQ) with the NQ quantities summed at row i, column c.
template <int NQ, typename Values>
__global__ void ColumnPartialSumsKernel(float* partial, int N, int C, int rows, Values values) {
  __shared__ float tile[NQ][8][kWarp];
  const int c = blockIdx.x * kWarp + threadIdx.x;
  const int chunk = blockIdx.y, chunks = gridDim.y;
  const int r0 = chunk * rows, r1 = min(N, r0 + rows);
  float acc[NQ];
#pragma unroll
  for (int q = 0; q < NQ; ++q) acc[q] = 0.f;
  if (c < C) {
    for (int i = r0 + threadIdx.y; i < r1; i += 8) {
      float v[NQ];
      values(i, c, v);
#pragma unroll
      for (int q = 0; q < NQ; ++q) acc[q] += v[q];
    }
  }
#pragma unroll
  for (int q = 0; q < NQ; ++q) tile[q][threadIdx.y][threadIdx.x] = acc[q];
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
      float s = tile[q][0][threadIdx.x];
      for (int y = 1; y < 8; ++y) s += tile[q][y][threadIdx.x];
      partial[(static_cast<size_t>(q) * chunks + chunk) * C + c] = s;
    }
  }
}

template <int NQ>
struct ColumnOutputs {
  float* dst[NQ];
};

// dst[q][c] += scale * sum over chunks of partial (in chunk order).
template <int NQ>
__global__ void ColumnSumsFinishKernel(ColumnOutputs<NQ> out, const float* partial, int chunks,
                                       int C, float scale) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
#pragma unroll
  for (int q = 0; q < NQ; ++q) {
    const float* p = partial + static_cast<size_t>(q) * chunks * C + c;
    float s = 0.f;
    for (int k = 0; k < chunks; ++k) s += p[static_cast<size_t>(k) * C];
    out.dst[q][c] += scale * s;
  }
}

// Runs both passes; `partial` holds NQ * ColumnSumChunks(N) * C floats.
template <int NQ, typename Values>
void ColumnSums(ColumnOutputs<NQ> out, float* partial, int N, int C, float scale, Values values,
                cudaStream_t stream) {
  const int chunks = ColumnSumChunks(N);
  const dim3 grid(CeilDiv(C, kWarp), chunks), block(kWarp, 8);
  ColumnPartialSumsKernel<NQ><<<grid, block, 0, stream>>>(partial, N, C, ColumnSumRows(N), values);
  CUDA_CHECK_LAUNCH("ColumnPartialSumsKernel");
  ColumnSumsFinishKernel<NQ><<<CeilDiv(C, 256), 256, 0, stream>>>(out, partial, chunks, C, scale);
  CUDA_CHECK_LAUNCH("ColumnSumsFinishKernel");
}

}  // namespace raptr::cuda
