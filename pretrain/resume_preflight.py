"""What a resume would refuse, found before the launcher starts any rank.

The launch scripts' preflight (:func:`eofm.pretrain.cli.preflight`) knows the world size
torchrun will start. A run that would resume from a checkpoint written by another number of
ranks without ``runtime.resume_elastic`` is refused by every rank once it has loaded the
checkpoint: each rank's error, and torchrun's failure report, status 1. :func:`resume_problems`
reads only what decides it, the way the ranks would find the checkpoint:

- plain checkpoints (DDP, FSDP2, single): the newest complete ``step_*.pt``, opened memory-mapped
  and weights-only (the tensors are not read), its per-rank data positions counted;
- DeepSpeed: the newest complete ``step_*/`` folder's layout (its per-rank files, and whether it
  is ZeRO-3, which a ZeRO-1/2 job cannot load, elastic or not).

Also ``runtime.resume=false`` over an earlier run's checkpoints
(:func:`.checkpoint.refuse_fresh_run_over_checkpoints`). A checkpoint that cannot be read here is
left to the ranks, which fall back past it and say so; the worker count is checked by the ranks
(what a rank's loader runs depends on the dataset).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointManager, refuse_fresh_run_over_checkpoints
from .config import ConfigError, TrainConfig
from .resume import ELASTIC_ADVICE
from .state_fit import refuse_other_kind
from .zero_checkpoint import deepspeed_layout, stage_boundary_advice, stage_name

__all__ = ["checkpoint_ranks", "resume_problems"]

log = logging.getLogger(__name__)


def checkpoint_ranks(path: Path) -> int | None:
    """How many ranks wrote the plain checkpoint ``path`` (its per-rank data positions); None
    when it cannot be read or does not say. Memory-mapped and weights-only: nothing but the
    pickled structure is read, and nothing but plain data is unpickled."""
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # the ranks fall back past it, and say why
        log.debug("preflight: cannot read %s (%s); left to the ranks", path, e)
        return None
    data = state.get("data") if isinstance(state, dict) else None
    return len(data) if isinstance(data, list) and data else None


def resume_problems(cfg: TrainConfig, world_size: int | None) -> list[str]:
    """What the ranks of a ``world_size`` launch would refuse when they resume from
    ``runtime.out_dir`` (see the module docstring); empty when nothing, or when there is
    nothing to resume. ``world_size`` None (not known before the rendezvous) checks only what
    holds at any size."""
    try:
        refuse_fresh_run_over_checkpoints(cfg)
    except ConfigError as e:
        return list(e.problems)
    rt = cfg.runtime
    if not rt.resume or not rt.out_dir or "://" in rt.out_dir:
        return []
    manager = CheckpointManager(Path(rt.out_dir) / "checkpoints", rank=0)
    try:  # checkpoints of the other kind (plain files for DeepSpeed, or the reverse)
        refuse_other_kind(manager, deepspeed=rt.strategy == "deepspeed", strategy=rt.strategy)
    except ConfigError as e:
        return list(e.problems)
    if rt.strategy == "deepspeed":
        done = [p for _, p, complete in manager.deepspeed_tags() if complete]
        if not done:
            return []
        wrote, was_zero3 = deepspeed_layout(done[0])
        zero3 = rt.zero_stage == 3
        if was_zero3 != zero3:
            return [f"runtime.zero_stage: the DeepSpeed checkpoint {done[0]} was written with "
                    f"{stage_name(was_zero3)}, this run has {stage_name(zero3)}; "
                    f"{stage_boundary_advice(was_zero3)}"]
    else:
        newest = manager.latest()
        if newest is None:
            return []
        done, wrote = [newest], checkpoint_ranks(newest) or 0
    if world_size is None or not wrote or wrote == world_size or rt.resume_elastic:
        return []
    return [f"runtime.resume_elastic: the checkpoint {done[0]} was written by {wrote} ranks; "
            f"the data position cannot be kept exact on {world_size}: {ELASTIC_ADVICE} "
            f"(weights, optimiser and step exact), or launch {wrote} ranks (this launch starts "
            f"{world_size})"]
