#!/usr/bin/env bash
# The objectives' GPU benchmarks in one go, bf16 autocast on CUDA: SelectiveMAE vs MAE (tiny/96,
# small/224; eager, then compiled as runtime.compile=true does, then at batch 512), SatMAE++ vs
# MAE at the paper's S2 setting (ViT-L/8, 96 px, 3 scales), SoftCon vs MAE (ViT-S/14, 224 px),
# the step audit (launches, device-busy share, host syncs), SelectiveMAE at the paper's
# base/224, then the encoder micro-benchmark eager and compiled.
#
#   benchmarks/gpu_suite.sh [OUT_DIR]      # default reports/gpu; JSON lines + logs per benchmark
#
# Each benchmark runs under its own time limit (BENCH_TIMEOUT seconds, default 240) so one that
# hangs or fails does not cost the others; the exit status is non-zero when any of them failed.
# The benchmarks read ../shared/data/sentinel2_l1c_scene and skip cleanly without it.
set -u
OUT_DIR=${1:-reports/gpu}
PY=${PYTHON:-python3}
LIMIT=${BENCH_TIMEOUT:-240}
STEPS=${BENCH_STEPS:-20}
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."
status=0

run() {  # NAME SCRIPT ARGS...: one benchmark, its log and JSON lines under OUT_DIR
    local name=$1 t0 rc
    shift
    t0=$(date +%s)
    echo "=== $name: $*"
    PYTHONUNBUFFERED=1 timeout "$LIMIT" "$PY" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $(( $(date +%s) - t0 )) s"
    [ "$rc" -eq 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Most wanted first (each capped at BENCH_TIMEOUT): on one H200 the first run of selectivemae,
# satmaepp, softcon, selectivemae_base and models took 246 s together; compiled runs add the
# compile time of each subprocess.
sel=(benchmarks/bench_selectivemae.py --device cuda --precision bf16 --steps "$STEPS" --warmup 5)
run selectivemae "${sel[@]}" --out "$OUT_DIR/selectivemae.jsonl"
run selectivemae_compiled "${sel[@]}" --compile --out "$OUT_DIR/selectivemae_compiled.jsonl"
run selectivemae_b512 "${sel[@]}" --model vit_small_patch16 --img-size 224 --batch-size 512 \
    --out "$OUT_DIR/selectivemae_b512.jsonl"
run satmaepp benchmarks/bench_satmaepp.py --device cuda --precision bf16 \
    --model vit_large_patch8 --img-size 96 --scales 3 --batch-size 64 --steps "$STEPS" \
    --warmup 5 --out "$OUT_DIR/satmaepp.jsonl"
run softcon benchmarks/bench_softcon.py --device cuda --precision bf16 \
    --model vit_small_patch14 --img-size 224 --batch-size 128 --steps "$STEPS" --warmup 5 \
    --out "$OUT_DIR/softcon.jsonl"
run audit benchmarks/step_audit.py --device cuda --model vit_small_patch16 --img-size 224 \
    --batch-size 128 --objectives mae selectivemae softcon --out "$OUT_DIR/audit.jsonl"
run selectivemae_base "${sel[@]}" --model vit_base_patch16 --img-size 224 --batch-size 128 \
    --out "$OUT_DIR/selectivemae_base.jsonl"
run models benchmarks/bench_models.py --device cuda --bf16
run models_compiled benchmarks/bench_models.py --device cuda --bf16 --compile --models small
run checkpoint benchmarks/bench_checkpoint.py --device cuda --models vit_base_patch16 \
    vit_large_patch16
exit $status
