# RAPTR_CUDA=AUTO|ON|OFF: AUTO enables CUDA when nvcc is found (default /usr/local/cuda).
set(RAPTR_WITH_CUDA OFF)
if(NOT RAPTR_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(RAPTR_WITH_CUDA ON)
  elseif(RAPTR_CUDA STREQUAL "ON")
    message(FATAL_ERROR "RAPTR_CUDA=ON but no CUDA compiler was found (looked in /usr/local/cuda)")
  endif()
endif()
if(RAPTR_WITH_CUDA)
  if(NOT CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 90)  # Hopper (H100/H200), the GPUs we deploy on.
  endif()
  enable_language(CUDA)
  # Debian 12's CMake 3.25.1 FindCUDAToolkit sets a DEPRECATION property on CUDA::nvToolsExt
  # without checking that the target exists (fixed upstream in 3.25.2), and CUDA 13 ships no
  # libnvToolsExt: the stock module fails ("set_property could not find TARGET
  # CUDA::nvToolsExt"; make images found it, this machine's copy of the module is patched). It
  # does so only for projects that require CMake >= 3.25, so the find runs as if this one
  # required 3.24 (the variable alone: policies are unchanged).
  set(_raptr_min_required ${CMAKE_MINIMUM_REQUIRED_VERSION})
  if(CMAKE_VERSION VERSION_LESS 3.25.2)
    set(CMAKE_MINIMUM_REQUIRED_VERSION 3.24)
  endif()
  find_package(CUDAToolkit REQUIRED)
  set(CMAKE_MINIMUM_REQUIRED_VERSION ${_raptr_min_required})
  message(STATUS "raptr: CUDA enabled (${CMAKE_CUDA_COMPILER}, arch ${CMAKE_CUDA_ARCHITECTURES})")
else()
  message(STATUS "raptr: CUDA disabled")
endif()
