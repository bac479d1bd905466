"""Encoder training-step throughput, peak memory and MFU: tokenizers x attention backends x masking.

One forward+backward of ``forward_features`` (loss = mean of the output tokens) per step, for
  tiny:  vit_tiny_patch8,  12 Sentinel-2 L2A bands, 96 x 96 px  (144 cells; grouped: 3 x 144)
  small: vit_small_patch16, 12 bands, 224 x 224 px             (196 cells; grouped: 3 x 196)
at mask ratio 0 and 0.75 (token dropping through ``ids_keep``: only kept tokens enter the
blocks), for each tokenizer (plain, grouped = SatMAE's 3 S2 groups, spectral) and attention
backend (sdpa, reference; xformers on CUDA when installed), plus timm's
``vit_small_patch16_224`` (in_chans=12) at the same shapes in the same run.

Analytic FLOPs per sample (multiply-add = 2 FLOPs; norms, softmax, GELU, biases ignored):
  embed  = 2 * L * p^2 * C_in * D          (all L cells embedded before dropping; C_in = 12: the
                                            grouped tokenizer reads all 12 bands too, in 3 groups
                                            of 4, so grouped vs plain compares equal bands)
  block  = (8 + 4 r) * n * D^2 + 4 * n^2 * D   with n = prefix + kept tokens, r = MLP ratio
           (qkv 6nD^2, out-proj 2nD^2, MLP 4rnD^2, QK^T and AV 2n^2D each)
  step   = 3 * (embed + depth * block)     (backward ~ 2x forward)
MFU = step FLOPs * samples/s / device peak (dense bf16, from the trainer's table
``eofm.pretrain.metrics.PEAK_BF16_FLOPS``: H100 SXM / H200 989, H100 NVL 835, H100 PCIe 756,
A100 312 TFLOP/s; any other device: pass ``--peak-tflops``); reported only with
``--device cuda --bf16``, the peak used beside it (``peak_tflops``).
``--compile`` compiles as ``runtime.compile=true`` does (``compile_model``: every block with
static shapes, ``dynamic=False``; timm's blocks the same way), each measurement from a fresh
compile cache.

Step time is the median over the timed steps (each synchronised on CUDA), after warmup steps.
Peak memory: on CPU each measurement runs in its own subprocess and reports its own peak RSS
(``VmHWM``; ``ru_maxrss`` would carry this driver's footprint across exec)
(MiB; ``base_rss_mb`` is the RSS after building the model and inputs, before the first step);
on CUDA ``torch.cuda.max_memory_allocated`` after a reset (the previous measurement's model
collected and the cache emptied first). Prints one JSON object per line (with ``bench`` and
``machine``: benchmarks/table.py): ``kind`` = "run" (one measurement), "summary" (ratios),
"skip", "note" or "error"; exit status 1 when any measurement failed.

Usage: ``python benchmarks/bench_models.py [--quick] [--device cuda --bf16] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from table import Records, print_table

BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
WAVELENGTHS = [443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1610, 2190]  # nm
BANDWIDTHS = [20, 65, 35, 30, 15, 15, 20, 115, 20, 20, 90, 180]  # nm
MODELS = {"tiny": ("vit_tiny_patch8", 96), "small": ("vit_small_patch16", 224)}
TOKENIZERS = ("plain", "grouped", "spectral")
MASK_RATIOS = (0.0, 0.75)
# SatMAE's grouping idea over all 12 bands (its published groups drop B01 and B09), so that the
# grouped tokenizer's cost is measured against plain at equal bands and size
GROUPS_12 = {"rgbn": ["B02", "B03", "B04", "B08"], "red_edge": ["B05", "B06", "B07", "B8A"],
             "swir_atm": ["B01", "B09", "B11", "B12"]}
BATCH = {"cpu": {"tiny": 16, "small": 8}, "quick": {"tiny": 4, "small": 2},
         "cuda": {"tiny": 256, "small": 128}}


def vit_step_flops(*, depth: int, dim: int, mlp_ratio: float, tokens: int, cells: int,
                   patch: int, in_bands: int) -> float:
    """Analytic forward+backward FLOPs per sample for a ViT (formula in the module docstring)."""
    embed = 2.0 * cells * patch**2 * in_bands * dim
    block = (8 + 4 * mlp_ratio) * tokens * dim**2 + 4.0 * tokens**2 * dim
    return 3.0 * (embed + depth * block)


def device_peak(device: str, bf16: bool, override_tflops: float | None = None) -> float | None:
    """Dense bf16 peak FLOP/s of the current CUDA device (``override_tflops`` wins, else the
    trainer's :func:`eofm.pretrain.metrics.peak_flops`), None when unknown or not bf16/CUDA."""
    if device != "cuda" or not bf16:
        return None
    if override_tflops:
        return override_tflops * 1e12
    from eofm.pretrain.metrics import peak_flops

    return peak_flops(torch.device("cuda", torch.cuda.current_device()))


def compile_blocks(model: torch.nn.Module, timm_model: bool) -> int:
    """Compile ``model``'s transformer blocks in place as ``runtime.compile=true`` does
    (:func:`eofm.pretrain.strategy.compile_model`: static shapes); timm's blocks, which that
    function does not know, each with ``dynamic=False`` too. How many blocks."""
    if timm_model:
        for blk in model.blocks:
            blk.compile(dynamic=False)
        return len(model.blocks)
    from eofm.pretrain.strategy import compile_model

    return compile_model(model)


def release_previous(device: str, compiled: bool) -> None:
    """Free what an earlier measurement in this process left: its compiled graphs (so each
    compiled measurement starts from a fresh cache, as a training run does, and no earlier one
    draws on dynamo's recompile limit), its model (reference cycles: gc) and, on CUDA, the
    allocator's cached blocks, so none of it is in this measurement's peak."""
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _sync(device: str) -> None:
    """Wait for queued device work (no-op on CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def _build(cfg: dict) -> tuple[torch.nn.Module, dict, float]:
    """Model, forward kwargs and analytic step FLOPs per sample for one configuration."""
    import timm

    import eofm.models as m

    size = cfg["img_size"]
    grid = size // cfg["patch"]
    cells = grid * grid
    if cfg["tokenizer"] == "timm":
        model = timm.create_model("vit_small_patch16_224", in_chans=len(BANDS), num_classes=0,
                                  img_size=size)
        dims = dict(depth=len(model.blocks), dim=model.embed_dim, mlp_ratio=4.0)
        cfg.update(tokens=cells, kept=cells)
        flops = vit_step_flops(**dims, tokens=cells + 1, cells=cells, patch=cfg["patch"],
                               in_bands=len(BANDS))
        return model, {}, flops
    groups = GROUPS_12 if cfg["tokenizer"] == "grouped" else None
    model = m.create_model(cfg["name"], bands=BANDS, tokenizer=cfg["tokenizer"], img_size=size,
                           attn_backend=cfg["backend"], groups=groups)
    kwargs: dict = {}
    in_bands = len(BANDS)
    if cfg["tokenizer"] == "spectral":
        kwargs = {"wavelengths": torch.tensor(WAVELENGTHS, dtype=torch.float32),
                  "bandwidths": torch.tensor(BANDWIDTHS, dtype=torch.float32)}
    elif cfg["tokenizer"] == "grouped":
        in_bands = sum(len(b) for b in model.tokenizer.groups.values())
    n = model.num_tokens
    keep = m.num_keep(n, 1.0 - cfg["mask_ratio"])
    if cfg["mask_ratio"] > 0:
        gen = torch.Generator().manual_seed(0)
        kwargs["ids_keep"] = m.random_masking(cfg["batch"], n, keep, generator=gen)[0]
    mlp_ratio = model.blocks[0].mlp.fc1.out_features / model.embed_dim
    flops = vit_step_flops(depth=len(model.blocks), dim=model.embed_dim, mlp_ratio=mlp_ratio,
                           tokens=model.num_prefix_tokens + keep, cells=cells,
                           patch=cfg["patch"], in_bands=in_bands)
    cfg.update(tokens=n, kept=keep)
    return model, kwargs, flops


def measure(cfg: dict) -> dict:
    """Time ``iters`` forward+backward steps after ``warmup``; one result row."""
    device, bf16 = cfg["device"], cfg["bf16"]
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    release_previous(device, bool(cfg.get("compile")))
    torch.manual_seed(0)
    model, kwargs, flops = _build(cfg)
    model.to(device).train()
    if cfg.get("compile"):  # each block compiled in place, as runtime.compile=true does
        compile_blocks(model, timm_model=cfg["tokenizer"] == "timm")
    kwargs = {k: v.to(device) for k, v in kwargs.items()}
    x = torch.randn(cfg["batch"], len(BANDS), cfg["img_size"], cfg["img_size"], device=device)
    autocast = (torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())

    def step() -> None:
        with autocast:
            out = model.forward_features(x, **kwargs)
        out.float().mean().backward()
        model.zero_grad(set_to_none=True)

    from eofm.pretrain.metrics import peak_rss_mb

    base_rss = peak_rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(cfg["warmup"]):
        step()
    _sync(device)
    times = []
    for _ in range(cfg["iters"]):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)  # robust to a busy shared machine
    sps = cfg["batch"] / dt
    row = {k: cfg[k] for k in ("model", "tokenizer", "backend", "mask_ratio", "batch",
                               "img_size", "patch", "tokens", "kept", "device")}
    row.update(kind="run", bands=len(BANDS), dtype="bf16" if bf16 else "fp32",
               compiled=bool(cfg.get("compile")),
               threads=torch.get_num_threads(),
               samples_per_s=round(sps, 3), step_ms=round(dt * 1e3, 2),
               step_ms_mean=round(statistics.fmean(times) * 1e3, 2),
               tflops=round(flops * sps / 1e12, 4), gflop_per_sample=round(flops / 1e9, 3))
    if device == "cuda":
        row.update(peak_mem_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1),
                   mem_kind="cuda_max_allocated", gpu=torch.cuda.get_device_name())
    else:
        row.update(peak_mem_mb=round(peak_rss_mb(), 1), base_rss_mb=round(base_rss, 1),
                   mem_kind="VmHWM")
    peak = device_peak(device, bf16, cfg.get("peak_tflops"))
    row["mfu"] = None if peak is None else round(flops * sps / peak, 4)
    row["peak_tflops"] = None if peak is None else round(peak / 1e12, 1)
    return row


def ab_versus_timm(base: dict, rounds: int) -> dict:
    """Our ``small`` (plain, sdpa, mask 0) and timm's ViT-S/16 in one process, their steps
    interleaved (the order alternating each round), so a busy machine's drift hits both alike:
    the robust form of the ours/timm ratio (the separate runs above measure them minutes apart).
    """
    device = base["device"]
    autocast = (torch.autocast(device_type=device, dtype=torch.bfloat16) if base["bf16"]
                else contextlib.nullcontext())
    steps = {}
    release_previous(device, bool(base.get("compile")))
    for tok in ("plain", "timm"):
        cfg = {**base, "tokenizer": tok, "backend": "timm" if tok == "timm" else "sdpa",
               "mask_ratio": 0.0}
        torch.manual_seed(0)
        model, kwargs, _ = _build(cfg)
        model.to(device).train()
        x = torch.randn(base["batch"], len(BANDS), base["img_size"], base["img_size"],
                        device=device)

        def step(model=model, kwargs=kwargs, x=x) -> float:
            t0 = time.perf_counter()
            with autocast:
                out = model.forward_features(x, **kwargs)
            out.float().mean().backward()
            model.zero_grad(set_to_none=True)
            _sync(device)
            return time.perf_counter() - t0
        step()  # warm-up
        steps[tok] = step
    times: dict[str, list[float]] = {"plain": [], "timm": []}
    for r in range(rounds):
        for tok in (("plain", "timm") if r % 2 == 0 else ("timm", "plain")):
            times[tok].append(steps[tok]())
    ours, ref = (statistics.median(times[k]) for k in ("plain", "timm"))
    return dict(kind="summary", metric="ours_vs_timm_interleaved", model=base["model"],
                value=round(ref / ours, 3), target=1.0, rounds=rounds,
                ours_step_ms=round(ours * 1e3, 1), timm_step_ms=round(ref * 1e3, 1),
                note="samples/s ratio, plain tokenizer, sdpa, mask 0, same shapes, one process")


def configs(args: argparse.Namespace) -> list[dict]:
    """Every measurement of this run, timm's reference next to our small plain sdpa."""
    from eofm.models import xformers_available

    backends = ["sdpa", "reference"]
    if args.device == "cuda" and xformers_available():
        backends.append("xformers")
    batches = BATCH["quick" if args.quick else args.device]
    out = []
    for key in args.models:
        name, size = MODELS[key]
        patch = int(name.rsplit("patch", 1)[1])
        base = dict(model=key, name=name, img_size=size, patch=patch, device=args.device,
                    bf16=args.bf16, batch=args.batch or batches[key], warmup=args.warmup,
                    iters=args.iters, tokens=(size // patch) ** 2, kept=None,
                    threads=args.threads, compile=args.compile, peak_tflops=args.peak_tflops)
        if key == "small":
            out.append({**base, "tokenizer": "timm", "backend": "timm", "mask_ratio": 0.0})
        for tok in TOKENIZERS:
            for backend in backends:
                for ratio in MASK_RATIOS:
                    out.append({**base, "tokenizer": tok, "backend": backend, "mask_ratio": ratio})
    return out


def run_isolated(cfg: dict) -> dict:
    """Run one measurement in a fresh interpreter so its peak RSS is its own."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                           json.dumps(cfg)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "no output")
    return json.loads(lines[-1])


def summaries(rows: list[dict]) -> list[dict]:
    """Ratios: grouped vs plain step time, 0.75-mask speed-up, ours vs timm."""
    idx = {(r["model"], r["tokenizer"], r["backend"], r["mask_ratio"]): r for r in rows}
    out = []

    def sps(*key: object) -> float | None:
        r = idx.get(key)
        return r["samples_per_s"] if r else None

    for model in sorted({r["model"] for r in rows}):
        for ratio in MASK_RATIOS:
            p, g = sps(model, "plain", "sdpa", ratio), sps(model, "grouped", "sdpa", ratio)
            if p and g:
                out.append(dict(kind="summary", metric="grouped_vs_plain_step_time", model=model,
                                backend="sdpa", mask_ratio=ratio, value=round(p / g, 3),
                                token_ratio=idx[(model, "grouped", "sdpa", ratio)]["tokens"]
                                / idx[(model, "plain", "sdpa", ratio)]["tokens"]))
        for tok in TOKENIZERS:
            for backend in ("sdpa", "reference", "xformers"):
                full, masked = sps(model, tok, backend, 0.0), sps(model, tok, backend, 0.75)
                if full and masked:
                    out.append(dict(kind="summary", metric="mask0.75_speedup", model=model,
                                    tokenizer=tok, backend=backend, value=round(masked / full, 3),
                                    target=3.0))
        ours, ref = sps(model, "plain", "sdpa", 0.0), sps(model, "timm", "timm", 0.0)
        if ours and ref:
            out.append(dict(kind="summary", metric="ours_vs_timm_vit_small_patch16_224",
                            model=model, value=round(ours / ref, 3), target=1.0,
                            note="samples/s ratio, plain tokenizer, sdpa, mask 0, same shapes"))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--bf16", action="store_true", help="autocast bf16 (reports MFU on CUDA)")
    ap.add_argument("--quick", action="store_true", help="short CPU run: small batches, 1 warmup + 3 timed steps")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batch", type=int, default=None, help="override the per-model batch")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile every block (timm's too); warm-up absorbs compile time")
    ap.add_argument("--no-isolate", action="store_true",
                    help="CPU: measure in-process (peak RSS is then the running process peak)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="device's dense bf16 peak in TFLOP/s for MFU (default: the trainer's "
                         "table, eofm.pretrain.metrics.PEAK_BF16_FLOPS)")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    gpu = args.device == "cuda"
    if args.warmup is None:
        args.warmup = 1 if args.quick else (5 if gpu else 2)
    if args.iters is None:
        args.iters = 3 if args.quick else (20 if gpu else 5)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every configuration, print JSON lines; exit 1 if any measurement failed."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))), flush=True)
        return 0
    records = Records("bench_models", args.out)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    elif args.bf16:
        records.emit({"kind": "note", "note": "--bf16 on CPU: autocast bf16, no MFU"})
    from eofm.models import xformers_available

    if args.device == "cuda" and not xformers_available():
        records.emit({"kind": "skip", "backend": "xformers",
                      "reason": "xformers is not installed"})
    isolate = args.device == "cpu" and not args.no_isolate
    rows = []
    for cfg in configs(args):
        try:
            row = run_isolated(cfg) if isolate else measure(dict(cfg))
        except Exception as exc:  # report and go on: one failure should not hide the rest
            row = {"kind": "error", "model": cfg["model"], "tokenizer": cfg["tokenizer"],
                   "backend": cfg["backend"], "mask_ratio": cfg["mask_ratio"],
                   "error": f"{type(exc).__name__}: {exc}"}
        else:
            rows.append(row)
        records.emit(row)
    sums = summaries(rows)
    small = next((c for c in configs(args) if c["model"] == "small"), None)
    if small is not None:
        sums.append(ab_versus_timm(small, rounds=4 if args.quick else 8))
    for s in sums:
        records.emit(s)
    print_table(rows, [("model", "model"), ("tokenizer", "tokenizer"), ("backend", "backend"),
                       ("mask_ratio", "mask"), ("batch", "batch"), ("samples_per_s", "samples/s"),
                       ("step_ms", "step ms"), ("peak_mem_mb", "peak MiB"), ("mfu", "MFU")])
    print_table(sums, [("metric", "ratio"), ("model", "model"), ("mask_ratio", "mask"),
                       ("tokenizer", "tokenizer"),
                       ("backend", "backend"), ("value", "value"), ("target", "target")])
    return records.status()


if __name__ == "__main__":
    sys.exit(main())
