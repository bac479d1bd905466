"""What moving a DeepSpeed job to another world size costs: the one-off conversion of its ZeRO
checkpoint to DeepSpeed's universal format, and loading that, beside loading the checkpoint
on the world size that wrote it.

For each model an MAE objective (encoder + MAE decoder, 64 px input: the state does not depend
on it) takes one step under DeepSpeed ZeRO-``--stage`` on ``--save-ranks`` gloo/nccl processes
and saves its checkpoint as the trainer does; then the checkpoint is loaded back on the same
number of ranks (plain load), converted once (:func:`eofm.pretrain.zero_checkpoint.to_universal`,
timed in this process) and loaded on ``--load-ranks`` processes (universal load). Every load
runs in fresh processes under torchrun, so times include reading from disk (page cache warm).

Prints one JSON object per line (with ``bench`` and ``machine``: benchmarks/table.py), then a
table.
``python benchmarks/bench_universal.py [--models vit_base_patch16 ...] [--stage 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from table import Records, print_table

BANDS = ["B02", "B03", "B04", "B08"]
TAG = "step_000000001"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(mode: str, model: str, stage: int, folder: Path, result: Path) -> None:
    """Under torchrun: ``save`` one step's checkpoint, or time ``load`` of the newest one."""
    import torch

    from eofm.models import create_model
    from eofm.pretrain import distributed as dist
    from eofm.pretrain.checkpoint import CheckpointManager
    from eofm.pretrain.config import load_config
    from eofm.pretrain.objectives import MAE
    from eofm.pretrain.strategy import wrap_model

    env = dist.init_distributed()
    device = dist.device_for(env)
    cfg = load_config(None, ["runtime.strategy=deepspeed", f"runtime.zero_stage={stage}",
                             "runtime.resume_elastic=true", "data.path=unused",
                             f"data.batch_size={env.world_size}", "optim.scale_lr=false"])
    enc = create_model(model, bands=BANDS, img_size=64)
    obj = MAE(enc, BANDS, decoder_dim=512, decoder_depth=8, decoder_heads=16)
    s = wrap_model(obj, cfg, env, device, lr=1e-4)
    manager = CheckpointManager(folder, keep_last_k=1)
    out: dict[str, float] = {}
    if mode == "save":
        x = torch.randn(1, len(BANDS), 64, 64, device=device)
        s.forward_backward(lambda m: m(x)["loss"], last=True)
        s.finish_step()
        dist.barrier()
        t = time.perf_counter()
        s.save(manager, 1, {"step": 1})
        out["save_s"] = time.perf_counter() - t
    else:
        dist.barrier()
        t = time.perf_counter()
        client = s.load(manager)
        dist.barrier()
        out["load_s"] = time.perf_counter() - t
        assert client is not None and client["step"] == 1, client
    if env.rank == 0:
        result.write_text(json.dumps(out))
    dist.teardown()


def _launch(nproc: int, mode: str, model: str, stage: int, folder: Path) -> dict:
    result = folder.parent / f"{mode}_{nproc}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_port()), __file__, "--worker",
           mode, "--models", model, "--stage", str(stage), "--dir", str(folder),
           "--result", str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} on {nproc} ranks failed:\n{proc.stderr[-3000:]}")
    return json.loads(result.read_text())


def measure(model: str, stage: int, save_ranks: int, load_ranks: int, root: Path) -> dict:
    """One model: checkpoint size, save, plain load, conversion and universal load times."""
    from eofm.pretrain.zero_checkpoint import to_universal

    folder = root / model / "checkpoints"
    folder.mkdir(parents=True)
    saved = _launch(save_ranks, "save", model, stage, folder)
    nbytes = sum(p.stat().st_size for p in (folder / TAG).iterdir())
    plain = _launch(save_ranks, "load", model, stage, folder)
    t = time.perf_counter()
    to_universal(folder / TAG, folder / "universal" / TAG)
    convert = time.perf_counter() - t
    universal = _launch(load_ranks, "load", model, stage, folder)
    return {"model": model, "zero_stage": stage, "checkpoint_MB": round(nbytes / 2**20, 1),
            "save_ranks": save_ranks, "load_ranks": load_ranks,
            "save_s": round(saved["save_s"], 2), "plain_load_s": round(plain["load_s"], 2),
            "convert_s": round(convert, 2), "universal_load_s": round(universal["load_s"], 2)}


def main() -> int:
    """Measure every model (or, under torchrun, be one rank of a save or a load)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vit_small_patch16", "vit_base_patch16"])
    ap.add_argument("--stage", type=int, default=2, choices=(1, 2, 3))
    ap.add_argument("--save-ranks", type=int, default=2)
    ap.add_argument("--load-ranks", type=int, default=1)
    ap.add_argument("--dir", default=None, help="folder for the checkpoints (a temporary one)")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--worker", choices=("save", "load"), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.models[0], args.stage, Path(args.dir), Path(args.result))
        return 0
    records = Records("bench_universal", args.out)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for model in args.models:
            row = measure(model, args.stage, args.save_ranks, args.load_ranks, Path(tmp))
            rows.append(row)
            records.emit(row)
    print_table(rows, [(c, c) for c in ("model", "zero_stage", "checkpoint_MB", "save_ranks",
                                        "load_ranks", "save_s", "plain_load_s", "convert_s",
                                        "universal_load_s")])
    return records.status()


if __name__ == "__main__":
    sys.exit(main())
