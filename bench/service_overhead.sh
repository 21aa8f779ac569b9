#!/usr/bin/env bash
# The coordinator's cost: the same job trained by the engine alone (`raptr-worker train --spec`)
# and through the service (raptr-coordinator + one `raptr-worker serve`, plans streamed over
# gRPC), interleaved over rounds on the same machine. Prints one JSON line per run and a summary
# of medians; the service runs' overhead is the ratio of the median wall times.
#
# Wall time per run: engine alone = the whole `raptr-worker train` process (start to exit);
# service = the job's start_time to end_time as the coordinator recorded them (assignment, data
# loading, every step, the final evaluation and the checkpoint commit). Both load the same data
# and build the same model; the service's worker process is already running.
#
# The worker also logs how long its job thread waited for the coordinator (plans not there yet)
# and spent sending reports: the direct measure of the coordinator being on the critical path.
# These machines are noisy (the same run varies by 20 % between rounds), so quote medians.
#
# Usage: bench/service_overhead.sh [ROUNDS] [STEPS]   (defaults 5, 100)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${RAPTR_BUILD_DIR:-build}
ROUNDS=${1:-5}
STEPS=${2:-100}
WORK=$(mktemp -d)
PORT=${RAPTR_BENCH_PORT:-50091}
trap 'scripts/local-cluster.sh stop --dir "$WORK/cluster" 2> /dev/null; rm -rf "$WORK"' EXIT
[[ -f data/sotu-8k/meta.json ]] || { echo "service_overhead: needs data/sotu-8k (scripts/quickstart.sh)" >&2; exit 1; }

# The quickstart's RaPTr job, shortened; one worker; no evaluations or checkpoints but the final.
sed -e "s/^  steps: 600$/  steps: $STEPS/" -e 's/^  eval_every: 100$/  eval_every: 0/' \
    -e 's/^  checkpoint_every: 100$/  checkpoint_every: 0/' -e 's/^  warmup_steps: 60$/  warmup_steps: 10/' \
    -e 's/^  max_workers: 2$/  max_workers: 1/' \
    -e "s/steps: 150}/steps: $((STEPS / 4))}/" examples/gpt-raptr.yaml > "$WORK/job.yaml"
grep -q "steps: $STEPS" "$WORK/job.yaml" || { echo "service_overhead: spec edit failed" >&2; exit 1; }

eval "$(scripts/local-cluster.sh start --workers 1 --port "$PORT" --metrics-port 0 --dir "$WORK/cluster")"
CTL=$BUILD/cli/raptrctl
for _ in $(seq 1 100); do
  grep -q " connected " "$WORK/cluster/logs/coordinator.log" 2>/dev/null && break
  sleep 0.1
done

run_local() {
  rm -rf "$WORK/local"
  local t0 t1
  t0=$(date +%s.%N)
  "$BUILD/worker/raptr-worker" train --spec "$WORK/job.yaml" --run-dir "$WORK/local" \
    > "$WORK/local.json" 2> "$WORK/local.log"
  t1=$(date +%s.%N)
  python3 -c "import json,sys; r=json.load(open('$WORK/local.json')); print(json.dumps({'bench':'service_overhead','variant':'engine','round':$1,'steps':$STEPS,'wall_s':round($t1-$t0,3),'eval_loss':r['eval_loss']}))"
}

run_service() {
  local job state
  job=$("$CTL" submit -f "$WORK/job.yaml")
  # One watch stream until the job ends, not a `raptrctl get` loop: starting a client process 5
  # times a second took enough CPU from the 2-thread worker to cost it 20 %.
  "$CTL" watch "$job" > /dev/null
  state=$("$CTL" get "$job" --output json | python3 -c "import json,sys; print(json.load(sys.stdin)['state'])")
  [[ "$state" == JOB_STATE_SUCCEEDED ]] || { echo "service_overhead: $job $state" >&2; exit 1; }
  local done_line
  for _ in $(seq 1 50); do
    done_line=$(grep "$job done:" "$WORK/cluster/logs/worker-0.log" || true)
    [[ -n "$done_line" ]] && break
    sleep 0.1
  done
  "$CTL" get "$job" --output json | DONE="$done_line" python3 -c "
import json, os, re, sys
from datetime import datetime
j = json.load(sys.stdin)
t = lambda s: datetime.fromisoformat(s.replace('Z', '+00:00'))
m = re.search(r'([0-9.]+) s working, ([0-9.]+) s waiting for the coordinator, ([0-9.]+) s sending',
              os.environ['DONE'])
print(json.dumps({'bench': 'service_overhead', 'variant': 'service', 'round': $1, 'steps': $STEPS,
                  'wall_s': round((t(j['end_time']) - t(j['start_time'])).total_seconds(), 3),
                  'worker_busy_s': float(m.group(1)), 'worker_wait_s': float(m.group(2)),
                  'worker_send_s': float(m.group(3)), 'eval_loss': j['progress']['eval_loss']}))"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round / $ROUNDS" >&2
  run_local "$round" | tee -a "$WORK/results.jsonl"
  run_service "$round" | tee -a "$WORK/results.jsonl"
done
python3 - "$WORK/results.jsonl" "$STEPS" <<'PY' >&2
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steps = int(sys.argv[2])
med = {v: statistics.median(r["wall_s"] for r in rows if r["variant"] == v) for v in ("engine", "service")}
print(f"\n{'':16}{'engine alone':>14}{'service':>14}")
print(f"{'wall (median s)':16}{med['engine']:>14.2f}{med['service']:>14.2f}")
print(f"{'per step (ms)':16}{1000 * med['engine'] / steps:>14.1f}{1000 * med['service'] / steps:>14.1f}")
print(f"service / engine: {med['service'] / med['engine']:.4f} "
      f"({100 * (med['service'] / med['engine'] - 1):+.2f} %)")
svc = [r for r in rows if r["variant"] == "service"]
wait = sum(r["worker_wait_s"] for r in svc) / sum(r["worker_busy_s"] for r in svc)
send = sum(r["worker_send_s"] for r in svc) / sum(r["worker_busy_s"] for r in svc)
print(f"worker time waiting for the coordinator: {100 * wait:.3f} % of its busy time; "
      f"sending reports: {100 * send:.3f} %")
PY
