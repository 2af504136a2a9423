#!/usr/bin/env bash
# Resolve requirements/runtime.txt with every dependency into requirements/images.lock, the pins
# the images install with. Uses the project's venv for pip; nothing is installed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$("$root/scripts/bootstrap.sh")
report=$(mktemp)
trap 'rm -f "$report"' EXIT
"$venv/bin/pip" install --dry-run --ignore-installed --quiet --report "$report" -r "$root/requirements/runtime.txt"
{
    echo "# Every package of the images, pinned: requirements/runtime.txt resolved with its dependencies."
    echo "# The Dockerfiles install with -c from this file. Regenerate with scripts/lock-images.sh after"
    echo "# changing runtime.txt (a unit test checks that the two agree)."
    "$venv/bin/python" -c '
import json, re, sys
items = json.load(open(sys.argv[1]))["install"]
pins = ((re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(), i["metadata"]["version"]) for i in items)
for name, version in sorted(pins):
    print(f"{name}=={version}")
' "$report"
} > "$root/requirements/images.lock"
echo "wrote requirements/images.lock" >&2
