"""Graceful stop on preemption: signal handlers only raise a flag; the loop checks it.

Convention with the launch scripts: on SIGTERM/SIGUSR1 (SLURM preemption or time limit, e.g.
``#SBATCH --signal=USR1@120``) or a first Ctrl-C, the trainer finishes the current step, saves a
checkpoint, writes ``<out_dir>/REQUEUE`` (:func:`write_requeue_marker`) on each node's first
rank and exits with :data:`REQUEUE_EXIT_CODE` (75, ``EX_TEMPFAIL`` of sysexits.h: "temporary
failure, retry").
``torchrun`` reports any failing worker as status 1, so the sbatch template checks both::

    srun torchrun ... -m eofm.pretrain --config X.yaml runtime.out_dir=$OUT; status=$?
    if [ $status -eq 75 ] || [ -e "$OUT/REQUEUE" ]; then
        rm -f "$OUT/REQUEUE"; scontrol requeue "$SLURM_JOB_ID"; fi

The requeued job runs the same command and resumes from the newest checkpoint. A second
Ctrl-C raises KeyboardInterrupt at once.

``eofm-pretrain`` catches the signals from its start (:func:`.trainer.run`), not only once
training runs: a stop requested while the job starts (the dataset build, the model, the
checkpoint load) ends it with the requeue status too, before the first step. A long phase
that only one rank runs and that may be cut short, rank 0's ``data.build_from`` build, is
interrupted at once (:meth:`PreemptionHandler.interrupting`: :class:`StopRequested` is
raised inside it); everything else finishes its phase and the ranks agree to stop after it.
"""

from __future__ import annotations

import inspect
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

__all__ = [
    "REQUEUE_EXIT_CODE", "REQUEUE_MARKER", "PreemptionHandler", "StopRequested",
    "active_handler", "clear_requeue_marker", "marks_requeue", "requeue_exit", "who_stopped",
    "write_requeue_marker",
]

log = logging.getLogger(__name__)

REQUEUE_EXIT_CODE = 75
REQUEUE_MARKER = "REQUEUE"
DEFAULT_SIGNALS: tuple[int, ...] = tuple(
    s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None)


class StopRequested(SystemExit):
    """A stop was requested (a signal, or every rank agreeing to one) before training started:
    the job ends with :data:`REQUEUE_EXIT_CODE` (its ``code``, also when nothing catches it).

    A ``SystemExit``, not an ``Exception``: the ``except Exception`` of the code it interrupts
    (a dataset build's per-input error handling) does not take it for an input error, and the
    build wait of :func:`.data.ensure_dataset`, which hands rank 0's ``SystemExit`` to the
    waiting ranks, lets them go on to agree on the stop instead of waiting for rank 0."""

    def __init__(self, what: str) -> None:
        super().__init__(REQUEUE_EXIT_CODE)
        self.what = what

    def __str__(self) -> str:
        return self.what


class PreemptionHandler:
    """Context manager that turns SIGTERM/SIGUSR1 (and a first SIGINT) into ``should_stop``.

    Handlers are installed on enter (main thread only) and the previous ones restored on exit.
    In a multi-process job, agree before stopping: ``any_across_ranks(handler.should_stop)``.
    """

    def __init__(self, signals: Sequence[int] = DEFAULT_SIGNALS, *,
                 catch_sigint: bool = True) -> None:
        self.signals = tuple(signals)
        self.catch_sigint = catch_sigint
        self._received: int | None = None
        self._previous: dict[int, Any] = {}
        self._interrupt: CodeType | None = None  # raise while this code runs (interrupting)
        self._interrupt_what = ""

    @property
    def should_stop(self) -> bool:
        """Whether a stop was requested (by a signal or :meth:`request_stop`)."""
        return self._received is not None

    @property
    def received(self) -> int | None:
        """The first signal number received (0 for :meth:`request_stop`), or None."""
        return self._received

    def request_stop(self, signum: int = 0) -> None:
        """Ask the loop to stop at the next step boundary (as a signal would)."""
        if self._received is None:
            self._received = signum

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        first = self._received is None
        self.request_stop(signum)  # nothing else: no I/O, locks or logging inside a handler
        if first and self._inside_interruptible(frame):
            raise StopRequested(f"{self.describe()} during {self._interrupt_what}")

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._received == signal.SIGINT:
            raise KeyboardInterrupt
        self._on_signal(signum, frame)

    def _inside_interruptible(self, frame: FrameType | None) -> bool:
        """Whether the main thread, at ``frame``, runs the function :meth:`interrupting`
        names (the function itself or anything it called)."""
        while frame is not None and self._interrupt is not None:
            if frame.f_code is self._interrupt:
                return True
            frame = frame.f_back
        return False

    @contextmanager
    def interrupting(self, fn: Callable[..., Any], what: str) -> Iterator[PreemptionHandler]:
        """Within it, the first stop signal that arrives while ``fn`` runs (``fn`` is on the
        main thread's stack: the function itself, or anything it called) also raises
        :class:`StopRequested` there (saying it came ``during {what}``), at once, instead of
        only setting :attr:`should_stop`.

        For a long phase that is safe to cut short and would outlast the scheduler's grace
        period (a dataset build, which resumes from its finished parts); the code around
        ``fn`` (a collective that other ranks wait in) only sees the flag, so it is never
        left half done. A decorated ``fn`` is unwrapped first (``functools.wraps``): a shared
        wrapper's code would match every function it wraps, on the stack or not."""
        code = getattr(inspect.unwrap(fn), "__code__", None)
        if not isinstance(code, CodeType):
            raise TypeError(f"interrupting: expected a Python function, got {fn!r}")
        previous = self._interrupt, self._interrupt_what
        self._interrupt, self._interrupt_what = code, what
        try:
            yield self
        finally:
            self._interrupt, self._interrupt_what = previous

    def __enter__(self) -> PreemptionHandler:
        if threading.current_thread() is not threading.main_thread():
            log.warning("PreemptionHandler: not the main thread; signals are not caught")
            return self
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._on_signal)
        if self.catch_sigint:
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def describe(self) -> str:
        """A log line naming what requested the stop."""
        if self._received is None:
            return "no stop requested"
        if self._received == 0:
            return "stop requested"
        return f"received {signal.Signals(self._received).name}"


def active_handler() -> PreemptionHandler | None:
    """The :class:`PreemptionHandler` whose handler is installed now for SIGTERM, SIGUSR1 or
    SIGINT in this process (one entered on the main thread), or None: how code the handler is
    not handed to (the checkpoint load's universal conversion) reads the job's stop flag."""
    for s in (*DEFAULT_SIGNALS, signal.SIGINT):
        owner = getattr(signal.getsignal(s), "__self__", None)
        if isinstance(owner, PreemptionHandler):
            return owner
    return None


def marks_requeue(rank: int, local_rank: int) -> bool:
    """Whether this rank writes the ``REQUEUE`` marker of a stopped job: the first rank of every
    node (``local_rank`` 0), not only rank 0. Each node's launcher reads the marker once its own
    torchrun has exited; a node that is not rank 0's might otherwise look before rank 0's file is
    there, or, on NFS, before its cached view of the shared folder shows it, and report the
    preemption as a failure (torchrun's 1) instead of 75. A node sees its own write at once."""
    return rank == 0 or local_rank == 0


def write_requeue_marker(directory: str | Path) -> Path:
    """Create ``directory/REQUEUE``: tells the launch scripts (``launch/common.sh``) to requeue the
    job. Every node's first rank writes it (:func:`marks_requeue`); the content is the same, so
    concurrent writes from several nodes agree."""
    path = Path(directory) / REQUEUE_MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("requeue\n")
    return path


def clear_requeue_marker(directory: str | Path) -> bool:
    """Remove a leftover ``directory/REQUEUE`` (call at start); whether one was there."""
    path = Path(directory) / REQUEUE_MARKER
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def who_stopped(preempt: PreemptionHandler) -> str:
    """What asked for a stop the ranks agreed on, as this rank knows it."""
    return preempt.describe() if preempt.should_stop else "another rank was asked to stop"


def requeue_exit(rank: int, local_rank: int, out_dir: str | Path, what: str) -> int:
    """Write ``out_dir/REQUEUE`` on each node's first rank (torchrun reports any failure as
    1, so the launch scripts also look for the marker), log ``what`` and that the job exits
    with :data:`REQUEUE_EXIT_CODE`; returns that status."""
    if marks_requeue(rank, local_rank):
        write_requeue_marker(out_dir)
    log.warning("%s; exiting with status %d so the scheduler requeues", what, REQUEUE_EXIT_CODE)
    return REQUEUE_EXIT_CODE
