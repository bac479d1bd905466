#!/usr/bin/env bash
# Set up, then run the main job on the bundled real sample: build shards from the Sentinel-2
# L1C scene in data_shards/sample (13 bands at 10/20/60 m resampled to 10 m), verify them, and
# pretrain a tiny MAE on the CPU for a few minutes; the loss is printed as it falls and a
# checkpoint is left in runs/quickstart/checkpoints. Running it again resumes (or, when the run
# is complete, just reports). Extra arguments are config overrides, e.g. schedule.steps=20.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/eofm-pretrain --config launch/configs/quickstart.yaml "$@"
.venv/bin/eofm-shard verify out/quickstart/s2_64
.venv/bin/python - <<'PY'
import json
recs = [json.loads(line) for line in open("runs/quickstart/metrics.jsonl")]
last = {r["step"]: r for r in recs}
steps = sorted(last)
print(f"\nloss: step {steps[0]} {last[steps[0]]['loss']:.4f} -> step {steps[-1]} "
      f"{last[steps[-1]]['loss']:.4f}; {last[steps[-1]].get('samples_per_s', 0):.1f} samples/s; "
      "checkpoints in runs/quickstart/checkpoints")
PY
