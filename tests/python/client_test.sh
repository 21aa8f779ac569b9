#!/usr/bin/env bash
# The Python client (python/raptr) against a real coordinator and worker on loopback, over mutual
# TLS with bearer tokens as deployed: client_test.py submits, watches to SUCCEEDED, reads steps,
# cancels, sends invalid specs and wrong credentials, and converts every example job file as
# raptrctl does.
# Usage: client_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
WORK=$(mktemp -d)
trap 'stop_all; rm -rf "$WORK"' EXIT
source "$SRC/tests/integration/service_lib.sh"
source "$SRC/tests/integration/small_corpus.sh"
[[ -f "$BUILD/python/raptr/v1/job_pb2_grpc.py" ]] || fail "build the raptr_python target first"

small_corpus "$CTL" "$WORK" || fail "data prepare"
CERTS=$WORK/certs
MK=$SRC/scripts/make-certs.sh
"$MK" ca "$CERTS"
"$MK" server "$CERTS" coordinator localhost 127.0.0.1
"$MK" client "$CERTS" w1 spiffe://raptr/worker/w1
TOK=$WORK/tokens
mkdir -p "$TOK"
for who in alice:submitter viewer:reader; do
  "$CTL" token new --name "${who%%:*}" --role "${who##*:}" --out "$TOK/${who%%:*}" >> "$TOK/auth" \
    2> /dev/null || fail "token new $who"
done
# The examples name data/sotu-8k/*.bin relative to the coordinator's directory: $WORK here,
# whose data/sotu-8k holds the small corpus's shards under those names.
mkdir -p "$WORK/data/sotu-8k"
cp "$WORK/data/train.bin" "$WORK/data/val.bin" "$WORK/data/sotu-8k/"
cd "$WORK"
start_coordinator 127.0.0.1:0 --tls-cert "$CERTS/coordinator.crt" --tls-key "$CERTS/coordinator.key" \
  --tls-client-ca "$CERTS/ca.crt" --auth-tokens "$TOK/auth" --data-root "$WORK/data"
start_worker w1 --tls-ca "$CERTS/ca.crt" --tls-cert "$CERTS/w1.crt" --tls-key "$CERTS/w1.key" \
  --data-root "$WORK/data"

export RAPTR_TEST_WORK=$WORK RAPTR_TEST_SRC=$SRC RAPTR_TEST_CTL=$CTL RAPTR_TEST_CA=$CERTS/ca.crt
export RAPTR_TEST_TOKENS=$TOK
# The client's own defaults must not leak in from the caller's environment.
unset RAPTR_TLS_CA RAPTR_TLS_CERT RAPTR_TLS_KEY RAPTR_TOKEN RAPTR_TOKEN_FILE
(cd "$SRC/tests/python" && PYTHONPATH=$BUILD/python /usr/bin/python3 -m unittest -v client_test) \
  2> "$WORK/unittest.log" || { cat "$WORK/unittest.log" >&2; fail "client_test.py"; }
cat "$WORK/unittest.log"
# examples/compare.py: RaPTr and full training submitted, waited for, plotted.
for kind in raptr full; do
  spec "cmp-$kind" 40 1 1 > /dev/null
  sed -i "s/^schedule: .*/schedule: {$kind: {}}/" "$WORK/cmp-$kind.yaml"
done
(cd "$WORK" && RAPTR_TLS_CA=$CERTS/ca.crt RAPTR_TOKEN_FILE=$TOK/alice PYTHONPATH=$BUILD/python \
  /usr/bin/python3 "$SRC/examples/compare.py" "$WORK/cmp-raptr.yaml" "$WORK/cmp-full.yaml" \
  --steps 30 --out "$WORK/cmp.svg") > "$WORK/compare.out" 2>&1 \
  || { cat "$WORK/compare.out" >&2; fail "examples/compare.py"; }
grep -q "cmp-raptr eval loss" "$WORK/compare.out" && grep -q "cmp-full eval loss" "$WORK/compare.out" \
  || fail "compare.py did not report both jobs: $(cat "$WORK/compare.out")"
/usr/bin/python3 -c 'import sys, xml.dom.minidom as m; m.parse(sys.argv[1])' "$WORK/cmp.svg" \
  || fail "compare.py wrote no SVG"
echo "PASS: python client"
