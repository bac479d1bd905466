"""Run a worker script of these tests alone or under torchrun with gloo processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(script: Path, args: list[str], nproc: int, timeout: float = 300) -> None:
    """``script args`` as one plain process (``nproc`` 1) or ``nproc`` torchrun processes, one
    thread each, outside any launcher the tests run under; asserts it exits 0."""
    if nproc == 1:
        cmd = [sys.executable, str(script), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script),
               *args]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]


def as_torchrun_rank(rank: int, world: int, port: int) -> None:
    """In a forked rank (conftest's ``spawn_ranks``): the environment torchrun gives rank
    ``rank`` of ``world`` on one node (none of it for one process, which runs without a group)
    and one intra-op thread, as ``run_worker``'s ``OMP_NUM_THREADS=1``."""
    import torch

    for k in (*LAUNCH_VARS, "LOCAL_WORLD_SIZE"):
        os.environ.pop(k, None)
    if world > 1:
        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world),
                           "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
