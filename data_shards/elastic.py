"""Exact data position across a change of split (world size, DataLoader workers).

An epoch lays its samples out in one global order (:func:`~.reader.shard_order`); a split
cuts that order into one contiguous part per (rank, worker), and each part is read through
its own seeded shuffle buffer. A run stopped mid-epoch therefore consumed, per (rank,
worker), the first ``c`` items of a stream that is a pure function of the split, so the set
of samples it read can be replayed from integers alone, without touching the data. That
holds on damaged data too: a sample lost with its shard keeps its stream position (the
reader streams a placeholder in its place), and counts as consumed once its position is.

A job restarted on another split continues the epoch with exactly the samples the old split
had not read yet: the *remainder* (in the epoch's layout order) is cut again across the new
ranks and workers and read through fresh shuffle buffers. The remainder of a remainder works
the same way, so a job can be moved several times within one epoch: each move adds a
:class:`Split` to the epoch's history. With ``even`` splits, the ``len(remainder) % world``
samples past the last full rank share are left out of that epoch (as ``N % world`` are in a
normal epoch), so DDP ranks still see equal counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


class DataChanged(ValueError):
    """The positions belong to another dataset, seed or layout: no exact continuation."""


class EpochsDiffer(ValueError):
    """The ranks' positions are in different epochs: no one epoch's rest to re-cut. Ranks
    drift apart when samples are skipped as damaged: a rank whose part lost some has fewer
    batches an epoch (with ``drop_last``, or when its workers' parts end early)."""

    def __init__(self, message: str, epochs: Sequence[int]) -> None:
        super().__init__(message)
        self.epochs = list(epochs)  # by rank


def split_range(n: int, rank: int, world: int, worker: int, num_workers: int, even: bool
                ) -> tuple[int, int]:
    """Items ``[lo, hi)`` of an ``n``-item order read by one (rank, worker); ``even``: every
    rank takes exactly ``n // world`` (the tail is left out)."""
    if even:
        per = n // world
        lo, hi = rank * per, (rank + 1) * per
    else:
        lo, hi = rank * n // world, (rank + 1) * n // world
    m = hi - lo
    return lo + worker * m // num_workers, lo + (worker + 1) * m // num_workers


def shuffle_stream(it: Iterator[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """Shuffle buffer of ``size``: the random draws depend on the count of items only, never on
    their values, which is what lets :func:`consumed_items` replay it with integers."""
    buf: list[T] = []
    for x in it:
        if len(buf) < size:
            buf.append(x)
            continue
        j = int(rng.integers(len(buf)))
        buf[j], x = x, buf[j]
        yield x
    for j in rng.permutation(len(buf)):
        yield buf[j]


def stream_rng(seed: int, epoch: int, rank: int, worker: int, level: int) -> np.random.Generator:
    """The shuffle-buffer generator of one (rank, worker) stream; ``level`` counts the splits
    that came before in this epoch (0 for a normal epoch, which keeps its historic seeding)."""
    key = [seed, epoch, rank, worker, 0xB0F] + ([level] if level else [])
    return np.random.default_rng(key)


@dataclass(frozen=True)
class Split:
    """How an epoch was being read when a job stopped: the split and, per rank and worker, how
    many stream positions its consumer had taken."""

    world_size: int
    num_workers: int  # DataLoader workers per rank (0 counts as 1 stream)
    even: bool
    shuffle_buffer: int
    consumed: tuple[tuple[int, ...], ...]  # [rank][worker]

    @property
    def streams(self) -> int:
        """Streams per rank."""
        return max(1, self.num_workers)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return {"world_size": self.world_size, "num_workers": self.num_workers,
                "even": self.even, "shuffle_buffer": self.shuffle_buffer,
                "consumed": [list(r) for r in self.consumed]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "history") -> Split:
        """Inverse of :meth:`to_dict`, with the shape of ``consumed`` checked."""
        try:
            s = cls(int(d["world_size"]), int(d["num_workers"]), bool(d["even"]),
                    int(d["shuffle_buffer"]),
                    tuple(tuple(int(c) for c in r) for r in d["consumed"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: expected world_size, num_workers, even, shuffle_buffer "
                             f"and consumed[rank][worker], got {d!r} ({e})") from None
        if len(s.consumed) != s.world_size or any(len(r) != s.streams for r in s.consumed):
            raise ValueError(f"{where}: consumed must be {s.world_size} ranks x {s.streams} "
                             f"workers, got {[len(r) for r in s.consumed]}")
        return s


def split_from_states(states: Sequence[dict[str, Any]]) -> Split:
    """The :class:`Split` of a stopped job from every rank's ``ShardLoader.state_dict()``
    (rank order), after checking that the ranks agree on epoch and split."""
    if not states:
        raise ValueError("states: expected one data position per rank, got none")
    first = states[0]
    for r, s in enumerate(states):
        if int(s.get("rank", r)) != r:
            raise ValueError(f"states[{r}]: holds rank {s.get('rank')}'s data position")
        if s.get("epoch") != first.get("epoch"):
            raise EpochsDiffer(
                f"states[{r}]: epoch is {s.get('epoch')!r}, rank 0 has {first.get('epoch')!r}: "
                "the ranks stopped in different epochs (as they drift apart when samples are "
                "skipped as damaged), so no one epoch's rest can be re-cut on another split",
                [x.get("epoch") for x in states])
        for k in ("num_workers", "shuffle_buffer", "seed", "dataset"):
            if s.get(k) != first.get(k):
                raise ValueError(f"states[{r}]: {k} is {s.get(k)!r}, rank 0 has {first.get(k)!r}")
        if int(s.get("world_size", len(states))) != len(states):
            raise ValueError(f"states[{r}]: world_size is {s.get('world_size')}, but "
                             f"{len(states)} ranks' positions were given")
    streams = max(1, int(first["num_workers"]))
    consumed = tuple(tuple(int(s["consumed"].get(str(w), s["consumed"].get(w, 0)))
                           for w in range(streams)) for s in states)
    return Split(len(states), int(first["num_workers"]), bool(first.get("even", True)),
                 int(first["shuffle_buffer"]), consumed)


def consumed_items(n: int, count: int, shuffle_buffer: int, rng: np.random.Generator
                   ) -> np.ndarray:
    """Indices (into a part of ``n`` items) of the first ``count`` items its stream emitted."""
    if count > n:
        raise ValueError(f"consumed: {count} positions taken from a part of {n} samples")
    if shuffle_buffer <= 1:
        return np.arange(count)
    it = shuffle_stream(iter(range(n)), shuffle_buffer, rng)
    return np.fromiter(it, dtype=np.int64, count=count)


def remaining(total: int, seed: int, epoch: int, history: Sequence[Split]) -> np.ndarray:
    """Epoch-layout positions (ascending) not yet read after every split in ``history``,
    among those the last split would still have read."""
    pos = np.arange(total, dtype=np.int64)
    for level, s in enumerate(history):
        keep = []
        for r in range(s.world_size):
            for w in range(s.streams):
                lo, hi = split_range(len(pos), r, s.world_size, w, s.streams, s.even)
                part = pos[lo:hi]
                gone = consumed_items(len(part), s.consumed[r][w], s.shuffle_buffer,
                                      stream_rng(seed, epoch, r, w, level))
                mask = np.ones(len(part), bool)
                mask[gone] = False
                keep.append(part[mask])
        pos = np.concatenate(keep) if keep else pos[:0]
    return pos
