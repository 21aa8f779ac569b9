#!/usr/bin/env bash
# Trains the example GPT on the prepared corpus with the RaPTr schedule and with full training
# (same seed, data, steps and optimizer), then prints eval loss, FLOPs and wall time side by side.
# Flags after the script name are passed to both runs (e.g. --steps 200).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKER=${RAPTR_WORKER:-build/worker/raptr-worker}
DATA=${RAPTR_DATA:-data/sotu-8k}
OUT=${RAPTR_RUNS:-runs/quickstart}
mkdir -p "$OUT"
COMMON=(--data "$DATA" --model gpt --layers 12 --d-model 128 --heads 4 --batch 16 --seq 64
        --steps 600 --lr 2e-3 --warmup 60 --eval-every 100 --eval-batches 16 --log-every 50
        --resume false)
for schedule in raptr full; do
  echo "== training: $schedule" >&2
  rm -rf "$OUT/$schedule"
  "$WORKER" train "${COMMON[@]}" --schedule "$schedule" --run-dir "$OUT/$schedule" "$@" \
    | tee "$OUT/$schedule.json"
done
/usr/bin/python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
r = {s: json.load(open(f"{out}/{s}.json")) for s in ("raptr", "full")}
print()
print(f"{'':18}{'RaPTr':>14}{'full':>14}{'ratio':>10}")
print(f"{'eval loss':18}{r['raptr']['eval_loss']:>14.4f}{r['full']['eval_loss']:>14.4f}"
      f"{r['raptr']['eval_loss'] - r['full']['eval_loss']:>+10.4f}")
print(f"{'train FLOPs':18}{r['raptr']['flops']:>14.4g}{r['full']['flops']:>14.4g}"
      f"{r['full']['flops'] / r['raptr']['flops']:>9.2f}x")
print(f"{'wall time (s)':18}{r['raptr']['seconds']:>14.1f}{r['full']['seconds']:>14.1f}"
      f"{r['full']['seconds'] / r['raptr']['seconds']:>9.2f}x")
print(f"\nper-step logs: {out}/raptr/metrics.csv, {out}/full/metrics.csv")
PY
