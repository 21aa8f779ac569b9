#!/usr/bin/env bash
# Security end to end, with real processes on loopback (issue 13, docs/SECURITY.md):
# - a CA, a server certificate and worker/client certificates made with openssl; the whole job
#   path (submit, 2 workers over mutual TLS, the rendezvous, Gloo, watch to SUCCEEDED) with one
#   worker authenticated by its certificate and one by a join token;
# - refused: a plaintext client, no token, a wrong token, a reader submitting, a submitter
#   cancelling another owner's job (an admin may), a worker credential on JobService, a client
#   token on ControlService, a worker certificate of another CA, an expired one, a certificate
#   acting as another worker id, a data path outside --data-root, /metrics without its token;
# - jobs record their owner (raptrctl list shows it); no token appears in anything the cluster
#   wrote (logs, the store, metrics, raptrctl's output);
# - on a second, plaintext loopback coordinator: reflection is off by default, and a client over
#   its request rate is refused with RESOURCE_EXHAUSTED.
# Usage: security_test.sh BUILD_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d)
CKPT=$WORK/ckpt
source "$HERE/service_lib.sh"
source "$HERE/small_corpus.sh"
trap 'stop_all; rm -rf "$WORK"' EXIT
command -v openssl > /dev/null || fail "openssl is not installed (scripts/install-deps.sh)"

# Data under the data root, as a job must have it.
small_corpus "$CTL" "$WORK" || fail "corpus"
[[ -f $WORK/data/train.bin ]] || fail "the corpus has no train.bin"

# Certificates: ours, and another CA's.
CERTS=$WORK/certs
MK=$SRC/scripts/make-certs.sh
"$MK" ca "$CERTS"
"$MK" server "$CERTS" coordinator localhost 127.0.0.1
"$MK" client "$CERTS" w1 spiffe://raptr/worker/w1
"$MK" expired "$CERTS" old spiffe://raptr/worker/old
"$MK" ca "$WORK/other"
"$MK" client "$WORK/other" w3 spiffe://raptr/worker/w3
"$MK" client "$CERTS" ops spiffe://raptr/admin/ops

# Tokens: the file holds hashes only; the secrets are in files of their own.
TOK=$WORK/tokens
mkdir -p "$TOK"
for who in alice:submitter bob:submitter viewer:reader root:admin w2:worker; do
  "$CTL" token new --name "${who%%:*}" --role "${who##*:}" --out "$TOK/${who%%:*}" >> "$TOK/auth" \
    || fail "token new $who"
done
grep -q "^alice submitter sha256:[0-9a-f]\{64\}$" "$TOK/auth" || fail "token file line: $(cat "$TOK/auth")"
[[ $(stat -c %a "$TOK/alice") == 600 ]] || fail "the token file is not mode 0600"
"$CTL" token new --name alice --role submitter --out "$TOK/alice" > /dev/null 2>&1 \
  && fail "token new overwrote an existing file"
printf 'metrics-secret-%s\n' "$RANDOM$RANDOM" > "$TOK/metrics"

start_coordinator 127.0.0.1:0 --tls-cert "$CERTS/coordinator.crt" --tls-key "$CERTS/coordinator.key" \
  --tls-client-ca "$CERTS/ca.crt" --auth-tokens "$TOK/auth" --data-root "$WORK/data" \
  --metrics-token-file "$TOK/metrics"
grep -q "serving gRPC with TLS, authenticated callers only" "$WORK/coord.log" \
  || fail "the coordinator does not say it serves TLS with authentication"
export RAPTR_TLS_CA=$CERTS/ca.crt
as() { local who=$1; shift; RAPTR_TOKEN_FILE=$TOK/$who "$CTL" "$@"; }

# expect_refused CODE WHAT COMMAND...: the command fails and its stderr names CODE.
expect_refused() {
  local code=$1 what=$2
  shift 2
  if "$@" > "$WORK/out.txt" 2> "$WORK/err.txt"; then fail "$what was accepted: $(cat "$WORK/out.txt")"; fi
  grep -q "$code" "$WORK/err.txt" || fail "$what: expected $code, got: $(cat "$WORK/err.txt")"
  cat "$WORK/err.txt" >> "$WORK/client-errors.txt"
}

# Client refusals.
expect_refused "unreachable" "a plaintext client" env -u RAPTR_TLS_CA "$CTL" list
grep -q "does it serve TLS" "$WORK/err.txt" || fail "no TLS hint: $(cat "$WORK/err.txt")"
expect_refused UNAUTHENTICATED "no credentials" "$CTL" list
printf 'raptr_not-a-real-token\n' > "$WORK/wrong"
expect_refused UNAUTHENTICATED "a wrong token" env RAPTR_TOKEN_FILE="$WORK/wrong" "$CTL" list
expect_refused PERMISSION_DENIED "a reader submitting" as viewer submit -f "$(spec sec 60 2 2)"
expect_refused PERMISSION_DENIED "a worker token on JobService" as w2 list
expect_refused "data.train_shards\[0\]" "a shard outside the data root" \
  as alice submit -f <(sed "s#train_shards: \[[^]]*\]#train_shards: [/etc/passwd]#" "$(spec esc 10 1 1)")
grep -q "INVALID_ARGUMENT" "$WORK/err.txt" || fail "outside the data root: not INVALID_ARGUMENT"
ln -s /etc "$WORK/data/etc"
expect_refused "outside the data roots" "a symlink out of the data root" \
  as alice submit -f <(sed "s#train_shards: \[[^]]*\]#train_shards: [$WORK/data/etc/passwd]#" "$(spec esc 10 1 1)")
as viewer list --output json > "$WORK/list.json" || fail "list after the refused submits"
! grep -q '"id"' "$WORK/list.json" || fail "a refused submit stored a job: $(cat "$WORK/list.json")"

# Worker refusals: a client token, another CA, an expired certificate, someone else's id, no TLS.
# refused_worker ID REASON_REGEX LOG [flags...]: the worker must exit non-zero within 20 s (a
# worker let in would stay), and LOG (its own, or the coordinator's) must say why.
refused_worker() {
  local id=$1 reason=$2 log=$3
  shift 3
  start_worker "$id" --connect-timeout 3 "$@"
  local pid=$LAST_WORKER
  for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fail "worker $id was let in (still running)"; fi
  if wait "$pid"; then fail "worker $id exited 0"; fi
  grep -q "$reason" "$log" || fail "worker $id: no '$reason' in $log: $(tail -3 "$log")"
  ! grep -q "connected to" "$WORK/$id.log" || fail "worker $id connected"
}
refused_worker wc "is a client credential" "$WORK/wc.log" --tls-ca "$CERTS/ca.crt" --join-token-file "$TOK/alice"
refused_worker w3 "certificate verify failed" "$WORK/coord.log" --tls-ca "$CERTS/ca.crt" \
  --tls-cert "$WORK/other/w3.crt" --tls-key "$WORK/other/w3.key"
grep -c "certificate verify failed" "$WORK/coord.log" > "$WORK/verify-count"
refused_worker old "certificate verify failed" "$WORK/coord.log" --tls-ca "$CERTS/ca.crt" \
  --tls-cert "$CERTS/old.crt" --tls-key "$CERTS/old.key"
(( $(grep -c "certificate verify failed" "$WORK/coord.log") > $(cat "$WORK/verify-count") )) \
  || fail "the expired certificate was not refused at the handshake"
VERIFY=$(openssl verify -CAfile "$CERTS/ca.crt" "$CERTS/old.crt" 2>&1 || true)
[[ $VERIFY == *"certificate has expired"* ]] || fail "the test's expired certificate is not expired: $VERIFY"
refused_worker w9 "may not act as worker \"w9\"" "$WORK/w9.log" --tls-ca "$CERTS/ca.crt" \
  --tls-cert "$CERTS/w1.crt" --tls-key "$CERTS/w1.key"
RAPTR_TLS_CA= refused_worker wp "wrong version number" "$WORK/coord.log"

# The whole job path over mutual TLS: w1 by certificate, w2 by join token.
start_worker w1 --tls-ca "$CERTS/ca.crt" --tls-cert "$CERTS/w1.crt" --tls-key "$CERTS/w1.key" \
  --data-root "$WORK/data"
start_worker w2 --tls-ca "$CERTS/ca.crt" --join-token-file "$TOK/w2" --data-root "$WORK/data"
JOB=$(as alice submit -f "$(spec sec 60 2 2)") || fail "alice's submit"
as viewer watch "$JOB" > "$WORK/watch.txt" 2>&1 || fail "watch: $(tail -5 "$WORK/watch.txt")"
STATE=$(as viewer get "$JOB" --output json | tr -d '\n ' | sed -n 's/.*"state":"JOB_STATE_\([A-Z]*\)".*/\1/p')
[[ $STATE == SUCCEEDED ]] || fail "the job ended $STATE"
grep -q "rank 1 of 2" "$WORK/w2.log" "$WORK/w1.log" || fail "the job did not run on 2 ranks"
as viewer list > "$WORK/list.txt"
grep -q "OWNER" "$WORK/list.txt" && grep -q "$JOB .* alice " "$WORK/list.txt" \
  || fail "list does not show alice as the owner: $(cat "$WORK/list.txt")"

# A rank 0 that reports its checkpoint outside the requested directory (failpoint: as a
# compromised worker would) fails its group before anything is committed; the job recovers
# (the failpoint fires once). Its id, w1/evil, is one w1's certificate authorizes.
kill -TERM "${WORKER_PIDS[@]}" 2>/dev/null || true
wait "${WORKER_PIDS[@]}" 2>/dev/null || true
WORKER_PIDS=()
mkdir -p "$WORK/w1"  # the log of worker w1/evil
RAPTR_FAILPOINTS=job.checkpoint-path-outside start_worker w1/evil --tls-ca "$CERTS/ca.crt" \
  --tls-cert "$CERTS/w1.crt" --tls-key "$CERTS/w1.key" --data-root "$WORK/data"
JOBC=$(as alice submit -f "$(spec ckpt 60 1 1)") || fail "checkpoint job submit"
timeout 120 "$CTL" watch "$JOBC" --token-file "$TOK/viewer" > /dev/null 2>&1 || true
as viewer get "$JOBC" | grep -q "state: *SUCCEEDED" || fail "the checkpoint job: $(as viewer get "$JOBC")"
grep -q "rank 0 reported checkpoint path \"/etc\", outside the requested" "$WORK/coord.log" \
  || fail "the outside checkpoint path was not refused: $(grep "$JOBC" "$WORK/coord.log" | tail -5)"
/usr/bin/python3 - "$WORK/store/c.db" "$CKPT" <<'PY' || fail "a checkpoint outside the checkpoint root was committed"
import sqlite3, sys
paths = [row[0] for row in sqlite3.connect(sys.argv[1]).execute("SELECT path FROM checkpoints")]
assert paths, "no checkpoint was committed at all"
outside = [p for p in paths if not p.startswith(sys.argv[2] + "/")]
assert not outside, f"committed outside {sys.argv[2]}: {outside}"
PY

# Ownership: bob may not cancel alice's job; an admin (token or certificate) may.
JOB2=$(as alice submit -f "$(spec long 100000 9 9 9)") || fail "second submit"
expect_refused PERMISSION_DENIED "bob cancelling alice's job" as bob cancel "$JOB2"
grep -q "belongs to alice" "$WORK/err.txt" || fail "the refusal does not say whose job: $(cat "$WORK/err.txt")"
as alice cancel "$JOB2" > /dev/null || fail "alice cancelling her own job"
JOB3=$(as bob submit -f "$(spec long 100000 9 9 9)") || fail "bob's submit"
RAPTR_TLS_CERT=$CERTS/ops.crt RAPTR_TLS_KEY=$CERTS/ops.key "$CTL" cancel "$JOB3" > /dev/null \
  || fail "an admin certificate cancelling bob's job"
as root get "$JOB3" | grep -q "state: *CANCELLED" || fail "the admin's cancel did not take"

# /metrics needs its token; /healthz does not.
MPORT=$(sed -n 's/^raptr-coordinator metrics on [^:]*:\([0-9]*\)$/\1/p' "$WORK/coord.out")
[[ -n $MPORT ]] || fail "no metrics port"
[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$MPORT/metrics") == 401 ]] \
  || fail "/metrics without a token was served"
curl -sf -H "Authorization: Bearer $(cat "$TOK/metrics")" "http://127.0.0.1:$MPORT/metrics" \
  > "$WORK/metrics.txt" || fail "/metrics with its token"
grep -q "^raptr_" "$WORK/metrics.txt" || fail "/metrics served no raptr metrics"
curl -sf "http://127.0.0.1:$MPORT/healthz" > /dev/null || fail "/healthz needs no token"

# A worker's /metrics takes its token too.
mkdir -p "$WORK/w1"
start_worker w1/metrics --tls-ca "$CERTS/ca.crt" --tls-cert "$CERTS/w1.crt" --tls-key "$CERTS/w1.key" \
  --metrics-token-file "$TOK/metrics"
wait_log "$WORK/w1/metrics.log" "metrics on " 10
WPORT=$(sed -n 's/.*metrics on [^:]*:\([0-9]*\)$/\1/p' "$WORK/w1/metrics.log" | head -1)
[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$WPORT/metrics") == 401 ]] \
  || fail "a worker's /metrics without a token was served"
curl -sf -H "Authorization: Bearer $(cat "$TOK/metrics")" "http://127.0.0.1:$WPORT/metrics" \
  | grep -q "^raptr_" || fail "a worker's /metrics with its token"

# Certificates in the wrong service: a worker certificate on JobService, a client (admin)
# certificate on ControlService.
expect_refused PERMISSION_DENIED "a worker certificate on JobService" \
  env RAPTR_TLS_CERT="$CERTS/w1.crt" RAPTR_TLS_KEY="$CERTS/w1.key" "$CTL" list
refused_worker ops "is a client credential" "$WORK/ops.log" --tls-ca "$CERTS/ca.crt" \
  --tls-cert "$CERTS/ops.crt" --tls-key "$CERTS/ops.key"

# No secret appears in anything the cluster wrote or printed.
stop_all
WORKER_PIDS=()
COORD_PID=
for secret_file in "$TOK"/alice "$TOK"/bob "$TOK"/viewer "$TOK"/root "$TOK"/w2 "$TOK"/metrics "$WORK/wrong"; do
  secret=$(cat "$secret_file")
  if grep -rqF -- "$secret" "$WORK"/*.log "$WORK"/*.out "$WORK"/*.txt "$WORK/store" "$CKPT" 2>/dev/null; then
    fail "a token of $(basename "$secret_file") appears in: $(grep -rlF -- "$secret" "$WORK"/*.log "$WORK"/*.out "$WORK"/*.txt "$WORK/store" "$CKPT" 2>/dev/null)"
  fi
done

# Refused configurations: tokens in plaintext off loopback, on either side.
if "$COORD" --listen 0.0.0.0:0 --metrics-listen "" --store "$WORK/store2/c.db" \
    --auth-tokens "$TOK/auth" > /dev/null 2> "$WORK/plain.err"; then
  fail "the coordinator took --auth-tokens without TLS on 0.0.0.0"
fi
grep -q "would take tokens in plaintext" "$WORK/plain.err" || fail "plaintext tokens: $(cat "$WORK/plain.err")"
RC=0
env -u RAPTR_TLS_CA RAPTR_TOKEN=x "$CTL" list --coordinator 192.0.2.1:50051 > /dev/null 2> "$WORK/err.txt" || RC=$?
[[ $RC == 2 ]] && grep -q "refusing to send a token in plaintext" "$WORK/err.txt" \
  || fail "raptrctl sent a token in plaintext ($RC): $(cat "$WORK/err.txt")"

# --require-client-cert: a token alone no longer passes the handshake; a certificate does.
rm -rf "$WORK/store"
start_coordinator 127.0.0.1:0 --tls-cert "$CERTS/coordinator.crt" --tls-key "$CERTS/coordinator.key" \
  --tls-client-ca "$CERTS/ca.crt" --require-client-cert --auth-tokens "$TOK/auth"
expect_refused unreachable "a client without a certificate under --require-client-cert" as alice list
RAPTR_TLS_CERT=$CERTS/ops.crt RAPTR_TLS_KEY=$CERTS/ops.key "$CTL" list > /dev/null \
  || fail "an admin certificate under --require-client-cert"
kill -TERM "$COORD_PID"; wait "$COORD_PID" 2>/dev/null || true; COORD_PID=

# A plaintext loopback coordinator: no reflection unless asked; a client over its rate is refused.
rm -rf "$WORK/store"
start_coordinator 127.0.0.1:0 --auth-tokens "$TOK/auth" --client-rate 1
if "$BUILD/tests/reflection_probe" "$ADDR" > "$WORK/reflection.txt" 2>&1; then
  fail "reflection is on by default: $(cat "$WORK/reflection.txt")"
fi
unset RAPTR_TLS_CA
refused=0
for _ in $(seq 1 25); do
  if ! as viewer list > /dev/null 2> "$WORK/err.txt"; then
    grep -q RESOURCE_EXHAUSTED "$WORK/err.txt" || fail "over the rate: $(cat "$WORK/err.txt")"
    refused=$((refused + 1))
  fi
done
(( refused > 0 )) || fail "25 requests at once against --client-rate 1 (bursts of 10) were all served"
echo "security_test: OK (job $JOB over mTLS; $refused of 25 requests over the rate refused)"
