#!/usr/bin/env bash
# Create (or reuse) .venv and install eofm with its test tools, pinned by constraints.txt so
# no dependency ever resolves a different torch. Idempotent; safe to run again.
# A failed install stops here (pip's own output, then its exit status), so quickstart.sh,
# test.sh and CI never go on with a stale install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
log=$(mktemp "${TMPDIR:-/tmp}/eofm-setup.XXXXXX")
trap 'rm -f "$log"' EXIT
.venv/bin/python -m pip install -q --upgrade pip >"$log" 2>&1 || {
  status=$?; cat "$log" >&2
  echo "scripts/setup.sh: upgrading pip in .venv failed (pip exit status $status; its output above)" >&2
  exit "$status"
}
status=0
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]" >"$log" 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
  cat "$log" >&2
  echo "scripts/setup.sh: pip install -c constraints.txt -e \".[dev]\" failed (pip exit status" \
       "$status; its output above); .venv may hold a stale or partial install" >&2
  exit "$status"
fi
grep -v "Location 'file" "$log" || true  # pip succeeded: show what it said, less that notice
.venv/bin/python -c "import eofm.data_shards, torch, timm; print(f'eofm ready: torch {torch.__version__}, timm {timm.__version__}')"
