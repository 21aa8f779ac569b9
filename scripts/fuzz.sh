#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/, clang with ASan + UBSan) and fuzzes each for a while,
# then replays the committed crash reproducers (tests/fuzz/regressions/<target>/).
#
#   scripts/fuzz.sh [target...]        targets: job_spec shard safetensors control (default: all)
#
# Environment:
#   RAPTR_FUZZ_BUILD_DIR  build directory, configured once (default build-fuzz)
#   RAPTR_FUZZ_SECONDS    fuzzing time per target (default 60; 0: only replay corpus + regressions)
#   RAPTR_FUZZ_PARALLEL   targets fuzzed at the same time (default: all of them)
#   RAPTR_FUZZ_JOBS       build parallelism (default nproc)
#   RAPTR_FUZZ_ARTIFACTS  where crashing inputs are kept (default $RAPTR_FUZZ_BUILD_DIR/fuzz-artifacts)
#   CC, CXX               the clang to build with (default clang-14, clang++-14)
#
# Each target fuzzes a temporary copy of its committed corpus (tests/fuzz/corpus/<target>/), so
# nothing it generates lands in the repository. Exits non-zero if any target crashed, leaked, hung
# (-timeout), ran out of memory (-rss_limit_mb) or asked for a huge allocation (-malloc_limit_mb),
# printing the input and the command that reproduces it. Ends with one summary line per target.
set -euo pipefail
# Debug info makes ccache hash the build directory; a fresh clone (CI) should still hit the cache.
export CCACHE_NOHASHDIR=1
cd "$(dirname "$0")/.."
ROOT=$PWD

ALL_TARGETS=(job_spec shard safetensors control)
TARGETS=("$@")
[[ ${#TARGETS[@]} -eq 0 ]] && TARGETS=("${ALL_TARGETS[@]}")
for t in "${TARGETS[@]}"; do
  [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target '$t' (${ALL_TARGETS[*]})" >&2; exit 2; }
done

BUILD_DIR=${RAPTR_FUZZ_BUILD_DIR:-build-fuzz}
SECONDS_PER_TARGET=${RAPTR_FUZZ_SECONDS:-60}
PARALLEL=${RAPTR_FUZZ_PARALLEL:-${#TARGETS[@]}}
JOBS=${RAPTR_FUZZ_JOBS:-$(nproc)}
ARTIFACTS=${RAPTR_FUZZ_ARTIFACTS:-$BUILD_DIR/fuzz-artifacts}
# The limits every run uses: a hang, an RSS blow-up or one oversized allocation is a failure.
LIMITS=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024)

# --- build -------------------------------------------------------------------------------------
build_start=$(date +%s)
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  # -O1 and line tables: the usual libFuzzer trade-off (fast to build, fast enough to run, useful
  # stack traces); no -DNDEBUG, so assertions stay on. Only what the fuzz targets need is built.
  # OpenMP: GCC's runtime, as in scripts/sanitize.sh (the OpenMP OpenBLAS is linked with it, so
  # one process never loads two OpenMP runtimes).
  GOMP=$(gcc -print-file-name=libgomp.so)
  cmake -S . -B "$BUILD_DIR" -G Ninja \
    -DCMAKE_C_COMPILER="${CC:-clang-14}" -DCMAKE_CXX_COMPILER="${CXX:-clang++-14}" \
    -DRAPTR_FUZZ=ON -DRAPTR_BUILD_TESTS=OFF -DRAPTR_BUILD_BENCH=OFF -DRAPTR_CUDA=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" \
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" \
    -DOpenMP_C_FLAGS=-fopenmp=libgomp -DOpenMP_CXX_FLAGS=-fopenmp=libgomp \
    -DOpenMP_C_LIB_NAMES=gomp -DOpenMP_CXX_LIB_NAMES=gomp -DOpenMP_gomp_LIBRARY="$GOMP" >/dev/null
elif ! grep -q '^RAPTR_FUZZ:BOOL=ON$' "$BUILD_DIR/CMakeCache.txt"; then
  echo "fuzz.sh: $BUILD_DIR is not a RAPTR_FUZZ=ON build; set RAPTR_FUZZ_BUILD_DIR" >&2
  exit 2
fi
cmake --build "$BUILD_DIR" --target "${TARGETS[@]/#/fuzz_}" -- -j"$JOBS"
echo "fuzz.sh: build took $(( $(date +%s) - build_start )) s"
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)

# --- run ---------------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/raptr-fuzz.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$ARTIFACTS"
ARTIFACTS=$(cd "$ARTIFACTS" && pwd)

SYMBOLIZER=$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer || true)
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:symbolize=1${SYMBOLIZER:+:external_symbolizer_path=$SYMBOLIZER}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${SYMBOLIZER:+:external_symbolizer_path=$SYMBOLIZER}"

fuzzer() { echo "$BUILD_DIR/tests/fuzz/fuzz_$1"; }
dict_args() { [[ -f "$ROOT/tests/fuzz/$1.dict" ]] && echo "-dict=$ROOT/tests/fuzz/$1.dict" || true; }

# Fuzzes one target over a copy of its corpus; the log and exit status go to $WORK/<target>.*.
fuzz_one() {
  local t=$1 dir="$WORK/$1"
  mkdir -p "$dir/corpus" "$dir/tmp" "$ARTIFACTS/$t"
  cp -r "$ROOT/tests/fuzz/corpus/$t/." "$dir/corpus/"
  local rc=0
  # TMPDIR: where fuzz_shard writes its input file, removed with $WORK.
  TMPDIR="$dir/tmp" "$(fuzzer "$t")" "$dir/corpus" $(dict_args "$t") "${LIMITS[@]}" \
    -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 \
    -artifact_prefix="$ARTIFACTS/$t/" >"$WORK/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$WORK/$t.rc"
}

# Runs every committed regression input once (libFuzzer runs file arguments and exits).
replay_one() {
  local t=$1 dir="$ROOT/tests/fuzz/regressions/$1"
  local files=()
  [[ -d "$dir" ]] && mapfile -t files < <(find "$dir" -type f ! -name '.*' ! -name '*.md' | sort)
  echo "${#files[@]}" >"$WORK/$t.replayed"
  local rc=0
  if [[ ${#files[@]} -gt 0 ]]; then
    mkdir -p "$WORK/$t/tmp"
    TMPDIR="$WORK/$t/tmp" "$(fuzzer "$t")" "${LIMITS[@]}" "${files[@]}" \
      >"$WORK/$t.replay.log" 2>&1 || rc=$?
  fi
  echo "$rc" >"$WORK/$t.replay.rc"
}

if [[ "$SECONDS_PER_TARGET" -gt 0 ]]; then
  echo "fuzz.sh: fuzzing ${TARGETS[*]} for $SECONDS_PER_TARGET s each, $PARALLEL at a time"
  running=0
  for t in "${TARGETS[@]}"; do
    fuzz_one "$t" &
    running=$((running + 1))
    if [[ $running -ge $PARALLEL ]]; then wait -n || true; running=$((running - 1)); fi
  done
  wait
else
  # No fuzzing: still run every corpus input once.
  for t in "${TARGETS[@]}"; do
    rc=0
    mkdir -p "$WORK/$t/tmp"
    TMPDIR="$WORK/$t/tmp" "$(fuzzer "$t")" "${LIMITS[@]}" "$ROOT/tests/fuzz/corpus/$t"/* \
      >"$WORK/$t.log" 2>&1 || rc=$?
    echo "$rc" >"$WORK/$t.rc"
  done
fi
for t in "${TARGETS[@]}"; do replay_one "$t"; done

# --- report ------------------------------------------------------------------------------------
failed=0
summary=()
for t in "${TARGETS[@]}"; do
  rc=$(cat "$WORK/$t.rc")
  replay_rc=$(cat "$WORK/$t.replay.rc")
  replayed=$(cat "$WORK/$t.replayed")
  # libFuzzer's last status line, e.g. "#123456	DONE   cov: 1234 ft: 5678 corp: 90/12Kb ...".
  done_line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$WORK/$t.log" | tail -1 || true)
  runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$WORK/$t.log" | tail -1)
  execs=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$WORK/$t.log" | tail -1)
  cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$done_line")
  ft=$(sed -nE 's/.*ft: ([0-9]+).*/\1/p' <<<"$done_line")
  corp=$(sed -nE 's/.*corp: ([0-9]+)\/.*/\1/p' <<<"$done_line")
  status=OK
  if [[ "$rc" != 0 ]]; then
    status=FAILED
    failed=1
    artifact=$(sed -nE "s/.*Test unit written to (.*)$/\1/p" "$WORK/$t.log" | tail -1)
    kind=$(grep -m1 -oE 'ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer)[^(]*|runtime error: .*|SUMMARY: .*' "$WORK/$t.log" | head -1 || true)
    echo
    echo "==================== fuzz_$t FAILED (exit $rc): ${kind:-see log}"
    sed -n '/^==[0-9]*==\|^ALARM\|runtime error\|^MS: \|Test unit written/,$p' "$WORK/$t.log" | head -80
    if [[ -n "$artifact" ]]; then
      echo "---- input:      $artifact"
      echo "---- reproduce:  $(fuzzer "$t") ${LIMITS[*]} $artifact"
      echo "---- minimize:   $(fuzzer "$t") -minimize_crash=1 -max_total_time=60 ${LIMITS[*]} $artifact"
      echo "---- then add the minimized input to tests/fuzz/regressions/$t/ with the fix."
    else
      echo "---- no input was written; full log:"
      tail -40 "$WORK/$t.log"
    fi
  fi
  if [[ "$replay_rc" != 0 ]]; then
    status=FAILED
    failed=1
    echo
    echo "==================== fuzz_$t: a regression input fails again (exit $replay_rc)"
    grep -E '^Running: ' "$WORK/$t.replay.log" | tail -1 || true
    sed -n '/^==[0-9]*==\|^ALARM\|runtime error/,$p' "$WORK/$t.replay.log" | head -60
    last=$(sed -nE 's/^Running: (.*)$/\1/p' "$WORK/$t.replay.log" | tail -1)
    echo "---- reproduce:  $(fuzzer "$t") ${LIMITS[*]} ${last:-tests/fuzz/regressions/$t/*}"
  fi
  if [[ "$SECONDS_PER_TARGET" -gt 0 ]]; then
    line="fuzz_$t: $status: ${SECONDS_PER_TARGET} s, ${runs:-?} runs, ${execs:-?} exec/s, cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}"
  else
    line="fuzz_$t: $status: corpus replayed"
  fi
  summary+=("$line; $replayed regression input(s) replayed$([[ "$replay_rc" == 0 ]] && echo " OK" || echo ", FAILED")")
done
echo
printf '%s\n' "${summary[@]}"
exit "$failed"
