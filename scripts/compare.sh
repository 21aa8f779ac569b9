#!/usr/bin/env bash
# The main job through the service: starts a local cluster (raptr-coordinator + 2 CPU workers),
# submits the example GPT with the RaPTr schedule (examples/gpt-raptr.yaml) and with full training
# (examples/gpt-full.yaml) -- same model, data, seed, steps and optimizer -- watches both live and
# prints eval loss, FLOPs and wall time side by side. Each job trains data-parallel on both
# workers; the second waits PENDING until the first is done.
#
# Environment: RAPTR_RUNS (default runs/quickstart: job store, checkpoints, logs),
# RAPTR_PORT (default 50051).
set -euo pipefail
cd "$(dirname "$0")/.."
CTL=${RAPTR_CTL:-build/cli/raptrctl}
OUT=${RAPTR_RUNS:-runs/quickstart}
PORT=${RAPTR_PORT:-50051}
[[ -f data/sotu-8k/meta.json ]] || { echo "compare: prepare data/sotu-8k first (scripts/quickstart.sh)" >&2; exit 1; }

scripts/local-cluster.sh stop --dir "$OUT" 2> /dev/null || true
rm -rf "$OUT"
mkdir -p "$OUT"
eval "$(scripts/local-cluster.sh start --workers 2 --port "$PORT" --dir "$OUT")"
trap 'scripts/local-cluster.sh stop --dir "$OUT" 2> /dev/null' EXIT

# Both workers first: a job submitted while only one is connected would start on that one alone.
for _ in $(seq 1 100); do
  [[ $(grep -c " connected " "$OUT/logs/coordinator.log" 2>/dev/null) -ge 2 ]] && break
  sleep 0.1
done
RAPTR=$("$CTL" submit -f examples/gpt-raptr.yaml)
FULL=$("$CTL" submit -f examples/gpt-full.yaml)
echo "submitted $RAPTR (RaPTr) and $FULL (full training)" >&2
for job in "$RAPTR" "$FULL"; do
  echo "== $job" >&2
  "$CTL" watch "$job" --step-every 50
done
"$CTL" get "$RAPTR" --output json > "$OUT/raptr.json"
"$CTL" get "$FULL" --output json > "$OUT/full.json"

/usr/bin/python3 - "$OUT" <<'PY'
import json, sys
from datetime import datetime
out = sys.argv[1]
jobs = {s: json.load(open(f"{out}/{s}.json")) for s in ("raptr", "full")}
def seconds(job):
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))
    return (parse(job["end_time"]) - parse(job["start_time"])).total_seconds()
rows = {}
for s, job in jobs.items():
    if job["state"] != "JOB_STATE_SUCCEEDED":
        sys.exit(f"{job['id']} ended {job['state']}: {job.get('message', '')}")
    p = job["progress"]
    rows[s] = {"eval": p["eval_loss"], "flops": float(p["flops"]), "full": float(p["flops_full"]),
               "secs": seconds(job)}
r, f = rows["raptr"], rows["full"]
print()
print(f"{'':22}{'RaPTr':>14}{'full':>14}{'RaPTr vs full':>16}")
print(f"{'eval loss':22}{r['eval']:>14.4f}{f['eval']:>14.4f}{r['eval'] - f['eval']:>+16.4f}")
print(f"{'train FLOPs':22}{r['flops']:>14.4g}{f['flops']:>14.4g}"
      f"{100 * (1 - r['flops'] / f['flops']):>14.1f} % saved")
print(f"{'wall time (s)':22}{r['secs']:>14.1f}{f['secs']:>14.1f}"
      f"{100 * (1 - r['secs'] / f['secs']):>14.1f} % saved")
print(f"\njobs: {jobs['raptr']['id']}, {jobs['full']['id']} (raptrctl get / watch); "
      f"logs and checkpoints under {out}/")
PY
