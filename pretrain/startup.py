"""What a pretraining rank does before its first step besides building the model and the
loader: the ranks agree on a stop requested while the job starts (a SLURM preemption during a
long shard build), rank 0's ``data.build_from`` build is cut short by one and every rank learns
the outcome, and the objective is built from a config without ``model.init_from`` and
``objective.params.weights`` when the run resumes its own checkpoint."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from eofm.data_shards.outputs import unwritable_reason
from eofm.data_shards.remote import redact

from . import distributed as dist
from .checkpoint import CheckpointManager
from .config import TrainConfig
from .data import DatasetBuildError, ensure_dataset
from .preemption import PreemptionHandler, StopRequested, who_stopped

log = logging.getLogger(__name__)

__all__ = ["ensure_dataset_agreed", "objective_config", "out_dir_problem", "stop_if_requested"]


def stop_if_requested(preempt: PreemptionHandler | None, device: torch.device, when: str
                      ) -> None:
    """Raise :class:`.preemption.StopRequested` on every rank when a stop was requested on any
    (the ranks agree: one all-reduce on ``device``) before training, ``when`` the job noticed
    it; nothing without a ``preempt`` handler."""
    if preempt is not None and dist.any_across_ranks(preempt.should_stop,
                                                          device):
        raise StopRequested(f"stop requested before training ({who_stopped(preempt)}; "
                            f"noticed when {when})")


def ensure_dataset_agreed(cfg: TrainConfig, rank: int, preempt: PreemptionHandler | None,
                          device: torch.device) -> None:
    """:func:`.data.ensure_dataset` on every rank (``rank``'s part); with a ``preempt`` handler, rank 0's build is cut
    short by a stop signal (:meth:`.PreemptionHandler.interrupting`: the build goes on from
    its finished parts when the job is requeued), and every rank then agrees on the
    outcome, so none is left waiting for another: a stop on any rank is a
    :class:`StopRequested` on all; else a rank that failed raises its error and the
    others a :class:`.data.DatasetBuildError` naming it."""
    if preempt is None or not cfg.data.build_from:
        ensure_dataset(cfg, rank)  # without build_from it only returns
        return
    stop_if_requested(preempt, device, "the dataset build was to start")
    import eofm.data_shards.cli as shard_cli  # what ensure_dataset runs on rank 0

    failure: Exception | None = None
    try:
        with preempt.interrupting(shard_cli.main, "the data.build_from build"):
            ensure_dataset(cfg, rank)
    except StopRequested:  # rank 0 cut its build short; the others learnt it was cut
        pass
    except Exception as e:  # raised below, once every rank knows whether all stop
        failure = e
    outcomes = dist.all_gather_object(
        (preempt.should_stop, None if failure is None else str(failure)))
    if any(stop for stop, _ in outcomes):
        raise StopRequested(f"stop requested during the data.build_from build of "
                            f"{cfg.data.path} ({who_stopped(preempt)}): "
                            f"it goes on from its finished parts when the job is requeued")
    if failure is not None:
        raise failure
    failed = [(r, why) for r, (_, why) in enumerate(outcomes) if why is not None]
    if failed:
        r, why = failed[0]
        raise DatasetBuildError(f"data.path: rank {r} could not use {cfg.data.path}: {why}")


def objective_config(cfg: TrainConfig) -> TrainConfig:
    """The config the objective is built from: ``cfg``, without ``model.init_from`` and
    ``objective.params.weights`` (SoftCon's continual-pretraining weights file) when a
    checkpoint will be resumed (its weights replace those anyway, and a requeued job must not
    depend on the export or the weights file still being there or the Hub being reachable).
    ``cfg`` itself is left as it is: the saved ``config.yaml``, the checkpoints and the
    export's model card (``continued_from``) keep the original values."""
    weights = (cfg.objective.params or {}).get("weights")
    if not ((cfg.model.init_from or weights) and cfg.runtime.resume):
        return cfg
    if not CheckpointManager(Path(cfg.runtime.out_dir) / "checkpoints",
                             rank=0).every_checkpoint():
        return cfg
    if cfg.model.init_from:
        log.info("model.init_from %s not read: the run resumes from its own checkpoint",
                 redact(str(cfg.model.init_from)))
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=None))
    if weights:
        log.info("objective.params.weights %s not read: the run resumes from its own "
                 "checkpoint", redact(str(weights)))
        params = {**cfg.objective.params, "weights": None}
        cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective,
                                                                     params=params))
    return cfg


def out_dir_problem(out_dir: str | Path, rank: int) -> str | None:
    """Why this job cannot write ``out_dir`` (:func:`~eofm.data_shards.outputs.unwritable_reason`),
    the same answer on every rank (one all-gather: a rank refused alone would leave the others
    waiting in a collective). Only rank 0 tries making a folder that does not exist yet (and
    removes it): every rank doing so at once races on nested folders; the others check that
    the nearest existing folder is writable. None when every rank can."""
    mine = unwritable_reason(out_dir, try_making=rank == 0)
    reasons = dist.all_gather_object(mine)
    problems = [(r, why) for r, why in enumerate(reasons) if why is not None]
    if not problems:
        return None
    r, why = problems[0]
    return why if len(reasons) == 1 else f"{why} (rank {r})"
