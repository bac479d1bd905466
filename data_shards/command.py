"""How every eofm command ends: its exit status and, when it fails, one line on stderr.

The statuses are the same for ``eofm-shard``, ``eofm-pretrain``, ``eofm-export``, ``eofm-probe``
and ``eofm-finetune`` (the README's table): 0 done; :data:`REFUSED` (2) for an input the command
cannot use, said in one ``PROG: error: ...`` line that names it; :data:`OUT_OF_SPACE_STATUS` (1)
when the disk or the quota filled up while writing, with the file or output folder and the
space left (:func:`.outputs.out_of_space_message`); the trainers' requeue status (75) is theirs
to return. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .outputs import out_of_space, out_of_space_message

__all__ = ["CLOSED_PIPE_STATUS", "OUT_OF_SPACE_STATUS", "REFUSED", "error", "message_of",
           "run_command", "stdout_may_close"]

REFUSED = 2
OUT_OF_SPACE_STATUS = 1
CLOSED_PIPE_STATUS = 141  # 128 + SIGPIPE: what a shell reports for a reader that went away


class StdoutClosed(Exception):
    """Standard output's reader went away (``| head`` read what it wanted)."""


class _GuardedStdout:
    """``sys.stdout`` for a command's span: a ``BrokenPipeError`` from writing or flushing it
    becomes :class:`StdoutClosed`, so a broken pipe elsewhere (a ``pipe:`` data stream, a
    worker's connection) keeps its traceback."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError as e:
            raise StdoutClosed from e

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError as e:
            raise StdoutClosed from e

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding...
        return getattr(self._stream, name)


def stdout_may_close(main: Callable[..., int]) -> Callable[..., int]:
    """A command's ``main`` whose output may be piped into a reader that stops early
    (``eofm-pretrain --print-config | head``): the closed pipe ends the command quietly with
    :data:`CLOSED_PIPE_STATUS` instead of a ``BrokenPipeError`` traceback (the Python docs'
    recipe: later writes, the interpreter's own final flush included, go to /dev/null). Only a
    write to standard output counts; any other broken pipe is an error as before."""
    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> int:
        before = sys.stdout
        sys.stdout = _GuardedStdout(before)  # type: ignore[assignment]
        try:
            status = main(*args, **kwargs)
            sys.stdout.flush()
            return status
        except StdoutClosed:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, before.fileno())
            except (AttributeError, OSError, ValueError):  # not a file (a test's capture)
                pass
            return CLOSED_PIPE_STATUS
        finally:
            if isinstance(sys.stdout, _GuardedStdout):
                sys.stdout = before
    return wrapped


_WORKER = re.compile(r"^Caught (\w+) in DataLoader worker process (\d+)\.\nOriginal Traceback")


def message_of(err: BaseException) -> str:
    """``err``'s text for one line. An error raised in a DataLoader worker comes back with the
    worker's whole traceback as its text; that becomes the original message, and which worker."""
    text = str(err)
    m = _WORKER.match(text)
    if m is None:
        return text
    tail = list(re.finditer(rf"\n(?:[\w.]+\.)?{m.group(1)}: ", text))
    if not tail:
        return text
    return f"{text[tail[-1].end():].strip()} (in DataLoader worker process {m.group(2)})"


def error(prog: str, message: object) -> None:
    """Print ``PROG: error: MESSAGE`` on stderr (argparse's form)."""
    print(f"{prog}: error: {message}", file=sys.stderr)


INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


def run_command(prog: str, work: Callable[[], int], *, out: str | Path,
                refused: tuple[type[BaseException], ...] = (ValueError,),
                interrupted: str | None = None) -> int:
    """``work()``'s status; an exception it raises becomes one line and a status: a full disk
    or quota anywhere in its cause chain (a background write's ``RuntimeError`` included) is
    :data:`OUT_OF_SPACE_STATUS` with ``out`` (the output being written) named, an instance of
    ``refused`` is :data:`REFUSED`; any other exception propagates. With ``interrupted`` (what
    a rerun does), Ctrl-C (``KeyboardInterrupt``) is the line "interrupted; ``interrupted``"
    and :data:`INTERRUPTED` instead of a traceback (outputs are written atomically, so nothing
    half-written stays)."""
    try:
        return work()
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        error(prog, f"interrupted; {interrupted}")
        return INTERRUPTED
    except Exception as e:
        if out_of_space(e) is not None:  # the input was fine: a rerun works once there is room
            error(prog, out_of_space_message(e, out))
            return OUT_OF_SPACE_STATUS
        if isinstance(e, refused):
            error(prog, message_of(e))
            return REFUSED
        raise
