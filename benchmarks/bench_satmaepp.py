"""SatMAE++ training cost against plain MAE on the same encoder and the same real data.

Three cases, each a full training step (forward + backward + AdamW) on real Sentinel-2 L1C
crops of ``../shared/data/sentinel2_l1c_scene`` (SatMAE's 10 bands, 20/60 m bands resampled to
10 m, per-band standardised), after warm-up steps, each in its own subprocess so its peak
memory is its own:

- ``mae_plain``:   MAE, plain tokenizer over the 10 bands, model input ``--img-size``;
- ``mae_grouped``: MAE, SatMAE's grouped tokenizer (3 groups, 3x the tokens): the cost of the
  grouped tokenizer is ``mae_grouped`` vs ``mae_plain``;
- ``satmaepp``:    SatMAE++ (grouped + the multi-scale up-sampling branch), fed the
  ``img_size * 2**(scales-1)`` crop it downsamples on the device: the cost of the branch is
  ``satmaepp`` vs ``mae_grouped``.

MAE cases get the same crops already downsampled to the model input (bilinear, antialiased, as
SatMAE++ does on the device), so all three encode the same pixels. Peak memory: CUDA allocator
peak after warm-up on GPU; on CPU the process's max RSS (``base_rss_mb``: the RSS before the
first step, so the step's own memory is the difference; the scene is read once by the parent,
which hands the crops to each case as a file). Precision: bf16 autocast on GPU by
default (the up-sampling branch included), fp32 on CPU.

The step time is the median of the timed steps. Prints one JSON object per line (also appended
to ``--out``; with ``bench`` and ``machine``: benchmarks/table.py) and a table at the end; exit
status 1 when a case failed (its "error" line says why); without ``../shared/data`` it measures
nothing: a "skip" line and exit status 77 (``table.SKIPPED``, not a success).
Usage: ``python benchmarks/bench_satmaepp.py [--device cuda] [--model vit_large_patch8]
[--img-size 96] [--batch-size 64] [--steps 20] [--precision bf16]``.
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
BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]  # SatMAE's order
CASES = ("mae_plain", "mae_grouped", "satmaepp")


def run_case(case: str, a: argparse.Namespace) -> dict:
    """One case in this process: steady-state samples/s and peak memory."""
    import torch

    from eofm.models import create_model
    from eofm.pretrain.metrics import mfu, peak_memory_mb, train_flops_per_sample
    from eofm.pretrain.objectives import MAE, SatMAEPP
    from eofm.pretrain.objectives.satmaepp import downsample
    from eofm.pretrain.optim import adamw

    dev = torch.device(a.device)
    torch.manual_seed(0)
    tok = "plain" if case == "mae_plain" else "grouped"
    enc = create_model(a.model, tokenizer=tok, bands=BANDS, img_size=a.img_size)
    dec = {"decoder_dim": a.decoder_dim, "decoder_depth": a.decoder_depth,
           "decoder_heads": a.decoder_heads}
    factor = 2 ** (a.scales - 1)
    crops = torch.load(a.crops, weights_only=True)  # made once by the parent: the scene's
    #                                                 pixels never count in this RSS peak
    valid = torch.ones(crops.shape[0], *crops.shape[-2:], dtype=torch.bool)
    if case == "satmaepp":
        obj: torch.nn.Module = SatMAEPP(enc, BANDS, num_scales=a.scales, **dec)
        x = crops
    else:
        obj = MAE(enc, BANDS, norm_pix_loss=False, **dec)
        x, valid = downsample(crops, valid, factor)
    obj = obj.to(dev)
    x, valid = x.to(dev), valid.to(dev)
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = adamw([{"params": params}], 1e-4, (0.9, 0.95), 1e-8)  # the trainer's AdamW
    amp = a.precision == "bf16"
    gen = torch.Generator(device=dev).manual_seed(0)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = obj(x, valid, generator=gen)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    base_rss = peak_memory_mb("cpu")
    for _ in range(a.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    flops = train_flops_per_sample(obj) * a.batch_size
    m = mfu(flops, dt, dev)
    return {"kind": "run", "case": case, "model": a.model, "img_size": a.img_size,
            "input_px": int(x.shape[-1]), "scales": a.scales if case == "satmaepp" else 1,
            "tokens": enc.num_tokens, "bands": len(BANDS), "batch": a.batch_size,
            "device": a.device, "precision": a.precision, "step_time_s": round(dt, 4),
            "samples_per_s": round(a.batch_size / dt, 2),
            "peak_mem_mb": round(peak_memory_mb(dev), 1), "base_rss_mb": round(base_rss, 1),
            "mfu": round(m, 4) if m is not None else None, "threads": torch.get_num_threads()}


def _table(runs: list[dict]) -> str:
    """A readable table with each case's cost relative to the previous one and to MAE."""
    head = f"{'case':<12} {'tokens':>6} {'input':>5} {'samples/s':>10} {'peak MiB':>9} " \
           f"{'vs prev':>8} {'vs mae':>7}"
    lines = [head, "-" * len(head)]
    base = prev = None
    for r in runs:
        sps = r["samples_per_s"]
        vp = f"{sps / prev:.2f}x" if prev else "-"
        vb = f"{sps / base:.2f}x" if base else "-"
        lines.append(f"{r['case']:<12} {r['tokens']:>6} {r['input_px']:>5} {sps:>10.2f} "
                     f"{r['peak_mem_mb']:>9.0f} {vp:>8} {vb:>7}")
        base = base or sps
        prev = sps
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every case in a subprocess; JSON lines, then a table. Exit status: 1 when a case
    failed, 77 (``table.SKIPPED``) without the input scene."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--model", default="vit_tiny_patch8", help="e.g. vit_large_patch8 (paper)")
    ap.add_argument("--img-size", type=int, default=32, help="model input (paper: 96)")
    ap.add_argument("--scales", type=int, default=3, help="SatMAE++ scales (paper S2: 3)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                    help="default: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--decoder-dim", type=int, default=512)
    ap.add_argument("--decoder-depth", type=int, default=8)
    ap.add_argument("--decoder-heads", type=int, default=16)
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--out", help="also append the JSON lines to this file")
    ap.add_argument("--worker", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--crops", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.precision = a.precision or ("bf16" if a.device.startswith("cuda") else "fp32")
    if a.worker:
        print(json.dumps(run_case(a.worker, a)), flush=True)
        return 0
    records = Records("bench_satmaepp", a.out)
    if not SCENE.is_dir():
        return records.skip(f"{SCENE} is not available")
    import torch

    tmp = tempfile.TemporaryDirectory()
    crops = Path(tmp.name) / "crops.pt"
    from scene_crops import scene_crops  # benchmarks/, beside this script
    torch.save(scene_crops(SCENE, BANDS, a.img_size * 2 ** (a.scales - 1), a.batch_size), crops)
    runs = []
    for case in a.cases:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()),
                               *(sys.argv[1:] if argv is None else argv),
                               "--worker", case, "--crops", str(crops)],
                              capture_output=True, text=True)
        if proc.returncode:
            records.emit({"kind": "error", "case": case, "error": proc.stderr[-800:]})
            continue
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        runs.append(rec)
        records.emit(rec)
    tmp.cleanup()
    if runs:
        print("\n" + _table(runs), flush=True)
    return records.status()


if __name__ == "__main__":
    sys.exit(main())
