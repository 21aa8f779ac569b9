#!/usr/bin/env bash
# make images: builds the three images of deploy/docker for real, with Debian's podman and no
# container runtime (these machines run no containers): `podman build --isolation chroot` runs the
# RUN steps in a chroot, `--storage-driver vfs` needs no overlay mounts. The base image debian:12 is
# made here with debootstrap from the mirror apt already uses (then `podman import`), so nothing
# but Debian's mirror is reached. The CUDA image takes its toolkit from /usr/local/cuda
# (CUDA_SOURCE=local in Dockerfile.worker-cuda): NVIDIA's apt repository is not reachable here.
#
# Then it checks each image's filesystem (podman image mount, then chroot into it as the image's
# user): every binary's dynamic libraries resolve and its --help runs, and the image's user,
# entrypoint, ports and the flags the Kubernetes manifests pass match the rendered overlays
# (scripts/check_image.py). It writes build-images/report.md (date, build times, sizes).
#
#   scripts/images.sh                       all three images, tagged :dev
#   scripts/images.sh coordinator worker-cpu
#   scripts/images.sh --rebuild-base ...    debootstrap the base again
#   scripts/images.sh --check-only ...      check images already built
#
# Needs root (debootstrap, chroot), podman, debootstrap, kubectl (kustomize), python3-yaml;
# scripts/install-deps.sh does not install podman/debootstrap: `apt-get install podman debootstrap`.
# Storage is build-images/ (gitignored; 17 GB at the peak with vfs, which copies every layer;
# 4.5 GB once the untagged images are pruned at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${RAPTR_IMAGES_DIR:-$ROOT/build-images}
TAG=${RAPTR_IMAGE_TAG:-dev}
REBUILD_BASE=0
CHECK_ONLY=0
IMAGES=()
for a in "$@"; do
  case $a in
    --rebuild-base) REBUILD_BASE=1 ;;
    --check-only) CHECK_ONLY=1 ;;
    coordinator | worker-cpu | worker-cuda) IMAGES+=("$a") ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "images.sh: unknown argument '$a' (want coordinator, worker-cpu, worker-cuda, --rebuild-base, --check-only)" >&2; exit 2 ;;
  esac
done
[[ ${#IMAGES[@]} -gt 0 ]] || IMAGES=(coordinator worker-cpu worker-cuda)

die() { echo "images.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap and chroot)"
for tool in podman debootstrap kubectl; do
  command -v "$tool" > /dev/null || die "$tool is not installed (apt-get install podman debootstrap; kubectl: scripts/install-deps.sh)"
done
PY=/usr/bin/python3
"$PY" -c 'import yaml' 2> /dev/null || die "python3-yaml is missing (scripts/install-deps.sh)"

mkdir -p "$WORK"
PODMAN=(podman --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
BASE=localhost/debian:12
REPORT=$WORK/report.md
log() { echo "[images $(date +%H:%M:%S)] $*"; }

# The mirror apt uses here (deb822 or one-line sources), else Debian's CDN.
mirror() {
  local m
  m=$(grep -hoE '^URIs:\s*\S+' /etc/apt/sources.list.d/*.sources 2> /dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
  [[ -n $m ]] || m=$(grep -hoE '^deb\s+\S+' /etc/apt/sources.list 2> /dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# --- the base image -------------------------------------------------------------------------
make_base() {
  local rootfs=$WORK/rootfs mirror_url
  mirror_url=$(mirror)
  if [[ $REBUILD_BASE -eq 1 || ! -f $rootfs/.raptr-debootstrap-done ]]; then
    log "debootstrap bookworm (minbase) from $mirror_url"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror_url" > "$WORK/debootstrap.log" 2>&1 \
      || die "debootstrap failed: $WORK/debootstrap.log"
    touch "$rootfs/.raptr-debootstrap-done"
  fi
  # As Docker's debian:12: the three suites in deb822 form, no package lists or .debs kept.
  rm -f "$rootfs/etc/apt/sources.list"
  cat > "$rootfs/etc/apt/sources.list.d/debian.sources" << EOF
Types: deb
URIs: $mirror_url
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror_url%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  log "podman import $BASE"
  tar --numeric-owner --exclude=./.raptr-debootstrap-done -C "$rootfs" -cf - . \
    | "${PODMAN[@]}" import --change 'CMD ["bash"]' - "$BASE" > /dev/null
}

# --- the build context: the tracked tree, as a clean clone has it ---------------------------
make_context() {
  local ctx=$WORK/context
  rm -rf "$ctx"
  mkdir -p "$ctx"
  git ls-files -z --cached --others --exclude-standard \
    | (while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done) \
    | tar --null -T - -cf - | tar -C "$ctx" -xf -
  echo "$ctx"
}

# The CUDA toolkit as build context `cuda-toolkit`: the parts a build needs, hard links into
# /usr/local/cuda (same filesystem) or copies; lib64 a real directory and lib a link to it (nvcc
# links through targets/x86_64-linux/lib -> ../../lib).
make_cuda_context() {
  local src dst=$WORK/cuda-toolkit
  src=$(readlink -f /usr/local/cuda)
  [[ -x $src/bin/nvcc ]] || die "no CUDA toolkit at /usr/local/cuda (bin/nvcc)"
  rm -rf "$dst"
  mkdir -p "$dst/lib64"
  for d in bin include nvvm targets; do
    [[ -e $src/$d ]] && { cp -al "$src/$d" "$dst/$d" 2> /dev/null || cp -a "$src/$d" "$dst/$d"; }
  done
  local lib
  for lib in "$src"/lib64/{libcudart*,libcudadevrt.a,libculibos.a,libcublas*,libnccl*} "$src"/lib64/cmake; do
    [[ -e $lib ]] || continue
    cp -al "$lib" "$dst/lib64/" 2> /dev/null || cp -a "$lib" "$dst/lib64/"
  done
  ln -s lib64 "$dst/lib"
  [[ -e $dst/targets/x86_64-linux/lib/libcudart_static.a ]] || die "staged toolkit: no targets/x86_64-linux/lib/libcudart_static.a"
  echo "$dst"
}

image_of() { echo "localhost/raptr-$1:$TAG"; }

# --- build ----------------------------------------------------------------------------------
declare -A BUILD_S
build_image() {
  local f=$1 ctx=$2 t0 extra=()
  if [[ $f == worker-cuda ]]; then
    local cuda_ctx
    cuda_ctx=$(make_cuda_context)
    extra=(--build-arg CUDA_SOURCE=local --build-context "cuda-toolkit=$cuda_ctx")
  fi
  # vfs stores every layer as a full copy of the filesystem: the CPU images keep their layers
  # (their build stages are the same, so the second reuses the first's), the CUDA image, which
  # shares nothing, commits each stage once (--layers=false; its build stage is about 5 GB).
  local layers=true
  [[ $f == worker-cuda ]] && layers=false
  log "build $(image_of "$f") (log: $WORK/build-$f.log)"
  t0=$(date +%s)
  if ! "${PODMAN[@]}" build --isolation chroot --pull=never --layers="$layers" \
    -f "$ctx/deploy/docker/Dockerfile.$f" -t "$(image_of "$f")" "${extra[@]}" "$ctx" \
    > "$WORK/build-$f.log" 2>&1; then
    tail -n 30 "$WORK/build-$f.log" >&2
    die "building $f failed: $WORK/build-$f.log"
  fi
  BUILD_S[$f]=$(($(date +%s) - t0))
  log "built $f in ${BUILD_S[$f]} s; storage $(du -sh "$WORK/storage" | cut -f1), $(df -h --output=avail "$WORK" | tail -n1 | tr -d ' ') free"

}

# --- check ----------------------------------------------------------------------------------
RENDERED=$WORK/rendered
render_overlays() {
  mkdir -p "$RENDERED"
  local o
  for o in cpu-dev gpu-prod; do
    kubectl kustomize "deploy/k8s/overlays/$o" > "$RENDERED/$o.yaml" || die "kubectl kustomize deploy/k8s/overlays/$o failed"
  done
}

check_image() {
  local f=$1 img mnt rc=0
  img=$(image_of "$f")
  "${PODMAN[@]}" image exists "$img" || die "$img is not built (scripts/images.sh $f)"
  "${PODMAN[@]}" image inspect "$img" > "$WORK/inspect-$f.json"
  rm -f "$WORK/check-$f.ok"
  mnt=$("${PODMAN[@]}" image mount "$img")
  "$PY" scripts/check_image.py --image "$f" --inspect "$WORK/inspect-$f.json" --rootfs "$mnt" \
    --rendered "$RENDERED" || rc=$?
  "${PODMAN[@]}" image unmount "$img" > /dev/null || true
  [[ $rc -ne 0 ]] || touch "$WORK/check-$f.ok"
  return $rc
}

size_mb() { "${PODMAN[@]}" image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f", $1 / 1e6}'; }

START=$(date +%s)
if [[ $CHECK_ONLY -eq 0 ]]; then
  if [[ $REBUILD_BASE -eq 1 ]] || ! "${PODMAN[@]}" image exists "$BASE"; then make_base; fi
  CTX=$(make_context)
  for f in "${IMAGES[@]}"; do build_image "$f" "$CTX"; done
fi
render_overlays
failed=0
for f in "${IMAGES[@]}"; do
  log "check $(image_of "$f")"
  check_image "$f" || failed=1
done

# The coordinator and CPU worker images together: a small job on loopback (data/sotu-1k, which
# `make paper` prepares; without it the smoke is skipped and says so).
SMOKE="skipped (no coordinator + worker-cpu in this run)"
if [[ " ${IMAGES[*]} " == *" coordinator "* && " ${IMAGES[*]} " == *" worker-cpu "* ]]; then
  SMOKE_DATA=""
  for d in data/sotu-1k; do [[ -f $d/train.bin && -f $d/val.bin ]] && SMOKE_DATA=$ROOT/$d; done
  if [[ -z $SMOKE_DATA ]]; then
    SMOKE="skipped: no data/sotu-1k (make paper prepares it)"
  else
    log "job smoke: coordinator + worker-cpu images"
    smoke_data=$WORK/smoke-data/corpus
    mkdir -p "$smoke_data"
    cp "$SMOKE_DATA/train.bin" "$SMOKE_DATA/val.bin" "$smoke_data/"
    cmnt=$("${PODMAN[@]}" image mount "$(image_of coordinator)")
    wmnt=$("${PODMAN[@]}" image mount "$(image_of worker-cpu)")
    if "$PY" scripts/check_image.py --job-smoke "$cmnt" "$wmnt" --data "$WORK/smoke-data" --work "$WORK" \
      | tee "$WORK/smoke.log"; then
      SMOKE="passed: $(grep -o 'job .* SUCCEEDED [0-9.]* s after submit' "$WORK/smoke.log" | head -n1)"
    else
      SMOKE="FAILED ($WORK/smoke.log)"
      failed=1
    fi
    "${PODMAN[@]}" image unmount "$(image_of coordinator)" "$(image_of worker-cpu)" > /dev/null || true
  fi
fi

{
  echo "# make images: $(date -u +%Y-%m-%dT%H:%MZ) at $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (uncommitted changes)')"
  echo
  echo "podman $(podman --version | awk '{print $3}'), --isolation chroot, --storage-driver vfs; base $BASE by debootstrap (minbase) from $(mirror); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc)"
  echo
  echo "| image | build (s) | size (MB) | checks |"
  echo "|---|---:|---:|---|"
  for f in "${IMAGES[@]}"; do
    echo "| $(image_of "$f") | ${BUILD_S[$f]:-(not rebuilt)} | $(size_mb "$(image_of "$f")") | $([[ -f $WORK/check-$f.ok ]] && echo passed || echo FAILED) |"
  done
  echo
  echo "Job smoke (coordinator + worker-cpu images on loopback): $SMOKE."
  echo
  echo "Total: $(($(date +%s) - START)) s."
} > "$REPORT"
# Untagged images (build stages, superseded tags) hold whole filesystem copies under vfs: drop
# them (the layer cache goes with them; a next run rebuilds from the Dockerfiles).
"${PODMAN[@]}" image prune -f > /dev/null || true
echo "Storage after pruning: $(du -sh "$WORK/storage" | cut -f1)." >> "$REPORT"
cat "$REPORT"
[[ $failed -eq 0 ]] || die "image checks failed"
log "images: OK"
