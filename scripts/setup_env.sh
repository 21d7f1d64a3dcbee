#!/usr/bin/env bash
# Creates (once) a virtual environment with requirements.txt installed and prints its python.
# The environment lives outside the clone, keyed by a hash of requirements.txt, so repeated runs reuse it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
key=$( (cat "$root/requirements.txt"; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
cache=${PATHODIFF_ENV_CACHE:-$HOME/.cache/pathodiff}
venv="$cache/venv-$key"
# pip warns about every configured index folder that lacks a package; those lines are noise.
quiet_pip() { grep -v "is ignored: it is neither a file nor a directory" || true; }
if [ ! -f "$venv/.complete" ]; then
  echo "setting up the Python environment in $venv (a few minutes the first time)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet -r "$root/requirements.txt" 2>&1 | quiet_pip >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
