#!/usr/bin/env bash
# A fresh machine to a finished run on the embedded defaults: set up .venv, then capture, prebatch,
# train, interpret and a steered generation (python pipeline.py). Extra arguments go to pipeline.py.
# Safe to rerun: setup skips what is installed, the pipeline skips the stages already done.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python pipeline.py "$@"
