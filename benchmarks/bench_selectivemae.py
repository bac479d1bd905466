"""SelectiveMAE vs plain MAE: training samples/s and peak memory, same encoder, data and batch.

Per case (encoder preset + input size), side by side in one run:
  mae           mask 0.75, full MAE decoder (512 wide, 8 blocks, 16 heads) over all tokens;
  selectivemae  mask 0.85, kept_mask_ratio 0.25, CrossMAE decoder (512 wide, 12 blocks, 16
                heads: the paper's depth) over the 25% chosen tokens, PSTS selection and the
                HOG-style score on every step (stage "similar", which computes the embedding
                similarity: the most expensive stage), no loss-aware sample pruning.
A step is forward + backward + AdamW step (norm_pix loss), timed after warm-up steps; the
reported step time is the median. Each measurement runs in its own subprocess so its peak memory
is its own: CUDA ``max_memory_allocated``; CPU peak RSS (``VmHWM``, MiB) with ``base_rss_mb`` (after
building the model and inputs) beside it and ``step_mem_mb`` = their difference, which the CPU
summary's ``memory_ratio`` (MAE / SelectiveMAE) compares. For SelectiveMAE the score + selection time (no
gradient) is also timed on its own: ``select_ms`` and its share of the step.

Inputs: real Sentinel-2 L1C crops from ../shared/data/sentinel2_l1c_scene (13 bands at 10 m,
normalised per band over the scene; ``--bands rgb`` takes B04, B03, B02), cut once in the parent
and shared by both methods; without the data it measures nothing: a "skip" record and exit status
77 (``table.SKIPPED``, not a success).

Presets: ``tiny`` = vit_tiny_patch8 at 96 px, ``small`` = vit_small_patch16 at 224 px (both by
default); ``--model`` takes a preset or a registered name (with ``--img-size``).
Prints one JSON object per line (``kind``: "run", "summary", "skip", "error"; with ``bench`` and
``machine``: benchmarks/table.py), then a table; exit status 1 when a measurement failed.

  python benchmarks/bench_selectivemae.py                       # CPU: tiny/96 and small/224
  python benchmarks/bench_selectivemae.py --device cuda --precision bf16
  python benchmarks/bench_selectivemae.py --model vit_test_patch8 --img-size 32 --batch-size 2 --steps 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from table import Records

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT.parent / "shared" / "data" / "sentinel2_l1c_scene"
S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
            "B12"]
RGB_BANDS = ["B04", "B03", "B02"]
PRESETS = {"tiny": ("vit_tiny_patch8", 96), "small": ("vit_small_patch16", 224)}
BATCH = {"cpu": {"tiny": 16, "small": 8}, "cuda": {"tiny": 256, "small": 128}}
METHODS = ("mae", "selectivemae")


def _build(method: str, model: str, size: int, bands: list[str], a: argparse.Namespace):
    from eofm.models import create_model
    from eofm.pretrain.objectives import MAE, SelectiveMAE

    enc = create_model(model, bands=bands, img_size=size)
    if method == "mae":
        return MAE(enc, bands, mask_ratio=0.75, decoder_dim=512, decoder_depth=8,
                   decoder_heads=16, norm_pix_loss=True)
    m = SelectiveMAE(enc, bands, mask_ratio=0.85, kept_mask_ratio=0.25, decoder_dim=512,
                     decoder_depth=a.sel_decoder_depth, decoder_heads=16, norm_pix_loss=True)
    m.progress = a.stage_progress
    return m


def run_one(method: str, model: str, size: int, crops: str, a: argparse.Namespace) -> dict:
    """One measurement in this process: steady-state step time, samples/s, peak memory."""
    import torch

    from eofm.pretrain.metrics import peak_memory_mb
    from eofm.pretrain.optim import adamw

    dev = torch.device(a.device)
    torch.manual_seed(0)
    x = torch.load(crops, weights_only=True).to(dev)
    bands = RGB_BANDS if a.bands == "rgb" else S2_BANDS
    obj = _build(method, model, size, bands, a).to(dev)
    if a.compile:  # as runtime.compile=true: the blocks and the score compiled
        from eofm.pretrain.strategy import compile_model

        compile_model(obj)
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = adamw([{"params": params}], 1e-4, (0.9, 0.95), 1e-8)  # the trainer's AdamW
    amp = a.precision == "bf16"
    gen = torch.Generator(device=dev).manual_seed(0)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = obj(x, generator=gen)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    base_rss = peak_memory_mb("cpu")  # this process's own peak RSS so far (VmHWM)
    for _ in range(a.warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    rec = {"kind": "run", "method": method, "model": model, "img_size": size,
           "tokens": obj.encoder.num_tokens, "bands": len(bands), "batch": x.shape[0],
           "device": a.device, "precision": a.precision, "steps": a.steps,
           "step_time_s": round(dt, 4), "samples_per_s": round(x.shape[0] / dt, 2),
           "peak_mem_mb": round(peak_memory_mb(dev), 1), "threads": torch.get_num_threads(),
           "compiled": a.compile}
    if dev.type == "cpu":  # the peak RSS holds the interpreter, libraries and inputs too
        rec["base_rss_mb"] = round(base_rss, 1)
        rec["step_mem_mb"] = round(rec["peak_mem_mb"] - base_rss, 1)
    if method == "selectivemae":
        rec.update(visible=obj.num_visible, targets=obj.num_targets, stage=obj.stage)
        sel = []
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            for _ in range(max(3, a.steps)):
                t0 = time.perf_counter()
                obj.select(x, generator=gen)
                sync()
                sel.append(time.perf_counter() - t0)
        rec["select_ms"] = round(1000 * statistics.median(sel), 2)
        rec["select_share"] = round(statistics.median(sel) / dt, 4)
    else:
        rec.update(visible=obj.encoder.num_tokens - int(obj.encoder.num_tokens * 0.75),
                   targets=obj.encoder.num_tokens)
    return rec


def _cases(a: argparse.Namespace) -> list[tuple[str, str, int, int]]:
    """(label, model, img_size, batch) per case."""
    names = [a.model] if a.model else list(PRESETS)
    out = []
    for n in names:
        model, size = PRESETS.get(n, (n, a.img_size or 224))
        size = a.img_size or size
        batch = a.batch_size or BATCH[a.device].get(n, 8)
        out.append((n, model, size, batch))
    return out


def _table(rows: list[dict]) -> str:
    head = f"{'case':<28}{'method':<14}{'vis/tgt':>9}{'step s':>9}{'samples/s':>11}{'peak MiB':>10}" \
           f"{'select':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("kind") == "summary":
            lines.append(f"{r['case']:<28}{'ratio':<14}{'':>9}{'':>9}"
                         f"{r['speedup']:>10.2f}x{r['memory_ratio']:>9.2f}x{'':>9}")
            continue
        case = f"{r['model']}/{r['img_size']} b{r['batch']}"
        sel = f"{100 * r['select_share']:.1f}%" if "select_share" in r else ""
        lines.append(f"{case:<28}{r['method']:<14}{r['visible']:>4}/{r['targets']:<4}"
                     f"{r['step_time_s']:>9.3f}{r['samples_per_s']:>11.2f}"
                     f"{r['peak_mem_mb']:>10.1f}{sel:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure both methods per case, each in its own process; JSON lines, then the table.
    Exit status: 1 when a measurement failed, 77 (``table.SKIPPED``) without the scene."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="bf16 autocast (GPU only)")
    ap.add_argument("--model", help="preset (tiny, small) or registered encoder name; "
                                    "default: both presets")
    ap.add_argument("--img-size", type=int, help="input size in pixels (default: the preset's)")
    ap.add_argument("--batch-size", type=int, help="samples per step (default: per preset)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--bands", default="s2", choices=["s2", "rgb"],
                    help="13 Sentinel-2 L1C bands or B04,B03,B02")
    ap.add_argument("--sel-decoder-depth", type=int, default=12,
                    help="SelectiveMAE decoder blocks (paper: 12)")
    ap.add_argument("--stage-progress", type=float, default=0.0,
                    help="run progress in [0, 1) that fixes the PSTS stage (0: similar)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="alternate the two methods this many times; the best of each is kept")
    ap.add_argument("--compile", action="store_true",
                    help="compile every transformer block and the score (runtime.compile=true); "
                         "the warm-up steps absorb the compile time")
    ap.add_argument("--out", help="also append the JSON lines to this file")
    ap.add_argument("--one", nargs=4, metavar=("METHOD", "MODEL", "SIZE", "CROPS"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.precision == "bf16" and a.device != "cuda":
        ap.error("--precision bf16: only with --device cuda (CPU timings are fp32)")
    if a.one:
        print(json.dumps(run_one(a.one[0], a.one[1], int(a.one[2]), a.one[3], a)))
        return 0
    records = Records("bench_selectivemae", a.out)
    if not SCENE.is_dir():
        return records.skip(f"{SCENE} is not available")
    import torch

    bands = RGB_BANDS if a.bands == "rgb" else S2_BANDS
    passthrough = ["--device", a.device, "--precision", a.precision, "--steps", str(a.steps),
                   "--warmup", str(a.warmup), "--bands", a.bands,
                   "--sel-decoder-depth", str(a.sel_decoder_depth),
                   "--stage-progress", str(a.stage_progress)] + (["--compile"] if a.compile else [])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, size, batch in _cases(a):
            crops = Path(tmp) / f"{label}_{size}_{batch}.pt"
            from scene_crops import scene_crops  # benchmarks/, beside this script
            torch.save(scene_crops(SCENE, bands, size, batch), crops)
            best: dict[str, dict] = {}
            for _ in range(max(1, a.repeats)):
                for method in METHODS:
                    done = subprocess.run([sys.executable, __file__, "--one", method, model,
                                           str(size), str(crops), *passthrough],
                                          capture_output=True, text=True)
                    if done.returncode:
                        records.emit({"kind": "error", "method": method, "model": model,
                                      "img_size": size, "error": done.stderr[-800:]})
                        continue
                    rec = json.loads(done.stdout.strip().splitlines()[-1])
                    records.emit(rec)
                    if method not in best or rec["samples_per_s"] > best[method]["samples_per_s"]:
                        best[method] = rec
            if len(best) == 2:
                mae, sel = best["mae"], best["selectivemae"]
                mem = "step_mem_mb" if "step_mem_mb" in mae else "peak_mem_mb"
                summary = {"kind": "summary", "case": f"{model}/{size} b{batch}",
                           "model": model, "img_size": size, "batch": batch,
                           "device": a.device, "precision": a.precision, "compiled": a.compile,
                           "mae_samples_per_s": mae["samples_per_s"],
                           "selectivemae_samples_per_s": sel["samples_per_s"],
                           "speedup": round(sel["samples_per_s"] / mae["samples_per_s"], 3),
                           "memory_ratio": round(mae[mem] / max(sel[mem], 1e-3), 3),
                           "memory_basis": mem,
                           "target_speedup": 2.0}
                records.emit(summary)
                rows += [mae, sel, summary]
    print("\n" + _table(rows))
    return records.status()


if __name__ == "__main__":
    sys.exit(main())
