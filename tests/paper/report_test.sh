#!/usr/bin/env bash
# The paper study's report (issue 4) regenerates from the runs stored in bench/paper/runs without
# rerunning any, and the committed docs/RESULTS.md and docs/results/*.svg are what it regenerates.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Debian's python3 (python3-matplotlib draws the plots), not whatever python3 comes first on PATH.
PY=/usr/bin/python3
"$PY" "$ROOT/bench/paper/study.py" --report-only --docs "$TMP"
for section in "## The long regime (issue 14)" "### The learning rate, and what a doubling" \
               "## The short regime (the first study)" "### GPT (causal LM)" \
               "### BERT (masked LM)" "### Investigation" "#### The gap over the run" \
               "#### BERT's masked targets"; do
  grep -qF "$section" "$TMP/RESULTS.md" || { echo "FAIL: no '$section' in the report"; exit 1; }
done
# Every figure the report links exists and is well-formed XML.
grep -o 'results/[a-z0-9-]*\.svg' "$TMP/RESULTS.md" | sort -u | while read -r fig; do
  "$PY" -c 'import sys, xml.dom.minidom as m; m.parse(sys.argv[1])' "$TMP/$fig" \
    || { echo "FAIL: $fig is not well-formed"; exit 1; }
done
# The table's numbers are the stored runs' numbers: full training's mean final eval loss.
want="$("$PY" - "$ROOT" <<'PY'
import glob, json, statistics, sys
runs = [json.load(open(p)) for p in glob.glob(sys.argv[1] + "/bench/paper/runs/gpt/full-s*.json")]
print(f"{statistics.mean(r['final_eval_loss'] for r in runs):.4f}")
PY
)"
grep -q "^| full training | [0-9] | $want" "$TMP/RESULTS.md" \
  || { echo "FAIL: GPT full-training row does not show the stored mean $want"; exit 1; }
# The long regime's learning-rate sweep shows each stored run's final eval loss.
"$PY" - "$ROOT" "$TMP/RESULTS.md" <<'PY' || exit 1
import glob, json, sys
report = open(sys.argv[2]).read()
for path in glob.glob(sys.argv[1] + "/bench/paper/runs/long/gpt/full-lr*-s1.json"):
    run = json.load(open(path))
    row = f"| {run['spec']['optimizer']['lr']:g} | {run['final_eval_loss']:.4f} |"
    if row not in report:
        sys.exit(f"FAIL: the long regime's sweep has no row '{row}' for {path}")
PY
# The committed report is current.
if ! diff -q "$TMP/RESULTS.md" "$ROOT/docs/RESULTS.md" >/dev/null; then
  diff "$TMP/RESULTS.md" "$ROOT/docs/RESULTS.md" | head -20 || true
  echo "FAIL: docs/RESULTS.md is stale: run 'make paper-report' and commit it"; exit 1
fi
for f in "$TMP"/results/*.svg; do
  cmp -s "$f" "$ROOT/docs/results/$(basename "$f")" \
    || { echo "FAIL: docs/results/$(basename "$f") is stale: run 'make paper-report'"; exit 1; }
done
echo "PASS: paper report"
