#!/usr/bin/env bash
# Data confinement end to end (real coordinator, `raptr-worker serve` and raptrctl on loopback):
#   1. a worker refuses to start with a --data-root that is missing or not a directory (exit 2);
#   2. the coordinator refuses at submit, naming the field, a spec whose shard lies outside its
#      --data-root (`..`, an absolute path, a symlink out), and stores nothing;
#   3. a worker with its own --data-root fails a job (that an unconfined coordinator let through)
#      whose shard lies outside, naming the field, without opening the file;
#   4. a file inside the roots that is no shard fails the job with an error that carries none of
#      the file's bytes (GetJob.message is readable by every client);
#   5. a job whose shards are inside (through a symlink within the root) trains to SUCCEEDED.
# Usage: confinement_test.sh BUILD_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
# shellcheck source=tests/integration/service_lib.sh
source "$HERE/service_lib.sh"

cleanup() {
  stop_all
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=tests/integration/small_corpus.sh
source "$HERE/small_corpus.sh"
small_corpus "$CTL" "$WORK" || fail "data prepare"
mkdir -p "$WORK/elsewhere"
ln -s "$WORK/data/train.bin" "$WORK/data/train-link.bin"
ln -s /etc/passwd "$WORK/data/passwd.bin"
for i in $(seq 1 64); do echo "root:x:0:0:secret-$i:/root:/bin/bash"; done > "$WORK/data/text.bin"

# job NAME TRAIN_SHARD: the service tests' 4-block GPT, 10 steps, with that train shard.
job() {
  sed -e "s|train_shards: \[[^]]*\]|train_shards: [$2]|" "$(spec "$1" 10 1 1)" \
    > "$WORK/$1.confined.yaml"
  echo "$WORK/$1.confined.yaml"
}

# 1. Bad roots stop the worker before it connects.
for root in "$WORK/missing" "$WORK/data/train.bin"; do
  set +e
  "$WORKER" serve --coordinator 127.0.0.1:1 --data-root "$WORK/data" --data-root "$root" \
    --metrics-listen "" 2> "$WORK/badroot.err"
  rc=$?
  set -e
  [[ $rc -eq 2 ]] || fail "worker with --data-root $root exited $rc, not 2"
  grep -q -- "--data-root $root: " "$WORK/badroot.err" || fail "bad root: $(cat "$WORK/badroot.err")"
done
echo "ok 1: a bad --data-root stops the worker at startup (exit 2)"

# 2. The confined coordinator refuses paths outside at submit.
start_coordinator 127.0.0.1:0 --data-root "$WORK/data"
for shard in "$WORK/data/../elsewhere/x.bin" /etc/passwd "$WORK/data/passwd.bin"; do
  if "$CTL" submit -f "$(job out "$shard")" 2> "$WORK/submit.err"; then
    fail "a spec with train shard $shard was accepted"
  fi
  grep -q 'INVALID_ARGUMENT: data.train_shards\[0\]: .*outside the data roots' "$WORK/submit.err" \
    || fail "submit $shard: $(cat "$WORK/submit.err")"
done
"$CTL" list > "$WORK/list.txt" || fail "list after the refused specs"
! grep -qv '^ID ' "$WORK/list.txt" || fail "a refused spec was stored: $(cat "$WORK/list.txt")"
echo "ok 2: the coordinator refuses shards outside its --data-root, naming the field"
stop_all
COORD_PID=
WORKER_PIDS=()

# 3. and 4. An unconfined coordinator; the worker confines on its own.
start_coordinator 127.0.0.1:0
start_worker wa --data-root "$WORK/data"
OUT=$("$CTL" submit -f "$(job passwd "$WORK/data/passwd.bin")") || fail "submit passwd"
wait_state "$OUT" FAILED 30
"$CTL" get "$OUT" > "$WORK/out.get"
grep -q 'data.train_shards\[0\]: ".*passwd.bin" is outside the data roots' \
  "$WORK/out.get" || fail "job $OUT: $(cat "$WORK/out.get")"
grep -q 'root:' "$WORK/out.get" && fail "the job's message carries /etc/passwd's bytes"
echo "ok 3: the worker refuses a shard outside its own --data-root, naming the field"

TEXT=$("$CTL" submit -f "$(job text "$WORK/data/text.bin")") || fail "submit text"
wait_state "$TEXT" FAILED 30
"$CTL" get "$TEXT" > "$WORK/text.get"
grep -q 'not an llm.c token shard' "$WORK/text.get" || fail "job $TEXT: $(cat "$WORK/text.get")"
if grep -Eq 'secret|root:|found' "$WORK/text.get"; then
  fail "the job's message carries the file's bytes: $(cat "$WORK/text.get")"
fi
echo "ok 4: a file that is no shard fails the job without its bytes in the message"

# 5. Inside, through a symlink within the root: trains.
IN=$("$CTL" submit -f "$(job inside "$WORK/data/train-link.bin")") || fail "submit inside"
wait_state "$IN" SUCCEEDED 120
echo "ok 5: a job whose shards resolve inside the roots trains"
echo "confinement_test: PASS"
