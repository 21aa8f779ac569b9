#!/usr/bin/env bash
# make bench: the engine against PyTorch's CPU training step on the same shapes, in one run, then
# the coordinator's capacity under simulated workers (bench/coordinator_load.cc).
#
# raptr runs at its defaults (no environment tuning). PyTorch runs twice: at its defaults and at
# its best here (OMP_WAIT_POLICY=PASSIVE + tcmalloc). Every figure is a median over timed steps;
# results go to bench/results/<date>.jsonl and a summary table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${RAPTR_BUILD_DIR:-build}/bench/engine_bench
PY=/usr/bin/python3
TCMALLOC=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
STEPS=${BENCH_STEPS:-10}
mkdir -p bench/results
OUT=bench/results/$(date +%Y-%m-%d).jsonl
: > "$OUT"

torch_default() { "$PY" bench/torch_train_step.py "$@"; }
torch_best() { env OMP_WAIT_POLICY=PASSIVE LD_PRELOAD="$TCMALLOC" "$PY" bench/torch_train_step.py "$@"; }
tag() { sed "s/^{/{\"bench\":\"$1\",\"variant\":\"$2\",/"; }

run_shape() {  # name, then shape flags shared by both implementations
  local name=$1; shift
  echo "== $name" >&2
  "$BENCH" "$@" --steps "$STEPS" --warmup 2 | tag "$name" raptr >> "$OUT"
  torch_default "$@" --steps "$STEPS" --warmup 2 | tag "$name" pytorch-default >> "$OUT"
  torch_best "$@" --steps "$STEPS" --warmup 2 | tag "$name" pytorch-best >> "$OUT"
}

run_shape gpt2-124m --layers 12 --d-model 768 --heads 12 --vocab 50257 --batch 4 --seq 64
run_shape d384 --layers 6 --d-model 384 --heads 6 --vocab 50257 --batch 4 --seq 64

echo "== path length (12 layers, d 256, vocab 8192, B=16, T=128)" >&2
PATH_SHAPE=(--layers 12 --d-model 256 --heads 4 --vocab 8192 --batch 16 --seq 128)
# Timing: one process, the three lengths interleaved in rounds (drift spreads evenly).
"$BENCH" "${PATH_SHAPE[@]}" --active 6,9,12 --steps 3 --rounds "$((STEPS / 2))" --warmup 2 \
  | tag path raptr >> "$OUT"
# Memory: one short process per length, so each peak RSS is that path's own.
for k in 6 9 12; do
  "$BENCH" "${PATH_SHAPE[@]}" --active "$k" --steps 2 --warmup 1 | tag path raptr-mem >> "$OUT"
done
# PyTorch runs one length per process: alternate the lengths over rounds, take medians.
for round in 1 2 3; do
  for k in 6 9 12; do
    torch_best "${PATH_SHAPE[@]}" --active "$k" --steps "$((STEPS / 2))" --warmup 2 \
      | tag path pytorch-best >> "$OUT"
  done
done

echo "== coordinator capacity (256 simulated workers x 20 steps/s, loopback)" >&2
# Plan delivery latency p50/p99 and coordinator CPU; exits non-zero (failing make bench) when a
# stream broke or a plan never came, rather than record a figure that means nothing.
"${RAPTR_BUILD_DIR:-build}/bench/coordinator_load" \
  --coordinator-bin "${RAPTR_BUILD_DIR:-build}/coordinator/raptr-coordinator" \
  --workers 256 --rate 20 --seconds 20 --warmup 3 >> "$OUT"

echo "== service overhead (the same job through the coordinator vs the engine alone)" >&2
if [[ -f data/sotu-8k/meta.json ]]; then
  bench/service_overhead.sh 5 100 >> "$OUT"
else
  echo "skipped: needs data/sotu-8k (scripts/quickstart.sh prepares it)" >&2
fi

"$PY" bench/summarize.py "$OUT"
