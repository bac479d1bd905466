"""The one place that reads the distributed environment; everything else asks the getters here.

Launchers, in order of precedence:

- ``torchrun`` (also ``srun torchrun``): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; the group initialises from them
  (``env://``).
- ``srun python -m eofm.pretrain`` without torchrun (one task per GPU): a job step started by
  ``srun`` sets ``SLURM_PROCID`` (rank), ``SLURM_STEP_NUM_TASKS`` (world size; ``SLURM_NTASKS``
  when absent), ``SLURM_LOCALID`` (local rank) and ``SLURM_STEP_NODELIST``/``SLURM_NODELIST``.
  The rendezvous is ``tcp://MASTER_ADDR:MASTER_PORT``: ``MASTER_ADDR`` defaults to the first
  host of the node list, ``MASTER_PORT`` to ``20000 + SLURM_JOB_ID % 20000`` so that jobs
  sharing a node do not collide. A batch script's own step (no ``srun``) lacks
  ``SLURM_STEP_NUM_TASKS`` and runs as a single process.
- Otherwise one process: the getters answer rank 0 of 1 and no process group is created.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistEnv", "all_gather_object", "all_reduce_mean", "any_across_ranks", "barrier",
    "broadcast_object", "detect_env", "device_for", "ensure_process_group", "first_host",
    "get_local_rank", "get_rank", "get_world_size", "init_distributed", "is_main_process",
    "sum_across_ranks", "teardown",
]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    launcher: str = "single"  # "torchrun" | "slurm" | "single"

    @property
    def is_distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the process that writes files and logs."""
        return self.rank == 0


_ENV: DistEnv | None = None
# A gloo group over every rank beside an nccl default group, for small host-side agreements
# (any_across_ranks, every step) that must not make the host wait for the GPU; None otherwise.
_HOST_GROUP: Any = None


# One host-list entry: host-name text and [...] groups, up to the first comma outside brackets.
_HOST_ENTRY = re.compile(r"(?:[^\[\],]+|\[[^\[\]]*\])+")
_HOST_RANGES = re.compile(r"\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*")  # inside a group: 007-009,12


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``'gpu[007-009,12],cpu1'`` -> ``'gpu007'``.

    The first entry (commas inside brackets do not split) with each ``[...]`` group replaced
    by the first number of its first range, zero padding kept, and the text between and after
    the groups kept: ``'rack[1-2]-node[01-04]'`` -> ``'rack1-node01'``,
    ``'nid[001-004]-ib'`` -> ``'nid001-ib'``."""
    text = nodelist.strip()
    m = _HOST_ENTRY.match(text)
    if m is None or (m.end() < len(text) and text[m.end()] != ","):
        raise ValueError(f"SLURM node list: expected host names with optional [..] ranges "
                         f"separated by commas (e.g. 'gpu[007-009,12],cpu1'), "
                         f"got {nodelist!r}")

    def first(group: re.Match[str]) -> str:
        ranges = group.group(1)
        if _HOST_RANGES.fullmatch(ranges) is None:
            raise ValueError(f"SLURM node list {nodelist!r}: expected numbers or ranges in "
                             f"brackets (e.g. [007-009,12]), got [{ranges}]")
        return re.split(r"[-,]", ranges)[0]

    return re.sub(r"\[([^\]]*)\]", first, m.group(0))


def _first_host_of(environ: Mapping[str, str], key: str) -> str:
    """:func:`first_host` of the node list in ``environ[key]``; an error names the variable."""
    try:
        return first_host(environ[key])
    except ValueError as e:
        raise ValueError(f"environment variable {key}: {e}") from None


def tasks_per_node(value: str) -> list[int]:
    """SLURM's tasks per node, one entry per node: ``'8(x2),4'`` -> ``[8, 8, 4]`` (an
    allocation whose nodes run different numbers of tasks); ``[]`` when it cannot be read."""
    out: list[int] = []
    for part in value.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if m is None:
            return []
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def _int(environ: Mapping[str, str], key: str, default: int) -> int:
    value = environ.get(key, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"environment variable {key}: expected an integer, "
                         f"got {value!r}") from None


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read torchrun's or SLURM's variables (see the module docstring); no side effects."""
    e = os.environ if environ is None else environ
    if "RANK" in e and "WORLD_SIZE" in e:
        world = _int(e, "WORLD_SIZE", 1)
        return DistEnv(rank=_int(e, "RANK", 0), world_size=world,
                       local_rank=_int(e, "LOCAL_RANK", 0),
                       local_world_size=_int(e, "LOCAL_WORLD_SIZE", world),
                       master_addr=e.get("MASTER_ADDR"),
                       master_port=_int(e, "MASTER_PORT", 0) or None, launcher="torchrun")
    if "SLURM_PROCID" in e and "SLURM_STEP_NUM_TASKS" in e:
        world = _int(e, "SLURM_STEP_NUM_TASKS", 0) or _int(e, "SLURM_NTASKS", 1)
        listed = next((k for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST",
                                   "SLURM_NODELIST") if e.get(k)), None)
        addr = e.get("MASTER_ADDR") or (_first_host_of(e, listed) if listed else "127.0.0.1")
        port = _int(e, "MASTER_PORT", 0) or 20000 + _int(e, "SLURM_JOB_ID", 0) % 20000
        per_node = tasks_per_node(e.get("SLURM_STEP_TASKS_PER_NODE")
                                  or e.get("SLURM_TASKS_PER_NODE", ""))
        node = _int(e, "SLURM_NODEID", 0)
        return DistEnv(rank=_int(e, "SLURM_PROCID", 0), world_size=world,
                       local_rank=_int(e, "SLURM_LOCALID", 0),
                       local_world_size=per_node[node if node < len(per_node) else 0]
                       if per_node else world,
                       master_addr=addr, master_port=port, launcher="slurm")
    return DistEnv()


def device_for(env: DistEnv) -> torch.device:
    """``cuda:<local_rank>`` (modulo the visible devices) when CUDA is available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(backend: str | None = None,
                     timeout: timedelta | None = None) -> DistEnv:
    """Create the process group (nccl on CUDA, gloo on CPU) when world_size > 1; idempotent.

    With one process no group is created and the getters fall back to rank 0 of 1.
    """
    global _ENV
    env = detect_env()
    _ENV = env
    if env.world_size == 1 or _initialized():
        return env
    device = device_for(env)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    kwargs: dict[str, Any] = {"backend": backend, "rank": env.rank, "world_size": env.world_size}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if env.launcher == "slurm":
        kwargs["init_method"] = f"tcp://{env.master_addr}:{env.master_port}"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if backend == "nccl":
            kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    _init_host_group(timeout)
    return env


def _needs_host_group(backend: str) -> bool:
    """Whether the default group ``backend`` cannot all-reduce CPU tensors (nccl alone), so
    host-side flags need a gloo group of their own; gloo, or a mixed backend that includes it
    (``cpu:gloo,cuda:nccl``), uses the default group."""
    return "gloo" not in str(backend).lower()


def _init_host_group(timeout: timedelta | None = None) -> None:
    """Create the gloo group for host-side flags when the default backend needs one. Called
    on every rank at init, right after the default group (new_group is collective: the same
    calls in the same order everywhere); destroyed with the default group in teardown()."""
    global _HOST_GROUP
    _HOST_GROUP = None
    if _needs_host_group(dist.get_backend()):
        kwargs: dict[str, Any] = {"backend": "gloo"}
        if timeout is not None:
            kwargs["timeout"] = timeout
        _HOST_GROUP = dist.new_group(**kwargs)


def ensure_process_group(device: torch.device) -> None:
    """A process group even for one process, for libraries that need one (DeepSpeed): with one
    process and none yet, a one-rank group on an in-memory store (nccl on CUDA, gloo on CPU)."""
    if _initialized():
        return
    if _env().world_size != 1:
        raise RuntimeError("ensure_process_group: a multi-process job needs init_distributed()")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                            rank=0, world_size=1)


def _env() -> DistEnv:
    return _ENV if _ENV is not None else detect_env()


def get_rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if _initialized() else _env().rank


def get_world_size() -> int:
    """Number of processes in the job (1 without a process group)."""
    return dist.get_world_size() if _initialized() else _env().world_size


def get_local_rank() -> int:
    """Rank within this node; selects the GPU."""
    return _env().local_rank


def is_main_process() -> bool:
    """Whether this is rank 0 (the one that logs and writes plain checkpoints)."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if _initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks as a new (floating) tensor; ``t`` itself is left alone."""
    out = t.detach().clone()
    if not out.is_floating_point():
        out = out.double()
    if _initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def any_across_ranks(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. agree to stop at this step).

    Called every step, so it stays on the host: a CPU tensor all-reduced on the gloo group that
    :func:`init_distributed` made beside an nccl default group (or on the default group when it
    is gloo), no device tensor and no wait for the GPU's queue. Only a group made elsewhere
    with nccl alone falls back to a tensor on ``device`` (default: the current GPU).
    """
    if not _initialized() or dist.get_world_size() == 1:
        return bool(flag)
    if _HOST_GROUP is not None or not _needs_host_group(dist.get_backend()):
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_HOST_GROUP)
        return bool(t.item())
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_across_ranks(values: list[float]) -> list[float]:
    """``values`` summed over every rank (as given without a process group), on the host as
    :func:`any_across_ranks` does: a float64 CPU tensor on the gloo group beside an nccl default
    group (or on the default group when it is gloo); a group made elsewhere with nccl alone
    gets a tensor on the current GPU."""
    if not _initialized() or dist.get_world_size() == 1:
        return list(values)
    if _HOST_GROUP is not None or not _needs_host_group(dist.get_backend()):
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=_HOST_GROUP)
        return t.tolist()
    t = torch.tensor(values, dtype=torch.float64,
                     device=torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj: Any, src: int = 0, group: Any = None) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled in transit: trusted peers only), over
    ``group`` (default: the default group)."""
    if not _initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


@contextmanager
def patient_group(timeout: timedelta) -> Iterator[Any]:
    """A gloo group of every rank whose collectives wait up to ``timeout``, for one rank's long
    work alone (rank 0 building a dataset) that would outlast the default group's timeout
    (nccl: 10 minutes) on the ranks waiting for it. Collective: every rank enters it at the
    same point, before the long work starts; destroyed on exit. None without a process group."""
    if not _initialized():
        yield None
        return
    group = dist.new_group(backend="gloo", timeout=timeout)
    try:
        yield group
    finally:
        dist.destroy_process_group(group)


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without a group)."""
    if not _initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def teardown() -> None:
    """barrier() then destroy the process groups (the default one and :func:`init_distributed`'s
    host-side gloo group); without both, exits crash now and then."""
    global _ENV, _HOST_GROUP
    if _initialized():
        try:
            barrier()
        finally:
            if _HOST_GROUP is not None:
                dist.destroy_process_group(_HOST_GROUP)
            _HOST_GROUP = None
            dist.destroy_process_group()
            _forget_library_groups()
    _ENV = None
    _HOST_GROUP = None


def _forget_library_groups() -> None:
    """Drop the process groups libraries cached from the destroyed default group: DeepSpeed
    keeps a clone of the world group (``deepspeed.utils.groups._WORLD_GROUP``) and would hand
    the dead one to the next job of this process (a second run in a notebook or a sweep:
    "Group ... is not registered")."""
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is not None:
        for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP"):
            if hasattr(groups, name):
                setattr(groups, name, None)
