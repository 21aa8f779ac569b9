#!/usr/bin/env bash
# JobService end to end: a real raptr-coordinator on loopback driven by the real raptrctl (submit,
# get, list, invalid spec, watch, cancel, restart on the same store, unreachable).
# Usage: coordinator_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
CTL=$BUILD/cli/raptrctl
COORD=$BUILD/coordinator/raptr-coordinator
WORK=$(mktemp -d)
COORD_PID=
stop_coordinator() {
  if [[ -n "$COORD_PID" ]]; then
    kill -TERM "$COORD_PID" 2>/dev/null || true
    wait "$COORD_PID" 2>/dev/null || true
    COORD_PID=
  fi
}
trap 'stop_coordinator; rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; [[ -f "$WORK/coord.err" ]] && cat "$WORK/coord.err" >&2; exit 1; }

# Starts the coordinator on a free port of the store and sets ADDR once it serves.
start_coordinator() {
  "$COORD" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --store "$WORK/store/c.db" "$@" \
    > "$WORK/coord.out" 2> "$WORK/coord.err" &
  COORD_PID=$!
  for _ in $(seq 1 100); do
    if grep -q "listening on" "$WORK/coord.out" 2>/dev/null; then
      ADDR=$(sed -n 's/^raptr-coordinator listening on \([^ ]*\).*/\1/p' "$WORK/coord.out")
      return 0
    fi
    kill -0 "$COORD_PID" 2>/dev/null || fail "coordinator exited at start"
    sleep 0.1
  done
  fail "coordinator did not report its port"
}

# docs/METHODS.md is what `raptrctl methods --markdown` prints.
"$CTL" methods --markdown | diff -q - "$SRC/docs/METHODS.md" > /dev/null \
  || fail "docs/METHODS.md is stale: build/cli/raptrctl methods --markdown > docs/METHODS.md"

start_coordinator --reflection
export RAPTR_COORDINATOR=$ADDR

# Server reflection (--reflection; off by default, security_test.sh) lists raptr's services
# (grpcurl / grpc_cli rely on it).
"$BUILD/tests/reflection_probe" "$ADDR" > "$WORK/services.txt" || fail "reflection probe"
for service in raptr.v1.JobService raptr.v1.ControlService grpc.health.v1.Health; do
  grep -qx "$service" "$WORK/services.txt" || fail "reflection lacks $service: $(cat "$WORK/services.txt")"
done

# Submit the example: a job id comes back.
JOB=$("$CTL" submit -f "$SRC/examples/gpt-raptr.yaml") || fail "submit"
[[ "$JOB" =~ ^job-[0-9]+$ ]] || fail "submit printed '$JOB', not a job id"

"$CTL" get "$JOB" > "$WORK/get.txt" || fail "get"
grep -Eq "^state: +PENDING" "$WORK/get.txt" || fail "new job is not PENDING: $(cat "$WORK/get.txt")"
grep -Eq "^schedule: +raptr stages 6:150,8:150,10:150,12:150 fixed \{0,11\} sampling bernoulli scaling none$" \
  "$WORK/get.txt" || fail "get does not show the schedule: $(cat "$WORK/get.txt")"
"$CTL" get "$JOB" --output json > "$WORK/get.json" || fail "get --output json"
grep -q '"state": "JOB_STATE_PENDING"' "$WORK/get.json" || fail "json get: $(cat "$WORK/get.json")"
grep -q '"name": "gpt-raptr"' "$WORK/get.json" || fail "json get has no name"

"$CTL" list > "$WORK/list.txt" || fail "list"
grep -Eq "^$JOB +gpt-raptr +- +raptr +PENDING +0/" "$WORK/list.txt" || fail "list: $(cat "$WORK/list.txt")"
# A listing's specs (ListJobs' BASIC view) hold the name, steps and schedule kind only; --full
# asks for the whole specs.
"$CTL" list --output json > "$WORK/list.json" || fail "list --output json"
grep -q '"name": "gpt-raptr"' "$WORK/list.json" || fail "json list has no name"
grep -q '"raptr": {}' "$WORK/list.json" || fail "json list has no schedule kind: $(cat "$WORK/list.json")"
! grep -q '"layers"' "$WORK/list.json" || fail "json list has the model: $(cat "$WORK/list.json")"
"$CTL" list --full --output json > "$WORK/list-full.json" || fail "list --full"
grep -q '"layers"' "$WORK/list-full.json" || fail "list --full has no model"
grep -q '"train_shards"' "$WORK/list-full.json" || fail "list --full has no data"

# Validation only: nothing stored.
"$CTL" submit -f "$SRC/examples/gpt-raptr.yaml" --validate-only > /dev/null || fail "validate-only"

# An invalid spec is rejected with the field named, and nothing is stored.
sed 's/^  lr: 2e-3$/  lr: -1/' "$SRC/examples/gpt-raptr.yaml" > "$WORK/bad.yaml"
grep -q "lr: -1" "$WORK/bad.yaml" || fail "test setup: lr not replaced"
set +e
"$CTL" submit -f "$WORK/bad.yaml" > /dev/null 2> "$WORK/bad.err"
rc=$?
set -e
[[ $rc -eq 1 || $rc -eq 2 ]] || fail "invalid spec: exit $rc, want 1 or 2"
grep -q "optimizer.lr" "$WORK/bad.err" \
  || fail "invalid spec error does not name optimizer.lr: $(cat "$WORK/bad.err")"
grep -q "INVALID_ARGUMENT" "$WORK/bad.err" || fail "invalid spec error has no INVALID_ARGUMENT"
# with_shards N OUT: the example spec with N training shards, written to OUT.
with_shards() {
  python3 - "$SRC/examples/gpt-raptr.yaml" "$2" "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
shards = ", ".join("/shared/data/shard-%06d.bin" % i for i in range(int(sys.argv[3])))
text = re.sub(r"train_shards: \[[^]]*\]", "train_shards: [%s]" % shards, text, count=1)
open(sys.argv[2], "w").write(text)
PY
}
# A spec over 64 KiB encoded is refused by the coordinator (and not stored).
with_shards 3000 "$WORK/huge.yaml"
grep -q "shard-002999" "$WORK/huge.yaml" || fail "test setup: the huge spec has no shards"
set +e
"$CTL" submit -f "$WORK/huge.yaml" > /dev/null 2> "$WORK/huge.err"
rc=$?
set -e
[[ $rc -ne 0 ]] || fail "a spec over 64 KiB was accepted"
grep -q "at most 65536 are accepted" "$WORK/huge.err" || fail "huge spec: $(cat "$WORK/huge.err")"
# A request over the server's 4 MiB message limit is refused by gRPC itself, before any parsing,
# and the coordinator serves on.
with_shards 200000 "$WORK/giant.yaml"
[[ $(stat -c %s "$WORK/giant.yaml") -gt $((4 * 1024 * 1024)) ]] || fail "test setup: the giant spec is under 4 MiB"
set +e
"$CTL" submit -f "$WORK/giant.yaml" > /dev/null 2> "$WORK/giant.err"
rc=$?
set -e
[[ $rc -ne 0 ]] || fail "a request over 4 MiB was accepted"
grep -q "RESOURCE_EXHAUSTED" "$WORK/giant.err" || fail "giant request: $(cat "$WORK/giant.err")"
"$CTL" list > /dev/null || fail "the coordinator stopped serving after a giant request"
# A YAML typo fails client-side (exit 2) naming the field.
sed 's/^  lr: 2e-3$/  lrr: 2e-3/' "$SRC/examples/gpt-raptr.yaml" > "$WORK/typo.yaml"
set +e
"$CTL" submit -f "$WORK/typo.yaml" > /dev/null 2> "$WORK/typo.err"
rc=$?
set -e
[[ $rc -eq 2 ]] || fail "unknown field: exit $rc, want 2"
grep -q "optimizer.lrr" "$WORK/typo.err" || fail "unknown field not named: $(cat "$WORK/typo.err")"
[[ $("$CTL" list --output json | grep -c '"id":') -eq 1 ]] \
  || fail "list should hold exactly one job"

# Request-id idempotency: the same key returns the same job.
A=$("$CTL" submit -f "$SRC/examples/gpt-raptr.yaml" --request-id retry-1) || fail "submit with id"
B=$("$CTL" submit -f "$SRC/examples/gpt-raptr.yaml" --request-id retry-1) || fail "retried submit"
[[ "$A" == "$B" && "$A" != "$JOB" ]] || fail "request id: $A vs $B"
"$CTL" cancel "$A" > /dev/null || fail "cancel the second job"

# WatchJob on a terminal job: the snapshot, then the stream ends.
"$CTL" watch "$A" > "$WORK/watch-a.txt" || fail "watch of a cancelled job"
if ! { [[ $(wc -l < "$WORK/watch-a.txt") -eq 1 ]] && grep -q "$A: CANCELLED" "$WORK/watch-a.txt"; }
then
  fail "watch of a cancelled job: $(cat "$WORK/watch-a.txt")"
fi

# Cancel while a watcher streams; it sees PENDING -> CANCELLED and ends on its own.
"$CTL" watch "$JOB" > "$WORK/watch.txt" 2>&1 &
WATCH_PID=$!
for _ in $(seq 1 50); do grep -q "$JOB: PENDING" "$WORK/watch.txt" && break; sleep 0.1; done
grep -q "$JOB: PENDING" "$WORK/watch.txt" || fail "watch printed no snapshot"
# Cancel; a second cancel returns the CANCELLED job again (job.proto: idempotent).
"$CTL" cancel "$JOB" --reason "test" > "$WORK/cancel.txt" || fail "cancel"
for _ in $(seq 1 50); do kill -0 "$WATCH_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$WATCH_PID" 2>/dev/null; then kill "$WATCH_PID"; fail "watch did not end"; fi
wait "$WATCH_PID" || fail "watch exited non-zero: $(cat "$WORK/watch.txt")"
grep -q "state PENDING -> CANCELLED: test" "$WORK/watch.txt" \
  || fail "watch: $(cat "$WORK/watch.txt")"
grep -Eq "^state: +CANCELLED" "$WORK/cancel.txt" || fail "cancel: $(cat "$WORK/cancel.txt")"
"$CTL" cancel "$JOB" > "$WORK/cancel2.txt" || fail "second cancel should be idempotent"
grep -Eq "^state: +CANCELLED" "$WORK/cancel2.txt" \
  || fail "second cancel: $(cat "$WORK/cancel2.txt")"
# The same with --output json: the cancel arrives as a logged state_changed event, the last line.
C=$("$CTL" submit -f "$SRC/examples/gpt-raptr.yaml") || fail "submit for json watch"
"$CTL" watch "$C" --output json > "$WORK/watch-c.json" 2> "$WORK/watch-c.err" &
WATCH_PID=$!
for _ in $(seq 1 50); do grep -q '"snapshot"' "$WORK/watch-c.json" && break; sleep 0.1; done
grep -q '"snapshot"' "$WORK/watch-c.json" || fail "json watch printed no snapshot"
"$CTL" cancel "$C" --reason "json test" > /dev/null || fail "cancel for json watch"
for _ in $(seq 1 50); do kill -0 "$WATCH_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$WATCH_PID" 2>/dev/null; then kill "$WATCH_PID"; fail "json watch did not end"; fi
wait "$WATCH_PID" || fail "json watch exited non-zero: $(cat "$WORK/watch-c.err")"
tail -n 1 "$WORK/watch-c.json" | grep '"state_changed"' \
  | grep -Eq '"new_state": ?"JOB_STATE_CANCELLED"' \
  || fail "json watch does not end on the CANCELLED state change: $(cat "$WORK/watch-c.json")"
[[ $(wc -l < "$WORK/watch-c.json") -eq 2 ]] \
  || fail "json watch: want the snapshot and one state change: $(cat "$WORK/watch-c.json")"

# Errors from the server: exit 1 with the gRPC code.
set +e
"$CTL" cancel job-999999 > /dev/null 2> "$WORK/missing.err"
rc=$?
set -e
[[ $rc -eq 1 ]] || fail "cancel of an unknown job: exit $rc, want 1"
grep -q "NOT_FOUND" "$WORK/missing.err" || fail "unknown job: $(cat "$WORK/missing.err")"
set +e
"$CTL" watch job-999999 > /dev/null 2> "$WORK/missing-watch.err"
rc=$?
set -e
[[ $rc -eq 1 ]] || fail "watch of an unknown job: exit $rc, want 1"
grep -q "NOT_FOUND" "$WORK/missing-watch.err" || fail "watch of an unknown job: no NOT_FOUND"
set +e
"$CTL" list --page-size 5 > /dev/null 2>&1
rc=$?
set -e
[[ $rc -eq 2 ]] || fail "unknown flag: exit $rc, want 2"

# A restart on the same store loses nothing.
stop_coordinator
start_coordinator
export RAPTR_COORDINATOR=$ADDR
"$CTL" get "$JOB" > "$WORK/get2.txt" || fail "get after restart"
grep -Eq "^state: +CANCELLED" "$WORK/get2.txt" || fail "after restart: $(cat "$WORK/get2.txt")"
grep -Eq "^message: +test" "$WORK/get2.txt" || fail "cancel reason lost: $(cat "$WORK/get2.txt")"
[[ $("$CTL" list --state cancelled --output json | grep -c '"id":') -eq 3 ]] \
  || fail "list --state cancelled after restart"

# A PLD job that asks for a mean share of blocks shows the gamma solved for its length.
sed 's/^    gamma: 0.01$/    mean_keep: 0.75/' "$SRC/examples/gpt-pld.yaml" > "$WORK/pld-mean.yaml"
grep -q "mean_keep: 0.75" "$WORK/pld-mean.yaml" || fail "the PLD example has no 'gamma: 0.01' line to replace"
PLD=$("$CTL" submit -f "$WORK/pld-mean.yaml") || fail "submit PLD with mean_keep"
"$CTL" get "$PLD" > "$WORK/get-pld.txt" || fail "get PLD"
grep -Eq "^schedule: +pld theta_bar 0.5 gamma 0\.[0-9]+ indexing paper \(solved: mean keep 0.75 over 600 steps\)$" \
  "$WORK/get-pld.txt" || fail "get does not show PLD's solved gamma: $(cat "$WORK/get-pld.txt")"
"$CTL" cancel "$PLD" > /dev/null || fail "cancel the PLD job"

# Unreachable coordinator: exit 3 (the port is free once the coordinator is gone).
stop_coordinator
set +e
"$CTL" list --coordinator "$ADDR" --timeout 5 > /dev/null 2> "$WORK/unreachable.err"
rc=$?
set -e
[[ $rc -eq 3 ]] || fail "unreachable coordinator: exit $rc, want 3 ($(cat "$WORK/unreachable.err"))"
echo "coordinator_test: OK"
