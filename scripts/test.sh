#!/usr/bin/env bash
# Installs what is needed (once) and runs the test suite on the CPU. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$root/scripts/setup_env.sh")
cd "$root"
exec "$py" -m pytest "$@"
