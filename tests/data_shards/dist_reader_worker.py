"""Run under torchrun by test_distributed.py: each rank reads its split and writes its keys."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from eofm.data_shards.loader import ShardLoader
from eofm.data_shards.reader import ShardDataset


def main() -> None:
    dataset, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    try:
        ds = ShardDataset(dataset, shuffle_buffer=5, seed=3)  # rank/world from the process group
        keys = [k for b in ShardLoader(ds, batch_size=3, num_workers=2) for k in b["__key__"]]
        (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(
            {"rank": ds.rank, "world": ds.world_size, "keys": keys}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
