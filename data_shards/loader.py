"""A DataLoader over :class:`~.reader.ShardDataset` that knows its exact position.

``state_dict()`` records the epoch and, per worker, how many stream positions the consumer has
taken; ``load_state_dict()`` makes the next ``iter()`` continue at the next unseen sample of
the same epoch. Positions are counted where batches are consumed (not where workers prefetch),
so a checkpoint written after a step resumes right after that step's batch, and in the same
batch order: the DataLoader takes its workers' batches in turn, and a resumed epoch starts the
turn at the worker that was due (see :meth:`ShardLoader.first_worker`). A job on another split
(world size, workers) continues from every old rank's position with ``resume_elsewhere()``:
the rest of the epoch exactly, re-cut across the new split.

Workers ignore the stop signals meant for their rank (:func:`ignore_stop_signals`): the rank
finishes its step, checkpoints and ends them itself.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from .elastic import DataChanged, Split, split_from_states, split_range
from .reader import ShardDataset, collate, is_whole, shown

# keys a saved position gained later: a position without one is taken as written with today's
# value (positions saved before it existed)
_LATER_KEYS = ("even", "shuffle_shards")


def _parent_sigterm_only(parent: int) -> None:
    """Wait for SIGTERM (blocked in every thread of the worker) and end the worker only when
    its rank process sent it, as torch's own worker handler does; from anyone else it is
    dropped."""
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)


def ignore_stop_signals(worker_id: int = 0, rank_pid: int | None = None) -> None:
    """``worker_init_fn`` for DataLoader workers: they outlive SIGTERM/SIGUSR1/SIGINT sent to
    their rank's process group (torchrun's ``os.killpg``, a Ctrl-C) or to every process of a
    SLURM step, so the rank can finish its step and checkpoint (pretrain/preemption.py); the
    rank then ends them. Without it torch's worker SIGTERM handler kills a worker and the rank
    fails ("DataLoader worker ... is killed by signal: Terminated") with no checkpoint.

    SIGUSR1 and SIGINT are ignored. SIGTERM is blocked and taken by a thread that ends the
    worker only when ``rank_pid`` (default: the parent) sent it (the DataLoader ending a stuck
    worker), where ``sigwaitinfo`` exists (Linux); elsewhere it is ignored too. Blocking holds
    only for workers forked from the rank (a spawned worker already runs other threads):
    :class:`ShardLoader` forks its workers there. It runs after torch installs its worker
    handlers. Shell commands the worker starts (``pipe:`` shards) get SIGTERM back (Python's
    subprocess resets the mask): a preemption can end one, and the reader's ``retries``
    reopen it."""
    for name in ("SIGUSR1", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later too
    threading.Thread(target=_parent_sigterm_only,
                     args=(rank_pid if rank_pid is not None else os.getppid(),), daemon=True,
                     name="eofm-worker-sigterm").start()


def _worker_init(then: Callable[[int], None] | None, rank_pid: int, worker_id: int) -> None:
    """The loader's ``worker_init_fn``: :func:`ignore_stop_signals`, then the caller's own."""
    ignore_stop_signals(worker_id, rank_pid)
    if then is not None:
        then(worker_id)


def samples_read(total: int, world: int, num_workers: int, even: bool, batch_size: int,
                 drop_last: bool) -> int:
    """Samples an epoch of ``total`` samples yields across ``world`` ranks x ``num_workers``
    workers (0: one stream) in batches of ``batch_size``: with ``even``, the
    ``total % world`` samples past the last full rank share are left out, and with
    ``drop_last`` each worker's partial last batch too."""
    streams = max(1, num_workers)
    read = 0
    for r in range(world):
        for w in range(streams):
            lo, hi = split_range(total, r, world, w, streams, even)
            read += (hi - lo) // batch_size * batch_size if drop_last else hi - lo
    return read


def epoch_fraction(states: Sequence[dict[str, Any]], total: int, even: bool = True
                   ) -> tuple[int, float]:
    """``(epoch, share of it consumed)`` from every rank's :meth:`ShardLoader.state_dict` of a
    run with ``len(states)`` ranks over ``total`` samples (``even``: each rank read
    ``total // ranks``; a position that records its batch size and ``drop_last`` leaves each
    worker's partial last batch out too). Ranks in another epoch than rank 0's count as not
    started."""
    world = len(states)
    if world < 1:
        raise ValueError("states: expected one data position per rank, got none")
    epoch = int(states[0]["epoch"])
    first = states[0]
    if "batch_size" in first:
        covered = samples_read(total, world, int(first["num_workers"]), even,
                               int(first["batch_size"]), bool(first.get("drop_last", False)))
    else:  # positions of older checkpoints
        covered = (total // world) * world if even else total
    done = sum(sum(int(v) for v in s["consumed"].values())
               for s in states if int(s["epoch"]) == epoch)
    return epoch, (min(1.0, done / covered) if covered else 0.0)


def check_loader_args(dataset: object, batch_size: object, num_workers: object,
                      prefetch_factor: object) -> None:
    """:class:`ShardLoader`'s arguments, checked before any worker starts: a TypeError when
    ``dataset`` is not a :class:`ShardDataset` (a path is not: the dataset's options, such as
    its rank and shuffling, are chosen when it is opened), a ValueError naming a
    ``batch_size`` or ``prefetch_factor`` that is not an int >= 1 or a ``num_workers`` that
    is not an int >= 0."""
    if not isinstance(dataset, ShardDataset):
        how = (f"; open it first: ShardLoader(ShardDataset({str(dataset)!r}), batch_size=...)"
               if isinstance(dataset, (str, os.PathLike)) else "")
        raise TypeError(f"dataset: expected a ShardDataset, got {shown(dataset)}{how}")
    if not is_whole(batch_size) or batch_size < 1:  # type: ignore[operator]
        raise ValueError(f"batch_size: expected an int >= 1 (samples per batch), got "
                         f"{shown(batch_size)}")
    if not is_whole(num_workers) or num_workers < 0:  # type: ignore[operator]
        raise ValueError(f"num_workers: expected an int >= 0 (0: read in this process), got "
                         f"{shown(num_workers)}")
    if prefetch_factor is not None and (
            not is_whole(prefetch_factor) or prefetch_factor < 1):  # type: ignore[operator]
        raise ValueError(f"prefetch_factor: expected None or an int >= 1 (batches each worker "
                         f"loads ahead), got {shown(prefetch_factor)}")


class ShardLoader:
    """Batches from a :class:`ShardDataset` with ``state_dict``/``load_state_dict``.

    ``drop_last``: each worker leaves out its partial last batch of an epoch (every batch
    full); ``worker_init_fn`` runs in each worker after :func:`ignore_stop_signals`."""

    def __init__(self, dataset: ShardDataset, batch_size: int, num_workers: int = 0,
                 pin_memory: bool = False, drop_last: bool = False,
                 prefetch_factor: int | None = None,
                 worker_init_fn: Callable[[int], None] | None = None) -> None:
        check_loader_args(dataset, batch_size, num_workers, prefetch_factor)
        self.dataset, self.batch_size, self.num_workers = dataset, int(batch_size), int(num_workers)
        self.pin_memory, self.drop_last, self.prefetch_factor = pin_memory, drop_last, prefetch_factor
        self.worker_init_fn = worker_init_fn
        self.epoch = 0
        self.consumed: dict[int, int] = {}
        self.last_worker: int | None = None  # the worker whose batch was consumed last
        self._dl: DataLoader | None = None

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next ``iter()``."""
        self.epoch, self.consumed, self.last_worker = epoch, {}, None
        if self.dataset.history:
            self.dataset.set_history(epoch, [])

    def _dataloader(self) -> DataLoader:
        if self._dl is None:
            kwargs: dict[str, Any] = {}
            if self.num_workers > 0:
                kwargs["persistent_workers"] = True  # no worker start-up stall at each epoch
                if self.prefetch_factor is not None:
                    kwargs["prefetch_factor"] = self.prefetch_factor
                kwargs["worker_init_fn"] = functools.partial(_worker_init, self.worker_init_fn,
                                                             os.getpid())
                if hasattr(signal, "sigwaitinfo"):  # forked: a worker's SIGTERM stays blocked
                    kwargs["multiprocessing_context"] = multiprocessing.get_context("fork")
            # its own generator: a DataLoader iterator otherwise draws its base seed from the
            # global torch RNG that checkpoints save, and a resumed run opens its iterator at
            # another point of that stream than the uninterrupted run (nothing here uses the
            # base seed: samples are seeded by their position)
            gen = torch.Generator().manual_seed(self.dataset.seed)
            self._dl = DataLoader(self.dataset, batch_size=self.batch_size,
                                  num_workers=self.num_workers, collate_fn=collate,
                                  pin_memory=self.pin_memory, drop_last=self.drop_last,
                                  generator=gen, **kwargs)
        return self._dl

    def first_worker(self) -> int:
        """The worker due next in this epoch: the DataLoader takes one batch from each
        worker in turn, skipping those that ran dry, so it is the one after the worker of the
        last consumed batch (or, if that one ran dry, the next that did not: a dry worker yields
        nothing after a resume either). A fresh DataLoader iterator starts its turn at worker
        0, so :meth:`__iter__` has DataLoader worker ``i`` read the stream of worker
        ``(i + first_worker()) % num_workers`` (``ShardDataset.set_position``); positions and
        ``__worker__`` keep the stream's id."""
        if self.last_worker is None or self.num_workers <= 1:
            return 0
        return (self.last_worker + 1) % self.num_workers

    def __iter__(self) -> Iterator[dict]:
        self.dataset.set_position(self.epoch, self.consumed, first_worker=self.first_worker())
        for batch in self._dataloader():
            w = int(batch["__worker__"][0])
            self.consumed[w] = int(batch["__pos__"][-1]) + 1
            self.last_worker = w
            yield batch
        self.epoch += 1
        self.consumed, self.last_worker = {}, None

    def _fingerprint(self) -> str:
        names = ",".join(f"{s.name}:{s.sha256}" for s in self.dataset.manifest.shards)
        return hashlib.sha256(names.encode()).hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        """Plain-data position: epoch, per-worker consumed counts and the split it depends on.
        Rank 0's also holds ``history``, the earlier splits of a moved epoch (the same on
        every rank, and as large as their rank x worker tables: kept once)."""
        d = self.dataset
        state = {"epoch": self.epoch, "consumed": {str(k): v for k, v in self.consumed.items()},
                 "last_worker": self.last_worker,
                 "seed": d.seed, "rank": d.rank, "world_size": d.world_size,
                 "num_workers": self.num_workers, "shuffle_buffer": d.shuffle_buffer,
                 "even": d.even, "shuffle_shards": d.shuffle_shards,
                 "dataset": self._fingerprint(), "batch_size": self.batch_size, "drop_last": self.drop_last}
        if d.rank == 0:
            state["history"] = [h.to_dict() for h in d.history_of(self.epoch)]
        return state

    def data_changed(self, state: dict[str, Any]) -> str | None:
        """What makes a saved position belong to other data (dataset, seed, layout), so that
        no split can continue it exactly; None when it is this data."""
        d = self.dataset
        now = {"seed": d.seed, "dataset": self._fingerprint(), "even": d.even,
               "shuffle_shards": d.shuffle_shards}
        # ``even`` and ``shuffle_shards`` are absent from older positions: taken as unchanged
        diff = {k: (state.get(k, v if k in _LATER_KEYS else None), v) for k, v in now.items()}
        return ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()
                         if a != b) or None

    def resume_elsewhere(self, states: Sequence[dict[str, Any]]) -> int:
        """Continue the epoch that every rank of another split stopped in (``states``: each
        old rank's :meth:`state_dict`, in rank order) with exactly the samples it had not
        read, re-cut across this split; later epochs are read whole. Returns how many samples
        the rest of the epoch holds across all ranks. Refuses positions of another dataset,
        seed or sample layout (``even``), which cannot be continued exactly."""
        split = split_from_states(states)
        old, d = states[0], self.dataset
        why = self.data_changed(old)
        if why:
            raise DataChanged(f"cannot continue the data position on this split: {why}")
        history = [Split.from_dict(h, f"states[0].history[{i}]")
                   for i, h in enumerate(old.get("history", []))]
        self.epoch, self.consumed, self.last_worker = int(old["epoch"]), {}, None
        d.set_history(self.epoch, [*history, split])
        self._dl = None  # workers take the positions when they start: start new ones
        return d.epoch_samples_of(self.epoch)

    def epoch_reads(self, epoch: int) -> int:
        """Samples ``epoch`` yields across all ranks (every rank reading as this one: same
        workers, batch size, ``drop_last``): :func:`samples_read` of what the epoch holds
        (the whole dataset, or what earlier splits of a moved epoch left)."""
        d = self.dataset
        return samples_read(d.epoch_samples_of(epoch), d.world_size, self.num_workers, d.even,
                            self.batch_size, self.drop_last)

    def resume_fraction(self, epoch: int, fraction: float) -> None:
        """Continue ``epoch`` with every worker past the first ``fraction`` of its part: the
        approximate position for a split that changed (world size, workers), where the exact
        one cannot be kept. The rest of the epoch then has the right length (the schedule and
        the epoch count stay aligned), but which samples it holds is approximate: samples the
        old split had read can come again and as many unread ones are skipped, at most the
        ``fraction`` of the epoch (every later epoch is exact again)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction: expected a value in [0, 1], got {fraction}")
        n, w = len(self.dataset), max(1, self.num_workers)
        self.epoch, self.last_worker = int(epoch), None
        self.consumed = {i: int(fraction * ((i + 1) * n // w - i * n // w)) for i in range(w)}

    def load_state_dict(self, state: dict[str, Any],
                        history: list[dict[str, Any]] | None = None) -> None:
        """Continue from a saved position; refuses a split that would change the sample order.
        ``history``: rank 0's, for a state of another rank (which does not carry it)."""
        d = self.dataset
        now = {"seed": d.seed, "rank": d.rank, "world_size": d.world_size,
               "num_workers": self.num_workers, "shuffle_buffer": d.shuffle_buffer,
               "even": d.even, "shuffle_shards": d.shuffle_shards,
               "dataset": self._fingerprint()}
        was = {k: state.get(k, v if k in _LATER_KEYS else None) for k, v in now.items()}
        diff = {k: (was[k], v) for k, v in now.items() if was[k] != v}
        if diff:
            raise ValueError(
                "cannot resume the data position exactly: "
                + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items())
            )
        self.epoch = int(state["epoch"])
        self.consumed = {int(k): int(v) for k, v in state["consumed"].items()}
        last = state.get("last_worker")  # absent in older checkpoints: worker 0 is due
        self.last_worker = None if last is None else int(last)
        saved = state.get("history", history or [])
        history = [Split.from_dict(h, f"history[{i}]") for i, h in enumerate(saved)]
        if history or d.history:
            d.set_history(self.epoch, history)
            self._dl = None

    def __len__(self) -> int:
        """Upper bound on batches per epoch for this rank (partial batches per worker count)."""
        n = len(self.dataset)
        w = max(1, self.num_workers)
        per = [(i + 1) * n // w - i * n // w for i in range(w)]
        if self.drop_last:
            return sum(p // self.batch_size for p in per)
        return sum(-(-p // self.batch_size) for p in per)
