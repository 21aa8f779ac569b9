#!/usr/bin/env bash
# A small PKI and the tokens for raptr in NAMESPACE, printed as the three Secrets the pods mount
# (raptr-coordinator-tls, raptr-worker-tls, raptr-auth; deploy/README.md):
#   deploy/k8s/make-secrets.sh NAMESPACE [DIR] | kubectl apply -f -
# DIR (default ~/.raptr/pki-NAMESPACE, outside any checkout; mode 700) keeps the CA key, the
# certificates, and the plaintext tokens: admin.token (for raptrctl) and metrics-token (for a
# Prometheus that scrapes by annotation). A CA and tokens already in DIR are reused, so a rerun
# reissues the certificates without invalidating the CA or the tokens.
# Needs openssl >= 3.0 (req -x509 -CA) and kubectl (client side only: --dry-run=client).
# For production prefer your own PKI, e.g. cert-manager Certificates (their Secrets carry exactly
# tls.crt, tls.key and ca.crt).
set -euo pipefail
NS=${1:?usage: make-secrets.sh NAMESPACE [DIR]}
DIR=${2:-$HOME/.raptr/pki-$NS}
DAYS=${RAPTR_CERT_DAYS:-365}
KUBECTL=${KUBECTL:-kubectl}
umask 077
mkdir -p "$DIR"
cd "$DIR"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
leaf=(-addext basicConstraints=critical,CA:FALSE -addext keyUsage=critical,digitalSignature)
sign=(-x509 -CA ca.crt -CAkey ca.key -days "$DAYS")

if [[ ! -f ca.key ]]; then
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 3650 -subj "/CN=raptr CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
fi
# The coordinator: every name workers and clients dial (the Service, short and qualified; and
# 127.0.0.1/localhost for raptrctl in its pod or through kubectl port-forward).
svc=raptr-coordinator
openssl req "${sign[@]}" "${ec[@]}" -keyout coordinator.key -out coordinator.crt -subj "/CN=$svc" "${leaf[@]}" \
  -addext "subjectAltName=DNS:$svc,DNS:$svc.$NS,DNS:$svc.$NS.svc,DNS:$svc.$NS.svc.cluster.local,DNS:localhost,IP:127.0.0.1" \
  -addext extendedKeyUsage=serverAuth 2>/dev/null
# The workers' pool certificate: authorizes every worker id starting with raptr-worker- (the
# StatefulSet's pod names), so pool members could impersonate each other (deploy/README.md).
openssl req "${sign[@]}" "${ec[@]}" -keyout worker.key -out worker.crt -subj "/CN=raptr-worker-pool" "${leaf[@]}" \
  -addext "subjectAltName=URI:spiffe://raptr/worker-pool/raptr-worker-" \
  -addext extendedKeyUsage=clientAuth 2>/dev/null
# An admin client certificate for raptrctl (needed only with --require-client-cert).
openssl req "${sign[@]}" "${ec[@]}" -keyout admin.key -out admin.crt -subj "/CN=admin" "${leaf[@]}" \
  -addext "subjectAltName=URI:spiffe://raptr/admin/admin" \
  -addext extendedKeyUsage=clientAuth 2>/dev/null

# Tokens: the coordinator keeps only their SHA-256 (`<name> <role> sha256:<hex>`).
[[ -s admin.token ]] || openssl rand -hex 32 | tr -d '\n' >admin.token
[[ -s metrics-token ]] || openssl rand -hex 32 | tr -d '\n' >metrics-token
printf 'admin admin sha256:%s\n' "$(openssl dgst -sha256 -r <admin.token | cut -d' ' -f1)" >tokens

secret() { "$KUBECTL" create secret generic "$@" --namespace "$NS" --dry-run=client -o yaml; }
secret raptr-coordinator-tls --type=kubernetes.io/tls \
  --from-file=tls.crt=coordinator.crt --from-file=tls.key=coordinator.key --from-file=ca.crt=ca.crt
echo ---
secret raptr-worker-tls --type=kubernetes.io/tls \
  --from-file=tls.crt=worker.crt --from-file=tls.key=worker.key --from-file=ca.crt=ca.crt
echo ---
secret raptr-auth --from-file=tokens=tokens --from-file=metrics-token=metrics-token
echo "make-secrets: wrote $(pwd) (admin.token: raptrctl's token; ca.crt: the CA clients trust)" >&2
