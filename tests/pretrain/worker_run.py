"""What the multi-process tests share: torchrun's variables, a free port, and the environment
torchrun gives a rank, for ranks forked from the test process (conftest's ``spawn_ranks``)."""

from __future__ import annotations

import os
import socket

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_torchrun_rank(rank: int, world: int, port: int) -> None:
    """In a forked rank (conftest's ``spawn_ranks``): the environment torchrun gives rank
    ``rank`` of ``world`` on one node (none of it for one process, which runs without a group)
    and one intra-op thread, here and in the processes it starts (``OMP_NUM_THREADS=1``); a
    process group of its own, so a rank killed on a timeout takes what it started along."""
    import torch

    os.setpgrp()
    for k in (*LAUNCH_VARS, "LOCAL_WORLD_SIZE"):
        os.environ.pop(k, None)
    os.environ["OMP_NUM_THREADS"] = "1"
    if world > 1:
        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world),
                           "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
