#!/usr/bin/env bash
# device-check.sh: the CUDA backend's whole GPU check in one run (issue 11), sized for one call of
# a lent GPU machine: CPU-vs-CUDA parity tests, compute-sanitizer (memcheck, racecheck,
# synccheck) on the reduction kernels, training-step benchmarks of GPT-2 124M (full model and
# paths of 6 and 9 of 12 blocks; B=16 and B=64; fp32 and TF32), and PyTorch's step on the same
# shapes (eager and torch.compile; fp32, TF32 and bf16 autocast). docs/DEVICE_CHECK.md has the
# device call, the expected times and what is still owed.
#
# It builds nothing: it runs the bundle that scripts/device-bundle.sh built elsewhere (carry
# build/cuda-device.tgz). From the repository root, on the GPU machine:
#
#   tar -xzf build/cuda-device.tgz -C build/ && scripts/device-check.sh
#
# (if build/cuda-device/ is missing but the tgz is there, the script unpacks it itself).
#
# Environment:
#   OUT                    where logs and the summary go (default ./device-out); at most 7 files:
#                          summary.md, device-check.log, parity.txt, parity.json, sanitizer.txt,
#                          bench.jsonl, bench.txt
#   DEVICE_CHECK_BUDGET_S  total seconds (default 260). A step starts only if its estimate fits in
#                          what is left, and runs under a timeout of what is left: later steps are
#                          skipped, not cut short, when time runs low.
#   RAPTR_DEVICE_DIR       the unpacked bundle (default build/cuda-device)
#   PYTHON                 the python with PyTorch (default python3)
#
# Without a GPU (nvidia-smi missing or listing none) it still runs the parity binary, whose every
# test then skips, and reports every CUDA case as SKIPPED: a dry run of the runner and the
# bundle, never a pass. Exit status: 0 when nothing failed, 1 when a check failed, 2 when the
# bundle is missing or unusable.
set -uo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -f "$SCRIPT_DIR/../BUILD_INFO" ]]; then
  # The bundle's own copy (build/cuda-device/scripts/): the bundle is its parent; stay where the
  # caller is (the repository root).
  DEFAULT_DEV=$(cd "$SCRIPT_DIR/.." && pwd)
else
  cd "$SCRIPT_DIR/.." || exit 2
  DEFAULT_DEV=build/cuda-device
fi
DEV=${RAPTR_DEVICE_DIR:-$DEFAULT_DEV}
OUT=${OUT:-./device-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# This run's files only (a reused folder must not show an earlier run's results).
rm -f "$OUT"/{summary.md,device-check.log,parity.txt,parity.json,sanitizer.txt,bench.jsonl,bench.txt}
BUDGET=${DEVICE_CHECK_BUDGET_S:-260}
PYTHON=${PYTHON:-python3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
RESULTS=$TMP/results.tsv
: >"$RESULTS"
T0=$SECONDS

left() { echo $((BUDGET - (SECONDS - T0))); }
section() { echo; echo "=== $* (t=$((SECONDS - T0))s, $(left)s left)"; }
# record STEP CASE STATUS SECONDS DETAIL: one row of the summary.
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5//$'\t'/ }" >>"$RESULTS"; }
# fits EST: true if a step estimated at EST seconds fits in what is left.
fits() { (($(left) >= $1)); }
# cap MAX: the timeout for a step, what is left but at most MAX.
cap() { local l; l=$(left); echo $((l < $1 ? l : $1)); }
# Our binaries run with the bundle's libraries; nothing else does (PyTorch, nvidia-smi and the
# sanitizer keep the machine's own).
ours() { LD_LIBRARY_PATH="$RAPTR_LD" "$@"; }

find_lib() {  # NAME [PREFERRED_DIR]: prints the directory holding NAME, or nothing
  local name=$1 d
  for d in ${2:-} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib \
    /usr/lib/x86_64-linux-gnu /usr/lib64; do
    [[ -n "$d" && -e "$d/$name" ]] && { echo "$d"; return; }
  done
  d=$(ldconfig -p 2>/dev/null | awk -v n="$name" '$1 == n {print $NF; exit}')
  [[ -n "$d" ]] && { dirname "$d"; return; }
  d=$(timeout 30 find /usr/local /opt /usr/lib -name "$name" 2>/dev/null | head -1)
  [[ -n "$d" ]] && dirname "$d"
}

main() {
  section "machine"
  date -u +%Y-%m-%dT%H:%M:%SZ
  uname -a
  grep -E '^PRETTY_NAME=' /etc/os-release 2>/dev/null
  echo "cpus: $(nproc), memory: $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
  PATH=$PATH:/usr/local/nvidia/bin:/usr/local/cuda/bin
  HAVE_GPU=0 GPU_NAME=""
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi 2>&1 | head -25
    if nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
      HAVE_GPU=1
      GPU_NAME=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        2>/dev/null | head -1)
    fi
  fi
  if ((HAVE_GPU)); then
    echo "GPU: $GPU_NAME"
    record machine GPU ok 0 "$GPU_NAME"
  else
    echo
    echo "############################################################################"
    echo "## NO GPU on this machine (nvidia-smi missing or listing none): a DRY RUN. ##"
    echo "## Every CUDA case below is SKIPPED; nothing is checked, nothing passes.   ##"
    echo "############################################################################"
    record machine GPU "NO GPU" 0 "nvidia-smi missing or lists no GPU: dry run, every CUDA case skipped"
  fi

  # ---- the bundle ---------------------------------------------------------------------------
  section "bundle $DEV"
  if [[ ! -f "$DEV/bin/raptr_cuda_tests" && -f build/cuda-device.tgz ]]; then
    echo "unpacking build/cuda-device.tgz into build/"
    tar -xzf build/cuda-device.tgz -C build/ && DEV=build/cuda-device
  fi
  if [[ ! -f "$DEV/bin/raptr_cuda_tests" ]]; then
    echo "NO BUNDLE at $DEV: build it with scripts/device-bundle.sh and carry build/cuda-device.tgz"
    record bundle present FAILED 0 "no bundle at $DEV (scripts/device-bundle.sh; carry build/cuda-device.tgz)"
    return 2
  fi
  DEV=$(cd "$DEV" && pwd)
  cat "$DEV/BUILD_INFO" 2>/dev/null
  if (cd "$DEV" && sha256sum -c --quiet MANIFEST.sha256 2>&1); then
    echo "manifest: ok"
    record bundle manifest ok 0 "$(grep -E '^tree:' "$DEV/BUILD_INFO" 2>/dev/null | cut -c7-)"
  else
    record bundle manifest FAILED 0 "sha256 mismatch: the bundle is damaged"
  fi
  if [[ "$SCRIPT_DIR" != "$DEV/scripts" ]] && ! cmp -s "$SCRIPT_DIR/device-check.sh" \
    "$DEV/scripts/device-check.sh"; then
    echo "note: this runner differs from the bundle's copy ($DEV/scripts/device-check.sh)"
  fi
  chmod +x "$DEV"/bin/* 2>/dev/null
  TESTS=$DEV/bin/raptr_cuda_tests
  BENCH=$DEV/bin/cuda_bench

  # What the bundle leaves to the machine (too big to carry): cuBLAS / cuBLASLt of its CUDA 13
  # (the toolkit's, or PyTorch's nvidia-cublas wheel), and NCCL if a binary links it.
  CUBLAS_DIR=$(find_lib libcublas.so.13)
  RAPTR_LD=$DEV/lib
  local name dir
  for name in libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
    [[ $name == libnccl* ]] && ! ldd "$DEV"/bin/* 2>/dev/null | grep -q "$name" && continue
    dir=$(find_lib "$name" "$CUBLAS_DIR")
    printf '%-18s %s\n' "$name:" "${dir:-NOT FOUND}"
    [[ -n "$dir" && ":$RAPTR_LD:" != *":$dir:"* ]] && RAPTR_LD=$RAPTR_LD:$dir
  done
  missing=$(ours ldd "$DEV"/bin/* 2>&1 | grep "not found" | sort -u)
  if [[ -n "$missing" ]]; then
    echo "with the bundle's lib/ alone, missing:"; echo "$missing"
    RAPTR_LD=$RAPTR_LD:$DEV/lib-fallback
    echo "adding the bundle's lib-fallback/ (its libstdc++ / libgcc_s)"
    missing=$(ours ldd "$DEV"/bin/* 2>&1 | grep "not found" | sort -u)
  fi
  echo "LD_LIBRARY_PATH for raptr's binaries: $RAPTR_LD"
  if [[ -n "$missing" ]]; then
    echo "STILL MISSING (the binaries will not start):"; echo "$missing"
    record bundle "shared libraries" FAILED 0 "missing: $(echo "$missing" | awk '{print $1}' | tr '\n' ' ')"
    return 2
  fi
  record bundle "shared libraries" ok 0 "cuBLAS from ${CUBLAS_DIR}"
  for b in raptr-worker raptr-coordinator; do
    [[ -x "$DEV/bin/$b" ]] || continue
    if timeout 10 env LD_LIBRARY_PATH="$RAPTR_LD" "$DEV/bin/$b" --help >"$TMP/help.txt" 2>&1 ||
      grep -qi usage "$TMP/help.txt"; then
      record bundle "$b starts" ok 0 "--help ran (for a later service run)"
    else
      record bundle "$b starts" FAILED 0 "$(tail -1 "$TMP/help.txt")"
    fi
  done

  # ---- parity ------------------------------------------------------------------------------
  section "parity tests (CPU vs CUDA)"
  ours "$TESTS" --gtest_list_tests 2>/dev/null |
    awk '/^[^ ]/ {suite = $1} /^  / {print suite $1}' >"$TMP/parity-list.txt"
  echo "$(wc -l <"$TMP/parity-list.txt") tests"
  if fits 30; then
    local t=$SECONDS limit rc
    limit=$(cap 150)
    timeout -k 5 "$limit" env LD_LIBRARY_PATH="$RAPTR_LD" "$TESTS" --gtest_color=no \
      --gtest_output="json:$OUT/parity.json" >"$OUT/parity.txt" 2>&1
    rc=$?
    # The per-comparison errors (long) stay in parity.txt; the worst few go to the log.
    grep -vE ' rel err |^\[ RUN|: Skipped$|^no CUDA device|^$' "$OUT/parity.txt" | tail -80
    echo "--- largest relative errors (all of them in parity.txt):"
    grep -E ' rel err ' "$OUT/parity.txt" | awk '{print $NF "\t" $0}' | sort -g | tail -8 | cut -f2-
    local n_ok n_failed n_skipped n_all counts
    n_ok=$(grep -cE '^\[ +OK \] .* \([0-9]+ ms\)$' "$OUT/parity.txt")
    n_failed=$(grep -cE '^\[  FAILED  \] .* \([0-9]+ ms\)$' "$OUT/parity.txt")
    n_skipped=$(grep -cE '^\[  SKIPPED \] .* \([0-9]+ ms\)$' "$OUT/parity.txt")
    n_all=$(wc -l <"$TMP/parity-list.txt")
    counts="$n_ok passed, $n_failed failed, $n_skipped skipped of $n_all; gtest rc=$rc"
    if ((rc == 124 || rc == 137)); then
      record parity run "TIMED OUT" $((SECONDS - t)) "cut at ${limit}s: $counts"
    elif ((!HAVE_GPU)); then
      if ((n_skipped == n_all && rc == 0)); then
        record parity run SKIPPED $((SECONDS - t)) "no GPU: the binary ran and skipped every test ($counts)"
      else
        record parity run FAILED $((SECONDS - t)) "no GPU, yet not every test skipped: $counts"
      fi
    elif ((n_ok == 0 && n_skipped > 0)); then
      record parity run FAILED $((SECONDS - t)) "nvidia-smi lists a GPU but the tests found none: $counts"
    elif ((rc == 0 && n_failed == 0)); then
      record parity run ok $((SECONDS - t)) "$counts"
    else
      record parity run FAILED $((SECONDS - t)) "$counts"
    fi
  else
    record parity run SKIPPED 0 "budget"
  fi

  # ---- compute-sanitizer -------------------------------------------------------------------
  # Small shapes only (RAPTR_CUDA_PARITY_SMALL=1). memcheck also takes Matmul (bias kernel,
  # one-quantity column sums, cuBLAS); racecheck and synccheck, which instrument shared memory
  # and barriers, take the reduction kernels: LayerNorm (warp rows; ColumnSums<2> for dw/db),
  # CrossEntropy (block max/sum), SumSquares (two-pass block sums).
  SAN=""
  for c in "$DEV/tools/compute-sanitizer/compute-sanitizer" "$(command -v compute-sanitizer)" \
    /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    [[ -n "$c" && -x "$c" ]] && { SAN=$c; break; }
  done
  if [[ -z "$SAN" ]] && ((HAVE_GPU)); then
    SAN=$(timeout 20 find /usr/local /opt -maxdepth 6 -name compute-sanitizer -type f -perm -u+x \
      2>/dev/null | head -1)
  fi
  section "compute-sanitizer (${SAN:-not found})"
  local REDUCE='CudaParity.LayerNorm:CudaParity.CrossEntropy:CudaParity.SumSquares'
  : >"$OUT/sanitizer.txt"
  local tool est filter extra
  for tool in memcheck racecheck synccheck; do
    case $tool in
      memcheck) est=40 filter="$REDUCE:CudaParity.Matmul" extra=(--leak-check no) ;;
      racecheck) est=30 filter=$REDUCE extra=() ;;
      synccheck) est=25 filter=$REDUCE extra=() ;;
    esac
    if ((!HAVE_GPU)); then
      record sanitizer "$tool" SKIPPED 0 "no GPU"; continue
    elif [[ -z "$SAN" ]]; then
      record sanitizer "$tool" SKIPPED 0 "no compute-sanitizer on this machine or in the bundle"; continue
    elif ! fits "$est"; then
      record sanitizer "$tool" SKIPPED 0 "budget (needs ~${est}s)"; continue
    fi
    echo "--- $tool on $filter"
    local t=$SECONDS limit rc
    limit=$(cap $((est * 2)))
    {
      echo "===== $tool ($filter)"
      RAPTR_CUDA_PARITY_SMALL=1 timeout -k 5 "$limit" env LD_LIBRARY_PATH="$RAPTR_LD" "$SAN" \
        --tool "$tool" "${extra[@]}" --error-exitcode 3 --print-limit 20 "$TESTS" \
        --gtest_color=no --gtest_filter="$filter" 2>&1
      echo "===== $tool exit status $?"
    } >"$TMP/san.txt"
    rc=$(awk '/^===== .* exit status / {print $NF}' "$TMP/san.txt" | tail -1)
    cat "$TMP/san.txt" >>"$OUT/sanitizer.txt"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Race reported|Barrier error|\[  (PASSED|FAILED) " \
      "$TMP/san.txt" | head -12
    local summary
    summary=$(grep -E "(ERROR|RACECHECK) SUMMARY" "$TMP/san.txt" | tail -1 | sed 's/^=* *//')
    if ((rc == 0)) && grep -q '^\[  PASSED  \] 0 tests' "$TMP/san.txt"; then
      record sanitizer "$tool" "NO TESTS RAN" $((SECONDS - t)) "the tests skipped under the sanitizer (inconclusive)"
      continue
    fi
    case $rc in
      0) record sanitizer "$tool" clean $((SECONDS - t)) "${summary:-no errors}" ;;
      3) record sanitizer "$tool" ERRORS $((SECONDS - t)) "${summary:-see sanitizer.txt}" ;;
      124 | 137) record sanitizer "$tool" "TIMED OUT" $((SECONDS - t)) "cut at ${limit}s (inconclusive)" ;;
      *) record sanitizer "$tool" "rc=$rc" $((SECONDS - t)) "${summary:-see sanitizer.txt (a test failed?)}" ;;
    esac
  done

  # ---- the service with CUDA workers -------------------------------------------------------
  # Two `raptr-worker serve --backend cuda --device 0` beside a coordinator on loopback: a 1-worker
  # job (flash attention) and a 2-worker job on the same GPU (materialized attention, Gloo staged
  # through the host), each must succeed and learn (scripts/device-service-check.sh).
  section "service: coordinator + 2 CUDA workers on loopback"
  if [[ ! -x "$DEV/bin/raptrctl" || ! -x "$DEV/bin/raptr-worker" || ! -x "$DEV/bin/raptr-coordinator" ]]; then
    record service "2 CUDA workers, 2 jobs" SKIPPED 0 "raptrctl / raptr-worker / raptr-coordinator not in the bundle"
  elif ((!HAVE_GPU)); then
    record service "2 CUDA workers, 2 jobs" SKIPPED 0 "no GPU"
  elif ! fits 40; then
    record service "2 CUDA workers, 2 jobs" SKIPPED 0 "budget (needs ~40s)"
  else
    local t=$SECONDS limit rc
    limit=$(cap 150)
    timeout -k 5 "$limit" env LD_LIBRARY_PATH="$RAPTR_LD" bash scripts/device-service-check.sh \
      "$DEV/bin" "$TMP/service" cuda >"$TMP/service.out" 2>&1
    rc=$?
    cat "$TMP/service.out"
    case $rc in
      0) record service "2 CUDA workers, 2 jobs" ok $((SECONDS - t)) "$(grep -E '^job' "$TMP/service.out" | tr '\n' ';')" ;;
      124 | 137) record service "2 CUDA workers, 2 jobs" "TIMED OUT" $((SECONDS - t)) "cut at ${limit}s" ;;
      *) record service "2 CUDA workers, 2 jobs" FAILED $((SECONDS - t)) "rc=$rc: $(grep -E 'FAIL' "$TMP/service.out" | head -1)" ;;
    esac
  fi

  # ---- issue 15: the export loads in Hugging Face transformers -------------------------------
  # The bundle's export fixture (`raptrctl export --format hf` of a small trained GPT) through
  # transformers' own GPT2LMHeadModel.from_pretrained; its logits must be raptr's. No GPU needed,
  # but transformers is only on this machine.
  section "export: transformers GPT2LMHeadModel loads raptrctl's hf export"
  if [[ ! -f "$DEV/export-hf/hf/config.json" || ! -f "$DEV/scripts/parity/check_export.py" ]]; then
    record export "transformers loads the export" SKIPPED 0 "no export fixture in the bundle"
  elif ! fits 20; then
    record export "transformers loads the export" SKIPPED 0 "budget (needs ~20s)"
  else
    local t=$SECONDS rc
    timeout -k 5 "$(cap 90)" "$PYTHON" "$DEV/scripts/parity/check_export.py" --transformers \
      "$DEV/export-hf/hf" "$DEV/export-hf/raptr.safetensors" "$DEV/export-hf/batch.safetensors" \
      >"$TMP/export.out" 2>&1
    rc=$?
    cat "$TMP/export.out"
    case $rc in
      0) record export "transformers loads the export" ok $((SECONDS - t)) "$(grep '^PASS: transformers' "$TMP/export.out")" ;;
      3) record export "transformers loads the export" SKIPPED $((SECONDS - t)) "transformers is not installed here" ;;
      124 | 137) record export "transformers loads the export" "TIMED OUT" $((SECONDS - t)) "cut" ;;
      *) record export "transformers loads the export" FAILED $((SECONDS - t)) "rc=$rc: $(tail -1 "$TMP/export.out")" ;;
    esac
  fi

  # ---- raptr benchmarks --------------------------------------------------------------------
  section "cuda_bench: GPT-2 124M, T=1024, paths of 6, 9 and 12 blocks"
  : >"$OUT/bench.jsonl"
  : >"$OUT/bench.txt"
  local GPT2=(--layers 12 --d-model 768 --heads 12 --vocab 50257 --seq 1024 --active "6,9,12")
  run_bench() {  # LABEL EST_S then cuda_bench flags
    local label=$1 est=$2; shift 2
    if ((!HAVE_GPU)); then record bench "$label" SKIPPED 0 "no GPU"; return; fi
    if ! fits "$est"; then record bench "$label" SKIPPED 0 "budget (needs ~${est}s)"; return; fi
    echo "--- $label"
    local t=$SECONDS limit rc mode=fp32
    [[ " $* " == *" --tf32=true "* ]] && mode=tf32
    limit=$(cap $((est * 3)))
    timeout -k 5 "$limit" env LD_LIBRARY_PATH="$RAPTR_LD" "$BENCH" "$@" >"$TMP/bench.out" \
      2>"$TMP/bench.err"
    rc=$?
    { echo "===== $label: $BENCH $* (exit status $rc)"; cat "$TMP/bench.err"; } >>"$OUT/bench.txt"
    sed "s/^{/{\"bench\":\"$label\",\"mode\":\"$mode\",/" "$TMP/bench.out" | grep '^{' |
      tee -a "$OUT/bench.jsonl"
    case $rc in
      0) record bench "$label" ok $((SECONDS - t)) "$(grep -c '^{' "$TMP/bench.out") lines" ;;
      124 | 137) record bench "$label" "TIMED OUT" $((SECONDS - t)) "cut at ${limit}s" ;;
      *) record bench "$label" FAILED $((SECONDS - t)) "rc=$rc: $(tail -1 "$TMP/bench.err")" ;;
    esac
  }
  run_bench gpt2-124m-B16-T1024-fp32 25 "${GPT2[@]}" --batch 16 --tf32=false --steps 10 --warmup 2
  run_bench gpt2-124m-B16-T1024-tf32 15 "${GPT2[@]}" --batch 16 --tf32=true --steps 10 --warmup 2
  # Flash attention against the materialized rows above (speed, and gpu_mem_used_mb).
  run_bench gpt2-124m-B16-T1024-tf32-flash 20 "${GPT2[@]}" --batch 16 --tf32=true --attention flash \
    --steps 10 --warmup 2
  run_bench gpt2-124m-B64-T1024-tf32 20 "${GPT2[@]}" --batch 64 --tf32=true --steps 5 --warmup 1
  run_bench gpt2-124m-B64-T1024-fp32 35 "${GPT2[@]}" --batch 64 --tf32=false --steps 5 --warmup 1

  # ---- PyTorch on the same shapes ----------------------------------------------------------
  section "PyTorch training step (same shapes)"
  local TORCH_BENCH=tests/parity/torch_step_bench.py
  [[ -f "$TORCH_BENCH" ]] || TORCH_BENCH=$DEV/scripts/torch_step_bench.py
  # In order of value, as the budget may end anywhere: the best PyTorch does (compile, bf16),
  # then the like-for-like references for raptr's TF32 and fp32 modes, then B=64.
  local torch_cfgs=(
    "16 compile-bf16,eager-tf32,eager-fp32,eager-bf16"
    "64 eager-tf32,eager-bf16,compile-bf16"
  )
  local tv
  tv=$("$PYTHON" -c 'import torch; print(torch.__version__, torch.cuda.is_available())' 2>/dev/null)
  echo "python: $(command -v "$PYTHON") torch: ${tv:-not importable}"
  for entry in "${torch_cfgs[@]}"; do
    local B=${entry%% *} cfgs=${entry#* }
    local label="torch-B$B-T1024 ($cfgs)"
    if ((!HAVE_GPU)); then
      local parsed="script does not parse"
      "$PYTHON" -c 'import ast, sys; ast.parse(open(sys.argv[1]).read())' "$TORCH_BENCH" 2>/dev/null &&
        parsed="script parses"
      record torch "$label" SKIPPED 0 "no GPU ($parsed)"; continue
    fi
    if [[ -z "$tv" ]]; then record torch "$label" SKIPPED 0 "$PYTHON cannot import torch"; continue; fi
    if ! fits 25; then record torch "$label" SKIPPED 0 "budget"; continue; fi
    echo "--- $label"
    local t=$SECONDS limit rc budget
    budget=$(($(left) - 10))
    limit=$(cap $((budget + 60)))
    PYTHONUNBUFFERED=1 timeout -k 5 "$limit" "$PYTHON" "$TORCH_BENCH" --batch "$B" --seq 1024 \
      --configs "$cfgs" --budget-s "$budget" >"$TMP/torch.out" 2>"$TMP/torch.err"
    rc=$?
    { echo "===== $label: budget ${budget}s (exit status $rc)"; cat "$TMP/torch.err"; } >>"$OUT/bench.txt"
    grep '^{' "$TMP/torch.out" | sed 's/^{/{"bench":"torch",/' | tee -a "$OUT/bench.jsonl"
    case $rc in
      0) record torch "$label" ok $((SECONDS - t)) "$(grep -c '"skipped"' "$TMP/torch.out") of its configs skipped (budget)" ;;
      124 | 137) record torch "$label" "TIMED OUT" $((SECONDS - t)) "cut at ${limit}s" ;;
      *) record torch "$label" FAILED $((SECONDS - t)) "rc=$rc: $(tail -1 "$TMP/torch.err")" ;;
    esac
  done
  return 0
}

summarize() {  # writes $OUT/summary.md from the results, parity.txt and bench.jsonl
  HAVE_GPU=$1 BUDGET=$BUDGET ELAPSED=$((SECONDS - T0)) "$PYTHON" - "$RESULTS" "$OUT" \
    "$TMP/parity-list.txt" <<'EOF' 2>&1 || return 1
import json, os, re, sys

results_path, out, list_path = sys.argv[1:4]
have_gpu = os.environ["HAVE_GPU"] == "1"
rows = [l.rstrip("\n").split("\t") for l in open(results_path) if l.strip()]

# Parity per test: from the gtest text log (complete even when the run was cut short).
tests, order, current, skip_reason = {}, [], None, ""
expected = [l.strip() for l in open(list_path)] if os.path.exists(list_path) else []
ptxt = os.path.join(out, "parity.txt")
if os.path.exists(ptxt):
    for line in open(ptxt, errors="replace"):
        m = re.match(r"^\[ RUN +\] (\S+)", line)
        if m:
            current = m.group(1)
            tests[current] = {"status": "NOT FINISHED", "ms": "", "worst": None, "what": "",
                              "failure": ""}
            order.append(current)
            want_failure = False
            continue
        m = re.match(r"^\[ +(OK|SKIPPED|FAILED) +\] (\S+) \((\d+) ms\)", line)
        if m and m.group(2) in tests:
            tests[m.group(2)].update(status={"OK": "passed"}.get(m.group(1), m.group(1)),
                                     ms=m.group(3))
            current = None
            continue
        m = re.match(r"^\s+(.*\S)\s+rel err (\S+)\s*$", line)
        if m and current:
            try:
                err = float(m.group(2))
            except ValueError:
                err = float("inf")
            t = tests[current]
            if t["worst"] is None or err > t["worst"]:
                t["worst"], t["what"] = err, m.group(1)
        elif current and line.startswith("no CUDA device") and not skip_reason:
            skip_reason = line.strip()
        elif current and not tests[current]["failure"]:
            if want_failure and line.strip():
                tests[current]["failure"] = line.strip()[:160]
            want_failure = bool(re.search(r"Failure$", line.rstrip()))
for name in expected:
    if name not in tests:
        tests[name] = {"status": "NOT RUN", "ms": "", "worst": None, "what": "", "failure": ""}
        order.append(name)

bench = []
bj = os.path.join(out, "bench.jsonl")
if os.path.exists(bj):
    for line in open(bj):
        try:
            bench.append(json.loads(line))
        except ValueError:
            pass

def count(status):
    return sum(1 for t in tests.values() if t["status"] == status)

device = next((r[4] for r in rows if r[0] == "machine"), "")
md = []
md.append(f"# raptr device check: {device if have_gpu else 'NO GPU (dry run)'}")
md.append("")
if not have_gpu:
    md.append("**NO GPU: a dry run. Every CUDA case is SKIPPED; nothing was checked and nothing "
              "passed.**")
failed = [r for r in rows if r[2] in ("FAILED", "ERRORS", "TIMED OUT") or r[2].startswith("rc=")
          and r[2] != "rc=0"]
failed += [(n,) for n, t in tests.items() if t["status"] in ("FAILED", "NOT FINISHED")]
if have_gpu:
    md.append(f"Parity: {count('passed')} passed, {count('FAILED')} failed, {count('SKIPPED')} "
              f"skipped, {count('NOT FINISHED') + count('NOT RUN')} not run, of {len(tests)}. "
              f"Overall: {'FAILURES (below)' if failed else 'no failures'}.")
md.append(f"Budget {os.environ['BUDGET']} s, used {os.environ['ELAPSED']} s.")
md.append("")
md.append("## Steps")
md.append("")
md.append("| step | case | result | s | detail |")
md.append("| --- | --- | --- | ---: | --- |")
for r in rows:
    r = (r + [""] * 5)[:5]
    md.append("| " + " | ".join(x.replace("|", "/") for x in r) + " |")
md.append("")
md.append("## Parity tests (CPU reference vs CUDA)")
md.append("")
md.append("| test | result | ms | worst rel err | where (or the first failure) |")
md.append("| --- | --- | ---: | ---: | --- |")
for name in order:
    t = tests[name]
    status = t["status"]
    if status == "SKIPPED" and not have_gpu:
        status = "SKIPPED (no GPU)"
    worst = "" if t["worst"] is None else f"{t['worst']:.3g}"
    where = t["what"]
    if t["status"] == "FAILED" and t["failure"]:
        where = f"{t['failure']}; worst: {where}" if where else t["failure"]
    md.append(f"| {name} | {status} | {t['ms']} | {worst} | {where.replace('|', '/')} |")
if skip_reason:
    md.append("")
    md.append(f"Skip reason: {skip_reason}")

def f(x, fmt):
    return "" if x is None else format(x, fmt)

def pct(x):
    return "" if x is None else f"{100 * x:.1f}%"

raptr = [b for b in bench if b.get("impl") == "raptr-cuda"]
torch_rows = [b for b in bench if str(b.get("impl", "")).startswith("torch")]
md.append("")
md.append("## raptr CUDA training step (GPT-2 124M, T=1024)")
md.append("")
if not raptr:
    md.append("No measurements" + (" (no GPU)." if not have_gpu else " (see Steps)."))
else:
    md.append("MFU: llm.c's accounting, 6*N_params + 6*k*C*T FLOPs per token (N_params of the "
              "trained path), against the dense bf16 peak (989 TF/s) and TF32 peak (494.7 TF/s). "
              "'vs k=12' is the step time over the full model's; 'ideal' is the FLOPs ratio.")
    md.append("")
    md.append("| mode | B | k | step ms | tok/s | TF/s (llm.c) | MFU bf16 | MFU tf32 | fwd ms "
              "| bwd ms | opt ms | vs k=12 | ideal | sgemm ceiling TF/s | GPU MiB |")
    md.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
              "| ---: | ---: | ---: |")
    full = {(b["mode"], b["batch"]): b for b in raptr if b["active"] == b["layers"]}
    for b in raptr:
        ref = full.get((b["mode"], b["batch"]))
        ratio = ideal = None
        if ref:
            ratio = b["step_s_median"] / ref["step_s_median"]
            ideal = b["llmc_flops_per_token"] / ref["llmc_flops_per_token"]
        ceiling = b["sgemm_tf32_gflops_per_s" if b["tf32"] else "sgemm_fp32_gflops_per_s"] / 1e3
        md.append(f"| {b['mode']} | {b['batch']} | {b['active']} | {1e3 * b['step_s_median']:.1f} "
                  f"| {b['tokens_per_s_median']:.0f} | {b['llmc_tflops_per_s']:.1f} "
                  f"| {100 * b['mfu_bf16_peak']:.1f}% | {100 * b['mfu_tf32_peak']:.1f}% "
                  f"| {1e3 * b['forward_s']:.1f} | {1e3 * b['backward_s']:.1f} "
                  f"| {1e3 * b['optimizer_s']:.1f} | {f(ratio, '.3f')} | {f(ideal, '.3f')} "
                  f"| {ceiling:.1f} | {b['gpu_mem_used_mb']:.0f} |")
    md.append("")
    md.append(f"device: {raptr[0].get('device', '')}")
md.append("")
md.append("## PyTorch training step (same shapes)")
md.append("")
if not torch_rows:
    md.append("No measurements" + (" (no GPU)." if not have_gpu else " (see Steps)."))
else:
    md.append("| impl | mode | B | k | attn | step ms | tok/s | TF/s (llm.c) | MFU bf16 | MFU tf32 "
              "| compile s | GPU MiB | note |")
    md.append("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
              "| --- |")
    for b in torch_rows:
        note = b.get("skipped") or b.get("error") or ""
        med = b.get("step_s_median")
        md.append(f"| {b.get('impl')} | {b.get('mode')} | {b.get('batch')} | {b.get('active')} "
                  f"| {b.get('attn', '')} | {f(med and 1e3 * med, '.1f')} "
                  f"| {f(b.get('tokens_per_s_median'), '.0f')} "
                  f"| {f(b.get('llmc_tflops_per_s'), '.1f')} "
                  f"| {pct(b.get('mfu_bf16_peak'))} | {pct(b.get('mfu_tf32_peak'))} "
                  f"| {f(b.get('compile_s'), '.0f')} | {f(b.get('gpu_mem_used_mb'), '.0f')} "
                  f"| {note.replace('|', '/')[:120]} |")
md.append("")
md.append("Files in $OUT: " + ", ".join(sorted(set(os.listdir(out)) | {"summary.md"})))
open(os.path.join(out, "summary.md"), "w").write("\n".join(md) + "\n")
sys.exit(1 if failed else 0)
EOF
}

{
  main
  status=$?
  section "summary"
  summarize "${HAVE_GPU:-0}"
  srs=$?
  if [[ -f "$OUT/summary.md" ]]; then
    cat "$OUT/summary.md"
  else  # no python: the raw rows
    { echo "# raptr device check (no python3 for the full summary)"; echo;
      echo "| step | case | result | s | detail |"; echo "| --- | --- | --- | ---: | --- |";
      sed 's/\t/ | /g; s/^/| /; s/$/ |/' "$RESULTS"; } | tee "$OUT/summary.md"
    srs=0
  fi
  echo "total $((SECONDS - T0))s; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
  if ((status == 2)); then exit 2; elif ((srs == 1 || status != 0)); then exit 1; else exit 0; fi
} 2>&1 | tee "$OUT/device-check.log"
exit "${PIPESTATUS[0]}"
