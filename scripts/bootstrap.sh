#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and print its path.
#
# The environment lives outside the checkout, keyed by the Python version and a hash of the
# pinned requirement files, so every checkout and CI clone on a machine shares one install and a
# change of pins builds a fresh one. The project itself is not installed into it: callers put the
# checkout's src/ on PYTHONPATH (the Makefile and pytest do), so several checkouts can share it.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${EDGEADAPT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeadapt}
python=${PYTHON:-python3}

pyver=$("$python" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
key=$(cat "$root"/requirements/runtime.txt "$root"/requirements/dev.txt | sha256sum | cut -c1-12)
venv="$cache/venv-$pyver-$key"

if [ ! -f "$venv/.complete" ]; then
  echo "bootstrap: building $venv (first run downloads torch; this takes several minutes)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  (cd "$root/requirements" && "$venv/bin/python" -m pip install -q -r dev.txt >&2)
  touch "$venv/.complete"
fi
echo "$venv"
