"""Observability on rank 0: logging, JSON-lines metrics, throughput/MFU, TensorBoard, progress."""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PEAK_BF16_FLOPS", "JsonlLogger", "NullBar", "Throughput", "count_flops", "mean_outputs",
    "mfu", "peak_flops", "peak_memory_mb", "progress_bar", "scalar_outputs", "setup_logging",
    "tensorboard_writer", "train_flops_per_sample",
]

# Dense bf16 tensor-core peak per device (FLOP/s), matched against the CUDA device name in order.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4e12),
    ("GH200", 989.4e12),
    ("H100 NVL", 835.0e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),  # SXM
    ("A100", 312.0e12),
)


_OWN_HANDLER = "_eofm_run_handler"  # marks the root handler setup_logging installed


def setup_logging(rank: int, level: int = logging.INFO) -> logging.Logger:
    """eofm's logging for a run: ``level`` on rank 0, warnings only elsewhere.

    The ``eofm`` loggers get the level. Where the program has not configured logging (the
    command-line tools), one stderr handler is installed on the root logger, tagged with the
    rank, and the root takes the same level (so a library's chatter follows the rank rule);
    called again it replaces its own handler. A program that configured logging itself (the
    root logger has handlers: a notebook, a larger application, pytest) keeps its handlers,
    format and levels: a Trainer built inside it only sets eofm's own level."""
    rank_level = level if rank == 0 else logging.WARNING
    logging.getLogger("eofm").setLevel(rank_level)
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, _OWN_HANDLER, False)]
    if root.handlers and len(ours) < len(root.handlers):
        return logging.getLogger("eofm.pretrain")
    for h in ours:
        root.removeHandler(h)
    tag = "" if rank == 0 else f"[rank {rank}] "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s", datefmt="%H:%M:%S"))
    setattr(handler, _OWN_HANDLER, True)
    root.addHandler(handler)
    root.setLevel(rank_level)
    return logging.getLogger("eofm.pretrain")


def _plain(value: Any) -> Any:
    """A JSON-able scalar: tensors and numpy values become numbers; NaN/inf become null."""
    if callable(getattr(value, "item", None)):  # tensors, numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _enabled(enabled: bool | None) -> bool:
    """``enabled`` as given, or whether this is the main process (rank 0) when None."""
    if enabled is None:
        from .distributed import is_main_process

        return is_main_process()
    return enabled


class JsonlLogger:
    """Appends one JSON object per line, flushed at once; by default only rank 0 writes.

    On resume the file is appended to, after :meth:`drop_after` removed the records of the
    steps a crash lost (replayed from the checkpoint, they are written again), so each step
    has one record. ``path`` None or ``enabled`` False: every call is a no-op.
    """

    def __init__(self, path: str | Path | None, *, enabled: bool | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._file = None
        if self.path is not None and _enabled(enabled):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        """Write ``record`` (values made JSON-able) as one line."""
        if self._file is None:
            return
        line = json.dumps({k: _plain(v) for k, v in record.items()}, default=str)
        self._file.write(line + "\n")
        self._file.flush()

    def drop_after(self, step: int, *,
                   also: Callable[[dict[str, Any]], bool] | None = None) -> int:
        """Remove the records whose ``"step"`` is above ``step`` (a run resumed there writes
        them again), and those ``also`` is true of (e.g. an evaluation at ``step`` about to be
        written again), rewriting the file atomically; returns how many went. Lines without a
        step, or that do not parse, are kept, except a last line cut mid-write (no newline,
        does not parse: a killed :meth:`log`), which goes too; a whole last record that lacks
        only its newline gets it. Either way the next record starts a line of its own."""
        if self._file is None or self.path is None:
            return 0
        self._file.close()
        dropped, unended, cut = 0, False, 0
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(self.path, encoding="utf-8") as f, open(tmp, "w", encoding="utf-8") as out:
            for line in f:  # streamed: a long run's samples file need not fit in memory
                unended = not line.endswith("\n")  # only the last line can lack one
                try:
                    record = json.loads(line)
                    gone = int(record.get("step", step)) > step or bool(also and also(record))
                except (ValueError, TypeError, AttributeError):  # not a record: keep the line
                    if unended:  # ... unless it is a write cut short: no record, drop it
                        cut = len(line)
                        continue
                    gone = False
                dropped += gone
                if not gone:
                    out.write(line + "\n" if unended else line)
            rewrite = bool(dropped) or unended
            if rewrite:
                out.flush()
                os.fsync(out.fileno())
        if rewrite:
            os.replace(tmp, self.path)
        else:
            tmp.unlink(missing_ok=True)
        if cut:
            logging.getLogger(__name__).warning(
                "%s: last line cut mid-write (%d characters, no newline, not JSON) removed",
                self.path, cut)
        self._file = open(self.path, "a", encoding="utf-8")
        return dropped

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonlLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Throughput:
    """Step timing and running means; host syncs (``.item()``) only in :meth:`summary`.

    Per micro-batch: ``data_wait(seconds, samples)`` with the time spent blocked on the loader.
    Per optimiser step: ``step_done(loss=..., ...)`` (device tensors are summed, not synced).
    ``summary()`` at log intervals returns means over the window since the last summary and
    starts a new one. Samples are this rank's; ``world_size`` (default: the job's) scales
    rates to the job. Times are host wall-clock over whole windows, exact once the summary's
    sync drains the GPU queue.
    """

    def __init__(self, world_size: int | None = None, tokens_per_sample: int = 0) -> None:
        if world_size is None:
            from .distributed import get_world_size

            world_size = get_world_size()
        self.world_size, self.tokens_per_sample = world_size, tokens_per_sample
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self._window_start = now
        self._steps = self._samples = 0
        self._data_wait = 0.0
        self._sums: dict[str, Any] = {}

    def start(self) -> None:
        """Restart the window (call just before the loop, after any warm-up or compile)."""
        self._reset(time.perf_counter())

    def data_wait(self, seconds: float, samples: int = 0) -> None:
        """Add time spent waiting for a batch of ``samples`` samples."""
        self._data_wait += seconds
        self._samples += samples

    def step_done(self, samples: int = 0, **scalars: torch.Tensor | float) -> None:
        """Count a finished optimiser step (plus ``samples`` not given to :meth:`data_wait`)."""
        self._steps += 1
        self._samples += samples
        for k, v in scalars.items():
            v = v.detach() if isinstance(v, torch.Tensor) else v
            self._sums[k] = self._sums[k] + v if k in self._sums else v

    def summary(self) -> dict[str, float]:
        """Means over the window (one host sync) and a fresh window; {} when no step was done."""
        if self._steps == 0:
            return {}
        means = {k: float(v) / self._steps for k, v in self._sums.items()}
        now = time.perf_counter()
        elapsed = max(now - self._window_start, 1e-9)
        samples_per_s = self._samples * self.world_size / elapsed
        out = {**means,
               "step_time": elapsed / self._steps,
               "data_wait": self._data_wait / self._steps,
               "data_wait_share": self._data_wait / elapsed,
               "samples_per_s": samples_per_s,
               "tokens_per_s": samples_per_s * self.tokens_per_sample}
        self._reset(now)
        return out


def scalar_outputs(out: dict[str, Any]) -> dict[str, torch.Tensor]:
    """An objective's scalar diagnostics: every 0-d tensor or plain number in its output dict
    except ``loss`` (e.g. SatMAE++'s ``loss_mse``/``loss_ms``, ``scored_tokens``, SelectiveMAE's
    ``pruned``), detached and left on their device (no host sync until they are logged)."""
    got: dict[str, torch.Tensor] = {}
    for k, v in out.items():
        if k == "loss" or isinstance(v, bool):
            continue
        if isinstance(v, torch.Tensor) and v.dim() == 0:
            got[k] = v.detach().float()
        elif isinstance(v, (int, float)):
            got[k] = torch.tensor(float(v))
    return got


def mean_outputs(outputs: list[dict[str, torch.Tensor]],
                 device: torch.device | str = "cpu") -> tuple[list[str], torch.Tensor | None]:
    """(sorted names, (N,) float32 means over the micro-steps that gave each name) on ``device``."""
    names = sorted({k for o in outputs for k in o})
    if not names:
        return [], None
    means = [torch.stack([o[n].to(device) for o in outputs if n in o]).mean() for n in names]
    return names, torch.stack(means)


def peak_rss_mb() -> float:
    """This process's own peak resident memory in MiB.

    On Linux ``VmHWM`` from ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` survives
    ``exec``, so a process started by a large parent (torchrun's agent, a benchmark driver
    holding torch) would report the parent's footprint as its own (a bare interpreter started
    from a 500 MiB parent reads 526 MiB there, 11 MiB here). Elsewhere ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def peak_memory_mb(device: torch.device | str | None = None) -> float:
    """Peak memory in MiB: CUDA allocator peak on a GPU, the process's own peak RSS on the CPU
    (:func:`peak_rss_mb`)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def peak_flops(device: torch.device | str) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA device from :data:`PEAK_BF16_FLOPS`; None if unknown."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def mfu(flops_per_step: float, step_time: float, device: torch.device | str) -> float | None:
    """Model FLOPs utilisation: ``flops_per_step / step_time / peak``; None on CPU/unknown GPUs.

    ``flops_per_step``: what one device executes per optimiser step (forward + backward, all
    micro-steps), e.g. from :func:`count_flops` times the accumulation steps.
    """
    peak = peak_flops(device)
    if peak is None or step_time <= 0:
        return None
    return flops_per_step / step_time / peak


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs that ``fn()`` executes (run it once, e.g. a forward + backward), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def tensorboard_writer(log_dir: str | Path, *, enabled: bool | None = None,
                       purge_step: int | None = None) -> Any | None:
    """A TensorBoard ``SummaryWriter`` (default: rank 0 only) when tensorboard is installed.
    ``purge_step``: a resumed run's first step; the events an earlier launch wrote from that
    step on (steps it ran after its newest checkpoint, which this launch runs again) are
    dropped, so a plot shows each step once, as metrics.jsonl keeps it."""
    if not _enabled(enabled):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logging.getLogger(__name__).warning("tensorboard is not installed; no events written")
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


class NullBar:
    """The progress-bar interface doing nothing (ranks other than 0, or disabled)."""

    def update(self, n: int = 1) -> None:
        """Do nothing."""

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""


def progress_bar(total: int, initial: int = 0, *, enabled: bool | None = None) -> Any:
    """A tqdm bar over optimiser steps from ``initial`` (default: rank 0 only), else NullBar."""
    if not _enabled(enabled):
        return NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)


def train_flops_per_sample(objective: torch.nn.Module) -> float:
    """Estimated forward + backward FLOPs per sample: 6 x parameters x tokens they see
    (encoder: visible tokens + prefix; decoder: all tokens). Attention's quadratic term is
    left out, which is small at these sequence lengths; used for MFU on GPUs only. An
    objective with its own ``train_flops_per_sample()`` answers for itself."""
    own = getattr(objective, "train_flops_per_sample", None)
    if callable(own):
        return float(own())
    enc = getattr(objective, "encoder", objective)
    dec = getattr(objective, "decoder", None)
    keep = enc.num_tokens * (1.0 - getattr(objective, "mask_ratio", 0.0)) + enc.num_prefix_tokens
    n_enc = sum(p.numel() for p in enc.parameters())
    n_dec = sum(p.numel() for p in dec.parameters()) if dec is not None else 0
    return 6.0 * (n_enc * keep + n_dec * (enc.num_tokens + enc.num_prefix_tokens))
