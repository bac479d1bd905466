"""Will the DataLoader's batches fit in the node's shared memory (``/dev/shm``)?

DataLoader workers hand every batch to their rank through shared memory: up to
``workers x prefetch_factor`` batches per rank wait there (plus the one being used), and every
rank of the node does the same. A container's default ``/dev/shm`` (Docker: 64 MiB) holds a
few batches of 13-band tiles at most; when it runs out a worker dies with ``Bus error`` or
``DataLoader worker (pid N) is killed by signal``, which names neither the cause nor the fix.
:func:`check_shared_memory` says so before the first batch, with the numbers.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SHM_PATH", "ShmVerdict", "check_shared_memory", "loader_shm_bytes"]

SHM_PATH = "/dev/shm"
TORCH_PREFETCH_FACTOR = 2  # DataLoader's default


@dataclass(frozen=True)
class ShmVerdict:
    """``level``: "error" (cannot fit even in an empty ``/dev/shm``) or "warning" (more than
    is free now); ``message`` gives the numbers and what to change."""

    level: str
    message: str


def loader_shm_bytes(batch_bytes: int, workers: int, ranks_on_node: int,
                     prefetch_factor: int | None = None) -> int:
    """Bytes of batches that may sit in shared memory at once on a node: per rank
    ``workers x prefetch_factor`` prefetched batches and the one in use; 0 without workers
    (the rank reads its batches itself)."""
    if workers <= 0:
        return 0
    return ranks_on_node * (workers * (prefetch_factor or TORCH_PREFETCH_FACTOR) + 1) * batch_bytes


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def check_shared_memory(batch_bytes: int, workers: int, ranks_on_node: int,
                        prefetch_factor: int | None = None, shm: str | Path = SHM_PATH,
                        ) -> ShmVerdict | None:
    """None when the node's loaders fit in ``shm`` (or there is no ``shm`` to ask: not Linux),
    else an error (more than its total size) or a warning (more than is free now)."""
    need = loader_shm_bytes(batch_bytes, workers, ranks_on_node, prefetch_factor)
    if need == 0 or not Path(shm).is_dir():
        return None
    try:
        usage = shutil.disk_usage(shm)
    except OSError:
        return None
    if need <= usage.free:
        return None
    prefetch = prefetch_factor or TORCH_PREFETCH_FACTOR
    what = (f"{ranks_on_node} rank(s) on this node x {workers * prefetch + 1} batches in flight "
            f"({workers} data-loader workers x prefetch {prefetch} + 1) x {_mib(batch_bytes)} "
            f"per batch = {_mib(need)} of shared memory")
    fix = (f"give the container more ({'docker run --shm-size=' + str(-(-need * 2 // 2**30))}g, "
           "or a Kubernetes emptyDir with medium: Memory on /dev/shm), or lower "
           "data.num_workers or data.batch_size")
    if need > usage.total:
        return ShmVerdict("error", f"{what}, but {shm} holds {_mib(usage.total)} in all: the "
                                   f"workers would die with 'Bus error'; {fix}")
    return ShmVerdict("warning", f"{what}, but {shm} has {_mib(usage.free)} free of "
                                 f"{_mib(usage.total)}: workers may die with 'Bus error' when "
                                 f"the batches pile up; {fix}")
