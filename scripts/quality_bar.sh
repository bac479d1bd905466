#!/usr/bin/env bash
# The EuroSAT-MS quality bar of the export/eval issue, end to end (~25 minutes on 2 cores; needs
# ../shared/data): a tiny encoder pretrained for at most 20 minutes on one CPU thread on every
# pooled Sentinel-2 tile of ../shared/data (launch/configs/data/s2_pooled_64.yaml; launch/configs/selectivemae_s2_pooled_cpu.yaml,
# or the recipe named by $RECIPE, e.g. RECIPE=mae_s2_pooled_cpu for the MAE yardstick),
# exported, then probed on the 202 labelled EuroSAT-MS tiles (5-fold linear probe and kNN)
# with the class token and with the mean of the patch tokens, each beside random-init
# encoders of the same architecture (six seeds: the table's range row) and the
# band-statistics baseline. Tables are printed;
# reports land in reports/quality_bar_RECIPE_{cls,mean}. Uses the venv of scripts/setup.sh (.venv),
# or $EOFM_BIN (a folder holding eofm-pretrain, eofm-export, eofm-probe).
# Extra arguments are pretraining config overrides, e.g. runtime.max_minutes=5.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${EOFM_BIN:-.venv/bin}"
if [ ! -d ../shared/data/eurosat_ms ]; then
  echo "quality_bar: ../shared/data/eurosat_ms is missing; this measurement needs ../shared" >&2
  exit 2
fi
recipe="${RECIPE:-selectivemae_s2_pooled_cpu}"
run="runs/quality_bar_$recipe"
OMP_NUM_THREADS=1 "$bin/eofm-pretrain" --config "launch/configs/$recipe.yaml" \
  runtime.out_dir="$run" "$@"
"$bin/eofm-export" "$run" --out "exports/quality_bar_$recipe"
for pool in cls mean; do
  echo "== $recipe, features: $pool"
  "$bin/eofm-probe" --encoder "exports/quality_bar_$recipe" --data ../shared/data/eurosat_ms \
    --pool "$pool" --random-seeds 6 --out "reports/quality_bar_${recipe}_$pool" --quiet
done
