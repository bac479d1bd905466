#!/usr/bin/env bash
# Set up, then run the main job on the bundled real sample, end to end:
#   1. shards from the Sentinel-2 L1C scene in data_shards/sample (bands at 10/20/60 m
#      resampled to 10 m, 64 px tiles), verified, and a contact sheet of their first tiles
#      (reports/quickstart/shards.png);
#   2. a tiny MAE pretrained on them on the CPU for a few minutes (the loss is printed as it
#      falls; checkpoints in runs/quickstart/checkpoints; running again resumes or reports);
#   3. the encoder exported as a Hub-ready folder (exports/quickstart);
#   4. a linear probe and kNN on the bundled labelled BigEarthNet patches (multi-label, tiled to
#      the encoder's 64 px; tiles of one patch stay in one fold) beside a random-init encoder and
#      a band-statistics baseline; the table is printed and written to reports/quickstart.
# Six labelled patches make a smoke test of the chain, not a benchmark: see README for the
# EuroSAT evaluation. Extra arguments are pretraining config overrides, e.g. schedule.steps=20;
# the later steps follow them (runtime.out_dir=runs/mine: exports/mine, reports/mine).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/eofm-pretrain --config launch/configs/quickstart.yaml "$@"
# the run folder and shards as the overrides resolved them (runtime.out_dir=, data.path=, ...),
# so every later step reads this run, never an older one at the default paths
{ read -r run; read -r data; read -r metrics; } < <(.venv/bin/python -c '
import sys
from eofm.pretrain.config import load_config
c = load_config(sys.argv[1], sys.argv[2:], check=False)
print(c.runtime.out_dir, c.data.path, c.logging.jsonl or "", sep="\n")
' launch/configs/quickstart.yaml "$@")
name=$(basename "$run")
.venv/bin/eofm-shard verify "$data"
mkdir -p "reports/$name"
.venv/bin/eofm-shard preview "$data" --out "reports/$name/shards.png" > /dev/null
if [ -n "$metrics" ]; then
  RUN="$run" METRICS="$metrics" .venv/bin/python - <<'PY'
import json
import os
run = os.environ["RUN"]
recs = [json.loads(line) for line in open(os.path.join(run, os.environ["METRICS"]))]
last = {r["step"]: r for r in recs if "loss" in r}
steps = sorted(last)
print(f"\nloss: step {steps[0]} {last[steps[0]]['loss']:.4f} -> step {steps[-1]} "
      f"{last[steps[-1]]['loss']:.4f}; {last[steps[-1]].get('samples_per_s', 0):.1f} samples/s; "
      f"checkpoints in {run}/checkpoints, reconstruction pictures in {run}/previews")
PY
fi
labelled=out/quickstart/bigearthnet_64
if [ ! -f "$labelled/manifest.json" ]; then
  .venv/bin/eofm-shard build data_shards/sample/bigearthnet --out "$labelled" --tile 64 \
    --stride 56 --quiet
fi
.venv/bin/eofm-export "$run" --out "exports/$name"
.venv/bin/eofm-probe --encoder "exports/$name" --data "$labelled" --modality s2 --folds 3 \
  --out "reports/$name" --quiet
