// CudaBackend: device, stream and cuBLAS handle, memory and copies (see cuda_backend.h). The ops
// live in the other .cu files of this folder, one per family.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "worker/engine/cuda/common.cuh"
#include "worker/engine/cuda/cuda_backend.h"

namespace raptr {
namespace cuda {

void ThrowError(const char* call, const char* error, const char* file, int line) {
  std::string where(file);
  const size_t slash = where.rfind('/');
  if (slash != std::string::npos) where = where.substr(slash + 1);
  throw std::runtime_error(std::string(call) + " failed: " + error + " (" + where + ":" +
                           std::to_string(line) + ")");
}

}  // namespace cuda

int CudaBackend::DeviceCount() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // leave no error behind for the next call to report
    return 0;
  }
  return count;
}

std::string CudaBackend::DeviceName(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "";
  }
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor) + ", " + std::to_string(prop.multiProcessorCount) + " SMs)";
}

CudaBackend::CudaBackend(const CudaBackendOptions& options) : options_(options) {
  CUDA_CHECK(cudaSetDevice(options_.device));
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  stream_ = stream;
  cublasHandle_t handle = nullptr;
  try {
    CUDA_CHECK(cublasCreate(&handle));
    cublas_ = handle;
    CUDA_CHECK(cublasSetStream(handle, stream));
    // TF32 is chosen per GEMM by its compute type (matmul.cu), never by the handle's math mode.
    CUDA_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
  } catch (...) {
    if (handle != nullptr) cublasDestroy(handle);
    cudaStreamDestroy(stream);
    throw;
  }
}

CudaBackend::~CudaBackend() {
  // Destructors must not throw: errors here are ignored (the context may already be broken).
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (scratch_ != nullptr) cudaFree(scratch_);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  (void)cudaGetLastError();
}

void CudaBackend::UseDevice() const {
  int current = -1;
  if (cudaGetDevice(&current) != cudaSuccess || current != options_.device) {
    CUDA_CHECK(cudaSetDevice(options_.device));
  }
}

void* CudaBackend::AllocBytes(size_t bytes) {
  UseDevice();
  void* p = nullptr;
  const size_t size = std::max<size_t>(bytes, 256);  // a real, distinct pointer even for 0
  CUDA_CHECK(cudaMalloc(&p, size));
  CUDA_CHECK(cudaMemsetAsync(p, 0, size, stream_));
  return p;
}

void CudaBackend::FreeBytes(void* ptr) {
  if (ptr == nullptr) return;
  UseDevice();
  // Kernels queued on the stream may still read it: wait for them rather than rely on cudaFree
  // synchronising (it need not once a second stream exists).
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  CUDA_CHECK(cudaFree(ptr));
}

void CudaBackend::CopyToDevice(void* dst, const void* host_src, size_t bytes) {
  UseDevice();
  // From pageable memory the copy is staged before this returns, so the caller may reuse
  // host_src at once.
  if (bytes > 0) {
    CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
  }
}

void CudaBackend::CopyToHost(void* host_dst, const void* src, size_t bytes) {
  UseDevice();
  if (bytes > 0) {
    CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  }
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::Copy(float* dst, const float* src, size_t n) {
  UseDevice();
  if (n > 0) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
  }
}

void CudaBackend::Zero(float* x, size_t n) {
  UseDevice();
  if (n > 0) CUDA_CHECK(cudaMemsetAsync(x, 0, n * sizeof(float), stream_));
}

void CudaBackend::Synchronize() {
  UseDevice();
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void* CudaBackend::Scratch(size_t bytes) {
  if (bytes > scratch_bytes_) {
    if (scratch_ != nullptr) {
      // The ops queued before may still use the old buffer.
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      CUDA_CHECK(cudaFree(scratch_));
    }
    scratch_ = nullptr;
    scratch_bytes_ = 0;
    const size_t size = std::max<size_t>(bytes, size_t{1} << 20);
    CUDA_CHECK(cudaMalloc(&scratch_, size));
    scratch_bytes_ = size;
  }
  return scratch_;
}

}  // namespace raptr
