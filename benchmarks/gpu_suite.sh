#!/usr/bin/env bash
# The objectives' GPU benchmarks in one go, bf16 autocast on CUDA: SelectiveMAE vs MAE (tiny/96,
# small/224; eager, then compiled as runtime.compile=true does, then at batch 512), SatMAE++ vs
# MAE at the paper's S2 setting (ViT-L/8, 96 px, 3 scales), SoftCon vs MAE (ViT-S/14, 224 px),
# the step audit (launches, device-busy share, host syncs), SelectiveMAE at the paper's
# base/224, then the encoder micro-benchmark eager and compiled.
#
#   benchmarks/gpu_suite.sh [OUT_DIR]      # JSON lines + logs per benchmark
#
# OUT_DIR: a path from the current directory; by default reports/gpu in the repository.
# Each benchmark runs under its own time limit (BENCH_TIMEOUT seconds, default 240) so one that
# hangs or fails does not cost the others. A summary at the end gives each one's outcome: ok,
# FAILED (a non-zero exit: an "error" record, a crash, a log that could not be written),
# TIMED OUT, or SKIPPED (exit 77: the benchmark measured nothing because
# ../shared/data/sentinel2_l1c_scene, which the objective benchmarks read, is absent).
# Exit status: 1 when any failed or timed out, else 77 when any was skipped, else 0.
set -u
PY=${PYTHON:-python3}
LIMIT=${BENCH_TIMEOUT:-240}
STEPS=${BENCH_STEPS:-20}
REPO=$(cd "$(dirname "$0")/.." && pwd) || exit 1
OUT_DIR=${1:-$REPO/reports/gpu}
# absolute before the cd below, so that a relative OUT_DIR means the caller's directory
mkdir -p -- "$OUT_DIR" && OUT_DIR=$(cd -- "$OUT_DIR" && pwd) || exit 1
cd "$REPO" || exit 1
SKIPPED=77  # benchmarks/table.py SKIPPED
failed=0
skipped=0
summary=()

run() {  # NAME SCRIPT ARGS...: one benchmark, its log and JSON lines under OUT_DIR
    local name=$1 t0 rc tee_rc outcome codes
    shift
    t0=$(date +%s)
    echo "=== $name: $*"
    PYTHONUNBUFFERED=1 timeout "$LIMIT" "$PY" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    codes=("${PIPESTATUS[@]}")
    rc=${codes[0]} tee_rc=${codes[1]}
    if [ "$rc" -eq 0 ] && [ "$tee_rc" -ne 0 ]; then
        outcome="FAILED (its log $OUT_DIR/$name.log could not be written)"
    elif [ "$rc" -eq 0 ]; then
        outcome="ok"
    elif [ "$rc" -eq "$SKIPPED" ]; then
        outcome="SKIPPED (no input data: see its skip record)"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        outcome="TIMED OUT after ${LIMIT} s"
    else
        outcome="FAILED (exit $rc)"
    fi
    case $outcome in
        ok) ;;
        SKIPPED*) skipped=$((skipped + 1)) ;;
        *) failed=$((failed + 1)) ;;
    esac
    echo "=== $name: exit $rc after $(( $(date +%s) - t0 )) s: $outcome"
    summary+=("$(printf '%-22s %s' "$name" "$outcome")")
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
run models benchmarks/bench_models.py --device cuda --bf16 --out "$OUT_DIR/models.jsonl"
run models_compiled benchmarks/bench_models.py --device cuda --bf16 --compile --models small \
    --out "$OUT_DIR/models_compiled.jsonl"
run checkpoint benchmarks/bench_checkpoint.py --device cuda --models vit_base_patch16 \
    vit_large_patch16 --out "$OUT_DIR/checkpoint.jsonl"

echo
echo "=== summary (logs and JSON lines in $OUT_DIR): ${#summary[@]} benchmarks, $failed failed or" \
     "timed out, $skipped skipped"
printf '  %s\n' "${summary[@]}"
if [ "$failed" -gt 0 ]; then
    exit 1
elif [ "$skipped" -gt 0 ]; then
    exit "$SKIPPED"
fi
exit 0
