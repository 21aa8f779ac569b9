// The backend factory (see backend_factory.h). RAPTR_HAVE_CUDA is defined for this file alone
// when the build has the CUDA backend (worker/engine/CMakeLists.txt).
#include "worker/engine/backend_factory.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "worker/engine/cpu/cpu_backend.h"
#if RAPTR_HAVE_CUDA
#include "worker/engine/cuda/cuda_backend.h"
#endif

namespace raptr {

const char* BackendKindName(BackendKind kind) {
  return kind == BackendKind::kCuda ? "cuda" : "cpu";
}

absl::StatusOr<BackendKind> ParseBackendKind(const std::string& name) {
  if (name == "cpu") return BackendKind::kCpu;
  if (name == "cuda") return BackendKind::kCuda;
  return absl::InvalidArgumentError(absl::StrCat("backend \"", name, "\" is not one of cpu, cuda"));
}

bool CudaBackendBuilt() { return RAPTR_HAVE_CUDA != 0; }

absl::StatusOr<std::vector<CudaDeviceInfo>> ListCudaDevices() {
#if RAPTR_HAVE_CUDA
  std::vector<CudaDeviceInfo> devices;
  for (int d = 0;; ++d) {
    CudaDeviceInfo info;
    const std::string error = CudaBackend::QueryDevice(d, &info);
    if (!error.empty()) {
      if (d > 0 && error.rfind("no CUDA device", 0) == 0) break;  // past the last one
      return absl::UnavailableError(absl::StrCat("no usable CUDA device: ", error));
    }
    devices.push_back(info);
  }
  return devices;
#else
  return absl::FailedPreconditionError(
      "this binary was built without the CUDA backend (configure with -DRAPTR_CUDA=ON)");
#endif
}

std::string ProcessDeviceFault() {
#if RAPTR_HAVE_CUDA
  return CudaBackend::ProcessFault();
#else
  return "";
#endif
}

absl::StatusOr<std::unique_ptr<Backend<float>>> MakeBackend(const BackendOptions& options) {
  if (options.kind == BackendKind::kCpu) return std::make_unique<CpuBackend<float>>();
#if RAPTR_HAVE_CUDA
  CudaDeviceInfo info;
  const std::string error = CudaBackend::QueryDevice(options.device, &info);
  if (!error.empty()) {
    return absl::UnavailableError(
        absl::StrCat("cannot train on CUDA device ", options.device, ": ", error));
  }
  try {
    CudaBackendOptions cuda;
    cuda.device = options.device;
    cuda.allow_tf32 = options.tf32;
    return std::make_unique<CudaBackend>(cuda);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot start CUDA device ", options.device, " (",
                                               info.name, "): ", e.what()));
  }
#else
  return absl::FailedPreconditionError(
      "backend cuda: this binary was built without the CUDA backend (configure with "
      "-DRAPTR_CUDA=ON where nvcc is installed)");
#endif
}

}  // namespace raptr
