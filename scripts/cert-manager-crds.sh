#!/usr/bin/env bash
# Print the folder holding cert-manager's CRD manifests (crd-*.yaml), taken from the Go module
# pinned in tools/cert-manager/go.mod (checked against its go.sum) and cached under
# ${EDGEADAPT_CACHE:-~/.cache/edgeadapt}/cert-manager/<version>. The e2e tier installs them so the
# Certificates the operator writes are validated by the real schema. The files are cert-manager's
# Helm templates; their template expressions sit in comments and label values only.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
mod=github.com/cert-manager/cert-manager
version=$(awk -v m="$mod" '$1 == "require" && $2 == m { print $3 }' "$root/tools/cert-manager/go.mod")
out="${EDGEADAPT_CACHE:-$HOME/.cache/edgeadapt}/cert-manager/$version"
if [ ! -f "$out/crd-certificates.yaml" ]; then
    dir=$(cd "$root/tools/cert-manager" && "$GO" mod download -json "$mod" | awk -F'"' '$2 == "Dir" { print $4 }')
    mkdir -p "$(dirname "$out")"
    tmp=$(mktemp -d "$(dirname "$out")/.crds.XXXXXX")
    cp "$dir"/deploy/crds/crd-*.yaml "$tmp/"
    rm -rf "$out"
    mv "$tmp" "$out"
fi
echo "$out"
