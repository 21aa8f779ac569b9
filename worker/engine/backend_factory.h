// Which backend a session trains on, and how to make one: the one place that knows the concrete
// backends (CpuBackend, and CudaBackend when the build has CUDA). Everything else holds a
// Backend<float>*.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/backend.h"
#include "worker/engine/device_info.h"

namespace raptr {

enum class BackendKind { kCpu, kCuda };

// "cpu" / "cuda".
const char* BackendKindName(BackendKind kind);
// Parses "cpu" / "cuda"; INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<BackendKind> ParseBackendKind(const std::string& name);

struct BackendOptions {
  BackendKind kind = BackendKind::kCpu;
  int device = 0;     // CUDA device ordinal (kCuda only)
  bool tf32 = false;  // kCuda: TF32 tensor-core matmuls (see CudaBackendOptions::allow_tf32)
};

// True when this binary was built with the CUDA backend.
bool CudaBackendBuilt();

// The CUDA devices this process can use. FAILED_PRECONDITION when the binary has no CUDA backend;
// UNAVAILABLE naming the driver's answer when there is no usable driver or device.
absl::StatusOr<std::vector<CudaDeviceInfo>> ListCudaDevices();

// The first sticky device fault this process has met ("" if none), whether or not a backend
// still exists: a worker whose session failed to start checks it too.
std::string ProcessDeviceFault();

// A backend per `options`. Errors: a CUDA backend in a binary built without one, no such device
// (naming the devices there are), or the device failing to start (the CUDA error).
absl::StatusOr<std::unique_ptr<Backend<float>>> MakeBackend(const BackendOptions& options);

}  // namespace raptr
