#!/usr/bin/env bash
# A one-machine raptr cluster: raptr-coordinator and N CPU workers (raptr-worker serve) as
# background processes, their logs and state under one directory.
#
#   scripts/local-cluster.sh start [--workers N] [--port PORT] [--metrics-port P] [--dir DIR]
#   scripts/local-cluster.sh stop  [--dir DIR]
#   scripts/local-cluster.sh status [--dir DIR]
#
# start prints the coordinator address; raptrctl finds it with --coordinator or
# RAPTR_COORDINATOR. Prometheus metrics: the coordinator on P (default 9401), worker i on P+1+i;
# --metrics-port 0 gives every process a free port (logged). Each worker gets nproc/N kernel
# threads (at least 1). The job store (DIR/coordinator.db) and checkpoints (DIR/checkpoints)
# survive a stop; a later start resumes any job that was running.
#
# The cluster is secured as a real one is (docs/SECURITY.md): a first start makes its own CA,
# the coordinator's certificate, one worker certificate per worker (spiffe://raptr/worker/local-I)
# and an admin token under DIR/pki; gRPC is mutual TLS, every call authenticated, job data
# confined to data/. start prints the exports raptrctl needs: RAPTR_COORDINATOR, RAPTR_TLS_CA and
# RAPTR_TOKEN_FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${RAPTR_BUILD:-build}
COMMAND=${1:-}
[[ -n "$COMMAND" ]] && shift
WORKERS=2
PORT=50051
METRICS_PORT=9401
DIR=runs/local
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) WORKERS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --metrics-port) METRICS_PORT=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    *) echo "local-cluster: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
PIDS=$DIR/pids

alive() { [[ -f "$PIDS" ]] && while read -r pid _; do kill -0 "$pid" 2>/dev/null && return 0; done < "$PIDS"; return 1; }

case "$COMMAND" in
  start)
    [[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || { echo "local-cluster: --workers must be >= 1" >&2; exit 2; }
    if alive; then echo "local-cluster: already running (see $PIDS); stop it first" >&2; exit 1; fi
    for bin in "$BUILD/coordinator/raptr-coordinator" "$BUILD/worker/raptr-worker" "$BUILD/cli/raptrctl"; do
      [[ -x "$bin" ]] || { echo "local-cluster: $bin not built (run scripts/build.sh)" >&2; exit 1; }
    done
    mkdir -p "$DIR/logs" data
    PKI=$DIR/pki
    if [[ ! -f "$PKI/tokens" ]]; then
      # Made whole in a scratch directory, then moved into place: an interrupted first start
      # leaves no half PKI that later starts would take as complete.
      rm -rf "$PKI.new"
      scripts/make-certs.sh ca "$PKI.new"
      scripts/make-certs.sh server "$PKI.new" coordinator localhost 127.0.0.1
      "$BUILD/cli/raptrctl" token new --name admin --role admin --out "$PKI.new/admin.token" \
        > "$PKI.new/tokens.tmp"
      mv "$PKI.new/tokens.tmp" "$PKI.new/tokens"
      rm -rf "$PKI"
      mv "$PKI.new" "$PKI"
    fi
    for i in $(seq 0 $((WORKERS - 1))); do
      [[ -f "$PKI/local-$i.crt" ]] || scripts/make-certs.sh client "$PKI" "local-$i" "spiffe://raptr/worker/local-$i"
    done
    : > "$PIDS"
    ADDR=127.0.0.1:$PORT
    setsid "$BUILD/coordinator/raptr-coordinator" --listen "$ADDR" --store "$DIR/coordinator.db" \
      --checkpoint-dir "$DIR/checkpoints" --metrics-listen "127.0.0.1:$METRICS_PORT" \
      --tls-cert "$PKI/coordinator.crt" --tls-key "$PKI/coordinator.key" --tls-client-ca "$PKI/ca.crt" \
      --auth-tokens "$PKI/tokens" --data-root data \
      > "$DIR/logs/coordinator.out" \
      2> "$DIR/logs/coordinator.log" < /dev/null &
    echo "$! coordinator" >> "$PIDS"
    for _ in $(seq 1 100); do
      grep -q "listening on" "$DIR/logs/coordinator.out" 2>/dev/null && break
      if ! kill -0 "$(head -n 1 "$PIDS" | cut -d' ' -f1)" 2>/dev/null; then
        echo "local-cluster: the coordinator exited:" >&2
        cat "$DIR/logs/coordinator.log" >&2
        exit 1
      fi
      sleep 0.1
    done
    THREADS=$(( $(nproc) / WORKERS ))
    (( THREADS >= 1 )) || THREADS=1
    for i in $(seq 0 $((WORKERS - 1))); do
      OMP_NUM_THREADS=$THREADS setsid "$BUILD/worker/raptr-worker" serve --coordinator "$ADDR" \
        --id "local-$i" --threads "$THREADS" --data-root data \
        --tls-ca "$PKI/ca.crt" --tls-cert "$PKI/local-$i.crt" --tls-key "$PKI/local-$i.key" \
        --metrics-listen "127.0.0.1:$(( METRICS_PORT == 0 ? 0 : METRICS_PORT + 1 + i ))" \
        > /dev/null 2> "$DIR/logs/worker-$i.log" < /dev/null &
      echo "$! worker-$i" >> "$PIDS"
    done
    echo "local cluster: coordinator $ADDR, $WORKERS CPU workers x $THREADS threads; logs in $DIR/logs" >&2
    echo "export RAPTR_COORDINATOR=$ADDR RAPTR_TLS_CA=$(cd "$PKI" && pwd)/ca.crt RAPTR_TOKEN_FILE=$(cd "$PKI" && pwd)/admin.token"
    ;;
  stop)
    [[ -f "$PIDS" ]] || { echo "local-cluster: nothing running in $DIR" >&2; exit 0; }
    # Workers first, so the coordinator does not record their departure as failures.
    tac "$PIDS" | while read -r pid name; do
      kill -TERM "$pid" 2>/dev/null && echo "stopping $name ($pid)" >&2 || true
    done
    for _ in $(seq 1 100); do alive || break; sleep 0.1; done
    if alive; then
      while read -r pid _; do kill -KILL "$pid" 2>/dev/null || true; done < "$PIDS"
    fi
    rm -f "$PIDS"
    ;;
  status)
    if alive; then
      while read -r pid name; do
        if kill -0 "$pid" 2>/dev/null; then echo "$name: running ($pid)"; else echo "$name: exited"; fi
      done < "$PIDS"
    else
      echo "local cluster in $DIR: not running"
      exit 1
    fi
    ;;
  *)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
