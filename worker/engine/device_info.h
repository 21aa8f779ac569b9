// CudaDeviceInfo: one CUDA device as the driver reports it. A plain header (no absl, no CUDA), so
// both the nvcc-compiled backend and host code include it.
#pragma once

#include <cstdint>
#include <string>

namespace raptr {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;         // "NVIDIA H200"
  int64_t total_bytes = 0;  // device memory
  int64_t free_bytes = 0;   // 0: not queried (listing creates no context; AvailableBytes asks)
  int compute_major = 0;    // compute capability, e.g. 9.0
  int compute_minor = 0;
  int multiprocessors = 0;
};

}  // namespace raptr
