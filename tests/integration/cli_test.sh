#!/usr/bin/env bash
# End to end through the real binaries: prepare a corpus, train GPT and BERT with checkpoints,
# resume, and run debug-step on a checkpoint. Usage: cli_test.sh BUILD_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
CTL=$BUILD/cli/raptrctl
WORKER=$BUILD/worker/raptr-worker
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# A small corpus: a few "documents" of varied English-like text.
mkdir -p "$WORK/text"
for d in 1 2 3 4 5 6 7 8; do
  for i in $(seq 1 150); do
    echo "Document $d line $i: the state of the union is strong, said speaker number $((i * d % 17)) to the congress; taxes, trade and peace were discussed at length."
  done > "$WORK/text/doc$d.txt"
done
"$CTL" data prepare --input "$WORK/text" --out "$WORK/data" --vocab-size 300 --val-fraction 0.25 \
  2> "$WORK/prepare.log" || { cat "$WORK/prepare.log"; fail "data prepare"; }
for f in train.bin val.bin meta.json tokenizer.model; do
  [[ -s "$WORK/data/$f" ]] || fail "data prepare wrote no $f"
done

train() {  # run_dir, extra flags...
  local run=$1; shift
  "$WORKER" train --data "$WORK/data" --layers 4 --d-model 32 --heads 4 --batch 4 --seq 16 \
    --lr 3e-3 --warmup 5 --eval-every 10 --eval-batches 2 --log-every 0 --run-dir "$run" "$@"
}

# GPT, RaPTr, 20 steps: stop after 12 (as a preempted job would), then run again to finish.
train "$WORK/gpt" --steps 20 --stop-after 11 --checkpoint-every 6 > "$WORK/gpt1.json" \
  2> "$WORK/gpt1.log" || { cat "$WORK/gpt1.log"; fail "gpt train"; }
[[ -f "$WORK/gpt/checkpoints/LATEST" ]] || fail "no checkpoint committed"
grep -q step_00000012 "$WORK/gpt/checkpoints/LATEST" || fail "LATEST is not step 12"
[[ $(wc -l < "$WORK/gpt/metrics.csv") -eq 13 ]] || fail "metrics.csv should have 12 rows"

# A resumed run continues from step 12 and appends rows 12..19; total 20 rows.
train "$WORK/gpt" --steps 20 > "$WORK/gpt2.json" 2> "$WORK/gpt2.log" \
  || { cat "$WORK/gpt2.log"; fail "gpt resume"; }
grep -q "resumed from" "$WORK/gpt2.log" || fail "second run did not resume"
[[ $(wc -l < "$WORK/gpt/metrics.csv") -eq 21 ]] || fail "metrics.csv should have 20 rows after resume"
grep -q '"steps":20' "$WORK/gpt2.json" || fail "resumed run did not reach step 20"

# The same 20 steps uninterrupted give the same final eval loss (bitwise resume, end to end).
train "$WORK/gpt-straight" --steps 20 > "$WORK/gpt3.json" 2> "$WORK/gpt3.log" \
  || { cat "$WORK/gpt3.log"; fail "gpt straight"; }
a=$(grep -o '"eval_loss":[0-9.]*' "$WORK/gpt2.json")
b=$(grep -o '"eval_loss":[0-9.]*' "$WORK/gpt3.json")
[[ "$a" == "$b" ]] || fail "resumed ($a) and uninterrupted ($b) runs differ"

# BERT with exact sampling, frozen skipped layers and scaled outputs.
train "$WORK/bert" --model bert --steps 10 --sampling exact --skipped frozen \
  --scaling inverse_keep_prob > "$WORK/bert.json" 2> "$WORK/bert.log" \
  || { cat "$WORK/bert.log"; fail "bert train"; }
grep -q '"eval_loss":[0-9]' "$WORK/bert.json" || fail "bert run reported no eval loss"

# debug-step on the GPT checkpoint, batch from the token shard.
CKPT=$WORK/gpt/checkpoints/$(cat "$WORK/gpt/checkpoints/LATEST")
"$WORKER" debug-step --layers 4 --d-model 32 --heads 4 --weights "$CKPT/model.safetensors" \
  --tokens "$WORK/data/val.bin" --B 2 --T 16 --active 0,3 --out "$WORK/debug.safetensors" \
  2> "$WORK/debug.log" || { cat "$WORK/debug.log"; fail "debug-step"; }
grep -q "loss" "$WORK/debug.log" || fail "debug-step printed no loss"
[[ -s "$WORK/debug.safetensors" ]] || fail "debug-step wrote nothing"

# Bad input: a corrupt shard is a clear error, not a crash.
head -c 2000 "$WORK/data/train.bin" > "$WORK/data/bad.bin"
if "$WORKER" debug-step --layers 4 --d-model 32 --heads 4 --weights "$CKPT/model.safetensors" \
  --tokens "$WORK/data/bad.bin" --B 2 --T 16 --out "$WORK/x.safetensors" 2> "$WORK/bad.log"; then
  fail "a truncated shard was accepted"
fi
grep -q "bad.bin" "$WORK/bad.log" || fail "the error does not name the file: $(cat "$WORK/bad.log")"
# --help succeeds on stdout; bash completion offers commands, subcommands and flags (both
# spellings of a boolean), read from the binary's own --help.
"$CTL" --help > "$WORK/help.txt" || fail "raptrctl --help exited $?"
grep -q "submit" "$WORK/help.txt" || fail "raptrctl --help printed no commands"
"$CTL" list --help > /dev/null || fail "raptrctl list --help exited $?"
"$WORKER" train --help > "$WORK/train-help.txt" || fail "raptr-worker train --help exited $?"
grep -q -- "--\[no-\]resume" "$WORK/train-help.txt" || fail "train --help: $(head -3 "$WORK/train-help.txt")"
# Flags before the command (kubectl's habit: `raptrctl --coordinator=H:P list`) mean the same as
# after it; both forms of a valued flag; a command-less line says what is missing.
"$CTL" list --coordinator=127.0.0.1:1 --timeout=1 > /dev/null 2> "$WORK/after.err" && fail "list against no coordinator succeeded"
"$CTL" --coordinator=127.0.0.1:1 --timeout 1 list > /dev/null 2> "$WORK/before.err" && fail "list against no coordinator succeeded"
cmp -s "$WORK/after.err" "$WORK/before.err" \
  || fail "flags before the command differ from after it: $(cat "$WORK/before.err") vs $(cat "$WORK/after.err")"
"$CTL" --markdown methods > "$WORK/methods-before.md" || fail "raptrctl --markdown methods exited $?"
"$CTL" methods --markdown > "$WORK/methods-after.md" || fail "raptrctl methods --markdown exited $?"
cmp -s "$WORK/methods-before.md" "$WORK/methods-after.md" || fail "--markdown before methods was not applied"
if "$CTL" --coordinator=127.0.0.1:1 2> "$WORK/nocmd.err"; then fail "a line with no command succeeded"; fi
grep -q "no command" "$WORK/nocmd.err" || fail "a line with no command: $(head -1 "$WORK/nocmd.err")"
cat > "$WORK/complete.sh" <<COMPLETE
PATH=$BUILD/cli:\$PATH
source <(raptrctl completion bash)
t() { COMP_WORDS=("\$@"); COMP_CWORD=\$((\${#COMP_WORDS[@]} - 1)); COMPREPLY=(); _raptrctl; echo "\${COMPREPLY[*]}"; }
t raptrctl su
t raptrctl token ""
t raptrctl list --no-f
t raptrctl export -
COMPLETE
bash "$WORK/complete.sh" > "$WORK/complete.txt" 2>&1 || fail "completion script: $(cat "$WORK/complete.txt")"
mapfile -t got < "$WORK/complete.txt"
[[ "${got[0]}" == submit ]] || fail "completion of 'su': '${got[0]}'"
[[ "${got[1]}" == new ]] || fail "completion after 'token': '${got[1]}'"
[[ "${got[2]}" == --no-full ]] || fail "completion of 'list --no-f': '${got[2]}'"
[[ " ${got[3]} " == *" --checkpoint "* && " ${got[3]} " == *" --out "* ]] \
  || fail "completion of export's flags: '${got[3]}'"
echo "cli_test: PASS"
