#!/usr/bin/env bash
# Offline checks of deploy/ (no cluster, no container engine):
#   (a) every kustomize overlay renders (kubectl kustomize);
#   (b) every rendered object validates against the Kubernetes API schema (kubernetes-models;
#       ServiceMonitor/PodMonitor against @kubernetes-models/prometheus-operator);
#   (c) the container args only use flags the binaries' --help lists, and ports, probes,
#       Services, monitors, ConfigMap references and volumes agree with the listen args;
#   (t) TLS and auth: the coordinator's and workers' certificate, key, CA, token and --data-root
#       flags, each file on a read-only mount of the right Secret key (validate.mjs TLS_FILES), no
#       --reflection, no gRPC probe on the TLS port, monitors sending the metrics token, and the
#       NetworkPolicies admitting exactly the intended peers to 50051, 9401, 9402 and the Gloo
#       ports; deploy/k8s/make-secrets.sh's Secrets for the overlay's namespace are then checked
#       against the pods (keys, chains, host names, SPIFFE ids, key pairs, token file syntax);
#   (d) the Dockerfiles: FROM ... AS build, RUN scripts/install-deps.sh and scripts/build.sh (what
#       CI runs), non-root USER, ENTRYPOINT/CMD flags in --help, EXPOSE = listen ports, and the
#       runtime stage installs every Debian package behind the binary's ldd.
# Usage: tests/deploy/deploy_test.sh [BUILD_DIR]   (default: build/ of this repository)
# Needs kubectl (for kustomize), node, npm (installs tests/deploy/node_modules once), openssl >= 3.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD_DIR=$(cd "${1:-$ROOT/build}" && pwd) || { echo "FAIL: no build dir ${1:-$ROOT/build}"; exit 1; }
KUBECTL=${KUBECTL:-kubectl}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failed=0
fail() { echo "FAIL $*"; failed=1; }

for tool in "$KUBECTL" node npm openssl; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool not found"; exit 1; }
done
if [[ ! -d "$HERE/node_modules/kubernetes-models" || ! -d "$HERE/node_modules/@kubernetes-models/prometheus-operator" ]]; then
  echo "installing tests/deploy/node_modules (npm ci)"
  npm ci --prefix "$HERE" --no-audit --no-fund --loglevel=error >/dev/null || { echo "FAIL: npm ci"; exit 1; }
fi

# The binaries' flags.
COORD=$BUILD_DIR/coordinator/raptr-coordinator
WORKER=$BUILD_DIR/worker/raptr-worker
CTL=$BUILD_DIR/cli/raptrctl
for b in "$COORD" "$WORKER" "$CTL"; do [[ -x $b ]] || { echo "FAIL: $b is not built"; exit 1; }; done
"$COORD" --help >"$TMP/raptr-coordinator.help" 2>&1
"$WORKER" serve --help >"$TMP/raptr-worker.help" 2>&1
grep -q -- '--listen' "$TMP/raptr-coordinator.help" || fail "raptr-coordinator --help printed no flags"
grep -q -- '--coordinator' "$TMP/raptr-worker.help" || fail "raptr-worker serve --help printed no flags"

# Debian packages behind a binary's shared libraries (what the runtime image must install).
packages_of() {
  local lib real paths=()
  for lib in $(ldd "$@" | awk '/=>/ && $3 ~ /^\// {print $3}' | sort -u); do
    real=$(readlink -f "$lib")
    paths+=("$lib" "/usr$lib" "$real" "/usr$real")
  done
  # One query for all candidate paths (usrmerge: /lib vs /usr/lib); unknown ones are ignored.
  dpkg-query -S "${paths[@]}" 2>/dev/null | grep -v '^diversion' | cut -d: -f1 | tr ',' '\n' \
    | sed 's/^ *//' | sort -u
}
if command -v dpkg-query >/dev/null; then
  packages_of "$COORD" "$CTL" >"$TMP/coordinator.packages"
  packages_of "$WORKER" >"$TMP/worker.packages"
  for f in coordinator worker; do
    grep -q '^libgrpc29$' "$TMP/$f.packages" || fail "could not derive the $f's runtime packages from ldd"
  done
else
  echo "note: no dpkg-query; skipping the runtime package check"
fi

# (a)-(c) Kubernetes.
for overlay_dir in "$ROOT"/deploy/k8s/overlays/*/; do
  overlay=$(basename "$overlay_dir")
  if ! "$KUBECTL" kustomize "$overlay_dir" >"$TMP/$overlay.yaml" 2>"$TMP/$overlay.err"; then
    fail "$overlay: kubectl kustomize failed: $(cat "$TMP/$overlay.err")"
    continue
  fi
  ns=$(sed -n 's/^namespace: *//p' "$overlay_dir/kustomization.yaml")
  if ! KUBECTL=$KUBECTL "$ROOT/deploy/k8s/make-secrets.sh" "${ns:-default}" "$TMP/pki-$overlay" \
      >"$TMP/$overlay.secrets.yaml" 2>"$TMP/$overlay.pki.err"; then
    fail "$overlay: deploy/k8s/make-secrets.sh ${ns:-default} failed: $(cat "$TMP/$overlay.pki.err")"
    continue
  fi
  # raptrctl's token hashes to the coordinator's token line as deploy/README.md computes it.
  pki=$TMP/pki-$overlay
  grep -qx "admin admin sha256:$(printf %s "$(cat "$pki/admin.token")" | sha256sum | cut -d' ' -f1)" "$pki/tokens" \
    || fail "$overlay: make-secrets.sh: tokens has no line for admin.token's sha256"
  node "$HERE/validate.mjs" k8s "$overlay" "$TMP/$overlay.yaml" "$TMP" "$TMP/$overlay.secrets.yaml" || failed=1
done
[[ -f $TMP/cpu-dev.yaml && -f $TMP/gpu-prod.yaml ]] || fail "overlays cpu-dev and gpu-prod must exist"
grep -q 'kind: ServiceMonitor' "$TMP/gpu-prod.yaml" || fail "gpu-prod: no ServiceMonitor (components/monitoring)"
grep -q 'kind: PodMonitor' "$TMP/gpu-prod.yaml" || fail "gpu-prod: no PodMonitor (components/monitoring)"

# (d) Dockerfiles.
for f in coordinator worker-cpu worker-cuda; do
  df=$ROOT/deploy/docker/Dockerfile.$f
  [[ -f $df ]] || { fail "missing $df"; continue; }
  pk=$TMP/${f%%-*}.packages
  [[ -f $pk ]] || pk=""
  node "$HERE/validate.mjs" docker "$df" "$TMP" $pk || failed=1
  cmp -s "$df.dockerignore" "$ROOT/deploy/docker/Dockerfile.coordinator.dockerignore" \
    || fail "$df.dockerignore is missing or differs from Dockerfile.coordinator.dockerignore"
done

# (e) make images' scripts (too slow for CI to run, docs/OPERATIONS.md): they still parse, and
# check_image.py knows every image the Dockerfiles make.
bash -n "$ROOT/scripts/images.sh" || fail "scripts/images.sh does not parse"
python3 - "$ROOT" <<'PY' || fail "scripts/check_image.py"
import ast, sys
root = sys.argv[1]
tree = ast.parse(open(f"{root}/scripts/check_image.py").read())
binaries = next(ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "BINARIES")
for f in ("coordinator", "worker-cpu", "worker-cuda"):
    assert f in binaries, f"check_image.py: BINARIES has no {f}"
PY

if [[ $failed -ne 0 ]]; then
  echo "deploy_test: FAILED"
  exit 1
fi
echo "deploy_test: OK"
