#!/usr/bin/env bash
# Create (or reuse) .venv and install eofm with its test tools, pinned by constraints.txt so
# no dependency ever resolves a different torch. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]" 2>&1 | grep -v "Location 'file" || true
.venv/bin/python -c "import eofm.data_shards, torch, timm; print(f'eofm ready: torch {torch.__version__}, timm {timm.__version__}')"
