# NCCL for data-parallel groups on GPUs (worker/collective/nccl_group.h). Needs the CUDA build
# (cmake/Cuda.cmake, included first). Sets RAPTR_WITH_NCCL and the IMPORTED target raptr::nccl
# when both are there; without either, raptr builds and tests without NCCL (Gloo only).
#
# Where it looks, first match wins: RAPTR_NCCL_ROOT (cache), $NCCL_HOME / $NCCL_ROOT, the CUDA
# toolkit (/usr/local/cuda: include/nccl.h, lib64/libnccl.so.2, as installed here), the
# nvidia-nccl-cu* Python wheel's nvidia/nccl (the GPU image's NCCL), then the system
# (libnccl-dev: /usr/include, /usr/lib/<arch>).
set(RAPTR_NCCL "AUTO" CACHE STRING "Build the NCCL group: AUTO (if CUDA is on and NCCL is found), ON or OFF")
set_property(CACHE RAPTR_NCCL PROPERTY STRINGS AUTO ON OFF)
set(RAPTR_NCCL_ROOT "" CACHE PATH "Directory holding include/nccl.h and lib/ or lib64/libnccl.so")

set(RAPTR_WITH_NCCL OFF)
if(RAPTR_WITH_CUDA AND NOT RAPTR_NCCL STREQUAL "OFF")
  set(_raptr_nccl_roots)
  foreach(root IN ITEMS "${RAPTR_NCCL_ROOT}" "$ENV{NCCL_HOME}" "$ENV{NCCL_ROOT}")
    if(root)
      list(APPEND _raptr_nccl_roots "${root}")
    endif()
  endforeach()
  if(CUDAToolkit_LIBRARY_ROOT)
    list(APPEND _raptr_nccl_roots "${CUDAToolkit_LIBRARY_ROOT}")
  endif()
  list(APPEND _raptr_nccl_roots /usr/local/cuda)
  file(GLOB _raptr_nccl_wheels LIST_DIRECTORIES true
       /usr/local/lib/python3*/dist-packages/nvidia/nccl /usr/lib/python3/dist-packages/nvidia/nccl
       /usr/local/lib/python3*/site-packages/nvidia/nccl)
  list(APPEND _raptr_nccl_roots ${_raptr_nccl_wheels})

  find_path(RAPTR_NCCL_INCLUDE_DIR nccl.h HINTS ${_raptr_nccl_roots} PATH_SUFFIXES include)
  # The wheel ships only libnccl.so.2 (no unversioned link): name it too.
  find_library(RAPTR_NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS ${_raptr_nccl_roots}
               PATH_SUFFIXES lib64 lib lib/x86_64-linux-gnu)
  if(RAPTR_NCCL_INCLUDE_DIR AND RAPTR_NCCL_LIBRARY)
    file(STRINGS "${RAPTR_NCCL_INCLUDE_DIR}/nccl.h" _raptr_nccl_version_lines
         REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) +[0-9]+")
    set(RAPTR_NCCL_VERSION "")
    foreach(part MAJOR MINOR PATCH)
      string(REGEX MATCH "NCCL_${part} +([0-9]+)" _m "${_raptr_nccl_version_lines}")
      list(APPEND RAPTR_NCCL_VERSION "${CMAKE_MATCH_1}")
    endforeach()
    list(JOIN RAPTR_NCCL_VERSION "." RAPTR_NCCL_VERSION)
    # The nonblocking communicator API (ncclConfig_t, ncclCommInitRankConfig, ncclCommFinalize)
    # that nccl_group.cc uses came in 2.14.
    if(RAPTR_NCCL_VERSION VERSION_LESS 2.14)
      message(STATUS "raptr: NCCL ${RAPTR_NCCL_VERSION} at ${RAPTR_NCCL_LIBRARY} is older than 2.14; "
                     "not used")
    else()
      set(RAPTR_WITH_NCCL ON)
    endif()
  endif()
  if(NOT RAPTR_WITH_NCCL AND RAPTR_NCCL STREQUAL "ON")
    message(FATAL_ERROR "RAPTR_NCCL=ON but no NCCL >= 2.14 was found (set RAPTR_NCCL_ROOT)")
  endif()
elseif(RAPTR_NCCL STREQUAL "ON")
  message(FATAL_ERROR "RAPTR_NCCL=ON needs the CUDA build (RAPTR_CUDA)")
endif()

if(RAPTR_WITH_NCCL)
  if(NOT TARGET raptr::nccl)
    add_library(raptr::nccl UNKNOWN IMPORTED)
    # nccl.h includes cuda_runtime.h.
    set_target_properties(raptr::nccl PROPERTIES
      IMPORTED_LOCATION "${RAPTR_NCCL_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${RAPTR_NCCL_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES CUDA::toolkit)
  endif()
  message(STATUS "raptr: NCCL ${RAPTR_NCCL_VERSION} enabled (${RAPTR_NCCL_LIBRARY})")
else()
  message(STATUS "raptr: NCCL disabled")
endif()
