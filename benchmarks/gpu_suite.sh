#!/usr/bin/env bash
# GPU benchmark suite: writes OUT_DIR/gpu_suite.json in under 8 minutes on one CUDA GPU (see gpu_suite.py).
# Usage: benchmarks/gpu_suite.sh OUT_DIR [--smoke]     (--smoke or GPU_SUITE_SMOKE=1: tiny sizes, runs on a CPU)
# PYTHON selects the interpreter (default: python, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-$(command -v python || command -v python3)}" "$here/gpu_suite.py" "$@"
