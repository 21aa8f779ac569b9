#!/usr/bin/env bash
# Configures (once) and builds raptr in build/ (Release, Ninja). Extra args go to cmake.
# RAPTR_BUILD_TARGETS="a b" builds only those targets (the images build their binaries only).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${RAPTR_BUILD_DIR:-build}
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
fi
# shellcheck disable=SC2086  # a list of target names
cmake --build "$BUILD_DIR" ${RAPTR_BUILD_TARGETS:+--target $RAPTR_BUILD_TARGETS} -- -j"$(nproc)"
