# Source this file (`source scripts/env.sh`) to activate the toolkit's environment in the current shell, so that
# the README's `python train.py ...` commands run inside it; the environment is created first when it is missing.
_pathodiff_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if _pathodiff_python=$(bash "$_pathodiff_root/scripts/setup_env.sh"); then
  source "$(dirname "$_pathodiff_python")/activate"
  echo "environment active: $(command -v python) (leave it with: deactivate)" >&2
else
  echo "error: the environment could not be set up (see the messages above)" >&2
fi
unset _pathodiff_root _pathodiff_python
