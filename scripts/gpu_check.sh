#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): one command, a few minutes on one GPU; --cpu for the CPU parts only.
# Figures go to $OUT/gpu_check.json (runs/gpu_check without $OUT); a short table is printed last.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" scripts/gpu_check.py "$@"
