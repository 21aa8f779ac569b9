#!/usr/bin/env bash
# Faults the service survives, each with real processes on loopback (coordinator, `raptr-worker
# serve` processes over real Gloo collectives, raptrctl). Times measured here are printed as
# "measured: ..." lines (docs/RELIABILITY.md quotes them).
#   A. SIGSTOP of one of 2 ranks, production lease and deadlines: RECOVERING within 30 s,
#      training again on the survivor within 45 s; SIGCONT later changes nothing in the job and
#      the worker comes back free.
#   B. A rank hangs while its heartbeats go on: the progress watchdog fails the group, the job
#      recovers on a spare, and the hung worker restarts its own process and comes back.
#   B2. Steps far longer than the progress deadlines are not hangs: the heartbeats carry the job
#      thread's work count (micro-batches done), which the coordinator counts as progress.
#   C. SIGKILL of one rank of a 2-rank job: regrouped (same world size) from the last committed
#      checkpoint; the finished weights are bitwise those of an uninterrupted run; WatchJob
#      shows the rewind; retention leaves the last 3 checkpoints, on disk as in the store.
#   D. SIGKILL of the coordinator mid-job: restarted on the same store, the job resumes from its
#      last committed checkpoint and ends bitwise identical to an uninterrupted run.
#   E. Three of four workers SIGKILLed at once: one recovery (generation 2), not one per worker.
#   F. A worker that dies every time: the job is FAILED after a bounded number of tries, with the
#      reason on the job.
#   R. A job FAILED after its checkpoint at step 25 (a worker dying at step 30 every time):
#      raptrctl retry runs it again from that checkpoint to SUCCEEDED, every step counted once.
#   G. Two processes with one worker id: the second is refused while the first is live; the first
#      one's job is not disturbed.
#   H. A job finishes while another is recovering (a use-after-free in the coordinator once).
#   I. Committed checkpoints corrupted and truncated on disk: found by the digest recorded at the
#      commit (or the reader), rejected with an event, and the job resumes from the one before.
#   J. The store's disk fills up mid-job and frees again (a small tmpfs; needs root).
#   K. The coordinator SIGKILLed exactly inside a checkpoint commit, then inside checkpoint
#      retention (failpoints): nothing committed is lost, store and disk agree, bitwise identical.
#   L. The engine throws mid-step (a failpoint): a reported, retryable error; the worker lives on.
#   M. A sticky device fault (a failpoint): the worker reports it, takes no other job and exits 71;
#      the job recovers on the other worker. A CUDA job on CPU workers waits, saying there is no
#      CUDA worker; a worker whose CUDA device is not usable exits 69 naming the device.
# Usage: fault_test.sh BUILD_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
# shellcheck source=tests/integration/service_lib.sh
source "$HERE/service_lib.sh"
cleanup() {
  stop_all
  if mountpoint -q "$WORK/smallfs" 2>/dev/null; then umount "$WORK/smallfs"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
now() { date +%s.%N; }
# A job's checkpoint directories as generation-G/checkpoints/step_N, space-separated and sorted:
# on disk under $CKPT, and as the store at DB records them.
checkpoints_on_disk() { (cd "$CKPT/$1" && ls -d generation-*/checkpoints/step_* | sort | tr '\n' ' '); }
checkpoints_in_store() {
  python3 - "$1" "$2" <<'PY'
import os, sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute(
    "SELECT path FROM checkpoints WHERE job_id = ? ORDER BY path", (sys.argv[2],)).fetchall()
print(" ".join(os.path.relpath(p, os.path.dirname(os.path.dirname(os.path.dirname(p))))
               for (p,) in rows), end=" ")
PY
}
# RAPTR_FAULT_SCENARIOS="A C E" runs only those scenarios (the sanitizer runs pick the ones that
# exercise concurrency; each scenario starts its own cluster); unset: all of them.
scenario() {
  [[ -z ${RAPTR_FAULT_SCENARIOS:-} || " $RAPTR_FAULT_SCENARIOS " == *" $1 "* ]] && return 0
  echo "skip $1: not in RAPTR_FAULT_SCENARIOS ($RAPTR_FAULT_SCENARIOS)"
  return 1
}
# The timing targets are a release build's; sanitizer builds run several times slower
# (scripts/sanitize.sh sets the scale).
SCALE=${RAPTR_TEST_TIME_SCALE:-1}
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# new_cluster NAME [coordinator flags...]: stops everything, then a fresh coordinator and store.
new_cluster() {
  stop_all
  WORKER_PIDS=()
  local name=$1
  shift
  mv "$WORK/coord.log" "$WORK/coord-before-$name.log.old" 2>/dev/null || true
  CKPT=$WORK/ckpt-$name
  start_coordinator 127.0.0.1:0 --store "$WORK/store/$name.db" "$@"
}
metric() {
  local port
  port=$(sed -n 's/^raptr-coordinator metrics on 127.0.0.1://p' "$WORK/coord.out")
  curl -sf "http://127.0.0.1:$port/metrics" | grep -F "$1" | awk '{print $2}'
}

# shellcheck source=tests/integration/small_corpus.sh
source "$HERE/small_corpus.sh"
small_corpus "$CTL" "$WORK" || fail "data prepare"

if scenario A; then
# --- A. SIGSTOP of one rank, with the production lease (15 s) and progress deadline (30 s).

new_cluster sigstop --heartbeat 2 --lease 15
start_worker wa
WA=$LAST_WORKER
start_worker wb
WB=$LAST_WORKER
wait_log "$WORK/coord.log" "worker wa connected" 30
wait_log "$WORK/coord.log" "worker wb connected" 30
JOB=$("$CTL" submit -f "$(spec sigstop 1000000 1 2)") || fail "submit sigstop"
wait_step "$JOB" 40 60
"$CTL" get "$JOB" | grep -Eq "^workers: +2 " || fail "sigstop job did not start on 2 workers"
[[ $(generation_of "$JOB") == 1 ]] || fail "sigstop job regrouped before the fault"
kill -STOP "$WB"
T0=$(now)
wait_state "$JOB" RECOVERING $((30 * SCALE))
DETECTED=$(since "$T0")
for _ in $(seq 1 $((450 * SCALE))); do
  [[ $(generation_of "$JOB") == 2 && "$(state_of "$JOB")" == RUNNING ]] && break
  sleep 0.1
done
[[ $(generation_of "$JOB") == 2 ]] || fail "no generation 2 within $((45 * SCALE)) s of the SIGSTOP"
S1=$(step_of "$JOB")
wait_step "$JOB" $((S1 + 5)) $((45 * SCALE - ${DETECTED%.*}))
TRAINING=$(since "$T0")
echo "measured: SIGSTOP of 1 of 2 ranks (lease 15 s): RECOVERING after ${DETECTED} s, training again on the survivor after ${TRAINING} s"
awk -v t="$TRAINING" -v limit=$((45 * SCALE)) 'BEGIN { exit !(t <= limit) }' \
  || fail "training again only after $TRAINING s"
"$CTL" get "$JOB" | grep -Eq "^workers: +1 " || fail "generation 2 is not on the survivor alone"
RECOVERIES=$(grep -c "$JOB recovering" "$WORK/coord.log")
kill -CONT "$WB"
T1=$(now)
wait_count "$WORK/coord.log" "worker wb connected" 2 30
BACK=$(since "$T1")
sleep 3
# The old rank is fenced: nothing it sends fails or changes the job. It comes back as a free
# worker, which the job (max_workers 2) may then take at its next checkpoint: a planned regroup
# (elastic growth), never a recovery.
[[ $(grep -c "$JOB recovering" "$WORK/coord.log") == "$RECOVERIES" ]] \
  || fail "SIGCONT of the old rank caused a recovery: $(grep "$JOB recovering" "$WORK/coord.log" | tail -n 1)"
[[ "$(state_of "$JOB")" == RUNNING ]] || fail "SIGCONT of the old rank left the job $(state_of "$JOB")"
case $(generation_of "$JOB") in
  2) GREW="job unchanged" ;;
  3) grep -q "$JOB: growing from 1 to 2 workers" "$WORK/coord.log" \
       || fail "generation 3 after SIGCONT without a planned growth"
     GREW="the job then grew back to 2 workers at a checkpoint, a planned regroup" ;;
  *) fail "SIGCONT of the old rank: generation $(generation_of "$JOB")" ;;
esac
[[ $(metric 'raptr_worker_connected{worker="wb"}') == 1 ]] || fail "wb did not come back connected"
echo "measured: SIGCONT: wb back as a free worker after $BACK s ($GREW)"
"$CTL" cancel "$JOB" > /dev/null
echo "ok A: SIGSTOP of one rank"
fi

if scenario B; then
# --- B. A rank hangs with its heartbeats going on: the progress watchdog (deadline 3 s here).
new_cluster hang --progress-timeout 3
start_worker wh --hang-at-step 30 --abort-timeout 2
wait_log "$WORK/coord.log" "worker wh connected" 30
JOB=$("$CTL" submit -f "$(spec hang 150 1 1)") || fail "submit hang"
wait_state "$JOB" RUNNING 30
start_worker ws
wait_log "$WORK/wh.log" "hang-at-step 30" 60
T0=$(now)
wait_log "$WORK/coord.log" "made no progress" 30
echo "measured: hung rank (progress deadline 3 s): group failed after $(since "$T0") s"
wait_state "$JOB" SUCCEEDED 120
wait_log "$WORK/wh.log" "restarting this worker process" 30
wait_count "$WORK/coord.log" "worker wh connected" 2 30
echo "measured: hung worker restarted and back after $(since "$T0") s"
echo "ok B: a hang is found by the progress watchdog; the stuck worker restarts itself"
fi

if scenario B3; then
# --- B3. A worker stopped (SIGTERM) while its job waits in the rendezvous on a coordinator that
# does not answer (SIGSTOPped: a partition, a hung host). Its peer is SIGSTOPped first, so the key
# it waits for never comes. The worker's abort cancels its wait itself and it exits cleanly, well
# before its abort timeout (10 s, after which a stuck job thread makes a stopping worker exit 70).
new_cluster rendezvous --heartbeat 2 --lease 20
start_worker wr1
WR1=$LAST_WORKER
start_worker wr2
WR2=$LAST_WORKER
wait_log "$WORK/coord.log" "worker wr2 connected" 30
kill -STOP "$WR2"
JOB=$("$CTL" submit -f "$(spec rendezvous 100000 2 2)") || fail "submit rendezvous"
wait_log "$WORK/coord.log" "generation 1 started on 2 workers" 10
wait_log "$WORK/wr1.log" "generation 1: rank" 10
sleep 1
kill -STOP "$COORD_PID"
T0=$(now)
kill -TERM "$WR1"
RC=0
wait "$WR1" || RC=$?
STOPPED=$(since "$T0")
kill -CONT "$COORD_PID" "$WR2"
[[ $RC == 0 ]] || fail "the worker stopped in the rendezvous exited $RC: $(tail -n 3 "$WORK/wr1.log")"
awk -v t="$STOPPED" -v limit=$((5 * SCALE)) 'BEGIN { exit !(t < limit) }' \
  || fail "the worker took $STOPPED s to stop from the rendezvous"
"$CTL" cancel "$JOB" > /dev/null
echo "measured: a worker SIGTERMed while waiting in the rendezvous on a silent coordinator exited cleanly after $STOPPED s"
echo "ok B3: an abort cancels a rendezvous wait at once"
fi

if scenario B2; then
# --- B2. A slow step is not a hang: 3 steps of 1200 micro-batches each take longer than the
# progress deadlines (startup 1.5 s, then max(1.5 s, 0.3 x the median step)), but the heartbeats
# (every 0.5 s) carry the job thread's work count, which grows with every micro-batch, and the
# coordinator counts that as progress: no group fails.
new_cluster slowstep --progress-timeout 1.5 --progress-factor 0.3 --startup-timeout 1.5
start_worker wslow
sed 's/seq: 32, steps: 3,/seq: 32, steps: 3, micro_batches: 1200,/; s/warmup_steps: 5/warmup_steps: 0/; s/raptr: {}/full: {}/' \
  "$(spec slowstep 3 1 1)" > "$WORK/slowstep-mb.yaml"
grep -q "micro_batches: 1200" "$WORK/slowstep-mb.yaml" || fail "slowstep spec: $(cat "$WORK/slowstep-mb.yaml")"
JOB=$("$CTL" submit -f "$WORK/slowstep-mb.yaml") || fail "submit slowstep"
wait_state "$JOB" SUCCEEDED $((120 * SCALE))
grep -q "made no progress" "$WORK/coord.log" && fail "a slow step was taken for a hang: $(grep "made no progress" "$WORK/coord.log" | head -n 1)"
[[ $(generation_of "$JOB") == 1 ]] || fail "slowstep regrouped: generation $(generation_of "$JOB")"
# Each step really outlasted the 1.5 s deadline (else this proves nothing).
SLOWEST=$(python3 - "$WORK/store/slowstep.db" "$JOB" <<'PY'
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute(
    "SELECT MIN(seconds), MAX(seconds) FROM step_summaries WHERE job_id = ?", (sys.argv[2],)).fetchone()
print("%.1f %.1f" % rows)
PY
)
awk -v m="${SLOWEST%% *}" 'BEGIN { exit !(m > 1.5) }' \
  || fail "the slow steps took $SLOWEST s (min, max): not longer than the 1.5 s deadline, so this proves nothing"
echo "measured: steps of 1200 micro-batches took $SLOWEST s (min, max) under 1.5 s progress deadlines: no false hang"
echo "ok B2: a slow step whose heartbeats show work is not a hang"
fi

if scenario C; then
# --- C. SIGKILL of one rank of a 2-rank job; regrouped with the same world size.
new_cluster sigkill
start_worker w1
start_worker w2
wait_log "$WORK/coord.log" "worker w2 connected" 30
REF=$("$CTL" submit -f "$(spec ref2 600 2 2)") || fail "submit ref2"
wait_state "$REF" SUCCEEDED 120
start_worker w3  # the spare (groups take workers in id order: w1, w2)
wait_log "$WORK/coord.log" "worker w3 connected" 30
JOB=$("$CTL" submit -f "$(spec ref2 600 2 2)") || fail "submit sigkill"
"$CTL" watch "$JOB" --output json > "$WORK/sigkill.events" &
WATCH=$!
wait_step "$JOB" 35 60
kill -KILL "$(pgrep -f -- "--id w2 " | head -n 1)"
wait_state "$JOB" SUCCEEDED 120
wait "$WATCH" || fail "watch of the sigkill job"
# The watcher saw the recovery's rewind, and its running totals are the store's (each replayed
# step counted once).
python3 - "$WORK/sigkill.events" "$("$CTL" get "$JOB" --output json)" <<'PY' || fail "WatchJob and the rewind"
import json, sys
events = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
job = json.loads(sys.argv[2])
rewinds = [e["rewound"] for e in events if "rewound" in e]
# One recovery: one rewind, or none when the kill came before any step past the checkpoint was
# recorded (summaries are flushed every 0.5 s).
assert len(rewinds) <= 1, "expected at most one rewound event, got %d" % len(rewinds)
for r in rewinds:
    to_step = int(r.get("to_step", 0))
    assert to_step % 25 == 0 and to_step < int(r["from_step"]), r
steps = [e["step"] for e in events if "step" in e]
last = steps[-1]["progress"]
assert int(last["step"]) == 600, last
assert int(last["tokens"]) == int(job["progress"]["tokens"]), (last["tokens"], job["progress"]["tokens"])
print("measured: %s; %d step events for 600 steps" % (
    "rewound from step %s to %s" % (rewinds[0]["from_step"], rewinds[0].get("to_step", 0))
    if rewinds else "no rewind (nothing past the checkpoint was recorded)", len(steps)))
PY
[[ $(generation_of "$JOB") == 2 ]] || fail "sigkill job: generation $(generation_of "$JOB"), expected 2"
"$CTL" get "$JOB" | grep -Eq "^workers: +2 " || fail "sigkill job did not regroup on 2 workers"
python3 "$HERE/compare_checkpoints.py" "$(final_checkpoint "$REF" 600)" \
  "$(final_checkpoint "$JOB" 600)" --exact || fail "regrouped run differs from the uninterrupted one"
# Retention (--keep-checkpoints 3): on disk, only generation 2's last three checkpoints remain
# (generation 1's are superseded), and the store records exactly those.
ON_DISK=$(checkpoints_on_disk "$JOB")
IN_STORE=$(checkpoints_in_store "$WORK/store/sigkill.db" "$JOB")
EXPECTED="generation-2/checkpoints/step_00000550 generation-2/checkpoints/step_00000575 generation-2/checkpoints/step_00000600 "
[[ $ON_DISK == "$EXPECTED" ]] || fail "checkpoints on disk after retention: $ON_DISK"
[[ $IN_STORE == "$EXPECTED" ]] || fail "checkpoints in the store after retention: $IN_STORE"
echo "ok C: SIGKILL of one rank: regrouped from the checkpoint, bitwise identical; 3 checkpoints kept"
fi

if scenario D; then
# --- D. SIGKILL of the coordinator mid-job; restart on the same store.
new_cluster coordkill
start_worker w1
REF=$("$CTL" submit -f "$(spec ref1 600 1 1)") || fail "submit ref1"
wait_state "$REF" SUCCEEDED 120
JOB=$("$CTL" submit -f "$(spec ref1 600 1 1)") || fail "submit coordkill"
wait_step "$JOB" 60 60
kill -KILL "$COORD_PID"
wait "$COORD_PID" 2>/dev/null || true
T0=$(now)
start_coordinator "$ADDR" --store "$WORK/store/coordkill.db"
wait_state "$JOB" SUCCEEDED 120
python3 "$HERE/compare_checkpoints.py" "$(final_checkpoint "$REF" 600)" \
  "$(final_checkpoint "$JOB" 600)" --exact || fail "the resumed run differs from the uninterrupted one"
grep -q "will resume" "$WORK/coord.log" || fail "the restarted coordinator did not resume the job"
echo "ok D: SIGKILL of the coordinator: resumed from the store, bitwise identical"
fi

if scenario E; then
# --- E. Three of four workers lost at once: one recovery.
new_cluster multi
for w in m1 m2 m3 m4; do start_worker "$w"; done
for w in m1 m2 m3 m4; do wait_log "$WORK/coord.log" "worker $w connected" 30; done
JOB=$("$CTL" submit -f "$(spec multi 1000 1 4)") || fail "submit multi"
wait_step "$JOB" 30 60
"$CTL" get "$JOB" | grep -Eq "^workers: +4 " || fail "multi did not start on 4 workers"
kill -KILL $(pgrep -f -- "--id m[234] ")
wait_state "$JOB" SUCCEEDED 120
[[ $(generation_of "$JOB") == 2 ]] || fail "3 workers lost at once cost $(( $(generation_of "$JOB") - 1 )) recoveries, not 1"
echo "ok E: several workers lost at once: one recovery"
fi

if scenario F; then
# --- F. A worker that dies at every try: FAILED after a bounded number of tries.
new_cluster doomed
( for _ in $(seq 1 8); do
    OMP_NUM_THREADS=1 "$WORKER" serve --coordinator "$ADDR" --id wdoomed --crash-at-step 3 \
      --metrics-listen 127.0.0.1:0 2>> "$WORK/wdoomed.log" || true
  done ) &
DOOMED_LOOP=$!
WORKER_PIDS+=($!)
JOB=$("$CTL" submit -f "$(spec doomed 100 1 1)") || fail "submit doomed"
wait_state "$JOB" FAILED 120
"$CTL" get "$JOB" | grep -q "giving up" || fail "the FAILED job does not say why: $("$CTL" get "$JOB")"
echo "ok F: a worker that always dies: FAILED ($(generation_of "$JOB") generations) with the reason"
# The loop first (a subshell runs no trap while its child runs), then its current worker.
kill -KILL "$DOOMED_LOOP" 2>/dev/null || true
wait "$DOOMED_LOOP" 2>/dev/null || true
pkill -KILL -f -- "--id wdoomed" || true
fi

if scenario R; then
# --- R. raptrctl retry: a job that FAILED after committing a checkpoint runs again from it.
new_cluster retry
( for _ in $(seq 1 8); do
    OMP_NUM_THREADS=1 "$WORKER" serve --coordinator "$ADDR" --id wflaky --crash-at-step 30 \
      --metrics-listen 127.0.0.1:0 2>> "$WORK/wflaky.log" || true
  done ) &
FLAKY_LOOP=$!
WORKER_PIDS+=($!)
JOB=$("$CTL" submit -f "$(spec retry 100 1 1)") || fail "submit retry"
wait_state "$JOB" FAILED 120
kill -KILL "$FLAKY_LOOP" 2>/dev/null || true
wait "$FLAKY_LOOP" 2>/dev/null || true
pkill -KILL -f -- "--id wflaky" || true
GEN=$(generation_of "$JOB")
"$CTL" get "$JOB" --output json | grep -q '"checkpoint_step": "25"' \
  || fail "the failed job has no checkpoint at step 25: $("$CTL" get "$JOB")"
OTHER=$("$CTL" submit -f "$(spec retry-pending 10 2 2)") || fail "submit a pending job"
if "$CTL" retry "$OTHER" > /dev/null 2> "$WORK/retry-pending.err"; then fail "a PENDING job was retried"; fi
grep -q "only a FAILED job can be retried" "$WORK/retry-pending.err" \
  || fail "retry of a PENDING job: $(cat "$WORK/retry-pending.err")"
"$CTL" cancel "$OTHER" > /dev/null
start_worker wsteady
"$CTL" retry "$JOB" --reason "the flaky host is gone" > "$WORK/retry.out" || fail "retry: $(cat "$WORK/retry.out")"
grep -Eq "^state: +RECOVERING" "$WORK/retry.out" || fail "retry did not make it RECOVERING: $(cat "$WORK/retry.out")"
wait_state "$JOB" SUCCEEDED 120
wait_log "$WORK/wsteady.log" "$JOB generation $((GEN + 1)): rank 0 of 1, resuming from .*step_00000025" 10
"$CTL" get "$JOB" --output json | grep -q "\"tokens\": \"$((100 * 8 * 32))\"" \
  || fail "after the retry the job counts other than 100 steps of tokens: $("$CTL" get "$JOB" --output json | grep tokens)"
"$CTL" logs "$JOB" > "$WORK/retry-logs.txt" || fail "logs after retry"
grep -q "FAILED -> RECOVERING: retried by request: the flaky host is gone" "$WORK/retry-logs.txt" \
  || fail "the retry is not in the job's log: $(grep -i retr "$WORK/retry-logs.txt")"
echo "ok R: a FAILED job retried from its last checkpoint (step 25) runs to SUCCEEDED with every step counted once"
fi

if scenario G; then
# --- G. Two live processes with one worker id.
new_cluster dupid
start_worker dup
JOB=$("$CTL" submit -f "$(spec dupid 1000000 1 1)") || fail "submit dupid"
wait_step "$JOB" 10 60
start_worker dup
SECOND=$LAST_WORKER
wait_log "$WORK/coord.log" "is connected from another process" 30
wait_log "$WORK/dup.log" "refused this session for now" 30
sleep 2
[[ $(generation_of "$JOB") == 1 && "$(state_of "$JOB")" == RUNNING ]] \
  || fail "a second process with the same id disturbed the job"
kill -TERM "$SECOND"
"$CTL" cancel "$JOB" > /dev/null
echo "ok G: a second process with a live worker's id is refused"
fi
if scenario H; then
# --- H. A job finishes while another recovers (the coordinator's use-after-free of review finding
# 1: the finished job's id was read after its entry was erased, once any job was recovering).
new_cluster finish_during_recovery
start_worker wa
start_worker wb
wait_log "$WORK/coord.log" "worker wa connected" 30
wait_log "$WORK/coord.log" "worker wb connected" 30
X=$("$CTL" submit -f "$(spec pair 1000000 2 2)") || fail "submit pair"
wait_step "$X" 10 60
sed -i 's/^resources: {/resources: {priority: 10, /' "$(spec urgent 60 1 1)"
Y=$("$CTL" submit -f "$WORK/urgent.yaml") || fail "submit urgent"
kill -KILL "$(pgrep -f -- "--id wb " | head -n 1)"
wait_state "$Y" SUCCEEDED 60   # on wa, while the pair waits for a second worker
[[ "$(state_of "$X")" == RECOVERING ]] || fail "the pair is $(state_of "$X"), not RECOVERING"
kill -0 "$COORD_PID" || fail "the coordinator died when a job finished during another's recovery"
"$CTL" cancel "$X" > /dev/null
echo "ok H: a job finishes while another recovers"
fi
if scenario I; then
# --- I. A committed checkpoint corrupted on disk (bytes flipped in a tensor), then one truncated:
# the worker resuming from it finds its state does not match the digest recorded at the commit,
# the coordinator rejects it (an event in the job's log) and the job resumes from the one before;
# it still ends bitwise identical to an uninterrupted run.
new_cluster corrupt
start_worker wr
wait_log "$WORK/coord.log" "worker wr connected" 30
REF=$("$CTL" submit -f "$(spec ref3 100 1 1)") || fail "submit ref3"
wait_state "$REF" SUCCEEDED 120
kill -TERM "$LAST_WORKER"
wait "$LAST_WORKER" 2>/dev/null || true
start_worker wx --crash-at-step 80
JOB=$("$CTL" submit -f "$(spec ref3 100 1 1)") || fail "submit corrupt"
wait "$LAST_WORKER" 2>/dev/null && fail "the crashing worker exited 0"
CK50=$(final_checkpoint "$JOB" 50)
CK75=$(final_checkpoint "$JOB" 75)
python3 - "$CK75/model.safetensors" <<'PY'
import sys
path = sys.argv[1]
with open(path, "r+b") as f:
    data = bytearray(f.read())
    for i in range(len(data) - 4096, len(data) - 4000):  # inside the last tensor's bytes
        data[i] ^= 0x5A
    f.seek(0)
    f.write(data)
PY
truncate -s -100 "$CK50/state.safetensors"
"$CTL" watch "$JOB" --output json > "$WORK/corrupt.events" &
WATCH=$!
start_worker wy
wait_state "$JOB" SUCCEEDED 120
wait "$WATCH" || true
[[ $(grep -c '"checkpointRejected"\|"checkpoint_rejected"' "$WORK/corrupt.events") -eq 2 ]] \
  || fail "expected 2 checkpoint_rejected events: $(grep -i rejected "$WORK/corrupt.events")"
grep -q "digest" "$WORK/corrupt.events" || fail "the rejection of step 75 does not name the digest"
grep "is unusable" "$WORK/coord.log" | sed 's/^/measured: /'
python3 -c '
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line).get("checkpoint_rejected")
    if e: print("measured: rejected step %s: %s" % (e.get("step"), e.get("reason")))
' "$WORK/corrupt.events"
python3 "$HERE/compare_checkpoints.py" "$(final_checkpoint "$REF" 100)" \
  "$(final_checkpoint "$JOB" 100)" --exact || fail "the run resumed past corrupt checkpoints differs"
echo "ok I: corrupt and torn checkpoints are rejected; the job resumes from the one before"
fi
if scenario J; then
# --- J. The store's disk fills up mid-job (a 16 MiB tmpfs, filled by another file), then frees.
# While it is full: no checkpoint commits (its summaries could not be written first) and the
# coordinator stays up; once space is back, the job the store still shows RUNNING without a group
# is reconciled to RECOVERING and trains again. Needs root for the mount (CI runs as root).
mkdir -p "$WORK/smallfs"
if mount -t tmpfs -o size=16m tmpfs "$WORK/smallfs" 2>/dev/null; then
  new_cluster diskfull --store "$WORK/smallfs/c.db"
  start_worker wf
  wait_log "$WORK/coord.log" "worker wf connected" 30
  JOB=$("$CTL" submit -f "$(spec diskfull 1000000 1 1)") || fail "submit diskfull"
  wait_step "$JOB" 60 60
  dd if=/dev/zero of="$WORK/smallfs/filler" bs=64k 2>/dev/null || true  # until ENOSPC
  T0=$(now)
  wait_log "$WORK/coord.log" "cannot record step summaries" 30
  CK_FULL=$(job_field "$JOB" checkpoint_step)
  sleep 6
  [[ $(job_field "$JOB" checkpoint_step) == "$CK_FULL" ]] \
    || fail "a checkpoint committed while the store could not write summaries ($CK_FULL -> $(job_field "$JOB" checkpoint_step))"
  kill -0 "$COORD_PID" || fail "the coordinator died when its disk filled"
  G_FULL=$(generation_of "$JOB")
  rm -f "$WORK/smallfs/filler"
  T1=$(now)
  for _ in $(seq 1 300); do
    [[ $(generation_of "$JOB") -gt $G_FULL && "$(state_of "$JOB")" == RUNNING ]] && break
    sleep 0.1
  done
  [[ $(generation_of "$JOB") -gt $G_FULL && "$(state_of "$JOB")" == RUNNING ]] \
    || fail "the job did not train again once the disk had space: $(state_of "$JOB") generation $(generation_of "$JOB")"
  S1=$(step_of "$JOB")
  wait_step "$JOB" $((S1 + 30)) 60
  grep -q "RUNNING in the store without a group" "$WORK/coord.log" \
    || fail "the job's failed state write was not reconciled: $(grep -E "diskfull|job-0000" "$WORK/coord.log" | tail -5)"
  grep -E "so it is not committed|without a group" "$WORK/coord.log" | head -2 | cut -c1-160 | sed 's/^/measured: /' 
  echo "measured: store disk full for $(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.1f", b - a }') s: no commit meanwhile; training again $(since "$T1") s after space came back"
  "$CTL" cancel "$JOB" > /dev/null
  stop_all
  umount "$WORK/smallfs"
  echo "ok J: a full store disk: no commit without its summaries, reconciled once space is back"
else
  echo "skip J: cannot mount a tmpfs here (not root): the disk-full scenario did not run"
fi
fi

if scenario L; then
# --- L. The engine throws mid-step (a failpoint, as a CUDA error would): the session turns the
# exception into a Status, the worker reports it and lives on (no std::terminate), and the job
# recovers on the same worker process.
new_cluster throw
RAPTR_FAILPOINTS=session.run-step:20 start_worker wthrow
WTHROW=$LAST_WORKER
JOB=$("$CTL" submit -f "$(spec throw 100 1 1)") || fail "submit throw"
wait_state "$JOB" SUCCEEDED 120
kill -0 "$WTHROW" 2>/dev/null || fail "the worker died of the exception"
grep -q "failpoint session.run-step (pass 20)" "$WORK/wthrow.log" || fail "the failpoint did not fire"
grep -q "failed at step .*training step at step 19: failpoint session.run-step" "$WORK/coord.log" \
  || fail "the error did not reach the coordinator: $(grep -i "wthrow" "$WORK/coord.log" | tail -n 3)"
[[ $(grep -c "worker wthrow connected" "$WORK/coord.log") == 1 ]] || fail "the worker reconnected (it restarted)"
[[ $(generation_of "$JOB") == 2 ]] || fail "throw job: generation $(generation_of "$JOB"), expected 2"
echo "ok L: an exception in the engine is a reported, retryable error; the worker lives on"
fi

if scenario M; then
# --- M. A sticky device fault mid-step (the failpoint session.device-fault: the session fails as a
# CUDA illegal address would leave the device, and DeviceFault() says so from then on). The worker
# reports the error (retryable: the job is fine, the device is not), logs it, takes no other job
# and exits 71 for its supervisor to restart it; the job recovers on the other worker and
# completes. Then, on the same CPU cluster: a CUDA job waits PENDING and the coordinator says why,
# and a worker asked to serve on a CUDA device it cannot use exits 69 at once, naming the device.
new_cluster devicefault
RAPTR_FAILPOINTS=session.device-fault:3 start_worker wfault
WFAULT=$LAST_WORKER
wait_log "$WORK/coord.log" "worker wfault connected" 30
T0=$(now)
JOB=$("$CTL" submit -f "$(spec devicefault 100 1 1)") || fail "submit devicefault"
wait_log "$WORK/coord.log" "$JOB generation 1 started on 1 worker \\(wfault\\)" 30
start_worker wspare
for _ in $(seq 1 $((300 * SCALE))); do kill -0 "$WFAULT" 2>/dev/null || break; sleep 0.1; done
EXITED=$(since "$T0")
kill -0 "$WFAULT" 2>/dev/null && fail "the worker with a faulted device did not exit"
RC=0
wait "$WFAULT" || RC=$?
[[ $RC == 71 ]] || fail "the worker with a faulted device exited $RC, not 71: $(tail -n 3 "$WORK/wfault.log")"
grep -q "failpoint session.device-fault (pass 3)" "$WORK/wfault.log" || fail "the device-fault failpoint did not fire"
grep -q "$JOB: the CPU backend is unusable (failpoint session.device-fault" "$WORK/wfault.log" \
  || fail "the worker did not log the device fault: $(tail -n 5 "$WORK/wfault.log")"
grep -q "exiting with status 71" "$WORK/wfault.log" || fail "the worker did not say it exits 71"
grep -q "worker wfault error in $JOB at step 2: .*sticky device fault" "$WORK/coord.log" \
  || fail "the device fault did not reach the coordinator: $(grep wfault "$WORK/coord.log" | tail -n 3)"
grep -q "$JOB recovering: worker wfault (rank 0) failed at step 2" "$WORK/coord.log" \
  || fail "the device fault did not make the job recover: $(grep "$JOB" "$WORK/coord.log" | tail -n 3)"
wait_state "$JOB" SUCCEEDED 120
[[ $(generation_of "$JOB") == 2 ]] || fail "devicefault job: generation $(generation_of "$JOB"), expected 2"
grep -q "$JOB generation 2 started on 1 worker (wspare)" "$WORK/coord.log" \
  || fail "generation 2 did not run on the spare"
[[ $(grep -c "worker wfault connected" "$WORK/coord.log") == 1 ]] || fail "the faulted worker came back"
grep -q "worker wfault left: disconnected" "$WORK/coord.log" \
  || fail "the faulted worker did not leave on its own: $(grep "worker wfault left" "$WORK/coord.log")"
echo "measured: device fault at the 3rd step: reported, the worker exited 71 ${EXITED} s after the job was submitted; 1 recovery, finished on the spare"
# A CUDA job on a cluster of CPU workers: PENDING, with the reason in the coordinator's log.
sed 's/^resources: {min_workers: 1, max_workers: 1}/resources: {min_workers: 1, max_workers: 1, backend: cuda}/' \
  "$(spec gpuonly 100 1 1)" > "$WORK/gpuonly-cuda.yaml"
grep -q "backend: cuda" "$WORK/gpuonly-cuda.yaml" || fail "gpuonly spec: $(cat "$WORK/gpuonly-cuda.yaml")"
GPU_JOB=$("$CTL" submit -f "$WORK/gpuonly-cuda.yaml") || fail "submit gpuonly"
wait_log "$WORK/coord.log" "$GPU_JOB waits: no cuda workers are connected \\(it needs 1; 1 cpu worker is\\)" 10
sleep 1
[[ "$(state_of "$GPU_JOB")" == PENDING ]] || fail "the CUDA job is $(state_of "$GPU_JOB") on a CPU cluster"
grep -q "$GPU_JOB generation" "$WORK/coord.log" && fail "the CUDA job was placed on a CPU worker"
"$CTL" cancel "$GPU_JOB" > /dev/null
# --backend cuda on a device this process cannot use (device 99 exists on no machine): exit 69
# before connecting, with one line naming the device and why.
RC=0
OMP_NUM_THREADS=1 timeout 30 "$WORKER" serve --coordinator "$ADDR" --backend cuda --device 99 \
  --metrics-listen 127.0.0.1:0 2> "$WORK/wcuda.log" || RC=$?
[[ $RC == 69 ]] || fail "--backend cuda --device 99 exited $RC, not 69: $(cat "$WORK/wcuda.log")"
[[ $(wc -l < "$WORK/wcuda.log") == 1 ]] || fail "--backend cuda --device 99 said more than one line: $(cat "$WORK/wcuda.log")"
grep -q "cannot serve on CUDA device 99: " "$WORK/wcuda.log" || fail "the CUDA error does not name the device: $(cat "$WORK/wcuda.log")"
grep -q "/gpu99 connected" "$WORK/coord.log" && fail "a worker without its CUDA device connected"
echo "measured: $(sed 's/^[0-9:]* //' "$WORK/wcuda.log")"
echo "ok M: a sticky device fault is reported and the worker exits 71; CUDA jobs wait for CUDA workers; an unusable CUDA device exits 69"
fi

if scenario K; then
# --- K. SIGKILL of the coordinator exactly inside a checkpoint commit (a failpoint: the record and
# its event are written, the transaction not committed), then exactly between retention's delete
# of the records and the removal of their files. Each restart on the same store loses nothing
# committed, resumes from the last committed checkpoint, and the store and the disk agree at the
# end; the job still ends bitwise identical to an uninterrupted run.
new_cluster commitref
start_worker wk
REF=$("$CTL" submit -f "$(spec ref4 200 1 1)") || fail "submit ref4"
wait_state "$REF" SUCCEEDED 120
stop_all
WORKER_PIDS=()
mv "$WORK/coord.log" "$WORK/coord-before-commitkill.log.old"
CKPT=$WORK/ckpt-commitkill
STORE_K=$WORK/store/commitkill.db
RAPTR_FAILPOINTS=store.commit-checkpoint:3 start_coordinator 127.0.0.1:0 --store "$STORE_K"
start_worker wk
JOB=$("$CTL" submit -f "$(spec ref4 200 1 1)") || fail "submit commitkill"
wait "$COORD_PID" 2>/dev/null && fail "the coordinator outlived its failpoint"
grep -q "failpoint store.commit-checkpoint" "$WORK/coord.log" || fail "the commit failpoint did not fire"
# The committed checkpoints' steps and the checkpoint events logged (JobEvents parsed with the
# generated Python stubs: other events carry checkpoint paths too, in their progress).
committed() {
  PYTHONPATH=$BUILD/python /usr/bin/python3 - "$STORE_K" "$JOB" <<'PY'
import sqlite3, sys
from raptr.v1 import job_pb2
db = sqlite3.connect(sys.argv[1])
steps = [s for (s,) in db.execute("SELECT step FROM checkpoints WHERE job_id = ? ORDER BY step", (sys.argv[2],))]
events = sum(1 for (e,) in db.execute("SELECT event FROM job_events WHERE job_id = ?", (sys.argv[2],))
             if job_pb2.JobEvent.FromString(e).HasField("checkpoint"))
print(" ".join(map(str, steps)), "events", events)
PY
}
[[ $(committed) == "25 50 events 2" ]] || fail "after a kill inside the 3rd commit the store holds: $(committed)"
# Restarted: the job resumes from step 50. Killed again once retention dropped step 25's record
# (at the commit of step 100, the fourth kept) but before its files went.
ADDR_K=$ADDR
RAPTR_FAILPOINTS=retention.records-deleted start_coordinator "$ADDR_K" --store "$STORE_K"
wait "$COORD_PID" 2>/dev/null && fail "the coordinator outlived the retention failpoint"
grep -q "failpoint retention.records-deleted" "$WORK/coord.log" || fail "the retention failpoint did not fire"
[[ -d $(ls -d "$CKPT/$JOB"/generation-1/checkpoints/step_00000025) ]] \
  || fail "step 25's files went before the kill"
[[ $(committed) == "50 75 100 events 4" ]] || fail "after the retention kill the store holds: $(committed)"
start_coordinator "$ADDR_K" --store "$STORE_K"
wait_state "$JOB" SUCCEEDED 120
python3 "$HERE/compare_checkpoints.py" "$(final_checkpoint "$REF" 200)" \
  "$(final_checkpoint "$JOB" 200)" --exact || fail "the run killed inside commits differs from the uninterrupted one"
ON_DISK=$(checkpoints_on_disk "$JOB")
IN_STORE=$(checkpoints_in_store "$STORE_K" "$JOB")
[[ $ON_DISK == "$IN_STORE" ]] || fail "store and disk disagree: disk [$ON_DISK] store [$IN_STORE]"
[[ $(wc -w <<< "$ON_DISK") == 3 ]] || fail "expected 3 checkpoints kept: $ON_DISK"
[[ $ON_DISK != *generation-1/* ]] || fail "generation 1's orphaned files were not swept: $ON_DISK"
echo "measured: kept after two coordinator kills: $ON_DISK"
echo "ok K: SIGKILL inside a checkpoint commit and inside retention: nothing committed lost, store and disk agree, bitwise identical"
fi
echo "fault tests: all passed"
