#!/usr/bin/env bash
# Installs every Debian package that building, testing and benchmarking raptr needs.
# Idempotent: does nothing (and prints nothing) when everything is already installed.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git curl ca-certificates
  nodejs npm
  libopenblas-dev libopenblas-openmp-dev
  libabsl-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libgtest-dev libgmock-dev libbenchmark-dev
  libgloo-dev libsqlite3-dev libsentencepiece-dev sentencepiece libyaml-cpp-dev nlohmann-json3-dev
  python3 python3-torch python3-numpy python3-matplotlib  # the paper report's plots
  python3-grpcio python3-protobuf python3-yaml  # the Python client (python/raptr)
  libcli11-dev  # command-line parsing
  libtcmalloc-minimal4
  libcpp-httplib-dev  # the HTTP endpoints (/metrics, /healthz)
  libssl-dev openssl  # token hashing and randomness; the CA and certificates the TLS tests make
  clang-14 libclang-rt-14-dev  # sanitizer builds (ASan, UBSan, TSan), -Wthread-safety, libFuzzer
  prometheus  # promtool and the server the monitoring tests scrape with
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
# nodejs/npm may come from elsewhere (e.g. nodesource): accept any working binaries.
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=()
  for pkg in "${missing[@]}"; do
    [[ "$pkg" == nodejs || "$pkg" == npm ]] || filtered+=("$pkg")
  done
  missing=("${filtered[@]}")
fi
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "install-deps: installing ${missing[*]}"
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
