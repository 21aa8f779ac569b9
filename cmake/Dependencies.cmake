# Third-party dependencies, all from Debian 12 packages (scripts/install-deps.sh installs them).
find_package(Threads REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(absl REQUIRED)
find_package(GTest REQUIRED)
find_package(PkgConfig REQUIRED)

# OpenBLAS, the OpenMP build: our kernels and sgemm then share one OpenMP thread pool, so the two
# threading layers never spin against each other, and sgemm called inside our parallel regions runs
# single-threaded instead of oversubscribing the cores.
set(RAPTR_OPENBLAS_DIR "/usr/lib/x86_64-linux-gnu/openblas-openmp" CACHE PATH
    "Directory holding the OpenMP build of libopenblas")
find_library(OPENBLAS_LIBRARY NAMES openblas PATHS ${RAPTR_OPENBLAS_DIR} NO_DEFAULT_PATH)
if(NOT OPENBLAS_LIBRARY)
  message(FATAL_ERROR "OpenMP OpenBLAS not found in ${RAPTR_OPENBLAS_DIR}: "
                      "run scripts/install-deps.sh (package libopenblas-openmp-dev)")
endif()
find_path(OPENBLAS_INCLUDE_DIR cblas.h PATHS /usr/include/x86_64-linux-gnu/openblas-openmp
          NO_DEFAULT_PATH)
add_library(raptr::openblas UNKNOWN IMPORTED)
set_target_properties(raptr::openblas PROPERTIES
  IMPORTED_LOCATION "${OPENBLAS_LIBRARY}"
  INTERFACE_INCLUDE_DIRECTORIES "${OPENBLAS_INCLUDE_DIR}"
  INTERFACE_LINK_LIBRARIES OpenMP::OpenMP_CXX)

pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)
find_package(benchmark QUIET)
