"""Ranks agreeing on a checkpoint write's outcome: when any rank's part failed, every rank
raises (a full disk reads as one on every rank), so none goes on as if it were written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import distributed

__all__ = ["CheckpointWriteFailed", "agree_written"]


class CheckpointWriteFailed(RuntimeError):
    """Another rank's part of a checkpoint was not written: what the ranks whose own part was
    written raise once the ranks agreed on the outcome (:func:`agree_written`)."""


def _errno_of(e: BaseException) -> int | None:
    """The errno of the first ``OSError`` in ``e``'s cause chain (ENOSPC for a full disk)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno:
            return cur.errno
        cur = cur.__cause__ or cur.__context__
    return None


def agree_written(error: BaseException | None, where: str | Path, step: int | None,
                  payload: Any = None) -> list[Any]:
    """Agree on a checkpoint write's outcome; every rank's ``payload``, in rank order.

    Collective: every rank calls it at the same point, after its own part of the checkpoint
    of ``step`` (``error``: the exception that part raised, else None); it is also a barrier.
    When any rank's part failed, every rank raises: a failing rank its own ``error``, the
    others :class:`CheckpointWriteFailed` naming the failing rank, ``where`` and its error
    (raised from an ``OSError`` of the same errno: a full disk reads as one on every rank).
    Without it, a failing rank that left for the process group's teardown met the others'
    barrier there, and they went on as if the checkpoint were written (a requeue from an
    older one)."""
    mine = None if error is None else (_errno_of(error), f"{type(error).__name__}: {error}")
    gathered = distributed.all_gather_object((payload, mine))
    if error is not None:
        raise error
    failed = [(rank, f) for rank, (_, f) in enumerate(gathered) if f is not None]
    if failed:
        (rank, (code, text)), others = failed[0], [r for r, _ in failed[1:]]
        also = f" (and on rank(s) {', '.join(map(str, others))})" if others else ""
        cause = OSError(code, text) if code else None
        raise CheckpointWriteFailed(
            f"{where}: the checkpoint of step {step} was not written: rank {rank} failed{also}: "
            f"{text}; every rank stops with an error (no requeue), the newest complete "
            f"checkpoint is the one a rerun resumes from") from cause
    return [p for p, _ in gathered]
