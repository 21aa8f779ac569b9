# Sourced by the service's end-to-end tests: a coordinator and `raptr-worker serve` processes on
# loopback, and raptrctl queries. The caller sets BUILD, WORK (and optionally CKPT, the checkpoint
# root).
#   fail MESSAGE                          prints it and every log's tail, exits 1
#   start_coordinator [ADDR [flags...]]  ADDR defaults to 127.0.0.1:0; exports RAPTR_COORDINATOR
#   start_worker ID [flags...]            a 1-thread worker; pid appended to WORKER_PIDS, in LAST_WORKER
#   spec NAME STEPS MIN MAX [BATCH]       a 4-block GPT with RaPTr, checkpoints every 25 steps
#   state_of JOB / step_of JOB / generation_of JOB
#   wait_state JOB STATE SECONDS / wait_step JOB STEP SECONDS / wait_log FILE REGEX SECONDS
#   wait_count FILE REGEX N SECONDS
CTL=$BUILD/cli/raptrctl
COORD=$BUILD/coordinator/raptr-coordinator
WORKER=$BUILD/worker/raptr-worker
COORD_PID=
WORKER_PIDS=()

fail() {
  echo "FAIL: $*" >&2
  for f in "$WORK"/*.log; do echo "--- $f" >&2; tail -n 30 "$f" >&2; done
  exit 1
}

stop_all() {
  for pid in "${WORKER_PIDS[@]}"; do kill -CONT "$pid" 2>/dev/null || true; done
  for pid in "${WORKER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  [[ -n "$COORD_PID" ]] && kill -TERM "$COORD_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}

# spec NAME STEPS MIN_WORKERS MAX_WORKERS [BATCH]
spec() {
  cat > "$WORK/$1.yaml" <<SPEC
name: $1
model: {kind: gpt, layers: 4, d_model: 32, heads: 2, vocab_size: 300, max_seq: 32}
data: {train_shards: [$WORK/data/train.bin], val_shards: [$WORK/data/val.bin]}
training: {batch: ${5:-8}, seq: 32, steps: $2, seed: 7, eval_every: 25, eval_batches: 2,
           checkpoint_every: 25}
optimizer: {lr: 3e-3, warmup_steps: 5}
schedule: {raptr: {}}
resources: {min_workers: $3, max_workers: $4}
SPEC
  echo "$WORK/$1.yaml"
}

# start_coordinator [ADDR [flags...]]: its log is $WORK/coord.log.
start_coordinator() {
  local addr=${1:-127.0.0.1:0}
  shift || true
  : > "$WORK/coord.out"
  "$COORD" --listen "$addr" --metrics-listen 127.0.0.1:0 --store "$WORK/store/c.db" \
    --checkpoint-dir "${CKPT:-$WORK/ckpt}" --heartbeat 0.5 --lease 3 "$@" \
    > "$WORK/coord.out" 2>> "$WORK/coord.log" &
  COORD_PID=$!
  for _ in $(seq 1 100); do
    if grep -q "listening on" "$WORK/coord.out" 2>/dev/null; then
      ADDR=$(sed -n 's/^raptr-coordinator listening on //p' "$WORK/coord.out")
      export RAPTR_COORDINATOR=$ADDR
      return 0
    fi
    kill -0 "$COORD_PID" 2>/dev/null || fail "coordinator exited at start"
    sleep 0.1
  done
  fail "coordinator did not report its port"
}

# start_worker ID [flags...]: its log is $WORK/ID.log.
start_worker() {
  local id=$1
  shift
  OMP_NUM_THREADS=1 "$WORKER" serve --coordinator "$ADDR" --id "$id" --collective-timeout 30 \
    --metrics-listen 127.0.0.1:0 "$@" \
    2>> "$WORK/$id.log" &
  WORKER_PIDS+=($!)
  LAST_WORKER=$!
}

job_field() { "$CTL" get "$1" --output json | tr -d '\n ' | sed -n "s/.*\"$2\":\"\{0,1\}\([A-Z_0-9]*\).*/\1/p"; }
state_of() { job_field "$1" state | sed 's/^JOB_STATE_//'; }
step_of() {
  local s
  s=$("$CTL" get "$1" --output json | tr -d '\n ' | sed -n 's/.*"progress":{"step":"\{0,1\}\([0-9]*\).*/\1/p')
  echo "${s:-0}"
}
generation_of() { local g; g=$(job_field "$1" generation); echo "${g:-0}"; }
wait_state() {
  for _ in $(seq 1 $(($3 * 10))); do
    [[ "$(state_of "$1")" == "$2" ]] && return 0
    sleep 0.1
  done
  fail "$1 is $(state_of "$1"), not $2, after $3 s"
}
wait_step() {
  for _ in $(seq 1 $(($3 * 10))); do
    [[ $(step_of "$1") -ge $2 ]] && return 0
    sleep 0.1
  done
  fail "$1 is at step $(step_of "$1"), not $2, after $3 s"
}
wait_log() {
  for _ in $(seq 1 $(($3 * 10))); do
    grep -Eq "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "no line matching '$2' in $1 after $3 s"
}
# wait_count FILE REGEX N SECONDS: until FILE has at least N lines matching REGEX.
wait_count() {
  for _ in $(seq 1 $(($4 * 10))); do
    [[ $(grep -Ec "$2" "$1" 2>/dev/null) -ge $3 ]] && return 0
    sleep 0.1
  done
  fail "fewer than $3 lines matching '$2' in $1 after $4 s"
}
final_checkpoint() { ls -d "${CKPT:-$WORK/ckpt}"/"$1"/generation-*/checkpoints/step_"$(printf %08d "$2")" | tail -n 1; }
