#!/usr/bin/env bash
# Set up, then run the main job on the bundled real sample: build shards from the Sentinel-2
# L1C scene (per-band files at 10/20/60 m) and the BigEarthNet S1+S2 pairs, verify them and
# print their summaries. Output goes to ./out/quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
OUT=out/quickstart
.venv/bin/eofm-shard build data_shards/sample/sentinel2_l1c_scene --out "$OUT/s2scene" --tile 96 --overwrite
.venv/bin/eofm-shard build data_shards/sample/bigearthnet --out "$OUT/bigearthnet" --overwrite
.venv/bin/eofm-shard verify "$OUT/s2scene"
.venv/bin/eofm-shard verify "$OUT/bigearthnet"
