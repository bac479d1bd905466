"""SoftCon training throughput and peak memory beside MAE with the same encoder, and the saving
from Siamese token dropping, side by side in one run.

Cases (each in its own subprocess, so each peak memory is its own; CPU peak = the process's
max RSS, torch itself included; CUDA peak = ``max_memory_allocated`` over the timed steps;
the crops are made once by the parent and loaded by each case):

- ``mae``: MAE (mask 0.75, 8-block 512-wide decoder) forward + backward + AdamW step;
- ``softcon_drop``: SoftCon with ``--drop-ratio`` of the online view's tokens dropped, target
  encoder on the whole view, EMA update after the step;
- ``softcon_full``: SoftCon without token dropping.

Inputs are real Sentinel-2 L1C crops (13 bands) of ../shared/data/sentinel2_l1c_scene; without
that folder the run measures nothing: a ``"kind": "skip"`` record and exit status 77
(``table.SKIPPED``, not a success). SoftCon's label vectors are fixed random multi-hot rows (19
classes): their cost is negligible beside the encoders. The step time is the median of the
timed steps (each synchronised on CUDA).

Prints one JSON object per line (also to ``--out``; with ``bench`` and ``machine``:
benchmarks/table.py) and a table at the end; exit status 1 when a case failed::

    python benchmarks/bench_softcon.py --device cuda --precision bf16 --model vit_small_patch14 \\
        --img-size 224 --batch-size 128 --steps 20
    python benchmarks/bench_softcon.py --model vit_test_patch8 --img-size 32 --batch-size 4 \\
        --steps 2 --warmup 1            # a tiny check that it works
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
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
CASES = ("mae", "softcon_drop", "softcon_full")


def measure(cfg: dict) -> dict:
    """One case in this process: steady-state samples/s and peak memory."""
    import torch

    from eofm.models import create_model
    from eofm.pretrain.metrics import peak_memory_mb
    from eofm.pretrain.objectives import MAE, SoftCon
    from eofm.pretrain.optim import adamw

    dev = torch.device(cfg["device"])
    torch.manual_seed(0)
    enc = create_model(cfg["model"], bands=BANDS, img_size=cfg["img_size"])
    if cfg["case"] == "mae":
        obj = MAE(enc, BANDS, mask_ratio=0.75, decoder_dim=512, decoder_depth=8,
                  decoder_heads=16, norm_pix_loss=True)
    else:
        drop = cfg["drop_ratio"] if cfg["case"] == "softcon_drop" else 0.0
        obj = SoftCon(enc, BANDS, drop_ratio=drop)
    obj = obj.to(dev)
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = adamw([{"params": params}], 1e-4, (0.9, 0.95), 1e-8)  # the trainer's AdamW
    x = torch.load(cfg["crops"], weights_only=True).to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    labels = (torch.rand(cfg["batch_size"], 19, generator=gen, device=dev) > 0.8).float()
    bf16 = cfg["precision"] == "bf16"
    softcon = cfg["case"] != "mae"

    def step(i: int) -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            kw = {"labels": labels} if softcon else {}
            loss = obj(x, generator=gen, **kw)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if softcon:
            obj.on_step_end(i, 1000)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for i in range(cfg["warmup"]):
        step(i)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(cfg["steps"]):
        t0 = time.perf_counter()
        step(cfg["warmup"] + i)
        sync()
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)  # robust to a busy machine, as the other benchmarks
    peak = peak_memory_mb(dev)  # CUDA allocator peak, or this process's own peak RSS (VmHWM)
    cfg = {k: v for k, v in cfg.items() if k != "crops"}
    return {"kind": "run", "bench": "softcon_vs_mae", **cfg, "step_time_s": round(dt, 4),
            "samples_per_s": round(cfg["batch_size"] / dt, 2), "peak_mem_mb": round(peak, 1),
            "peak_mem_kind": "cuda_allocated" if dev.type == "cuda" else "cpu_max_rss",
            "threads": torch.get_num_threads()}


def run_isolated(cfg: dict) -> dict:
    """Run one case in a fresh interpreter (its own peak memory)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                           json.dumps(cfg)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        err = proc.stderr.strip().splitlines()
        return {"kind": "error", "bench": "softcon_vs_mae", **cfg,
                "error": err[-1] if err else "no output"}
    return json.loads(lines[-1])


def table(rows: list[dict]) -> str:
    """A readable side-by-side table, with speed and memory relative to MAE."""
    base = next((r for r in rows if r["case"] == "mae" and "error" not in r), None)
    head = f"{'case':<14}{'samples/s':>11}{'vs MAE':>8}{'peak MB':>10}{'vs MAE':>8}"
    out = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            out.append(f"{r['case']:<14}  error: {r['error']}")
            continue
        sp = f"{r['samples_per_s'] / base['samples_per_s']:.2f}x" if base else "-"
        mem = f"{r['peak_mem_mb'] / base['peak_mem_mb']:.2f}x" if base else "-"
        out.append(f"{r['case']:<14}{r['samples_per_s']:>11.2f}{sp:>8}"
                   f"{r['peak_mem_mb']:>10.1f}{mem:>8}")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--model", default="vit_small_patch14")
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--drop-ratio", type=float, default=0.5)
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every case in its own process; JSON lines, then the table. Exit status: 1 when a
    case failed, 77 (``table.SKIPPED``) without the input scene."""
    a = parse_args(argv)
    if a.worker:
        print(json.dumps(measure(json.loads(a.worker))))
        return 0
    records = Records("softcon_vs_mae", a.out)
    if not SCENE.is_dir():
        return records.skip(f"{SCENE} is not available")
    import torch

    precision = a.precision or ("bf16" if a.device.startswith("cuda") else "fp32")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:  # the crops are made once, outside the cases
        crops = Path(tmp) / "crops.pt"
        from scene_crops import scene_crops  # benchmarks/, beside this script
        torch.save(scene_crops(SCENE, BANDS, a.img_size, a.batch_size), crops)
        for case in a.cases:
            cfg = {"case": case, "device": a.device, "precision": precision, "model": a.model,
                   "img_size": a.img_size, "batch_size": a.batch_size, "steps": a.steps,
                   "warmup": a.warmup, "drop_ratio": a.drop_ratio, "crops": str(crops)}
            rows.append(run_isolated(cfg))
    for row in rows:
        records.emit({k: v for k, v in row.items() if k != "crops"})
    print(table(rows))
    return records.status()


if __name__ == "__main__":
    sys.exit(main())
