#!/usr/bin/env bash
# Regenerate the Python code for proto/ into src/edgeadapt/_proto/ (messages, gRPC stubs, .pyi).
#   scripts/gen-proto.sh          regenerate in place
#   scripts/gen-proto.sh --check  fail if the checked-in code differs from what the protos give
# Uses the virtualenv's grpcio-tools (pinned in requirements/dev.txt), so output is reproducible.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${EDGEADAPT_VENV:-$("$root/scripts/bootstrap.sh")}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

mapfile -t protos < <(cd "$root/proto" && find edgeadapt -name '*.proto' | sort)
(cd "$root/proto" && "$venv/bin/python" -m grpc_tools.protoc -I . \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "${protos[@]}")

# protoc names modules after the proto path (edgeadapt/stream/v1/...); the generated code lives in
# the edgeadapt._proto package, so rewrite the imports it emits between generated modules.
gen="$out/generated"
mkdir -p "$gen"
(cd "$out/edgeadapt" && find . -name '*.py*' -print0 | while IFS= read -r -d '' f; do
  mkdir -p "$gen/$(dirname "$f")"
  sed -E 's/^from edgeadapt\.([a-z0-9_.]+) import /from edgeadapt._proto.\1 import /; s/^import edgeadapt\.([a-z0-9_.]+)_pb2 as /import edgeadapt._proto.\1_pb2 as /' "$f" >"$gen/$f"
done)
# Every directory is a package.
find "$gen" -type d -print0 | while IFS= read -r -d '' d; do
  [ -f "$d/__init__.py" ] || printf '"""Generated from proto/ by scripts/gen-proto.sh; do not edit."""\n' >"$d/__init__.py"
done

target="$root/src/edgeadapt/_proto"
if [ "${1:-}" = "--check" ]; then
  if ! diff -r -q -x __pycache__ "$gen" "$target" >/dev/null; then
    diff -r -u -x __pycache__ "$gen" "$target" | head -40 >&2 || true
    echo "src/edgeadapt/_proto is out of date with proto/: run scripts/gen-proto.sh" >&2
    exit 1
  fi
  echo "generated code matches proto/"
else
  rm -rf "$target"
  cp -r "$gen" "$target"
  echo "regenerated $target"
fi
