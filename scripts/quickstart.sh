#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install what is missing, build, fetch and tokenize
# the bundled corpus, then train the example GPT twice on it, with the RaPTr schedule and with
# full training, and print the two side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
scripts/fetch-corpus.sh data/sotu
if [[ ! -f data/sotu-8k/meta.json ]]; then
  build/cli/raptrctl data prepare --input data/sotu --out data/sotu-8k --vocab-size 8192
fi
exec scripts/compare.sh "$@"
