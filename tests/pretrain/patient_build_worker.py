"""Worker of test_two_nodes.py, in two forked ranks: rank 0 builds data.path for longer than the
default process group's timeout (2 s here, 10 minutes with nccl) while rank 1 waits for it."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from worker_run import as_torchrun_rank

import eofm.data_shards.cli as shard_cli
from eofm.pretrain import data as D
from eofm.pretrain import distributed as dist
from eofm.pretrain.config import load_config

BUILD_S = 5.0


def slow_build(argv: list[str]) -> int:
    """Stands in for eofm-shard build: takes BUILD_S, then leaves a manifest."""
    time.sleep(BUILD_S)
    out = Path(argv[argv.index("--out") + 1])
    out.mkdir(parents=True)
    (out / "manifest.json").write_text("{}")
    return 0


def main(rank: int, port: int, path: str) -> None:
    """Rank ``rank`` of two (conftest's ``spawn_ranks``)."""
    as_torchrun_rank(rank, 2, port)
    env = dist.init_distributed(timeout=timedelta(seconds=2))
    shard_cli.main = slow_build
    cfg = load_config(None, [f"data.path={path}", "data.build_from=raw"], check=False)
    t0 = time.monotonic()
    D.ensure_dataset(cfg, env.rank)
    waited = time.monotonic() - t0
    assert waited >= BUILD_S - 0.5, waited  # rank 1 really waited for the build
    dist.barrier()
    dist.teardown()
    print(f"rank {env.rank} waited {waited:.1f} s")

