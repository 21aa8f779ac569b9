#!/usr/bin/env bash
# device-check.sh: the CUDA backend's whole GPU check in one run (parity tests, a memory check of
# the kernels, throughput benchmarks), sized for a few minutes of a lent GPU machine.
#
#   scripts/device-check.sh --bundle [BUILD_DIR]
#       Here, on a machine without a GPU: builds BUILD_DIR (default build-cuda) with CUDA for sm_90
#       and portable host code (-march=x86-64-v3, not -march=native: the GPU machine's CPU may
#       differ), then copies the test and bench binaries and the shared libraries they need that
#       a bare CUDA image may lack (OpenBLAS, Abseil, libgomp, libgfortran, ...) into
#       BUILD_DIR/device. Carry that one folder to the GPU machine.
#
#   scripts/device-check.sh
#       On the GPU machine, from the repository root, with $OUT a folder whose files come back:
#       prints what the machine has, runs the carried binaries (or, with no bundle, tries to build
#       from source), logs everything to $OUT/device-check.log and ends with a summary table.
#       Environment: RAPTR_DEVICE_DIR (default build-cuda/device), DEVICE_CHECK_BUDGET_S (default
#       220: later steps are skipped, never cut short mid-way, when the budget runs low).
set -uo pipefail
cd "$(dirname "$0")/.."

# ---------------------------------------------------------------------------------------------
# --bundle: build here and gather what the GPU machine needs.
# ---------------------------------------------------------------------------------------------
if [[ "${1:-}" == "--bundle" ]]; then
  set -e
  BUILD=${2:-build-cuda}
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRAPTR_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DRAPTR_ARCH_FLAGS=-march=x86-64-v3 >/dev/null
  ninja -C "$BUILD" raptr_cuda_tests cuda_bench
  DEV=$BUILD/device
  rm -rf "$DEV"
  mkdir -p "$DEV/bin" "$DEV/lib" "$DEV/lib-fallback"
  cp "$BUILD/tests/cuda/raptr_cuda_tests" "$BUILD/bench/cuda/cuda_bench" "$DEV/bin/"
  # Every shared library the binaries load, except glibc's (the GPU machine's is newer), the
  # CUDA driver and cuBLAS (the GPU machine's own CUDA 13 provides them; cudart is static).
  # libstdc++ / libgcc_s only as a fallback: a newer system copy is preferred there.
  ldd "$DEV/bin/raptr_cuda_tests" "$DEV/bin/cuda_bench" | awk '/=>/ && $3 ~ /^\// {print $3}' |
    sort -u | while read -r lib; do
      case "$(basename "$lib")" in
        libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux* | libcuda.so* | \
          libcublas* | libcudart* | libnvidia*) ;;
        libstdc++.so* | libgcc_s.so*) cp -L "$lib" "$DEV/lib-fallback/" ;;
        *) cp -L "$lib" "$DEV/lib/" ;;
      esac
    done
  (cd "$DEV" && sha256sum bin/* lib/* lib-fallback/* >MANIFEST.sha256)
  echo "bundle: $DEV ($(du -sh "$DEV" | cut -f1)); carry it as '$DEV'"
  ls -la "$DEV/bin" "$DEV/lib" "$DEV/lib-fallback"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# On the GPU machine.
# ---------------------------------------------------------------------------------------------
OUT=${OUT:-/tmp/device-check-out}
mkdir -p "$OUT"
LOG=$OUT/device-check.log
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
BUDGET=${DEVICE_CHECK_BUDGET_S:-220}
DEV=${RAPTR_DEVICE_DIR:-build-cuda/device}
declare -a SUMMARY=()
note() { SUMMARY+=("$(printf '%-34s %s' "$1" "$2")"); }
left() { echo $((BUDGET - SECONDS)); }
section() { echo; echo "=== $* (t=${SECONDS}s)"; }

section "machine"
uname -a
grep -E '^(PRETTY_NAME)=' /etc/os-release 2>/dev/null
echo "cpus: $(nproc)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 ||
  echo "nvidia-smi: not available"
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
if [[ -x "$NVCC" ]]; then "$NVCC" --version | tail -2; else echo "nvcc: not found"; fi
cmake --version 2>/dev/null | head -1 || echo "cmake: not found"
ninja --version 2>/dev/null | sed 's/^/ninja /' || echo "ninja: not found"
g++ --version 2>/dev/null | head -1 || echo "g++: not found"
echo "--- Debian/Ubuntu packages the source build needs:"
dpkg -l 2>/dev/null | grep -E "openblas|absl|gtest|googletest|sentencepiece" | awk '{print $2, $3}' ||
  true
if ! dpkg -l 2>/dev/null | grep -E 'libabsl-dev|libgtest-dev|libopenblas.*-dev' >/dev/null; then
  echo "(none of libabsl-dev, libgtest-dev, libopenblas-*-dev installed)"
fi

# cuBLAS of this machine's CUDA (the binaries link it dynamically).
CUBLAS_DIR=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib \
  /usr/lib/x86_64-linux-gnu; do
  [[ -e "$d/libcublas.so.13" ]] && { CUBLAS_DIR=$d; break; }
done
if [[ -z "$CUBLAS_DIR" ]]; then
  found=$(timeout 30 find /usr /opt -name 'libcublas.so.13' 2>/dev/null | head -1)
  [[ -n "$found" ]] && CUBLAS_DIR=$(dirname "$found")
fi
echo "libcublas.so.13: ${CUBLAS_DIR:-NOT FOUND}"

TESTS="" BENCH=""
if [[ -f "$DEV/bin/raptr_cuda_tests" ]]; then
  section "carried bundle $DEV"
  chmod +x "$DEV"/bin/* 2>/dev/null
  (cd "$DEV" && sha256sum -c --quiet MANIFEST.sha256 2>&1) && echo "manifest: ok"
  TESTS=$DEV/bin/raptr_cuda_tests
  BENCH=$DEV/bin/cuda_bench
  LIB=$(realpath "$DEV/lib")
  FALLBACK=$(realpath "$DEV/lib-fallback")
  export LD_LIBRARY_PATH="$LIB${CUBLAS_DIR:+:$CUBLAS_DIR}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  missing=$(ldd "$TESTS" "$BENCH" 2>&1 | grep "not found" | sort -u)
  if [[ -n "$missing" ]]; then
    echo "with the bundle's lib/ alone, missing:"; echo "$missing"
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$FALLBACK"
    echo "adding the bundle's lib-fallback/ (its libstdc++ / libgcc_s)"
    missing=$(ldd "$TESTS" "$BENCH" 2>&1 | grep "not found" | sort -u)
  fi
  if [[ -n "$missing" ]]; then
    echo "STILL MISSING (the binaries will not start):"; echo "$missing"
    note "shared libraries" "MISSING: $(echo "$missing" | awk '{print $1}' | tr '\n' ' ')"
  else
    echo "ldd: every library resolved"
    note "shared libraries" "ok (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
  fi
else
  section "no bundle at $DEV: building from source"
  need=()
  for p in libabsl-dev libgtest-dev libopenblas-openmp-dev libsentencepiece-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if ((${#need[@]})); then
    echo "MISSING build dependencies: ${need[*]}; trying apt-get (this machine may have no network)"
    timeout 90 apt-get install -y --no-install-recommends "${need[@]}" 2>&1 | tail -3 ||
      echo "apt-get install failed"
  fi
  if timeout 60 cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DRAPTR_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DRAPTR_BUILD_BENCH=ON >"$OUT/build-device.cmake.log" 2>&1 &&
    timeout 150 ninja -C build-device raptr_cuda_tests cuda_bench 2>&1 | tail -5; then
    TESTS=build-device/tests/cuda/raptr_cuda_tests
    BENCH=build-device/bench/cuda/cuda_bench
    note "source build" "ok"
  else
    tail -20 "$OUT/build-device.cmake.log" 2>/dev/null
    echo "CANNOT BUILD HERE (dependencies above). Build the bundle on a machine with them:"
    echo "  scripts/device-check.sh --bundle   # then carry build-cuda/device"
    note "source build" "FAILED: carry a bundle (scripts/device-check.sh --bundle)"
  fi
fi

# ---------------------------------------------------------------------------------------------
if [[ -n "$TESTS" && -x "$TESTS" ]]; then
  section "parity tests (CPU vs CUDA)"
  timeout "$(( $(left) < 150 ? $(left) : 150 ))" "$TESTS" --gtest_output="xml:$OUT/raptr_cuda_tests.xml" \
    2>&1 | tee "$OUT/tests.txt" | grep -vE "^\s+\S.* rel err " ; rc=${PIPESTATUS[0]}
  # The per-comparison errors (long) stay in tests.txt; the worst few go to the log.
  echo "--- largest relative errors (all of them in tests.txt):"
  grep -E " rel err " "$OUT/tests.txt" | awk '{print $NF, $0}' | sort -g | tail -8 | cut -d' ' -f2-
  passed=$(grep -oE '^\[  PASSED  \] [0-9]+' "$OUT/tests.txt" | grep -oE '[0-9]+$')
  failed=$(grep -cE '^\[  FAILED  \] CudaParity' "$OUT/tests.txt")
  skipped=$(grep -cE '^\[  SKIPPED \] CudaParity' "$OUT/tests.txt")
  if [[ $rc -eq 124 ]]; then
    note "parity tests" "TIMED OUT (rc 124)"
  else
    note "parity tests" "rc=$rc passed=${passed:-0} failed=$((failed / 2)) skipped=$((skipped / 2))"
  fi
  grep -E '^\[  FAILED  \] CudaParity' "$OUT/tests.txt" | sort -u | sed 's/^/  /'

  section "benchmarks"
  : >"$OUT/cuda_bench.jsonl"
  run_bench() {  # label, then cuda_bench flags
    local label=$1; shift
    if (($(left) < 25)); then
      echo "skipped $label: budget"; note "bench $label" "skipped (budget)"; return
    fi
    echo "--- $label"
    if timeout "$(( $(left) < 90 ? $(left) : 90 ))" "$BENCH" "$@" --steps 10 --warmup 2 \
      >"$OUT/bench.tmp" 2>&1; then
      sed "s/^{/{\"bench\":\"$label\",/" "$OUT/bench.tmp" | tee -a "$OUT/cuda_bench.jsonl"
    else
      cat "$OUT/bench.tmp"; note "bench $label" "FAILED"
    fi
  }
  GPT2=(--layers 12 --d-model 768 --heads 12 --vocab 50257)
  PATHS=(--layers 12 --d-model 256 --heads 4 --vocab 8192 --batch 16 --seq 128 --active "6,9,12")
  run_bench gpt2-124m-B16-T1024 "${GPT2[@]}" --batch 16 --seq 1024 --tf32=false
  run_bench gpt2-124m-B16-T1024-tf32 "${GPT2[@]}" --batch 16 --seq 1024 --tf32=true
  run_bench gpt2-124m-B4-T64 "${GPT2[@]}" --batch 4 --seq 64 --tf32=false
  run_bench gpt2-124m-B4-T64-tf32 "${GPT2[@]}" --batch 4 --seq 64 --tf32=true
  run_bench path-d256 "${PATHS[@]}" --tf32=false
  run_bench path-d256-tf32 "${PATHS[@]}" --tf32=true
  rm -f "$OUT/bench.tmp"

  # Out-of-bounds and uninitialised-memory check of every kernel at the small shapes, if there
  # is time left and the tool works on this machine (it does on Firecracker, not on gVisor).
  SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  if [[ -x "$SANITIZER" ]] && (($(left) > 40)); then
    section "compute-sanitizer memcheck (small shapes)"
    RAPTR_CUDA_PARITY_SMALL=1 timeout "$(( $(left) - 10 ))" "$SANITIZER" --tool memcheck \
      --leak-check no --error-exitcode 3 "$TESTS" \
      --gtest_filter='-*ErrorsThrow*:*Gpt2*:*Tf32*' >"$OUT/memcheck.txt" 2>&1
    mc=$?
    tail -4 "$OUT/memcheck.txt"
    grep -m5 -E "Invalid|ERROR SUMMARY" "$OUT/memcheck.txt"
    case $mc in
      0) note "memcheck (small shapes)" "clean" ;;
      124) note "memcheck (small shapes)" "timed out (inconclusive)" ;;
      3) note "memcheck (small shapes)" "ERRORS (memcheck.txt)" ;;
      *) note "memcheck (small shapes)" "rc=$mc (see memcheck.txt)" ;;
    esac
  else
    note "memcheck (small shapes)" "skipped (no tool or budget)"
  fi
fi

# ---------------------------------------------------------------------------------------------
section "summary"
printf '%s\n' "${SUMMARY[@]}"
if [[ -s "$OUT/cuda_bench.jsonl" ]]; then
  echo
  python3 - "$OUT/cuda_bench.jsonl" <<'EOF' 2>/dev/null || cat "$OUT/cuda_bench.jsonl"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'bench':28} {'k':>3} {'step ms':>9} {'tok/s':>10} {'model TF/s':>10} "
      f"{'fwd ms':>8} {'bwd ms':>8} {'opt ms':>7} {'sgemm TF/s':>10} {'GPU MiB':>8}")
for r in rows:
    ceiling = r["sgemm_tf32_gflops_per_s"] if r["tf32"] else r["sgemm_fp32_gflops_per_s"]
    print(f"{r['bench']:28} {r['active']:>3} {1e3 * r['step_s_median']:9.2f} "
          f"{r['tokens_per_s_median']:10.0f} {r['model_gflops_per_s'] / 1e3:10.2f} "
          f"{1e3 * r['forward_s']:8.2f} {1e3 * r['backward_s']:8.2f} {1e3 * r['optimizer_s']:7.2f} "
          f"{ceiling / 1e3:10.2f} {r['gpu_mem_used_mb']:8.0f}")
print("device:", rows[0]["device"])
EOF
fi
echo "total ${SECONDS}s; logs in $OUT"
