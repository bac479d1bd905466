"""Atomic, pruned, self-healing checkpoints of plain training state.

A checkpoint is a plain dict (model/optimiser/scheduler state dicts, step, epoch, RNG states
from :func:`.rng_state.capture_rng`, the data position, the resolved config as a dict) written
by rank 0 as ``step_{step:09d}.pt``: a temporary file in the same folder, flushed and fsynced, renamed over,
then the folder fsynced, so a kill at any moment leaves either the old set or the new one.
Loading uses ``torch.load(weights_only=True)``: nothing else is unpickled. Every rank resumes
the same checkpoint: rank 0's list is tried in order and the ranks agree after each file, so
one that a rank cannot read is passed over by all. DeepSpeed keeps its
own sharded format under ``step_{step:09d}/`` folders with the same keep-k and
"newest complete" rules (a ``COMPLETE`` marker is written once every rank has saved; a folder
of the step being saved, also a complete one a resume could not load, is written anew); its
loader, which asks ``torch.load`` for ``weights_only=False``, runs with every load made
weights-only (plus DeepSpeed's four plain-data classes: :mod:`.zero_checkpoint`), as does the
universal conversion below, so a file that pickles anything else is refused. A
DeepSpeed checkpoint written by another number of ranks is converted once, by rank 0, to
DeepSpeed's universal format under ``universal/step_{step:09d}/`` (DeepSpeed's own
``ds_to_universal``, into a temporary folder renamed when done) and loaded from there, when the
job allows an elastic resume; the next checkpoint of the new job supersedes the conversion. A
stop signal that cuts the conversion short stops the job (:class:`.preemption.StopRequested`
on every rank, the requeue status), and is not taken for a damaged checkpoint.

With ``async_save`` the step only waits for a copy of the state in host memory
(:func:`snapshot`); a background thread writes it the same atomic way, one write in flight at
a time, and :meth:`CheckpointManager.wait` (called before the next save, at the end of a run and
before a preempted job exits) waits for it and re-raises its error.

Per-rank state that can be large (an objective's per-sample records) is not gathered to rank 0:
each rank writes its own ``step_{step:09d}.rank{rank:05d}.pt`` beside the checkpoint, atomically,
before the checkpoint that names it is committed, and prunes its own files once that checkpoint
is out of the kept set; a resumed rank reads only its own file.

Every rank learns whether a checkpoint was written (:func:`.write_agreement.agree_written`,
where a barrier would otherwise stand after one rank's part): when any rank's part failed, every rank raises,
so none goes on as if it were written (says so, asks for a requeue, marks a folder complete).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from eofm.data_shards.outputs import atomic_open, write_failure

from . import distributed
from .preemption import StopRequested
from .rng_state import capture_rng, restore_rng  # re-exported: their home before the split
from .write_agreement import CheckpointWriteFailed, agree_written  # re-exported likewise
from .zero_checkpoint import (
    DS_MARKER,
    UnsafeCheckpointFile,
    deepspeed_layout,
    load_engine,
    stage_boundary_advice,
    stage_name,
    to_universal,
)

__all__ = ["DS_MARKER", "CheckpointManager", "CheckpointWriteFailed", "UnreadableCheckpoints",
           "agree_written", "capture_rng", "check_plain", "load_deepspeed", "looks_complete",
           "refuse_fresh_run_over_checkpoints", "restore_rng", "save_deepspeed"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{9})\.pt$")
_DS_NAME = re.compile(r"^step_(\d{9})$")
_RANK_NAME = re.compile(r"^step_(\d{9})\.rank(\d{5})\.pt$")
UNIVERSAL = "universal"  # DeepSpeed checkpoints converted for another world size
_SCALARS = (str, int, float, bool, bytes, type(None))  # exact types: np.float64 is a float
_TORCH = (torch.Tensor, torch.Size, torch.dtype, torch.device)


def check_plain(obj: Any, where: str = "state") -> None:
    """Raise TypeError naming the first value ``torch.load(weights_only=True)`` would refuse."""
    if type(obj) in _SCALARS or isinstance(obj, _TORCH):
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if type(k) not in _SCALARS:
                raise TypeError(f"{where}: key {k!r} of type {type(k).__name__} is not plain")
            check_plain(v, f"{where}[{k!r}]")
    elif type(obj) in (list, tuple, set):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    else:
        raise TypeError(f"{where}: {type(obj).__module__}.{type(obj).__name__} cannot be loaded "
                        f"with weights_only=True; store tensors, numbers, strings, lists, dicts")


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the OS allows opening folders)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_save(state: dict[str, Any], final: Path) -> Path:
    """``torch.save`` to ``final`` atomically: a ``.tmp`` beside it, flushed and fsynced,
    renamed over, then the folder fsynced; returns ``final``. A failed write (a full disk,
    an interrupt) removes the ``.tmp``, leaves ``final`` as it was and raises an ``OSError``
    naming ``final`` (:func:`write_failure`; a KeyboardInterrupt is re-raised as it is).
    The ``.tmp`` name is what :meth:`CheckpointManager.save` and
    :meth:`CheckpointManager.prune_rank_states` glob for to clear a killed write's."""
    try:
        with atomic_open(final, "wb", tmp_name=final.name + ".tmp") as f:
            torch.save(state, f)
    except Exception as e:  # atomic_open removed the .tmp; BaseException passes as it is
        raise write_failure(final, e) from e
    _fsync_dir(final.parent)
    return final


def snapshot(obj: Any) -> Any:
    """A copy of a (nested) state with every tensor copied to host memory: what a background
    write can hold while training goes on changing the live tensors."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, snapshot(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def looks_complete(path: Path) -> bool:
    """Cheap structural check: a torch zip archive with its central directory and pickle."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


class CheckpointManager:
    """Save, prune and find checkpoints in ``directory``; keeps the newest ``keep_last_k``."""

    def __init__(self, directory: str | Path, keep_last_k: int = 3, *,
                 rank: int | None = None) -> None:
        if keep_last_k < 1:
            raise ValueError(f"keep_last_k: expected >= 1, got {keep_last_k}")
        self.directory = Path(directory)
        self.keep_last_k = keep_last_k
        self.rank = distributed.get_rank() if rank is None else rank
        self._writer: threading.Thread | None = None
        self._writing: int | None = None  # step of the write in flight
        self._error: BaseException | None = None
        self._deepspeed_saved: set[int] = set()  # DeepSpeed steps this manager wrote

    def path_for(self, step: int) -> Path:
        """Where the plain checkpoint of ``step`` lives."""
        return self.directory / f"step_{step:09d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every plain checkpoint file present, newest first (unchecked)."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir()
                 if (m := _NAME.match(p.name)) and p.is_file()]
        return sorted(found, reverse=True)

    def every_checkpoint(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of the plain checkpoint files and the complete DeepSpeed folders
        present, newest first (unchecked)."""
        done = [(s, p) for s, p, complete in self.deepspeed_tags() if complete]
        return sorted(self.checkpoints() + done, reverse=True)

    def save(self, state: dict[str, Any], step: int) -> Path | None:
        """Write ``state`` as the checkpoint of ``step`` (rank 0 only; others return None)."""
        if self.rank != 0:
            return None
        check_plain(state)
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("step_*.pt.tmp"):  # one writer: these are dead writes
            stale.unlink(missing_ok=True)
        final = _atomic_save(state, self.path_for(step))
        self._prune(step)
        return final

    def save_async(self, state: dict[str, Any], step: int) -> None:
        """:meth:`save` in a background thread (rank 0 only): ``state`` must not change
        afterwards (pass a :func:`snapshot`). Waits for the previous write first."""
        if self.rank != 0:
            return
        self.wait()
        check_plain(state)
        self._writing = step

        def write() -> None:
            try:
                self.save(state, step)
            except BaseException as e:  # re-raised by wait() in the training thread
                self._error = e

        self._writer = threading.Thread(target=write, name=f"checkpoint-{step}", daemon=False)
        self._writer.start()

    def wait(self) -> None:
        """Wait for the background write, if any; raise if it failed."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        step, self._writing = self._writing, None
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"writing the checkpoint of step {step} to {self.directory} "
                               f"failed: {type(err).__name__}: {err}") from err

    def settle(self) -> None:
        """Wait for the background write, if any; its error is logged, not raised (for a job
        that is already ending with another exception)."""
        try:
            self.wait()
        except Exception as e:
            log.error("%s", e)

    def rank_state_path(self, step: int, rank: int | None = None) -> Path:
        """Where ``rank``'s (default: this process's) own state for ``step`` lives."""
        return self.directory / f"step_{step:09d}.rank{self.rank if rank is None else rank:05d}.pt"

    def save_rank_state(self, state: dict[str, Any], step: int) -> Path:
        """Write this rank's own ``state`` for ``step`` atomically (every rank that has some
        calls it, before the checkpoint of ``step`` is committed)."""
        check_plain(state, "rank state")
        self.directory.mkdir(parents=True, exist_ok=True)
        return _atomic_save(state, self.rank_state_path(step))

    def load_rank_state(self, step: int) -> dict[str, Any]:
        """This rank's own state for ``step`` (``torch.load(weights_only=True)``); a missing or
        unreadable file is an error naming it, since the checkpoint of ``step`` says it exists."""
        path = self.rank_state_path(step)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: the checkpoint of step {step} names per-rank state for rank "
                f"{self.rank}, but the file is missing; restore it, or remove that checkpoint "
                f"to resume from the one before")
        try:
            return dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:
            raise ValueError(f"{path}: cannot read rank {self.rank}'s state of step {step} "
                             f"({e}); remove that checkpoint to resume from the one before") from e

    def prune_rank_states(self, world_size: int | None = None, pending: int | None = None
                          ) -> None:
        """Remove this rank's own state files of steps that have no kept checkpoint (pruned
        ones, and dead writes of a checkpoint that was never committed), except those of step
        ``pending`` (saved in the background, not yet committed; or the newest one committed,
        which this rank's listing of a shared folder may not show yet). Every rank calls it
        after the commit, so no rank deletes a file another is writing; rank 0 also removes
        such files of ranks at or above ``world_size`` (left by a larger earlier job)."""
        if not self.directory.is_dir():
            return
        kept = {s for s, _ in self.checkpoints()}
        kept |= {s for s, _, done in self.deepspeed_tags() if done}
        if pending is not None:  # its checkpoint may still be being written in the background
            kept.add(pending)
        for p in self.directory.iterdir():
            m = _RANK_NAME.match(p.name)
            if not m or int(m.group(1)) in kept:
                continue
            owner = int(m.group(2))
            if owner == self.rank or (self.rank == 0 and world_size is not None
                                      and owner >= world_size):
                p.unlink(missing_ok=True)
        for p in self.directory.glob(f"step_*.rank{self.rank:05d}.pt.tmp"):
            p.unlink(missing_ok=True)

    def _prune(self, step: int) -> None:
        """Keep the newest ``keep_last_k`` checkpoints up to ``step``, the one just written.
        Files of later steps are not counted nor removed: they are ones a resume skipped as
        unreadable (it resumed from an earlier one), and ranked by step they took the kept
        slots, so each new checkpoint, and the one resumed from, was deleted as written and
        only the damaged file was left."""
        upto = [(s, path) for s, path in self.checkpoints() if s <= step]
        for _, path in upto[self.keep_last_k:]:
            path.unlink(missing_ok=True)

    def latest(self) -> Path | None:
        """The newest checkpoint that is a complete archive (temp files and truncated ones are
        skipped with a warning); None when there is none."""
        for _, path in self.checkpoints():
            if looks_complete(path):
                return path
            log.warning("checkpoint %s is incomplete or corrupt; trying the previous one", path)
        return None

    @staticmethod
    def load(path: str | Path) -> dict[str, Any]:
        """Load a checkpoint onto the CPU with ``torch.load(weights_only=True)``."""
        return torch.load(path, map_location="cpu", weights_only=True)

    def load_latest(self) -> tuple[Path, dict[str, Any]] | None:
        """``(path, state)`` of the newest checkpoint that loads on every rank; falls back past
        broken ones. None when there is none; :class:`UnreadableCheckpoints` when none of them
        loads (a job must not start over silently and then prune them).

        Collective (every rank calls it), as :meth:`load_deepspeed`: rank 0's listing, newest
        first, is tried in that order by every rank, and the ranks agree after each file
        (``all_gather_object``): all take it, or all move on to the one before. A rank that
        cannot read a file the others read (a node's I/O error, NFS lag) would otherwise
        resume another step than theirs, train a mix and hang at the end."""
        names = distributed.broadcast_object([p.name for _, p in self.checkpoints()])
        failed = []
        for name in names:
            path = self.directory / name
            state, error = None, None
            try:
                state = self.load(path)
            except Exception as e:  # any failure to read means: try the one before
                log.warning("cannot load checkpoint %s (%s)", path, e)
                error = _short(e)
            errors = distributed.all_gather_object(error)
            if not any(errors):
                return path, state
            rank, why = next((r, e) for r, e in enumerate(errors) if e)
            log.warning("checkpoint %s failed to load%s; every rank tries the previous one",
                        path, "" if error else f" on rank {rank} ({why})")
            failed.append(f"{name}: {error or f'rank {rank}: {why}'}")
        if failed:
            raise UnreadableCheckpoints(self.directory, failed)
        return None

    # DeepSpeed: every rank calls these (collective); files come from engine.save_checkpoint.

    def deepspeed_tags(self) -> list[tuple[int, Path, bool]]:
        """``(step, folder, complete)`` of each DeepSpeed checkpoint folder, newest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p, (p / DS_MARKER).is_file()) for p in self.directory.iterdir()
                 if (m := _DS_NAME.match(p.name)) and p.is_dir()]
        return sorted(found, reverse=True)

    def save_deepspeed(self, engine: Any, step: int, client_state: dict[str, Any]) -> Path:
        """Save a DeepSpeed engine's sharded state under ``step_{step:09d}/`` on every rank.

        A folder of ``step`` already there is written anew (its marker removed first, so a kill
        meanwhile leaves it incomplete, never complete with missing shards): a dead write, or a
        complete one that an earlier process left and a resume could not load (it fell back
        and trained up to this step again; kept, the damaged folder would stay the newest, and
        every relaunch and ``eofm-export`` would take it). Only a step this manager itself
        saved in this process is not written twice (the same state)."""
        check_plain(client_state, "client_state")
        tag = f"step_{step:09d}"
        folder = self.directory / tag
        if step in self._deepspeed_saved:  # the same on every rank: no file check that may lag
            return folder
        error = None
        if self.rank == 0:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                if folder.is_dir():  # an earlier write of the same step: incomplete, then gone
                    (folder / DS_MARKER).unlink(missing_ok=True)
                    _fsync_dir(folder)
                    shutil.rmtree(folder, ignore_errors=True)
            except Exception as e:  # every rank raises below: none starts writing shards
                error = e
        agree_written(error, folder, step)
        # DeepSpeed's save runs collectives of its own (barriers): a rank that fails inside it
        # cannot meet the others in an agreement here, so its error propagates as it is
        engine.save_checkpoint(str(self.directory), tag=tag, client_state=client_state,
                               save_latest=False)
        distributed.barrier()  # every shard is on disk before the folder is marked complete
        error = None
        if self.rank == 0:
            try:
                self._commit_deepspeed(folder, step)
            except Exception as e:  # every rank raises below: none takes the step as saved
                error = e
        agree_written(error, folder, step)
        self._deepspeed_saved.add(step)
        return folder

    def _commit_deepspeed(self, folder: Path, step: int) -> None:
        """Rank 0, once every shard of ``step`` is in ``folder``: write its ``COMPLETE``
        marker atomically, then keep the newest ``keep_last_k`` complete folders up to ``step``
        (incomplete ones are dead writes) and drop the superseded universal conversions."""
        marker = folder / DS_MARKER
        with open(marker.with_name(DS_MARKER + ".tmp"), "w") as f:
            f.write(f"{step}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(marker.with_name(DS_MARKER + ".tmp"), marker)
        _fsync_dir(folder)
        kept = 0
        for s, p, done in self.deepspeed_tags():  # incomplete folders are dead writes
            if done and s > step:  # one a resume could not load: not counted (_prune)
                continue
            kept += done
            if not done or kept > self.keep_last_k:
                shutil.rmtree(p, ignore_errors=True)
        shutil.rmtree(self.directory / UNIVERSAL, ignore_errors=True)  # superseded

    def load_deepspeed(self, engine: Any, elastic: bool = False) -> dict[str, Any] | None:
        """Load the newest complete DeepSpeed checkpoint into ``engine``; its client state, or
        None when there is none. Every rank tries rank 0's list of folders in the same order;
        :class:`UnreadableCheckpoints` when none of them loads.

        A checkpoint written by another number of ranks is refused (ValueError) unless
        ``elastic`` (its data position moves); then it is converted to DeepSpeed's universal
        format (once) and loaded from that: weights, optimiser moments and step exact, frozen
        parameters and buffers too (:func:`.zero_checkpoint.restore_unoptimised`). One
        written with ZeRO-3 by a ZeRO-1/2 job or the other way round is refused (ValueError):
        DeepSpeed's universal format does not carry a checkpoint across that boundary. Every
        file is read weights-only; one that pickles anything else raises
        :class:`UnsafeCheckpointFile` naming it (no fallback to an earlier checkpoint). A
        conversion cut short by a stop signal raises :class:`.preemption.StopRequested` on
        every rank (no fallback either: the requeued job converts it again).
        """
        world = distributed.get_world_size()
        zero3 = bool(engine.zero_optimization_partition_weights())
        found = distributed.broadcast_object(
            [(p.name, *deepspeed_layout(p)) for _, p, done in self.deepspeed_tags() if done])
        failed = []
        for name, wrote, was_zero3 in found:
            if was_zero3 != zero3:
                raise ValueError(
                    f"{self.directory / name}: DeepSpeed checkpoint written with "
                    f"{stage_name(was_zero3)}, this job runs {stage_name(zero3)}; "
                    f"{stage_boundary_advice(was_zero3)}")
            if wrote != world and not elastic:
                raise ValueError(
                    f"{self.directory / name}: DeepSpeed checkpoint written by {wrote} ranks, "
                    f"this job has {world}; set runtime.resume_elastic=true to convert it to "
                    f"DeepSpeed's universal checkpoint and continue (weights, optimiser and "
                    f"step exact), or run on {wrote} ranks")
            universal = wrote != world
            error = unsafe = None
            try:
                root = self._universal(name, wrote, world) if universal else self.directory
                path, client = load_engine(engine, root, name, universal)
                ok = path is not None
            except UnsafeCheckpointFile as e:  # refused, not damaged: no falling back past it
                ok, client, unsafe = False, None, str(e)
            except Exception as e:  # a rank that cannot read its shard: all fall back together
                log.warning("cannot load DeepSpeed checkpoint %s (%s)", name, e)
                ok, client, error = False, None, _short(e)
            states = distributed.all_gather_object((ok, unsafe))
            refused = [u for _, u in states if u]
            if refused:  # every rank raises, the same
                raise UnsafeCheckpointFile(refused[0])
            if all(o for o, _ in states):
                return dict(client or {})
            log.warning("DeepSpeed checkpoint %s failed to load; trying the previous one", name)
            failed.append(f"{name}: {error or 'another rank could not load its part'}")
        if failed:
            raise UnreadableCheckpoints(self.directory, failed)
        return None

    def _universal(self, name: str, wrote: int, world: int) -> Path:
        """The folder holding ``name`` in universal format, converted by rank 0 if not yet.

        Every rank raises what rank 0's conversion raised: a RuntimeError (the caller falls
        back to the previous checkpoint), :class:`UnsafeCheckpointFile`, or
        :class:`.preemption.StopRequested` when a stop cut it short (no fallback: the job
        stops with the requeue status, and its requeue converts this checkpoint again)."""
        target = self.directory / UNIVERSAL / name
        error = None
        if self.rank == 0 and not (target / DS_MARKER).is_file():
            log.warning("DeepSpeed checkpoint %s was written by %d ranks, this job has %d: "
                        "converting it to DeepSpeed's universal format (once)", name, wrote, world)
            try:
                to_universal(self.directory / name, target)
                _fsync_dir(target.parent)
            except StopRequested as e:  # a SystemExit: every rank stops, none falls back
                error = (StopRequested.__name__, str(e))
            except Exception as e:  # every rank learns of it and falls back together
                error = (type(e).__name__ if isinstance(e, UnsafeCheckpointFile)
                         else RuntimeError.__name__, str(e))
        error = distributed.broadcast_object(error)
        if error:
            kinds = {k.__name__: k for k in (StopRequested, UnsafeCheckpointFile, RuntimeError)}
            raise kinds[error[0]](error[1])
        return target.parent


def _short(e: BaseException) -> str:
    """An exception in one line (its full text is in the warning logged beside)."""
    first = next((x.strip() for x in str(e).splitlines() if x.strip()), "")
    return f"{type(e).__name__}: {first[:160]}"


class UnreadableCheckpoints(RuntimeError):
    """Checkpoints exist but none loads: resuming would silently start over."""

    def __init__(self, directory: Path, failures: list[str]) -> None:
        super().__init__(f"{directory}: none of its {len(failures)} checkpoint(s) could be "
                         f"loaded ({'; '.join(failures)}); fix the cause, or move them away to "
                         f"start over (a new run would prune them)")


def save_deepspeed(engine: Any, manager: CheckpointManager, step: int,
                   client_state: dict[str, Any]) -> Path:
    """Function form of :meth:`CheckpointManager.save_deepspeed` (every rank calls it)."""
    return manager.save_deepspeed(engine, step, client_state)


def load_deepspeed(engine: Any, manager: CheckpointManager, elastic: bool = False
                   ) -> dict[str, Any] | None:
    """Function form of :meth:`CheckpointManager.load_deepspeed` (every rank calls it)."""
    return manager.load_deepspeed(engine, elastic)


def refuse_fresh_run_over_checkpoints(cfg: Any) -> None:
    """With ``runtime.resume=false``, a :class:`ConfigError` when ``runtime.out_dir`` already
    holds checkpoints (plain files or complete DeepSpeed folders): the new run's would mix with
    them (keep-k pruning goes by step across both runs, so the new ones below the old run's
    newest step would be deleted as they are written, and a resume or ``eofm-export`` would
    pick the old run's newest). Rank 0's listing decides for every rank (collective).
    ``cfg``: a pretraining or fine-tuning config (``runtime.resume``, ``runtime.out_dir``)."""
    from .config import ConfigError

    if cfg.runtime.resume:
        return
    folder = Path(cfg.runtime.out_dir) / "checkpoints"
    names = distributed.broadcast_object(
        [p.name for _, p in CheckpointManager(folder, rank=0).every_checkpoint()]
        if distributed.get_rank() == 0 else None)
    if not names:
        return
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise ConfigError([
        f"runtime.resume: false starts a new run from step 0, but {folder} holds {len(names)} "
        f"checkpoint(s) of an earlier run ({listed}; newest first): the two runs' checkpoints "
        f"would mix (pruning keeps the newest steps of both, and a resume or eofm-export would "
        f"take the earlier run's newest). Set another runtime.out_dir for the new run, move or "
        f"delete those checkpoints, or set runtime.resume=true to continue the earlier run"])
