"""How ``eofm-finetune`` stops on SIGTERM/SIGUSR1 (and a first Ctrl-C) outside its training loop.

:func:`.finetune.run` enters one :class:`~eofm.pretrain.preemption.PreemptionHandler` before
the :class:`.finetuner.Finetuner` is built and keeps it through the evaluation and the export,
as ``eofm-pretrain`` does: a stop while the job starts (the encoder load; a raw folder's build
into a temporary dataset, cut short at once and its folder removed) ends it with the requeue
status (75) and ``OUT/REQUEUE``, nothing trained or saved, and the rerun starts over; a stop
during the held-out evaluation or the export (the final checkpoint is on disk) ends it the
same way, and the rerun resumes from that checkpoint and evaluates and exports again.
``results.json`` is written last, so a run stopped before it has no file that says it is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch

from eofm.pretrain import distributed as dist
from eofm.pretrain.preemption import PreemptionHandler, StopRequested, who_stopped

__all__ = ["caught", "cut_short", "stop_if_agreed"]


def caught(preempt: PreemptionHandler | None) -> AbstractContextManager[PreemptionHandler]:
    """The caller's entered handler, or a new one for this span (a Finetuner built without
    one catches the signals only around its training loop, as before)."""
    return nullcontext(preempt) if preempt is not None else PreemptionHandler()


@contextmanager
def cut_short(preempt: PreemptionHandler | None, fn: Callable[..., Any], what: str,
              world_size: int) -> Iterator[None]:
    """Within it, a stop signal while ``fn`` runs raises :class:`StopRequested` at once
    (:meth:`PreemptionHandler.interrupting`), on a single process only: with several ranks a
    rank cut short could leave the others waiting in a collective, so there it only sets the
    flag that :func:`stop_if_agreed` reads after the phase."""
    if preempt is None or world_size > 1:
        yield
        return
    with preempt.interrupting(fn, what):
        yield


def stop_if_agreed(preempt: PreemptionHandler | None, device: torch.device, when: str) -> None:
    """Raise :class:`StopRequested` on every rank when a stop was requested on any (one
    all-reduce on ``device``); ``when`` says where the job noticed it."""
    if preempt is not None and dist.any_across_ranks(preempt.should_stop, device):
        raise StopRequested(f"stop requested {when} ({who_stopped(preempt)})")
