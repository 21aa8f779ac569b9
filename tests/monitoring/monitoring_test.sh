#!/usr/bin/env bash
# Monitoring end to end: the dashboards/ files against the real Prometheus server (Debian's
# prometheus + promtool) scraping a real raptr-coordinator and 2 raptr-worker serve processes.
#   a. promtool: check config (local and Kubernetes scrape configs), check rules, test rules
#      (alerts_test.yml); the Grafana dashboard's JSON is linted;
#   b. prometheus on loopback (free port, scrape and rule evaluation every 1 s, a temporary TSDB)
#      scrapes the coordinator's and the workers' /metrics (each started with
#      --metrics-listen 127.0.0.1:0; the addresses are read from their output); alerts.yml loads;
#   c. a short RaPTr job (4 blocks, d_model 32) runs data-parallel on both workers to SUCCEEDED;
#   d. promtool check metrics accepts every /metrics endpoint's exposition;
#   e. every PromQL expr of every dashboard panel, with its template variables substituted,
#      returns finite values over the job's time range through Prometheus's HTTP API;
#   f. on this healthy cluster every alert rule evaluates without error and none is pending or
#      firing.
# Usage: monitoring_test.sh BUILD_DIR
#   MONITORING_STEPS (1000): the job's steps; MONITORING_DUMP=DIR: keep each /metrics text there;
#   PROMETHEUS, PROMTOOL: the binaries (default: prometheus, promtool on PATH).
set -euo pipefail
BUILD=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DASH=$ROOT/dashboards
CTL=$BUILD/cli/raptrctl
COORD=$BUILD/coordinator/raptr-coordinator
WORKER=$BUILD/worker/raptr-worker
PROMETHEUS=${PROMETHEUS:-prometheus}
PROMTOOL=${PROMTOOL:-promtool}
WORK=$(mktemp -d)
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for f in "$WORK"/*.log; do [[ -f "$f" ]] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
  exit 1
}
for tool in "$PROMETHEUS" "$PROMTOOL" curl python3; do
  command -v "$tool" > /dev/null || fail "$tool is not installed (apt-get install prometheus curl)"
done

# --- a. static checks ---------------------------------------------------------------------------
"$PROMTOOL" check rules "$DASH/prometheus/alerts.yml" || fail "promtool check rules"
"$PROMTOOL" test rules "$DASH/prometheus/alerts_test.yml" || fail "promtool test rules"
"$PROMTOOL" check config "$DASH/prometheus/prometheus.yml" || fail "promtool check config prometheus.yml"
if "$PROMTOOL" check config "$DASH/prometheus/prometheus-k8s.yml" > "$WORK/k8s.out" 2>&1; then
  cat "$WORK/k8s.out"
elif grep -q "field kubernetes_sd_configs not found" "$WORK/k8s.out"; then
  # Debian's Prometheus is built without Kubernetes service discovery: check everything else
  # (relabel rules, rule files) with each kubernetes_sd_configs block replaced by static_configs.
  mkdir -p "$WORK/k8s"
  cp "$DASH/prometheus/alerts.yml" "$WORK/k8s/"
  sed 's/^\(\s*\)kubernetes_sd_configs:$/\1static_configs:/; s/^\(\s*\)- role: pod$/\1- targets: []/' \
    "$DASH/prometheus/prometheus-k8s.yml" > "$WORK/k8s/prometheus-k8s.yml"
  "$PROMTOOL" check config "$WORK/k8s/prometheus-k8s.yml" > "$WORK/k8s.out" 2>&1 && ok=1 || ok=0
  cat "$WORK/k8s.out"
  [[ $ok == 1 ]] || fail "promtool check config prometheus-k8s.yml (static stand-in)"
  echo "  (this promtool has no Kubernetes SD: prometheus-k8s.yml checked with static_configs" \
       "in place of kubernetes_sd_configs)"
else
  cat "$WORK/k8s.out"
  fail "promtool check config prometheus-k8s.yml"
fi
python3 "$HERE/query_panels.py" --dashboard "$DASH/grafana/raptr.json" --lint || fail "dashboard lint"
echo "ok a: promtool check config/rules, test rules; dashboard JSON"

# --- b. coordinator, workers, prometheus ---------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_line FILE SED_EXPR PID WHAT: prints the first match of SED_EXPR in FILE (10 s).
wait_line() {
  local v
  for _ in $(seq 1 100); do
    v=$(sed -n "$2" "$1" 2>/dev/null | head -n 1)
    [[ -n "$v" ]] && { echo "$v"; return 0; }
    kill -0 "$3" 2>/dev/null || fail "$4 exited at start"
    sleep 0.1
  done
  fail "$4 did not print its address"
}

"$COORD" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --store "$WORK/c.db" \
  --checkpoint-dir "$WORK/ckpt" --heartbeat 0.5 --lease 3 > "$WORK/coord.out" 2> "$WORK/coord.log" &
PIDS+=($!)
COORD_PID=$!
ADDR=$(wait_line "$WORK/coord.out" 's/^raptr-coordinator listening on //p' "$COORD_PID" coordinator)
COORD_METRICS=$(wait_line "$WORK/coord.out" 's/^raptr-coordinator metrics on //p' "$COORD_PID" coordinator)
export RAPTR_COORDINATOR=$ADDR
WORKER_METRICS=()
for id in w0 w1; do
  OMP_NUM_THREADS=1 "$WORKER" serve --coordinator "$ADDR" --id "$id" --collective-timeout 30 \
    --metrics-listen 127.0.0.1:0 2> "$WORK/$id.log" &
  PIDS+=($!)
  # "raptr-worker metrics on HOST:PORT", possibly behind the log's time and [id] prefix.
  WORKER_METRICS+=("$(wait_line "$WORK/$id.log" 's/^.*raptr-worker[^ ]* metrics on \([^ ]*\)$/\1/p' "$!" "worker $id")")
done

PROM_PORT=$(free_port)
PROM=http://127.0.0.1:$PROM_PORT
cat > "$WORK/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $DASH/prometheus/alerts.yml
scrape_configs:
  - job_name: raptr-coordinator
    static_configs:
      - targets: ["$COORD_METRICS"]
  - job_name: raptr-worker
    static_configs:
      - targets: ["${WORKER_METRICS[0]}", "${WORKER_METRICS[1]}"]
YAML
"$PROMTOOL" check config "$WORK/prometheus.yml" > /dev/null || fail "generated prometheus.yml"
"$PROMETHEUS" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn 2> "$WORK/prometheus.log" &
PIDS+=($!)
PROM_PID=$!
for _ in $(seq 1 150); do
  curl -sf "$PROM/-/ready" > /dev/null && break
  kill -0 "$PROM_PID" 2>/dev/null || fail "prometheus exited at start"
  sleep 0.1
done
curl -sf "$PROM/-/ready" > /dev/null || fail "prometheus not ready"

# query EXPR: the instant result's JSON; count EXPR: how many series it returns.
query() { curl -sf "$PROM/api/v1/query" --data-urlencode "query=$1"; }
count() { query "$1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]["result"]))'; }
for _ in $(seq 1 100); do
  [[ "$(count 'up == 1')" == 3 ]] && break
  sleep 0.1
done
[[ "$(count 'up == 1')" == 3 ]] || { query up; echo; fail "prometheus does not scrape all 3 targets"; }
[[ "$(curl -sf "$PROM/api/v1/rules" | python3 -c 'import json,sys; print(sum(len(g["rules"]) for g in json.load(sys.stdin)["data"]["groups"]))')" -ge 6 ]] \
  || fail "prometheus did not load alerts.yml"
echo "ok b: prometheus :$PROM_PORT scrapes coordinator $COORD_METRICS, workers ${WORKER_METRICS[*]}"

# --- c. a short job ------------------------------------------------------------------------------
# shellcheck source=tests/integration/small_corpus.sh
source "$(dirname "$0")/../integration/small_corpus.sh"
small_corpus "$CTL" "$WORK" || fail "data prepare"
JOB_NAME=monitoring
STEPS=${MONITORING_STEPS:-1000}
cat > "$WORK/job.yaml" <<YAML
name: $JOB_NAME
model: {kind: gpt, layers: 4, d_model: 32, heads: 2, vocab_size: 300, max_seq: 32}
data: {train_shards: [$WORK/data/train.bin], val_shards: [$WORK/data/val.bin]}
training: {batch: 8, seq: 32, steps: $STEPS, seed: 7, eval_every: 50, eval_batches: 2,
           checkpoint_every: 100}
optimizer: {lr: 3e-3, warmup_steps: 5}
schedule: {raptr: {}}
resources: {min_workers: 2, max_workers: 2}
YAML
START=$(date +%s.%N)
JOB=$("$CTL" submit -f "$WORK/job.yaml") || fail "submit"
state_of() { "$CTL" get "$1" --output json | sed -n 's/.*"state": "JOB_STATE_\([A-Z]*\)".*/\1/p'; }
for _ in $(seq 1 1200); do
  s=$(state_of "$JOB")
  [[ "$s" == SUCCEEDED || "$s" == FAILED || "$s" == CANCELLED ]] && break
  sleep 0.1
done
[[ "$(state_of "$JOB")" == SUCCEEDED ]] || fail "$JOB is $(state_of "$JOB"), not SUCCEEDED"
# Until Prometheus has scraped the end state (and two more scrapes for the rates' last points).
for _ in $(seq 1 100); do
  [[ "$(count "raptr_job_state{job_name=\"$JOB_NAME\",state=\"succeeded\"} == 1")" == 1 ]] && break
  sleep 0.1
done
[[ "$(count "raptr_job_state{job_name=\"$JOB_NAME\",state=\"succeeded\"} == 1")" == 1 ]] \
  || fail "prometheus did not see $JOB succeed"
sleep 2
END=$(date +%s.%N)
echo "ok c: $JOB ($STEPS steps, 2 workers) SUCCEEDED in $(python3 -c "print(round($END - $START - 2, 1))") s"

# --- d. promtool check metrics on every endpoint -------------------------------------------------
for target in "$COORD_METRICS" "${WORKER_METRICS[@]}"; do
  curl -sf "http://$target/metrics" > "$WORK/metrics.txt" || fail "GET http://$target/metrics"
  # MONITORING_DUMP=DIR keeps each exposition (DIR/HOST_PORT.txt) for a look afterwards.
  [[ -n "${MONITORING_DUMP:-}" ]] && mkdir -p "$MONITORING_DUMP" \
    && cp "$WORK/metrics.txt" "$MONITORING_DUMP/${target//[:.]/_}.txt"
  "$PROMTOOL" check metrics < "$WORK/metrics.txt" || {
    echo "--- http://$target/metrics" >&2; head -n 40 "$WORK/metrics.txt" >&2
    fail "promtool check metrics http://$target/metrics"
  }
done
echo "ok d: promtool check metrics accepts the coordinator's and both workers' /metrics"

# --- e. every dashboard query ---------------------------------------------------------------------
python3 "$HERE/query_panels.py" --dashboard "$DASH/grafana/raptr.json" --prometheus "$PROM" \
  --start "$START" --end "$END" --var "job_name=$JOB_NAME" --var 'worker=.*' --rate-interval 5s \
  || fail "dashboard queries (above)"
echo "ok e: every dashboard panel query returns data"

# --- f. the alert rules on real data: all evaluate without error, none pending or firing ----------
curl -sf "$PROM/api/v1/rules" | python3 -c '
import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
bad = [(r["name"], r.get("health"), r.get("lastError", "")) for r in rules
       if r.get("health") != "ok" or r.get("state", "inactive") != "inactive"]
for name, health, err in bad:
    print("  rule %s: health %s %s" % (name, health, err))
sys.exit(1 if bad or len(rules) < 6 else 0)' \
  || fail "alert rules on a healthy cluster: an error, or an alert pending/firing (above)"
echo "ok f: $(count 'ALERTS') alerts on a healthy cluster; every rule evaluates"
echo "monitoring end to end: all passed"
