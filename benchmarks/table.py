"""Output helpers the benchmarks share: one JSON object per line, then a readable table.

Every record a benchmark prints goes through :func:`emit` (or a :class:`Records` writer), which
adds ``bench`` (the benchmark that wrote it; a record that names its own part keeps it, e.g.
bench_pretrain's ``mae_train`` and ``quickstart``) and ``machine``, where and with what it was
measured (:func:`machine`). Exit statuses of the benchmarks: 0 when every measurement ran, 1
when any ``"kind": "error"`` record was written, :data:`SKIPPED` when nothing was measured
because the input data is absent (a ``"kind": "skip"`` record says which).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MACHINE_KEY = "machine"
SKIPPED = 77  # the "skipped" exit status of automake's test harness; not a success
_STATIC: dict[str, Any] = {}


def _git(*args: str) -> str | None:
    """``git args`` in the repository (read only: no optional locks, so no index refresh), its
    stripped output; None without git or a checkout."""
    try:
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), *args],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _static() -> dict[str, Any]:
    """The parts of :func:`machine` that do not change during a run (computed once)."""
    if _STATIC:
        return _STATIC
    import torch

    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.cuda.current_device())
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    _STATIC.update(hostname=socket.gethostname(), cpu_model=_cpu_model(),
                   cpu_count=os.cpu_count(), device_name=gpu,
                   torch=torch.__version__, cuda=torch.version.cuda,
                   python=platform.python_version(), git_commit=commit,
                   git_dirty=None if dirty is None else bool(dirty))
    return _STATIC


def machine() -> dict[str, Any]:
    """Where and with what a record was measured: host, CPU model and count, the CUDA device's
    name (None without CUDA), torch and CUDA versions, the git commit (None outside a checkout;
    ``git_dirty``: tracked files changed since it) and the UTC time now."""
    return {**_static(), "utc": datetime.now(UTC).isoformat(timespec="seconds")}


def emit(rec: Mapping[str, Any], out: str | Path | None = None, *, bench: str) -> dict[str, Any]:
    """Print ``rec`` as one JSON line (flushed) with ``bench`` (``rec``'s own kept) and the
    ``machine`` block, also appended to the file ``out`` if given; the record written."""
    full = {**rec, "bench": rec.get("bench", bench), MACHINE_KEY: machine()}
    line = json.dumps(full)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
    return full


class Records:
    """One benchmark run's writer: :meth:`emit` every record through it, and :meth:`status`
    is the run's exit status (1 once an error record was written)."""

    def __init__(self, bench: str, out: str | Path | None = None) -> None:
        self.bench, self.out = bench, out
        self.errors = 0

    def emit(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``rec`` (:func:`emit`), counting it when its ``kind`` is "error"."""
        if rec.get("kind") == "error":
            self.errors += 1
        return emit(rec, self.out, bench=self.bench)

    def skip(self, reason: str) -> int:
        """Write a ``"kind": "skip"`` record giving ``reason``; :data:`SKIPPED`, to exit with."""
        self.emit({"kind": "skip", "reason": reason})
        print(f"{self.bench}: skipped: {reason}", file=sys.stderr, flush=True)
        return SKIPPED

    def status(self) -> int:
        """The exit status: 1 when an error record was written, else 0."""
        return 1 if self.errors else 0


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """``rows`` as a right-aligned table of ``columns``: (key, header) pairs, widest cell wins;
    the ``machine`` block is never a column."""
    columns = [(k, h) for k, h in columns if k != MACHINE_KEY]
    cells = [[h for _, h in columns]] + [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    print()
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
