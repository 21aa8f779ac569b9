// CudaBackend: device, stream and cuBLAS handle, memory and copies (see cuda_backend.h). The ops
// live in the other .cu files of this folder, one per family.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

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

namespace {
std::mutex sticky_mu;
std::string sticky_fault;  // guarded by sticky_mu
}  // namespace

void NoteIfSticky(cudaError_t e, const char* call) {
  // The errors after which the context cannot be used again (CUDA runtime API, "sticky"): a
  // kernel fault or a broken device. Out of memory, bad arguments and launch-configuration
  // errors are not among them.
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
    case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable:
    case cudaErrorNvlinkUncorrectable:
    case cudaErrorDevicesUnavailable:
    case cudaErrorUnknown:
      break;
    default:
      return;
  }
  std::lock_guard<std::mutex> lock(sticky_mu);
  if (sticky_fault.empty()) sticky_fault = std::string(call) + ": " + cudaGetErrorString(e);
}

bool SyncAfterEachLaunch() {
  static const bool sync = [] {
    const char* v = std::getenv("RAPTR_CUDA_SYNC");
    return v != nullptr && std::string(v) == "1";
  }();
  return sync;
}

std::string StickyFault() {
  std::lock_guard<std::mutex> lock(sticky_mu);
  return sticky_fault;
}

}  // namespace cuda

std::string CudaBackend::ProcessFault() { return cuda::StickyFault(); }

std::string CudaBackend::device_fault() const {
  // Probe, not only recall: a fault surfaces at whichever call synchronises next, which may be
  // one that does not go through Check (cuBLAS's status codes, NCCL's event queries). A sticky
  // error answers every call, this one too.
  if (stream_ != nullptr) {
    const cudaError_t e = cudaStreamQuery(stream_);
    if (e != cudaSuccess && e != cudaErrorNotReady) {
      (void)cudaGetLastError();
      cuda::NoteIfSticky(e, "cudaStreamQuery");
    }
  }
  return cuda::StickyFault();
}

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

std::string CudaBackend::QueryDevice(int device, CudaDeviceInfo* info) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e);
  }
  if (device < 0 || device >= count) {
    return "no CUDA device " + std::to_string(device) + " (this machine has " +
           std::to_string(count) + ")";
  }
  cudaDeviceProp prop{};
  e = cudaGetDeviceProperties(&prop, device);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(e);
  }
  info->index = device;
  info->name = prop.name;
  info->total_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  info->compute_major = prop.major;
  info->compute_minor = prop.minor;
  info->multiprocessors = prop.multiProcessorCount;
  // No cudaSetDevice / cudaMemGetInfo here: they would create a context on every device a worker
  // lists (memory on each, and in EXCLUSIVE_PROCESS mode the other workers locked out). The free
  // memory is the backend's to ask, on its own device (AvailableBytes).
  info->free_bytes = 0;
  (void)cudaGetLastError();
  return "";
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
  for (int i = 0; i < 2; ++i) {
    if (staging_[i] != nullptr) cudaFreeHost(staging_[i]);
    if (staging_done_[i] != nullptr) cudaEventDestroy(staging_done_[i]);
  }
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
  const cudaError_t e = cudaMalloc(&p, size);
  if (e == cudaErrorMemoryAllocation) {
    // Not a fault: the context stays usable. A bad_alloc, which AllocTensor names and the session
    // reports as RESOURCE_EXHAUSTED.
    (void)cudaGetLastError();
    throw std::bad_alloc();
  }
  CUDA_CHECK(e);
  try {
    CUDA_CHECK(cudaMemsetAsync(p, 0, size, stream_));
  } catch (...) {
    (void)cudaFree(p);
    throw;
  }
  return p;
}

void CudaBackend::FreeBytes(void* ptr) {
  if (ptr == nullptr) return;
  // Never throws: the model's and the optimizer's destructors free through here, also after a
  // device fault, when every call fails (a throw would be std::terminate before the worker could
  // report the fault). Errors are only remembered: a sticky one makes device_fault() say so.
  int current = -1;
  if (cudaGetDevice(&current) != cudaSuccess || current != options_.device) {
    (void)cudaSetDevice(options_.device);
  }
  // Kernels queued on the stream may still read it: wait for them rather than rely on cudaFree
  // synchronising (it need not once a second stream exists).
  for (auto [e, call] : {std::pair{cudaStreamSynchronize(stream_), "cudaStreamSynchronize"},
                         std::pair{cudaFree(ptr), "cudaFree"}}) {
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      cuda::NoteIfSticky(e, call);
    }
  }
}

void* CudaBackend::Staging(int i) {
  if (staging_[i] == nullptr) {
    cudaEvent_t event = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    staging_done_[i] = event;
    CUDA_CHECK(cudaMallocHost(&staging_[i], kStagingBytes));  // the event is reused if it throws
  }
  return staging_[i];
}

void CudaBackend::CopyToDevice(void* dst, const void* host_src, size_t bytes) {
  UseDevice();
  if (bytes == 0) return;
  if (bytes <= kStagingBytes) {
    // From pageable memory the copy is staged by the driver before this returns, so the caller
    // may reuse host_src at once.
    CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
    return;
  }
  // Large uploads (checkpoint restore, weight import) go through the two pinned buffers: fill one
  // on the host while the other's H2D runs; a buffer is refilled only after its copy finished.
  auto* out = static_cast<char*>(dst);
  const auto* in = static_cast<const char*>(host_src);
  for (size_t off = 0, chunk = 0; off < bytes; off += kStagingBytes, ++chunk) {
    const int i = static_cast<int>(chunk % 2);
    const size_t n = std::min(kStagingBytes, bytes - off);
    void* stage = Staging(i);
    CUDA_CHECK(cudaEventSynchronize(staging_done_[i]));
    std::memcpy(stage, in + off, n);
    CUDA_CHECK(cudaMemcpyAsync(out + off, stage, n, cudaMemcpyHostToDevice, stream_));
    CUDA_CHECK(cudaEventRecord(staging_done_[i], stream_));
  }
  // The caller may free host_src, and the staging buffers are reused by the next call.
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::CopyToHost(void* host_dst, const void* src, size_t bytes) {
  UseDevice();
  if (bytes <= kStagingBytes) {
    if (bytes > 0) {
      CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    return;
  }
  // Large downloads (checkpoints, the state digest): chunk k's D2H into one pinned buffer runs
  // while chunk k-1 is copied out of the other.
  auto* out = static_cast<char*>(host_dst);
  const auto* in = static_cast<const char*>(src);
  const size_t chunks = (bytes + kStagingBytes - 1) / kStagingBytes;
  auto enqueue = [&](size_t k) {
    const int i = static_cast<int>(k % 2);
    const size_t off = k * kStagingBytes;
    CUDA_CHECK(cudaMemcpyAsync(Staging(i), in + off, std::min(kStagingBytes, bytes - off),
                               cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaEventRecord(staging_done_[i], stream_));
  };
  enqueue(0);
  for (size_t k = 0; k < chunks; ++k) {
    if (k + 1 < chunks) enqueue(k + 1);
    const int i = static_cast<int>(k % 2);
    const size_t off = k * kStagingBytes;
    CUDA_CHECK(cudaEventSynchronize(staging_done_[i]));
    std::memcpy(out + off, staging_[i], std::min(kStagingBytes, bytes - off));
  }
}

std::optional<size_t> CudaBackend::AvailableBytes() {
  UseDevice();
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  // Less what this backend allocates for itself as it runs: op scratch and cuBLAS's workspace.
  return free_bytes > kReservedBytes ? free_bytes - kReservedBytes : 0;
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
