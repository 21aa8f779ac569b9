#!/usr/bin/env bash
# Certificates for a raptr cluster, with Debian's openssl: a CA, the coordinator's server
# certificate, and worker / client certificates whose URI SAN is their SPIFFE identity
# (docs/SECURITY.md). Keys are EC P-256, written mode 0600.
#   make-certs.sh ca DIR                       DIR/ca.crt, DIR/ca.key
#   make-certs.sh server DIR NAME HOST...      DIR/NAME.crt/.key for these DNS names / IPs
#   make-certs.sh client DIR NAME SPIFFE_ID    DIR/NAME.crt/.key, e.g. spiffe://raptr/worker/w1
#   make-certs.sh expired DIR NAME SPIFFE_ID   as client, valid only in 2020 (for tests)
set -euo pipefail
umask 077
cmd=${1:?usage: make-certs.sh ca|server|client|expired DIR ...}
dir=${2:?DIR}
mkdir -p "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
case "$cmd" in
  ca)
    key "$dir/ca.key"
    openssl req -x509 -new -key "$dir/ca.key" -subj "/O=raptr/CN=raptr CA" -days 3650 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$dir/ca.crt"
    ;;
  server | client | expired)
    name=${3:?NAME}
    shift 3
    [[ $# -gt 0 ]] || { echo "make-certs.sh $cmd: give the names (server) or SPIFFE id" >&2; exit 2; }
    key "$dir/$name.key"
    if [[ $cmd == server ]]; then
      san=""
      for host in "$@"; do
        if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san+="${san:+,}IP:$host"; else san+="${san:+,}DNS:$host"; fi
      done
      usage=serverAuth
    else
      san="URI:$1"
      usage=clientAuth
    fi
    ext=$(mktemp)
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
      "$usage" "$san" > "$ext"
    openssl req -new -key "$dir/$name.key" -subj "/O=raptr/CN=$name" -out "$dir/$name.csr"
    if [[ $cmd == expired ]]; then
      # `openssl ca` is the one openssl 3.0 command that takes explicit dates.
      db=$(mktemp -d)
      : > "$db/index.txt"
      printf '[ca]\ndefault_ca=c\n[c]\ndatabase=%s/index.txt\nnew_certs_dir=%s\nserial=%s/serial\ndefault_md=sha256\npolicy=p\ncopy_extensions=none\n[p]\ncommonName=supplied\n' \
        "$db" "$db" "$db" > "$db/ca.cnf"
      echo 01 > "$db/serial"
      openssl ca -batch -config "$db/ca.cnf" -cert "$dir/ca.crt" -keyfile "$dir/ca.key" \
        -startdate 20200101000000Z -enddate 20200102000000Z -extfile "$ext" \
        -in "$dir/$name.csr" -out "$dir/$name.crt" -notext 2>/dev/null
      rm -rf "$db"
    else
      openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 825 -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null
    fi
    rm -f "$ext" "$dir/$name.csr"
    ;;
  *)
    echo "make-certs.sh: unknown command '$cmd' (ca, server, client, expired)" >&2
    exit 2
    ;;
esac
