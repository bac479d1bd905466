"""Where a training step's time goes: kernel launches, device busy time and host syncs per step.

For each objective (MAE, SelectiveMAE, SatMAE++, SoftCon) on the same encoder, after warm-up
steps, this script:

- profiles ``--steps`` training steps with ``torch.profiler``, each made of the calls the
  trainer makes (:mod:`eofm.pretrain.trainer`): the strategy's ``set_lr``, ``forward_backward``
  (bf16 autocast on CUDA) and ``finish_step`` (gradient norm, clipping to ``optim.grad_clip``,
  the non-finite check, AdamW from ``build_optimizer``), the objective's ``on_step_end`` and the
  stop-flag agreement ``any_across_ranks`` every rank makes each step; and reports per step: wall time, operator calls (``aten::`` ops), CUDA kernel launches and the
  summed device time of the kernels, so ``gpu_busy`` = kernel time / wall time says whether
  the step is compute-bound (near 1) or bound by the host launching kernels (well below 1);
- lists the ``--top`` operators by the device time of the kernels they launched (CPU: their
  own time), so the expensive parts of a step have names;
- on CUDA, runs two more steps under ``torch.cuda.set_sync_debug_mode("warn")`` and lists every
  place (file:line) in eofm that made the host wait for the device: each such sync stops the
  host from queueing work ahead, which is what makes small steps launch-bound.

Under ``torchrun`` with 2+ processes the steps run as the trainer's would (DDP by default,
``--strategy``), so the collectives' syncs show too (rank 0 reports); one process runs the
single-process strategy, where ``any_across_ranks`` needs no collective.

Inputs are random normal tensors of the requested shape (timings, not numerics, are the point;
the benchmarks with real data are bench_selectivemae.py, bench_satmaepp.py, bench_softcon.py).
Prints one JSON object per line (``kind``: "audit", "op", "sync"; with ``bench`` and ``machine``:
benchmarks/table.py) and a table; ``--out`` appends the JSON lines to a file.

    python benchmarks/step_audit.py --device cuda --model vit_small_patch16 --img-size 224 \\
        --batch-size 128
    python benchmarks/step_audit.py --model vit_test_patch8 --img-size 32 --batch-size 4  # CPU
    torchrun --nproc-per-node 2 benchmarks/step_audit.py --device cuda --objectives mae  # DDP
"""

from __future__ import annotations

import argparse
import collections
import time
import warnings
from pathlib import Path
from typing import Any

from table import Records

OBJECTIVES = ("mae", "selectivemae", "satmaepp", "softcon")
BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
LAUNCH = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
PKG = str(Path(__file__).resolve().parents[1])


def build(name: str, a: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """(objective, inputs, call kwargs) for one objective on the shared encoder settings."""
    import torch

    from eofm.models import create_model
    from eofm.pretrain.objectives import MAE, SatMAEPP, SelectiveMAE, SoftCon

    dev = torch.device(a.device)
    tok = "grouped" if name == "satmaepp" else "plain"
    enc = create_model(a.model, tokenizer=tok, bands=BANDS, img_size=a.img_size)
    dec = {"decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16}
    size, kw = a.img_size, {}
    if name == "mae":
        obj = MAE(enc, BANDS, mask_ratio=0.75, norm_pix_loss=True, **dec)
    elif name == "selectivemae":
        obj = SelectiveMAE(enc, BANDS, mask_ratio=0.85, kept_mask_ratio=0.25, decoder_dim=512,
                           decoder_depth=12, decoder_heads=16, norm_pix_loss=True)
    elif name == "satmaepp":
        obj = SatMAEPP(enc, BANDS, num_scales=3, **dec)
        size = a.img_size * 4
    else:
        obj = SoftCon(enc, BANDS, drop_ratio=0.5)
        kw["labels"] = (torch.rand(a.batch_size, 19) > 0.8).float().to(dev)
    x = torch.randn(a.batch_size, len(BANDS), size, size).to(dev)
    return obj.to(dev), x, kw


def strategy_for(obj: Any, a: argparse.Namespace, env: Any, dev: Any) -> Any:
    """The trainer's strategy around ``obj`` (its optimiser, clipping and precision), from the
    default configuration with this script's settings."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.strategy import wrap_model

    over = ["data.path=unused", f"data.batch_size={a.batch_size * env.world_size}",
            "optim.scale_lr=false", f"runtime.strategy={a.strategy}",
            f"runtime.compile={str(a.compile).lower()}"]
    if a.grad_clip is not None:
        over.append(f"optim.grad_clip={a.grad_clip if a.grad_clip > 0 else 'null'}")
    cfg = load_config(None, over)
    return wrap_model(obj, cfg, env, dev, lr=cfg.optim.base_lr)


def audit(name: str, a: argparse.Namespace, env: Any) -> tuple[dict, list[dict]]:
    """Profile one objective's steady-state steps; on CUDA also locate its host syncs."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from eofm.pretrain import distributed as dist

    dev = torch.device(a.device)
    torch.manual_seed(0)
    obj, x, kw = build(name, a)
    strategy = strategy_for(obj, a, env, dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    cuda = dev.type == "cuda"
    i = 0

    def step() -> None:  # the trainer's calls for one optimiser step (no accumulation)
        nonlocal i
        strategy.set_lr(1e-4)
        strategy.forward_backward(lambda m: m(x, generator=gen, **kw)["loss"], last=True)
        _, stepped = strategy.finish_step()
        if stepped and hasattr(obj, "on_step_end"):
            obj.on_step_end(i, 1000)
        dist.any_across_ranks(False, dev)  # the per-step stop-flag agreement
        i += 1

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        sync()
        wall = (time.perf_counter() - t0) / a.steps
    events = prof.events()
    ops = sum(1 for e in events if e.name.startswith("aten::"))
    launches = sum(1 for e in events if e.name in LAUNCH)
    kernel_us = sum(e.time_range.elapsed_us() for e in events  # kernels, copies, memsets
                    if e.device_type == DeviceType.CUDA)
    rec = {"kind": "audit", "objective": name, "model": a.model, "img_size": a.img_size,
           "batch": a.batch_size, "device": a.device, "step_ms": round(1000 * wall, 2),
           "aten_ops_per_step": round(ops / a.steps), "samples_per_s": round(a.batch_size / wall, 1)}
    if cuda:
        rec.update(kernel_launches_per_step=round(launches / a.steps),
                   kernel_ms_per_step=round(kernel_us / 1000 / a.steps, 2),
                   gpu_busy=round(kernel_us / 1e6 / a.steps / wall, 3))
    top = []  # operators by the device time of the kernels they launched (CPU: own time)
    for e in prof.key_averages():
        t = e.self_device_time_total if cuda else e.self_cpu_time_total
        if t > 0 and e.key.startswith("aten::"):
            top.append({"kind": "op", "objective": name, "op": e.key,
                        "calls_per_step": round(e.count / a.steps, 1),
                        "ms_per_step": round(t / 1000 / a.steps, 3)})
    top = sorted(top, key=lambda r: -r["ms_per_step"])[:a.top]
    syncs: list[dict] = []
    if cuda:
        sites: collections.Counter[str] = collections.Counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(2):
                    step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        for w in caught:
            if "synchroniz" in str(w.message):
                where = str(Path(w.filename).resolve())
                where = where[len(PKG) + 1:] if where.startswith(PKG) else where
                sites[f"{where}:{w.lineno}"] += 1
        rec["host_syncs_per_step"] = sum(sites.values()) / 2
        syncs = [{"kind": "sync", "objective": name, "site": s, "per_step": n / 2}
                 for s, n in sites.most_common()]
    return rec, top + syncs


def table(rows: list[dict]) -> str:
    """One line per objective."""
    cols = [("objective", 13, "objective"), ("step ms", 9, "step_ms"),
            ("samples/s", 10, "samples_per_s"), ("aten ops", 9, "aten_ops_per_step"),
            ("launches", 9, "kernel_launches_per_step"), ("kernel ms", 10, "kernel_ms_per_step"),
            ("busy", 6, "gpu_busy"), ("syncs", 6, "host_syncs_per_step")]
    head = "".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w, _) in enumerate(cols))
    out = [head, "-" * len(head)]
    for r in rows:
        out.append("".join(f"{r.get(k, '-')!s:>{w}}" if i else f"{r[k]:<{w}}"
                           for i, (_, w, k) in enumerate(cols)))
    return "\n".join(out)


def main() -> int:
    """Audit every chosen objective; JSON lines, then the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu",
                    help="cpu or cuda (under torchrun: each rank's own GPU)")
    ap.add_argument("--model", default="vit_small_patch16")
    ap.add_argument("--img-size", type=int, default=224, help="model input (SatMAE++: x4 crop)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="profiled steps")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--top", type=int, default=10, help="operators listed per objective")
    ap.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    ap.add_argument("--strategy", default="ddp", choices=("ddp", "fsdp2"),
                    help="with 2+ processes (torchrun); one process runs single")
    ap.add_argument("--grad-clip", type=float, default=None,
                    help="optim.grad_clip (default: the configuration's; 0 = no clipping)")
    ap.add_argument("--compile", action="store_true", help="runtime.compile=true")
    ap.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    a = ap.parse_args()
    from eofm.pretrain import distributed as dist

    env = dist.init_distributed(backend="gloo" if a.device == "cpu" else None)
    if env.is_distributed and a.device.startswith("cuda"):
        a.device = str(dist.device_for(env))
    try:
        return report(a, env)
    finally:
        dist.teardown()


def report(a: argparse.Namespace, env: Any) -> int:
    """Audit every chosen objective; JSON lines and the table from rank 0."""
    records = Records("step_audit", a.out) if env.is_main else None
    rows = []
    for name in a.objectives:
        rec, extra = audit(name, a, env)
        rec["world_size"] = env.world_size
        if a.device.startswith("cuda"):  # the last objective's memory is free once it returns
            import torch

            torch.cuda.empty_cache()
        rows.append(rec)
        if records is None:
            continue
        for line in [rec, *extra]:
            records.emit(line)
    if records is None:
        return 0
    print("\n" + table(rows))
    return records.status()


if __name__ == "__main__":
    raise SystemExit(main())
