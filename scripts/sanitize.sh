#!/usr/bin/env bash
# The sanitizer builds and their tests: clang 14, the whole project instrumented.
#   scripts/sanitize.sh asan   ASan + UBSan (build-asan): unit tests and the coordinator,
#                              service, security, fault and monitoring integration tests
#   scripts/sanitize.sh tsan   TSan (build-tsan): the same tests
# Both builds also check the Abseil lock annotations (-Wthread-safety, an error with -Werror).
# Any sanitizer report aborts the process that made it (-fno-sanitize-recover, halt_on_error),
# which fails its test. Extra args go to ctest.
set -euo pipefail
# Debug info makes ccache hash the build directory; a fresh clone (CI) should still hit the cache.
export CCACHE_NOHASHDIR=1
cd "$(dirname "$0")/.."
KIND=${1:?usage: sanitize.sh asan|tsan [ctest args]}
shift
case "$KIND" in
  asan) SANITIZE=address,undefined ;;
  tsan) SANITIZE=thread ;;
  *) echo "sanitize.sh: unknown kind '$KIND' (asan or tsan)" >&2; exit 2 ;;
esac
BUILD_DIR=${RAPTR_SANITIZE_BUILD_DIR:-build-$KIND}
# Counted before OMP_NUM_THREADS=1 is exported below: coreutils' nproc answers OMP_NUM_THREADS
# when it is set, which ran every sanitizer test one at a time.
JOBS=${RAPTR_SANITIZE_JOBS:-$(nproc)}
# OpenMP: GCC's runtime (libgomp), the one the OpenMP OpenBLAS is linked with, so one process never
# loads two OpenMP runtimes.
GOMP=$(gcc -print-file-name=libgomp.so)
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  CC=clang-14 CXX=clang++-14 cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DRAPTR_CUDA=OFF -DRAPTR_BUILD_BENCH=OFF -DRAPTR_SANITIZE="$SANITIZE" \
    -DOpenMP_C_FLAGS=-fopenmp=libgomp -DOpenMP_CXX_FLAGS=-fopenmp=libgomp \
    -DOpenMP_C_LIB_NAMES=gomp -DOpenMP_CXX_LIB_NAMES=gomp -DOpenMP_gomp_LIBRARY="$GOMP" >/dev/null
fi
cmake --build "$BUILD_DIR" -- -j"$JOBS"
export ASAN_OPTIONS=halt_on_error=1:abort_on_error=1:detect_leaks=1:strict_string_checks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/scripts/tsan.supp"
export LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp"
# One OpenMP thread: GCC's runtime is not instrumented, so TSan cannot see its barriers.
export OMP_NUM_THREADS=1
# Debian's Abseil is not instrumented either: its mutexes are annotated by a preloaded library
# (common/tsan/absl_mutex_annotations.cc).
if [[ "$KIND" == tsan ]]; then
  export LD_PRELOAD="$PWD/$BUILD_DIR/common/libraptr_tsan_absl.so"
  # One called_from_lib line per library (TSan wants each pattern to name exactly one): every
  # shared library the binaries load that scripts/tsan.supp's patterns name.
  SUPP="$PWD/$BUILD_DIR/tsan.supp"
  grep -v '^called_from_lib:' scripts/tsan.supp > "$SUPP"
  patterns=$(sed -n 's/^called_from_lib://p' scripts/tsan.supp)
  for lib in $(ldd "$BUILD_DIR"/coordinator/raptr-coordinator "$BUILD_DIR"/worker/raptr-worker \
                 "$BUILD_DIR"/cli/raptrctl "$BUILD_DIR"/tests/raptr_unit_tests |
               awk '/=>/ {print $1}' | sort -u); do
    for pattern in $patterns; do
      # shellcheck disable=SC2053  # a glob match on purpose
      if [[ "$lib" == $pattern ]]; then echo "called_from_lib:$lib" >> "$SUPP"; break; fi
    done
  done
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$SUPP"
fi
# Sanitized binaries run several times slower: the fault tests' timing targets scale with it.
export RAPTR_TEST_TIME_SCALE=${RAPTR_TEST_TIME_SCALE:-$([[ "$KIND" == tsan ]] && echo 4 || echo 2)}
cd "$BUILD_DIR"
ctest --output-on-failure -j"$JOBS" \
  -R '^(coordinator_end_to_end|service_end_to_end|security_end_to_end|fault_end_to_end|monitoring_end_to_end|[A-Z][A-Za-z]*\.[A-Za-z]*)$' \
  -E '^CudaParity\.' "$@"
