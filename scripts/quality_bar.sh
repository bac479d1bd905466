#!/usr/bin/env bash
# The EuroSAT-MS quality bar of the export/eval issue, end to end (~25 minutes on 2 cores; needs
# ../shared/data): a tiny MAE pretrained for at most 20 minutes on one CPU thread on every
# Sentinel-2 tile in ../shared/data except EuroSAT (launch/configs/mae_s2_pooled_cpu.yaml),
# exported, then probed on the 202 labelled EuroSAT-MS tiles (5-fold linear probe and kNN)
# with the class token and with the mean of the patch tokens, each beside a random-init
# encoder of the same architecture and the band-statistics baseline. Tables are printed;
# reports land in reports/quality_bar_{cls,mean}. Uses the venv of scripts/setup.sh (.venv),
# or $EOFM_BIN (a folder holding eofm-pretrain, eofm-export, eofm-probe).
# Extra arguments are pretraining config overrides, e.g. runtime.max_minutes=5.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${EOFM_BIN:-.venv/bin}"
if [ ! -d ../shared/data/eurosat_ms ]; then
  echo "quality_bar: ../shared/data/eurosat_ms is missing; this measurement needs ../shared" >&2
  exit 2
fi
run=runs/quality_bar
OMP_NUM_THREADS=1 "$bin/eofm-pretrain" --config launch/configs/mae_s2_pooled_cpu.yaml \
  runtime.out_dir="$run" "$@"
"$bin/eofm-export" "$run" --out exports/quality_bar
for pool in cls mean; do
  echo "== features: $pool"
  "$bin/eofm-probe" --encoder exports/quality_bar --data ../shared/data/eurosat_ms \
    --pool "$pool" --out "reports/quality_bar_$pool" --quiet
done
