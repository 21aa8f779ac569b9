#!/usr/bin/env bash
# The test command: builds, then runs every test (unit tests and the PyTorch parity suite).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
cd "${RAPTR_BUILD_DIR:-build}"
ctest --output-on-failure -j"$(nproc)" "$@"
