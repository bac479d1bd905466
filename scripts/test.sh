#!/usr/bin/env bash
# Set up, lint, then run the test suite. Exits non-zero on any failure, including
# "no tests collected" (pytest's exit status 5).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider --timeout 600 "$@"
