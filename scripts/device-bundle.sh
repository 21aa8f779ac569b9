#!/usr/bin/env bash
# device-bundle.sh: builds, here (no GPU needed), everything the one-call GPU check
# (scripts/device-check.sh, issue 11) runs, and packs it into ONE file, build/cuda-device.tgz,
# that the device call carries (docs/DEVICE_CHECK.md has the call).
#
#   scripts/device-bundle.sh            # or: make device-bundle
#
# Build: BUILD_DIR (default build-bundle/, git-ignored), Release, -DRAPTR_CUDA=ON, sm_90 device
# code (H100/H200), and portable host code: RAPTR_ARCH_FLAGS=-march=x86-64-v3 (AVX2/FMA, which
# every Hopper host has), never -march=native, since the GPU machine's CPU may differ from this
# one's. Targets: raptr_cuda_tests and cuda_bench (required), raptr-worker and raptr-coordinator
# (optional, for a short service run; left out with a warning if they do not build). Nothing is
# built on the GPU machine: it lacks the dependencies and has no network.
#
# Bundle layout (the tgz unpacks to cuda-device/, so `tar -xzf build/cuda-device.tgz -C build/`
# gives build/cuda-device/):
#   bin/            the stripped binaries
#   lib/            every shared library they load, except glibc's (libc, libm, libpthread, libdl,
#                   librt, ld-linux: the GPU machine's own glibc is newer), the NVIDIA driver's
#                   (libcuda, libnvidia-*), cudart (linked statically), cuBLAS / cuBLASLt
#                   (500+ MB) and NCCL (200+ MB) if linked: the GPU machine's CUDA 13 (or
#                   PyTorch's nvidia-* wheels) provides them, and the runner finds them
#   lib-fallback/   libstdc++ and libgcc_s, used there only if the machine's own are missing
#   tools/compute-sanitizer/  only if this machine has one and the bundle stays under the limit
#   scripts/        device-check.sh and torch_step_bench.py as of this build; parity/ with
#                   check_export.py (and the reference it imports) for the export fixture
#   export-hf/      `raptrctl export --format hf` of a small trained GPT (hf/config.json,
#                   hf/model.safetensors), a batch and raptr's logits on it (issue 15)
#   BUILD_INFO, MANIFEST.sha256
# Fails if the tgz is over DEVICE_BUNDLE_LIMIT_MIB (default 40 MiB): the whole call (tree +
# carried paths) may be 64 MiB.
#
# Environment: BUILD_DIR, JOBS (default 2), DEVICE_BUNDLE_LIMIT_MIB, DEVICE_BUNDLE_SERVICE
# (1: try the service binaries (default), 0: skip them, require: fail without them),
# COMPUTE_SANITIZER (a compute-sanitizer binary to bundle; default: look in /usr/local/cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD_DIR:-build-bundle}
JOBS=${JOBS:-2}
LIMIT_MIB=${DEVICE_BUNDLE_LIMIT_MIB:-40}
SERVICE=${DEVICE_BUNDLE_SERVICE:-1}
TGZ=build/cuda-device.tgz
die() { echo "device-bundle: ERROR: $*" >&2; exit 1; }
say() { echo "device-bundle: $*"; }

[[ -x /usr/local/cuda/bin/nvcc ]] || command -v nvcc >/dev/null ||
  die "no nvcc (CUDA 13 toolkit expected at /usr/local/cuda)"
command -v ninja >/dev/null || die "ninja not found"

# ---- configure and build --------------------------------------------------------------------
START=$SECONDS
say "configuring $BUILD (Release, CUDA sm_90, host -march=x86-64-v3)"
mkdir -p "$BUILD"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRAPTR_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DRAPTR_ARCH_FLAGS=-march=x86-64-v3 \
  -DRAPTR_BUILD_TESTS=ON -DRAPTR_BUILD_BENCH=ON >"$BUILD/configure.log" 2>&1 ||
  { tail -30 "$BUILD/configure.log"; die "cmake configure failed (log: $BUILD/configure.log)"; }
say "building raptr_cuda_tests cuda_bench (ninja -j$JOBS)"
ninja -C "$BUILD" -j"$JOBS" raptr_cuda_tests cuda_bench || die "the CUDA check's targets failed to build"
BINS=("$BUILD/tests/cuda/raptr_cuda_tests" "$BUILD/bench/cuda/cuda_bench")
if [[ "$SERVICE" != 0 ]]; then
  say "building raptr-worker raptr-coordinator raptrctl (optional: the service step)"
  if ninja -C "$BUILD" -j"$JOBS" raptr-worker raptr-coordinator raptrctl; then
    BINS+=("$BUILD/worker/raptr-worker" "$BUILD/coordinator/raptr-coordinator"
           "$BUILD/cli/raptrctl")
  elif [[ "$SERVICE" == require ]]; then
    die "raptr-worker / raptr-coordinator failed to build (DEVICE_BUNDLE_SERVICE=require)"
  else
    say "WARNING: raptr-worker / raptr-coordinator did not build; bundling without them"
  fi
fi
say "build done in $((SECONDS - START))s"

# ---- stage ----------------------------------------------------------------------------------
STAGE_ROOT=$BUILD/device-stage
DEV=$STAGE_ROOT/cuda-device
rm -rf "$STAGE_ROOT"
mkdir -p "$DEV/bin" "$DEV/lib" "$DEV/lib-fallback" "$DEV/scripts"
for b in "${BINS[@]}"; do
  [[ -x "$b" ]] || die "missing binary $b"
  cp "$b" "$DEV/bin/"
  strip --strip-unneeded "$DEV/bin/$(basename "$b")"
done
# Shared libraries: what ldd resolves here, less what the GPU machine must supply itself.
ldd "$DEV"/bin/* 2>/dev/null | awk '/=>/ && $3 ~ /^\// {print $3}' | sort -u | while read -r lib; do
  name=$(basename "$lib")
  case "$name" in
    libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux* | libresolv.so* | \
      libcuda.so* | libnvidia-* | libcublas.so* | libcublasLt.so* | libcudart.so* | libnccl.so*) ;;
    libstdc++.so* | libgcc_s.so*) cp -L "$lib" "$DEV/lib-fallback/$name" ;;
    *) cp -L "$lib" "$DEV/lib/$name" ;;
  esac
done
if ldd "$DEV"/bin/* | grep -q "not found"; then
  ldd "$DEV"/bin/* | grep "not found" | sort -u
  die "a library the binaries need is missing here"
fi
# Copies of system libraries keep symbol tables they do not need at run time.
for f in "$DEV"/lib/* "$DEV"/lib-fallback/*; do
  [[ -f "$f" ]] && chmod u+w "$f" && strip --strip-unneeded "$f" 2>/dev/null || true
done
cp scripts/device-check.sh "$DEV/scripts/"
cp tests/parity/torch_step_bench.py "$DEV/scripts/"

# ---- the export fixture (issue 15): `raptrctl export --format hf` of a small trained GPT, with
# raptr's logits on one batch, for the GPU machine to load with transformers' GPT2LMHeadModel
# (transformers is not a Debian package: it is only there). Made here by the bundle's own
# raptr-worker (CPU backend) and raptrctl, as tests/integration/export_test.sh does.
FIX=$DEV/export-hf
if [[ -x "$BUILD/worker/raptr-worker" && -x "$BUILD/cli/raptrctl" ]]; then
  say "making the export fixture (3 blocks, d 32, 12 steps)"
  fix_tmp=$(mktemp -d)
  # shellcheck source=tests/integration/small_corpus.sh
  source tests/integration/small_corpus.sh
  small_corpus "$BUILD/cli/raptrctl" "$fix_tmp" || die "export fixture: data prepare failed"
  # shellcheck source=tests/integration/export_fixture.sh
  source tests/integration/export_fixture.sh
  export_fixture "$BUILD/worker/raptr-worker" "$BUILD/cli/raptrctl" "$PWD" "$fix_tmp" || die "export fixture failed"
  mkdir -p "$FIX"
  mv "$fix_tmp/hf" "$fix_tmp/batch.safetensors" "$fix_tmp/raptr.safetensors" "$FIX/"
  # Proven here against the PyTorch reference before it travels.
  /usr/bin/python3 tests/parity/check_export.py "$FIX/hf" "$FIX/raptr.safetensors" "$FIX/batch.safetensors" \
    || die "export fixture: the reference check failed here"
  mkdir -p "$DEV/scripts/parity"
  cp tests/parity/check_export.py tests/parity/st.py tests/parity/torch_model.py "$DEV/scripts/parity/"
  rm -rf "$fix_tmp"
else
  say "WARNING: no raptr-worker/raptrctl in the bundle: no export fixture (the transformers check will skip)"
fi

# ---- compute-sanitizer (if this machine has one) ----------------------------------------------
SAN=${COMPUTE_SANITIZER:-}
if [[ -z "$SAN" ]]; then
  for c in /usr/local/cuda/compute-sanitizer/compute-sanitizer /usr/local/cuda/bin/compute-sanitizer; do
    [[ -x "$c" ]] && { SAN=$(readlink -f "$c"); break; }
  done
fi
SAN_NOTE="not bundled: no compute-sanitizer on the build machine; the runner uses the GPU machine's"
if [[ -n "$SAN" && -x "$SAN" ]]; then
  san_dir=$(dirname "$SAN")
  san_mb=$(du -sm "$san_dir" | cut -f1)
  say "compute-sanitizer found: $san_dir (${san_mb} MiB unpacked); bundled if the tgz stays under ${LIMIT_MIB} MiB"
  mkdir -p "$DEV/tools"
  cp -a "$san_dir" "$DEV/tools/compute-sanitizer"
  rm -rf "$DEV/tools/compute-sanitizer/docs" "$DEV/tools/compute-sanitizer/include"
  SAN_NOTE="bundled from $san_dir"
fi

# ---- describe, pack, check the size -----------------------------------------------------------
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | wc -l)
{
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  echo "tree: $rev (+$dirty modified tracked files)"
  echo "cuda: $(/usr/local/cuda/bin/nvcc --version | tail -1)"
  echo "cmake: Release RAPTR_CUDA=ON CMAKE_CUDA_ARCHITECTURES=90 RAPTR_ARCH_FLAGS=-march=x86-64-v3"
  echo "binaries: $(cd "$DEV/bin" && echo *)"
  echo "compute-sanitizer: $SAN_NOTE"
} >"$DEV/BUILD_INFO"

pack() {
  (cd "$DEV" && find . -type f ! -name MANIFEST.sha256 -print0 | sort -z |
    xargs -0 sha256sum >MANIFEST.sha256)
  mkdir -p build
  local tmp=$TGZ.tmp.$$
  tar -C "$STAGE_ROOT" -cf - cuda-device | gzip -9 >"$tmp"
  mv -f "$tmp" "$TGZ"
}
pack
bytes=$(stat -c %s "$TGZ")
limit=$((LIMIT_MIB * 1024 * 1024))
if ((bytes > limit)) && [[ -d "$DEV/tools" ]]; then
  say "with compute-sanitizer the tgz is $((bytes / 1024 / 1024)) MiB > ${LIMIT_MIB} MiB: leaving it out"
  rm -rf "$DEV/tools"
  SAN_NOTE="not bundled: it would take the tgz over ${LIMIT_MIB} MiB; the runner uses the GPU machine's"
  sed -i "s|^compute-sanitizer: .*|compute-sanitizer: $SAN_NOTE|" "$DEV/BUILD_INFO"
  pack
  bytes=$(stat -c %s "$TGZ")
fi

echo
say "contents (unpacked sizes):"
(cd "$DEV" && du -ah --max-depth=2 . | sort -k2 | sed 's/^/  /')
echo
mib=$(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1048576}')
unpacked=$(du -sm "$DEV" | cut -f1)
say "compute-sanitizer: $SAN_NOTE"
if ((bytes > limit)); then
  rm -f "$TGZ"
  die "$TGZ would be ${mib} MiB (${bytes} bytes), over the ${LIMIT_MIB} MiB limit; removed it"
fi
say "wrote $TGZ: ${mib} MiB (${bytes} bytes; ${unpacked} MiB unpacked), limit ${LIMIT_MIB} MiB"
say "on the GPU machine: tar -xzf $TGZ -C build/ && scripts/device-check.sh (docs/DEVICE_CHECK.md)"
