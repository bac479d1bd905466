"""Steady-state MAE training throughput and peak memory, and the quickstart's data-wait share.

Two parts, each measurement in its own subprocess (so each peak memory is its own):

- ``model``: MAE forward + backward + AdamW step on real Sentinel-2 L1C crops (13 bands,
  from the bundled sample scene), after warm-up steps; ``tiny`` at 64 px / patch 8 and
  ``small`` at 224 px / patch 16 on CPU; with ``--device cuda`` also ``base`` and ``large``
  in bf16 autocast, with MFU from the analytic FLOP estimate in ``pretrain/trainer.py``;
  the step time is the median of the timed steps (each synchronised on CUDA).
- ``quickstart``: the real ``eofm-pretrain`` on ``launch/configs/quickstart.yaml`` (shards,
  loader workers, normalisation on the device): samples/s and the share of step time spent
  waiting for data, from its own metrics over the steady-state windows (every logged window
  but the first, pooled: total samples over total time, so ``samples_per_s`` = batch /
  ``step_time_s``); ``trainer_peak_rss_mb`` is the trainer process's own peak resident memory
  (its loader workers are separate processes and not counted). A failed trainer ends this
  script with its stderr's last lines.

Prints one JSON object per line (with ``bench`` and ``machine``: benchmarks/table.py), then a
table; exit status 1 when a model case failed (its ``"kind": "error"`` record says why).
``python benchmarks/bench_pretrain.py [--device cuda] [--quick] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from table import Records, print_table

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "data_shards" / "sample" / "sentinel2_l1c_scene"
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
CPU_CASES = [("vit_tiny_patch8", 64, 32), ("vit_small_patch16", 224, 16)]
GPU_CASES = [("vit_tiny_patch8", 64, 256), ("vit_small_patch16", 224, 128),
             ("vit_base_patch16", 224, 128), ("vit_large_patch16", 224, 64)]


def run_model(name: str, size: int, batch: int, device: str, steps: int, warmup: int) -> dict:
    """One model case: steady-state samples/s, peak memory, MFU on GPU."""
    import torch

    from eofm.models import create_model
    from eofm.pretrain.metrics import mfu, peak_memory_mb, train_flops_per_sample
    from eofm.pretrain.objectives import MAE
    from eofm.pretrain.optim import adamw

    dev = torch.device(device)
    enc = create_model(name, bands=BANDS, img_size=size)
    obj = MAE(enc, BANDS, decoder_dim=512, decoder_depth=8, decoder_heads=16).to(dev)
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = adamw([{"params": params}], 1e-4, (0.9, 0.95), 1e-8)  # the trainer's AdamW
    from scene_crops import scene_crops  # benchmarks/, beside this script
    x = scene_crops(SCENE, BANDS, size, batch).to(dev)
    amp = dev.type == "cuda"

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = obj(x)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if amp:
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    if amp:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)  # robust to a busy machine, as the other benchmarks
    flops = train_flops_per_sample(obj) * batch
    return {"kind": "run", "bench": "mae_train", "model": name, "img_size": size, "bands": len(BANDS),
            "batch": batch, "device": device, "precision": "bf16" if amp else "fp32",
            "step_time_s": round(dt, 4), "samples_per_s": round(batch / dt, 2),
            "peak_mem_mb": round(peak_memory_mb(dev), 1),
            "mfu": (round(m, 4) if (m := mfu(flops, dt, dev)) is not None else None),
            "threads": torch.get_num_threads()}


def steady_rates(recs: list[dict]) -> dict[str, Any]:
    """Rates over the trainer's logged windows but the first (worker start-up and warm-up),
    pooled: samples/s = total samples / total time, step time = total time / total steps,
    data-wait share = total wait / total time (a mean of the windows' rates would weigh a
    short fast window like a long slow one). ``recs``: metrics.jsonl records in order; a
    window's record holds ``step`` (the step it ends at), ``step_time``, ``samples_per_s`` and
    ``data_wait_share``. One window alone gives its own rates."""
    windows = [r for r in recs if "samples_per_s" in r and "step_time" in r]
    if not windows:
        raise ValueError(f"bench_pretrain: metrics.jsonl: no record with samples_per_s and "
                         f"step_time (expected one per logged window); got {len(recs)} records")
    if len(windows) == 1:
        w = windows[0]
        return {"samples_per_s": w["samples_per_s"], "step_time_s": w["step_time"],
                "data_wait_share": w["data_wait_share"], "windows": 1, "steps": None}
    seconds = samples = wait = 0.0
    steps = 0
    for before, r in pairwise(windows):
        n = r["step"] - before["step"]  # the steps this window timed
        t = r["step_time"] * n
        seconds += t
        samples += r["samples_per_s"] * t
        wait += r["data_wait_share"] * t
        steps += n
    return {"samples_per_s": samples / seconds, "step_time_s": seconds / steps,
            "data_wait_share": wait / seconds, "windows": len(windows) - 1, "steps": steps}


def run_quickstart(steps: int) -> dict:
    """The real CLI on the quickstart config; steady-state windows of its own metrics
    (:func:`steady_rates`). A failed trainer raises SystemExit with the end of its stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "eofm.pretrain", "--config",
               str(ROOT / "launch" / "configs" / "quickstart.yaml"),
               f"schedule.steps={steps}", f"runtime.out_dir={out}",
               f"data.path={Path(tmp) / 'data'}", "logging.log_every=10",
               "logging.progress=false", f"data.build_from={SCENE}"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode:
            tail = "\n".join(done.stderr.strip().splitlines()[-20:]) or "(no stderr)"
            raise SystemExit(f"bench_pretrain: the quickstart trainer ({' '.join(cmd[1:5])} "
                             f"...) exited with status {done.returncode}; its stderr ends:\n"
                             f"{tail}")
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = steady_rates(recs)
    return {"kind": "run", "bench": "quickstart", "steps": steps, "wall_s": round(wall, 1),
            "samples_per_s": round(rates["samples_per_s"], 2),
            "step_time_s": round(rates["step_time_s"], 4),
            "data_wait_share": round(rates["data_wait_share"], 4),
            "loss_first": round(recs[0]["loss"], 4), "loss_last": round(recs[-1]["loss"], 4),
            # the trainer process's own (VmHWM) peak from its metrics; its data-loader workers
            # are separate processes, not counted here (RUSAGE_CHILDREN would instead give the
            # largest of every child of this driver, the model cases' included)
            "trainer_peak_rss_mb": round(max(r["peak_mem_mb"] for r in recs), 1)}


def main(argv: list[str] | None = None) -> int:
    """Run every case in a subprocess and print JSON lines; 1 when a case failed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "SIZE", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        rec = run_model(a.one[0], int(a.one[1]), int(a.one[2]), a.device, a.steps,
                        warmup=2 if a.device == "cpu" else 5)
        print(json.dumps(rec))
        return 0
    records = Records("bench_pretrain", a.out)
    steps = 3 if a.quick else (5 if a.device == "cpu" else 20)
    rows = []
    for name, size, batch in CPU_CASES if a.device == "cpu" else GPU_CASES:
        out = subprocess.run([sys.executable, __file__, "--one", name, str(size), str(batch),
                              "--device", a.device, "--steps", str(steps)],
                             capture_output=True, text=True)
        if out.returncode:
            records.emit({"kind": "error", "bench": "mae_train", "model": name,
                          "error": out.stderr[-500:]})
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        records.emit(rows[-1])
    print_table(rows, [("model", "model"), ("img_size", "px"), ("batch", "batch"),
                       ("precision", "precision"), ("samples_per_s", "samples/s"),
                       ("step_time_s", "step s"), ("peak_mem_mb", "peak MiB"), ("mfu", "MFU")])
    if a.device == "cpu":
        qs = run_quickstart(30 if a.quick else 60)
        records.emit(qs)
        print_table([qs], [("bench", "run"), ("steps", "steps"), ("samples_per_s", "samples/s"),
                           ("data_wait_share", "data-wait share"), ("loss_first", "loss first"),
                           ("loss_last", "loss last"),
                           ("trainer_peak_rss_mb", "trainer peak MiB (no workers)")])
    return records.status()


if __name__ == "__main__":
    sys.exit(main())
