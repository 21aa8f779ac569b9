#!/usr/bin/env bash
# device-service-check.sh: the service end to end on one machine's workers of one backend, for
# the GPU check (scripts/device-check.sh runs it with --backend cuda on the lent GPU) and here
# (--backend cpu proves the script itself). A coordinator and two `raptr-worker serve` processes
# on loopback, through the real binaries:
#   job 1  a 4-block GPT with RaPTr on 1 worker, attention auto (flash on CUDA): must succeed and
#          learn (final eval loss under 0.8 ln V);
#   job 2  the same spec on 2 workers with attention materialized, both workers on one device, so
#          the all-reduce is Gloo staged through host memory (NCCL refuses two ranks on one GPU):
#          must succeed, and its final eval loss must agree with job 1's within 2% (the same
#          trajectory up to fp32 rounding of another attention and another world size).
# Prints one line per job ("job1 ok: ... final eval loss 1.84 after 60 steps, 2 s") and exits 0 when
# both held, 1 otherwise (the logs' tails on stderr).
#
# usage: device-service-check.sh BIN_DIR WORK BACKEND   (BIN_DIR holds raptrctl,
#        raptr-coordinator, raptr-worker; LD_LIBRARY_PATH as they need it; WORK is emptied)
set -euo pipefail
BIN=$(cd "$1" && pwd)
WORK=$2
BACKEND=$3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rm -rf "$WORK"
mkdir -p "$WORK/build/cli" "$WORK/build/coordinator" "$WORK/build/worker" "$WORK/store"
WORK=$(cd "$WORK" && pwd)
ln -s "$BIN/raptrctl" "$WORK/build/cli/raptrctl"
ln -s "$BIN/raptr-coordinator" "$WORK/build/coordinator/raptr-coordinator"
ln -s "$BIN/raptr-worker" "$WORK/build/worker/raptr-worker"
# shellcheck disable=SC2034  # read by service_lib.sh
BUILD=$WORK/build
# shellcheck source=tests/integration/service_lib.sh
source "$HERE/tests/integration/service_lib.sh"
# shellcheck source=tests/integration/small_corpus.sh
source "$HERE/tests/integration/small_corpus.sh"
trap stop_all EXIT

small_corpus "$CTL" "$WORK" || fail "raptrctl data prepare failed"
device_flags=()
[[ $BACKEND == cuda ]] && device_flags=(--backend cuda --device 0 --collectives gloo)

job_spec() {  # NAME WORKERS ATTENTION
  cat > "$WORK/$1.yaml" <<SPEC
name: $1
model: {kind: gpt, layers: 4, d_model: 64, heads: 4, vocab_size: 300, max_seq: 64}
data: {train_shards: [$WORK/data/train.bin], val_shards: [$WORK/data/val.bin]}
training: {batch: 8, seq: 64, steps: 60, seed: 7, eval_every: 20, eval_batches: 2,
           checkpoint_every: 30}
optimizer: {lr: 3e-3, warmup_steps: 5}
schedule: {raptr: {}}
resources: {min_workers: $2, max_workers: $2, backend: $BACKEND, attention: $3}
SPEC
  echo "$WORK/$1.yaml"
}
final_eval_loss() {  # JOB
  "$CTL" get "$1" --output json | tr -d ' \n' | sed -n 's/.*"eval_loss":\([0-9.eE+-]*\).*/\1/p'
}

start_coordinator
start_worker w0 "${device_flags[@]}"
start_worker w1 "${device_flags[@]}"
wait_count "$WORK/coord.log" " connected " 2 30

status=0
# A job learned when its final eval loss is under 0.8 ln(300), the loss of a uniform guess over
# the vocabulary (where training starts): the corpus is repetitive, and 60 steps reach ~1.9.
check_job() {  # NAME WORKERS ATTENTION
  local t0=$SECONDS job loss
  job=$("$CTL" submit -f "$(job_spec "$1" "$2" "$3")")
  wait_state "$job" SUCCEEDED 240
  loss=$(final_eval_loss "$job")
  if [[ -z "$loss" ]] || ! awk -v l="$loss" 'BEGIN {exit !(l < 0.8 * log(300))}'; then
    echo "$1 FAILED: final eval loss '${loss}' is not under 0.8 ln(300) = 4.56"
    status=1
  else
    echo "$1 ok: $2 worker(s), attention $3, final eval loss $loss after 60 steps, $((SECONDS - t0)) s"
  fi
  LAST_LOSS=$loss
}
check_job job1 1 auto
one=$LAST_LOSS
check_job job2 2 materialized
two=$LAST_LOSS
if [[ -n "$one" && -n "$two" ]] && awk -v a="$one" -v b="$two" \
  'BEGIN {d = a - b; if (d < 0) d = -d; exit !(d <= 0.02 * a)}'; then
  echo "job1 vs job2: final eval loss $one vs $two, within 2%"
else
  echo "job1 vs job2 FAILED: final eval loss $one vs $two, not within 2%"
  status=1
fi
if [[ $BACKEND == cuda ]]; then
  grep -h "all-reduces over" "$WORK"/w*.log | head -2
  grep -h "connected to" "$WORK"/w*.log | head -1
fi
exit $status
