# Sourced by tests/integration/export_test.sh and scripts/device-bundle.sh (after small_corpus.sh):
#   export_fixture WORKER CTL SRC DIR
# trains a 3-block GPT (d 32, 12 steps) on small_corpus's data in DIR/data, exports its checkpoint
# with `raptrctl export --format hf` into DIR/hf, writes one batch of val tokens
# (DIR/batch.safetensors) and raptr's logits on it (DIR/raptr.safetensors, `raptr-worker
# debug-step`). Logs go to DIR/*.log; returns nonzero naming the step that failed.
export_fixture() {
  local worker=$1 ctl=$2 src=$3 dir=$4
  local model=(--layers 3 --d-model 32 --heads 2)
  OMP_NUM_THREADS=1 "$worker" train --data "$dir/data" "${model[@]}" --seq 32 --batch 4 --steps 12 \
    --eval-every 0 --log-every 0 --run-dir "$dir/run" > "$dir/train.log" 2>&1 \
    || { echo "export_fixture: train failed: $(tail -3 "$dir/train.log")" >&2; return 1; }
  "$ctl" export --checkpoint "$dir/run/checkpoints/$(cat "$dir/run/checkpoints/LATEST")" --format hf \
    -o "$dir/hf" > "$dir/export.log" 2>&1 \
    || { echo "export_fixture: export --checkpoint failed: $(cat "$dir/export.log")" >&2; return 1; }
  SRC_PARITY=$src/tests/parity /usr/bin/python3 - "$dir" <<'PY' || { echo "export_fixture: batch" >&2; return 1; }
import os, sys
import numpy as np
sys.path.insert(0, os.environ["SRC_PARITY"])
import st
tokens = np.fromfile(sys.argv[1] + "/data/val.bin", dtype="<u2", offset=256 * 4)[:2 * 32 + 1].astype(np.int32)
st.save(sys.argv[1] + "/batch.safetensors", {"inputs": np.stack([tokens[0:32], tokens[32:64]]),
                                             "targets": np.stack([tokens[1:33], tokens[33:65]])})
PY
  OMP_NUM_THREADS=1 "$worker" debug-step --weights "$dir/hf/model.safetensors" \
    --batch "$dir/batch.safetensors" "${model[@]}" --vocab 300 --max-seq 32 \
    --out "$dir/raptr.safetensors" > "$dir/debug.log" 2>&1 \
    || { echo "export_fixture: debug-step failed: $(cat "$dir/debug.log")" >&2; return 1; }
}
