"""How long a checkpoint stalls training: plain versus background (``runtime.async_checkpoint``).

For each model size an MAE objective (encoder + MAE decoder) gets one AdamW step, so its
optimiser state is full size; then its checkpoint state (model + optimiser, as the trainer
saves it) is written the plain way (the step waits for ``torch.save`` + fsync + rename) and the
background way (the step waits only for :func:`eofm.pretrain.checkpoint.snapshot`, the copy to
host memory; the write runs in a thread, timed until :meth:`CheckpointManager.wait`). Each
measurement is the median of ``--repeats`` saves into a temporary folder on ``--dir``'s disk.

Prints one JSON object per line (with ``bench`` and ``machine``: benchmarks/table.py; also
appended to ``--out``), then a table.
``python benchmarks/bench_checkpoint.py [--models vit_base_patch16 ...] [--device cuda] [--out FILE]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from table import Records, print_table

BANDS = ["B02", "B03", "B04", "B08"]


def measure(name: str, device: str, repeats: int, folder: Path) -> dict:
    """One model: state size, plain save time, background stall and write time."""
    import torch

    from eofm.models import create_model
    from eofm.pretrain.checkpoint import CheckpointManager, snapshot
    from eofm.pretrain.objectives import MAE
    from eofm.pretrain.optim import adamw

    dev = torch.device(device)
    enc = create_model(name, bands=BANDS, img_size=224)
    obj = MAE(enc, BANDS, decoder_dim=512, decoder_depth=8, decoder_heads=16).to(dev)
    opt = adamw([{"params": list(obj.parameters())}], 1e-4, (0.9, 0.95), 1e-8)
    for p in obj.parameters():  # a full optimiser state without a forward pass
        p.grad = torch.zeros_like(p)
    opt.step()
    state = {"model": obj.state_dict(), "optimizer": opt.state_dict(), "step": 1}
    nbytes = sum(t.numel() * t.element_size() for t in obj.state_dict().values())
    nbytes += sum(v.numel() * v.element_size() for s in opt.state_dict()["state"].values()
                  for v in s.values() if torch.is_tensor(v))
    mgr = CheckpointManager(folder / name, keep_last_k=1, rank=0)
    plain, stall, write = [], [], []
    for i in range(repeats):
        t = time.perf_counter()
        mgr.save(state, 2 * i)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        mgr.save_async(snapshot(state), 2 * i + 1)
        stall.append(time.perf_counter() - t)
        mgr.wait()
        write.append(time.perf_counter() - t)
    return {"model": name, "device": device, "state_MB": round(nbytes / 2**20, 1),
            "plain_save_s": round(statistics.median(plain), 3),
            "background_stall_s": round(statistics.median(stall), 3),
            "background_total_s": round(statistics.median(write), 3),
            "stall_saved": round(1.0 - statistics.median(stall) / statistics.median(plain), 3)}


def main(argv: list[str] | None = None) -> int:
    """Measure every model; JSON lines, then the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vit_small_patch16", "vit_base_patch16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to write (default: the temp folder)")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    a = p.parse_args(argv)
    records = Records("bench_checkpoint", a.out)
    rows = []
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        for name in a.models:
            rec = measure(name, a.device, a.repeats, Path(tmp))
            records.emit(rec)
            rows.append(rec)
    print_table(rows, [("model", "model"), ("state_MB", "state MB"), ("plain_save_s", "plain s"),
                       ("background_stall_s", "bg stall s"),
                       ("background_total_s", "bg total s")])
    return records.status()


if __name__ == "__main__":
    sys.exit(main())
