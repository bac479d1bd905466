#!/usr/bin/env bash
# Set up, lint, then run the test suite. Exits non-zero on any failure, including
# "no tests collected" (pytest's exit status 5).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
# Two pytest workers (pytest-xdist), one per core, each with one math thread
# (OMP_NUM_THREADS=1 unless set: two workers of two threads each on two cores spent ~8% more
# CPU). Work stealing, with the long multi-process modules collected first and the in-process
# torch.compile tests last (tests/conftest.py), keeps the long modules from ending on one worker
# and lets rank tests fork. EOFM_TEST_WORKERS=0 runs everything in one process.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python -m pytest -q -p no:cacheprovider --timeout 600 -n "${EOFM_TEST_WORKERS:-2}" \
    --dist worksteal "$@"
