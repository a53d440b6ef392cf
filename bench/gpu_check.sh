#!/usr/bin/env bash
# The one-shot GPU check (see bench/gpu_check.py): every GPU test, probe and benchmark in < 8 minutes.
#   bash bench/gpu_check.sh [OUT_DIR]      (default: $OUT, else ./gpu_check_out)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
exec python3 bench/gpu_check.py --out "$out"
