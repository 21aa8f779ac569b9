// Host(span): the host address of a CpuBackend buffer, for tests that read and write model and
// optimizer state in place. Only the CPU backend's buffers are host memory (backend.h); code
// outside tests goes through Download / Upload / WithHostView instead.
#pragma once

#include <cassert>

#include "worker/engine/backend.h"

namespace raptr {

template <typename T>
T* Host(DeviceSpan<T> span) {
  return span.device_data();
}

}  // namespace raptr
