#!/usr/bin/env bash
# `raptrctl export --format hf` (then `raptrctl logs` and `delete` of the exported job): a trained checkpoint
# becomes config.json + model.safetensors that
# a GPT-2 built from config.json alone (the PyTorch reference, tests/parity/check_export.py) runs
# to raptr's own logits; a job's latest checkpoint exports through the coordinator (with its
# tokenizer); existing files are never overwritten; BERT is refused with the reason.
# Usage: export_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
WORK=$(mktemp -d)
trap 'stop_all; rm -rf "$WORK"' EXIT
source "$SRC/tests/integration/service_lib.sh"
source "$SRC/tests/integration/small_corpus.sh"
source "$SRC/tests/integration/export_fixture.sh"
PY=/usr/bin/python3
small_corpus "$CTL" "$WORK" || fail "data prepare"
MODEL=(--layers 3 --d-model 32 --heads 2)

# A checkpoint from local training, exported by path, with raptr's logits for the exported
# weights on one batch (tests/integration/export_fixture.sh), against the reference's from
# config.json.
export_fixture "$WORKER" "$CTL" "$SRC" "$WORK" || fail "export fixture"
LOCAL_CKPT=$WORK/run/checkpoints/$(cat "$WORK/run/checkpoints/LATEST")
[[ -f "$WORK/hf/config.json" && -f "$WORK/hf/model.safetensors" ]] || fail "export wrote $(ls "$WORK/hf")"
"$PY" "$SRC/tests/parity/check_export.py" "$WORK/hf" "$WORK/raptr.safetensors" \
  "$WORK/batch.safetensors" || fail "the exported model does not compute raptr's logits"

# Nothing is overwritten.
if "$CTL" export --checkpoint "$LOCAL_CKPT" -o "$WORK/hf" > /dev/null 2> "$WORK/again.err"; then
  fail "a second export over the first succeeded"
fi
grep -q "exists: not overwritten" "$WORK/again.err" || fail "overwrite refusal: $(cat "$WORK/again.err")"

# BERT is refused, with the reason.
OMP_NUM_THREADS=1 "$WORKER" train --data "$WORK/data" --model bert "${MODEL[@]}" --seq 32 --batch 4 \
  --steps 4 --schedule full --eval-every 0 --log-every 0 --run-dir "$WORK/bert" > "$WORK/bert.log" 2>&1 \
  || fail "train bert: $(tail -3 "$WORK/bert.log")"
if "$CTL" export --checkpoint "$WORK/bert/checkpoints/$(cat "$WORK/bert/checkpoints/LATEST")" \
     -o "$WORK/hf-bert" > /dev/null 2> "$WORK/bert.err"; then
  fail "a BERT checkpoint exported as hf"
fi
grep -q "pre-LN" "$WORK/bert.err" || fail "BERT refusal does not say why: $(cat "$WORK/bert.err")"

# A job's latest checkpoint, through the coordinator.
start_coordinator
start_worker w1
JOB=$("$CTL" submit -f "$(spec exp 30 1 1)") || fail "submit"
PENDING=$("$CTL" submit -f "$(spec exp-wait 30 2 2)") || fail "submit the waiting job"
wait_state "$JOB" SUCCEEDED 120
if "$CTL" export "$PENDING" -o "$WORK/none" > /dev/null 2> "$WORK/none.err"; then
  fail "a job with no checkpoint exported"
fi
grep -q "no committed checkpoint" "$WORK/none.err" || fail "no-checkpoint message: $(cat "$WORK/none.err")"
"$CTL" cancel "$PENDING" > /dev/null
"$CTL" export "$JOB" -o "$WORK/hf-job" > "$WORK/job-export.out" 2> "$WORK/job-export.err" \
  || fail "export JOB: $(cat "$WORK/job-export.err")"
path=$("$CTL" get "$JOB" --output json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["progress"]["checkpoint_path"])')
cmp -s "$path/model.safetensors" "$WORK/hf-job/model.safetensors" \
  || fail "export JOB did not write the job's latest checkpoint ($path)"
grep -q "step 30" "$WORK/job-export.err" || fail "export JOB did not say which step: $(cat "$WORK/job-export.err")"
cmp -s "$WORK/data/tokenizer.model" "$WORK/hf-job/tokenizer.model" || fail "the tokenizer was not copied"

# raptrctl logs: the finished job's history from its submission, ending with its end; a job that
# has not started prints what there is and returns (no -f).
timeout 30 "$CTL" logs "$JOB" --step-every 10 > "$WORK/logs.txt" 2>&1 || fail "logs: $(cat "$WORK/logs.txt")"
for want in "$JOB: SUCCEEDED" "state PENDING -> RUNNING" " step 11 " " step 30 " "eval after step 25" \
            "checkpoint after step 25"; do
  grep -q -- "$want" "$WORK/logs.txt" || fail "logs lack '$want': $(cat "$WORK/logs.txt")"
done
tail -n 1 "$WORK/logs.txt" | grep -q "state RUNNING -> SUCCEEDED" \
  || fail "logs do not end with the job's end: $(tail -n 3 "$WORK/logs.txt")"
# Every 10th step (0-based 0, 10, 20: shown 1, 11, 21) and the last.
[[ $(grep -c " step [0-9]* stage" "$WORK/logs.txt") -eq 4 ]] \
  || fail "--step-every 10 over 30 steps printed $(grep -c " step [0-9]* stage" "$WORK/logs.txt") steps"
LATER=$("$CTL" submit -f "$(spec exp-later 30 2 2)") || fail "submit a job that waits"
timeout 10 "$CTL" logs "$LATER" > "$WORK/logs-pending.txt" 2>&1 || fail "logs of a pending job did not return"
grep -q "$LATER: PENDING" "$WORK/logs-pending.txt" || fail "pending logs: $(cat "$WORK/logs-pending.txt")"
"$CTL" cancel "$LATER" > /dev/null

# raptrctl delete: an ended job goes with its history and checkpoint directory; one that has not
# ended is refused.
WAITING=$("$CTL" submit -f "$(spec exp-delete 30 2 2)") || fail "submit a job to refuse deleting"
# raptrctl top --once: the connected worker and the active jobs.
"$CTL" top --once > "$WORK/top.txt" 2>&1 || fail "top: $(cat "$WORK/top.txt")"
grep -Eq "^w1 +cpu +idle " "$WORK/top.txt" || fail "top does not show w1 idle: $(cat "$WORK/top.txt")"
grep -Eq "^$WAITING +exp-delete +PENDING +0/30 " "$WORK/top.txt" || fail "top does not show the pending job: $(cat "$WORK/top.txt")"
grep -q "^$LATER " "$WORK/top.txt" && fail "top lists an ended job: $(cat "$WORK/top.txt")"
grep -q "workers 1 (0 busy)" "$WORK/top.txt" || fail "top's header: $(head -1 "$WORK/top.txt")"

if "$CTL" delete "$WAITING" > /dev/null 2> "$WORK/delete-pending.err"; then fail "a PENDING job was deleted"; fi
grep -q "only an ended job can be deleted" "$WORK/delete-pending.err" \
  || fail "delete of a pending job: $(cat "$WORK/delete-pending.err")"
JOB_DIR=$(dirname "$(dirname "$(dirname "$path")")")
[[ -d "$JOB_DIR" && $(basename "$JOB_DIR") == "$JOB" ]] || fail "no checkpoint directory $JOB_DIR for $JOB"
"$CTL" delete "$JOB" > "$WORK/delete.out" || fail "delete: $(cat "$WORK/delete.out")"
grep -q "deleted $JOB and its checkpoints" "$WORK/delete.out" || fail "delete said: $(cat "$WORK/delete.out")"
[[ ! -e "$JOB_DIR" ]] || fail "delete left $JOB_DIR"
if "$CTL" get "$JOB" > /dev/null 2> "$WORK/deleted-get.err"; then fail "a deleted job is still there"; fi
grep -q "NOT_FOUND" "$WORK/deleted-get.err" || fail "get of a deleted job: $(cat "$WORK/deleted-get.err")"
"$CTL" list > "$WORK/list-after-delete.txt"
! grep -q "^$JOB " "$WORK/list-after-delete.txt" || fail "a deleted job is still listed"
"$CTL" get "$LATER" > /dev/null || fail "delete took another job with it"
# raptrctl top --once with a busy worker: its job, rank and tokens/s, and the job's progress.
"$CTL" cancel "$WAITING" > /dev/null
BUSY=$("$CTL" submit -f "$(spec exp-busy 100000 1 1)") || fail "submit a long job"
shown=""
for _ in $(seq 1 100); do
  "$CTL" top --once > "$WORK/top-busy.txt" 2>&1 || fail "top: $(cat "$WORK/top-busy.txt")"
  if grep -Eq "^w1 +cpu +busy +$BUSY +0 +[1-9][0-9]* " "$WORK/top-busy.txt" \
     && grep -Eq "^$BUSY +exp-busy +RUNNING +[1-9][0-9]*/100000 " "$WORK/top-busy.txt"; then
    shown=1
    break
  fi
  sleep 0.2
done
[[ -n $shown ]] || fail "top never showed w1 busy on $BUSY with a rate: $(cat "$WORK/top-busy.txt")"
grep -q "workers 1 (1 busy)  active jobs 1" "$WORK/top-busy.txt" || fail "top's header: $(head -1 "$WORK/top-busy.txt")"
"$CTL" cancel "$BUSY" > /dev/null
echo "PASS: export"
