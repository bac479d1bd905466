"""Streaming reader over webdataset shards with exact, deterministic splitting and resume.

The samples of an epoch are laid out in a per-epoch shard order drawn from ``(seed, epoch)``;
each rank takes a contiguous range (``even=True``: exactly ``N // world`` each, so DDP ranks
see the same number of batches), and each DataLoader worker a contiguous part of its rank's
range, read from whichever shards (and offsets within them) it covers. Every (rank, worker)
stream is therefore a pure function of (seed, epoch, rank, world, worker, num_workers): a
restarted job replays the undecoded byte stream through the same shuffle buffer and skips
what was consumed, which costs tar reads but no decoding. A job restarted on another split
reads the rest of the interrupted epoch exactly (see :mod:`.elastic`).

Shards are read from local paths or anything ``webdataset.gopen`` opens (fsspec URLs,
``pipe:`` commands): by default next to the manifest, or through ``url_template`` such as
``"pipe:aws s3 cp s3://bucket/ds/{name} -"``. A remote shard (URL or ``pipe:``) that fails
to open or read is re-opened up to ``retries`` times with exponential backoff, and the stream
continues at the next sample not yet yielded, as if nothing had failed. Errors that remain
follow a policy: ``skip`` (default) logs the shard and key of a
bad sample, counts it, and fails once the skipped share passes ``max_skip_fraction``;
``strict`` raises at once.

The skipped share is counted per iteration of one (rank, worker) stream, over the samples it
has read (skipped or not). It fails (:class:`TooManySkipped`) as soon as the evidence is
conclusive: when the skips already pass ``max_skip_fraction`` of every sample the stream can
read this epoch (so the share at its end cannot be under the limit, however short the run or
the dataset), once at least 100 samples are read with the share past the limit, and at the
end of the iteration. A resumed stream counts the positions it consumed before as read, and
the samples its replay finds lost with their shard as skipped: the same count as the
uninterrupted run's (a sample that failed to decode before the resume counts as read).

A sample lost with its shard keeps its stream position: a placeholder takes its place through
the shuffle buffer and is dropped after it. Every later sample stays where an intact shard
puts it, so positions saved before a damaged shard resume exactly on any split.
"""

from __future__ import annotations

import itertools
import logging
import math
import mmap
import multiprocessing as mp
import numbers
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .build import MISSING_LABELS, unlabelled_label
from .codec import decode_json, decode_npy
from .elastic import Split, remaining, shuffle_stream, split_range, stream_rng
from .manifest import Manifest, ShardInfo, load_manifest, shard_url
from .remote import check_retry_options, is_remote, redact, retry_delay, transient_errors
from .sensors import get_sensor
from .tario import DEFAULT_MAX_MEMBER, TarError, iter_samples

log = logging.getLogger(__name__)
MAX_WORKERS = 256
Transform = Callable[[dict, np.random.Generator], dict]


def _redacted(e: BaseException) -> BaseException:
    """``e`` with credentials removed from its message (same type where it allows)."""
    try:
        return type(e)(redact(str(e)))
    except Exception:
        return TarError(redact(str(e)))


class SampleError(ValueError):
    """A sample that cannot be decoded or does not match the manifest."""


class TooManySkipped(RuntimeError):
    """More of a dataset's samples were unreadable than ``max_skip_fraction`` allows: the
    dataset is damaged (the warnings before it name the shards and keys). Raised by a stream
    as soon as that is certain, or likely after 100 samples (see the module docstring)."""


SKIP_CHECK_AFTER = 100  # samples a stream reads before its skipped share alone decides
LOST = "__lost__"  # marks the placeholder of a sample lost with its shard (see ShardDataset._raw)


def shown(value: object) -> str:
    """``value`` as an argument error shows it: its type and a short repr."""
    text = repr(value)
    return f"the {type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def is_whole(value: object) -> bool:
    """Whether ``value`` is a whole number (a Python or NumPy int; ``True`` is not)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def name_list(value: object, where: str, what: str) -> list[str]:
    """``value`` (any iterable of ``what``, strings: a list, a tuple, dict keys, a NumPy
    array of str) as a list of str; a single string, which would split into its characters
    ("s2" -> "s", "2"), or anything else is a ValueError naming ``where``."""
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{where}: expected a list of {what}, got the string {value!r}; "
                         f"write [{value!r}] for a single one")
    items = list(value) if isinstance(value, Iterable) else None
    if items is None or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{where}: expected a list of {what} (strings), got {shown(value)}")
    return [str(v) for v in items]  # NumPy's str_ as plain str


def select_bands(bands: object, read: Sequence[str], manifest: Manifest,
                 where: str) -> dict[str, list[str]]:
    """The bands a reader of the dataset at ``where`` (its ``manifest``, reading the modalities
    ``read``) is asked for: ``bands`` (None, or a mapping of modality -> band names in any
    accepted spelling, B4 for B04) as ``{modality: canonical names}``; a modality left out or
    mapped to None reads all its bands and is not in the result. Shared by
    :class:`ShardDataset` and :class:`~.zarr_store.ZarrDataset` so both accept and refuse
    the same: a ValueError names what is wrong (not a mapping, a modality not read, a band
    list that is not strings or is empty, a band asked for twice under any spelling, a band
    the modality lacks)."""
    if bands is None:
        return {}
    if not isinstance(bands, Mapping):
        example = {read[0]: ["B04", "B03"]}
        hint = (f"; write {{{read[0]!r}: {list(bands)!r}}}"
                if isinstance(bands, (list, tuple)) and len(read) == 1 else "")
        raise ValueError(f"bands: expected a mapping of modality -> band names, such as "
                         f"{example}, got {shown(bands)}{hint}")
    unread = [k for k in bands if k not in read]
    if unread:
        raise ValueError(f"bands: modalities {unread} are not read (modalities read: "
                         f"{list(read)}; the dataset has {sorted(manifest.modalities)})")
    out = {}
    for mod, value in bands.items():
        if value is None:
            continue
        want = name_list(value, f"bands[{mod!r}]", "band names")
        if not want:
            raise ValueError(f"bands[{mod!r}]: expected at least one band name, got an "
                             "empty list (leave the modality out of bands for all of them)")
        info = manifest.modalities[mod]
        sensor = get_sensor(info.sensor)
        names = [sensor.canonical(b) for b in want]
        twice = sorted({b for b in names if names.count(b) > 1})
        if twice:
            raise ValueError(f"{where}: modality {mod}: bands {twice} requested more than "
                             f"once (names and aliases of one band count as one; got {want})")
        missing = [b for b in names if b not in info.bands]
        if missing:
            raise ValueError(f"{where}: modality {mod} has no bands {missing} "
                             f"(it has {info.bands})")
        out[mod] = names
    return out


def check_split(rank: object, world_size: object) -> None:
    """``world_size`` is a whole number >= 1 and ``rank`` one in ``[0, world_size)``; a
    ValueError naming the one that is not."""
    if not is_whole(world_size) or world_size < 1:  # type: ignore[operator]
        raise ValueError(f"world_size: expected an int >= 1 (the number of ranks), got "
                         f"{shown(world_size)}")
    if not is_whole(rank) or not 0 <= rank < world_size:  # type: ignore[operator]
        raise ValueError(f"rank: expected an int in [0, world_size={world_size}), got "
                         f"{shown(rank)}")


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, stop)`` of shard number ``shard`` (index into the manifest)."""

    shard: int
    start: int
    stop: int


def shard_order(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Order in which the ``n`` shards are laid out in an epoch."""
    if not shuffle:
        return list(range(n))
    return [int(i) for i in np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)]


def partition(counts: Sequence[int], order: Sequence[int], rank: int, world: int,
              worker: int, num_workers: int, even: bool) -> list[Segment]:
    """Segments read by one (rank, worker); disjoint and, with ``even=False``, complete."""
    lo, hi = split_range(sum(counts), rank, world, worker, num_workers, even)
    segs, pos = [], 0
    for s in order:
        a, b = max(lo, pos), min(hi, pos + counts[s])
        if a < b:
            segs.append(Segment(s, a - pos, b - pos))
        pos += counts[s]
    return segs


def segments_at(positions: np.ndarray, counts: Sequence[int], order: Sequence[int]
                ) -> list[Segment]:
    """Runs of ascending epoch-layout ``positions`` as segments of the shards they fall in."""
    if len(positions) == 0:
        return []
    laid = np.asarray([counts[s] for s in order], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(laid)[:-1]])
    slot = np.searchsorted(starts, positions, side="right") - 1  # index into ``order``
    offset = positions - starts[slot]
    # a run breaks where the slot changes or the offset does not follow on
    cut = np.flatnonzero((np.diff(slot) != 0) | (np.diff(offset) != 1)) + 1
    segs = []
    for a, b in zip(np.concatenate([[0], cut]), np.concatenate([cut, [len(positions)]]),
                    strict=True):
        segs.append(Segment(int(order[slot[a]]), int(offset[a]), int(offset[b - 1]) + 1))
    return segs


@dataclass
class _Cursor:
    """Progress through one shard's runs, kept across re-openings: ``i`` samples of the shard
    passed (yielded or not wanted), ``k`` the current run, ``closed`` once the consumer
    stopped taking samples."""

    i: int = 0
    k: int = 0
    closed: bool = False


# What a member may hold beyond the largest array the manifest allows: .npy headers, meta.json
# (tens of KiB at most) and any other small member.
MEMBER_SLACK = 64 * 2**20
SEG_ITEMSIZE = 16  # seg.npy keeps its raster's dtype: up to complex128
LABEL_ITEMSIZE = 8  # labels.npy: an int64 class index or a multi-hot vector of K entries


def max_member_bytes(manifest: Manifest, shard: ShardInfo) -> int:
    """The most bytes one tar member of ``shard`` can legitimately declare, from ``manifest``:
    its largest array (a modality's ``shape`` x dtype size, a ``seg.npy`` or valid mask of the
    largest tile, a label of K classes) plus :data:`MEMBER_SLACK`; with tiles of several sizes
    (a modality's ``shape`` is ``[]``) the shard's size, or :data:`.tario.DEFAULT_MAX_MEMBER`
    if larger. A streamed member declaring more is refused before it is read."""
    mods = list(manifest.modalities.values())
    if not all(m.shape for m in mods):
        return max(DEFAULT_MAX_MEMBER, shard.bytes)
    pixels = max(m.shape[1] * m.shape[2] for m in mods)
    arrays = [math.prod(m.shape) * np.dtype(m.dtype).itemsize for m in mods]
    arrays.append(pixels * SEG_ITEMSIZE)  # also bounds the valid masks (1 byte a pixel)
    if manifest.labels is not None:
        arrays.append(len(manifest.labels.classes) * LABEL_ITEMSIZE)
    return max(arrays) + MEMBER_SLACK


@contextmanager
def _open(url: str) -> Iterator[BinaryIO | memoryview]:
    """A stream for URLs and ``pipe:`` commands; a read-only memory map for local files
    (members are then zero-copy views of the page cache)."""
    if "://" in url or url.startswith("pipe:"):
        import webdataset as wds

        with wds.gopen(url, "rb") as f:
            yield f
        return
    with open(url, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise TarError(f"{url}: shard file is empty")
        # not closed here: decoded arrays may still view it; it is freed with its last view
        yield memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))


class ShardDataset(IterableDataset):
    """Iterable dataset of decoded samples ``{modality: (C,H,W) int array, modality_valid:
    (H,W) bool, label?, seg?, meta?, __key__, __worker__, __pos__}``.

    ``label`` is in every sample of a dataset with class or multilabel labels: with
    ``missing_labels="fill"`` (the default) a sample without ``labels.npy`` (an unlabelled
    sample of a labelled dataset, e.g. a scene pooled with class folders) reads as
    :func:`.build.unlabelled_label`: in a multilabel dataset an all-zero multi-hot vector
    (:data:`.build.MULTILABEL_DTYPE`, one entry per class: an identity row for SoftCon), in a
    class dataset the class index :data:`.build.UNLABELLED_CLASS` (-1, an int64 scalar like
    every class label; no pretraining objective uses class labels: the masked ones ignore
    ``label``, SoftCon refuses 0-d ones). ``"absent"`` yields such samples without ``label``
    (for a reader that must tell them apart: an evaluation refusing unlabelled samples, a
    preview showing them unlabelled); :func:`collate` refuses a batch mixing both."""

    def __init__(
        self,
        dataset: str | Path,
        *,
        modalities: Sequence[str] | None = None,
        bands: dict[str, Sequence[str]] | None = None,
        transform: Transform | None = None,
        shuffle_shards: bool = True,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        even: bool = True,
        errors: str = "skip",
        max_skip_fraction: float = 0.01,
        with_meta: bool = False,
        url_template: str | None = None,
        retries: int = 3,
        retry_wait: float = 1.0,
        missing_labels: str = "fill",
    ) -> None:
        if not isinstance(dataset, (str, os.PathLike)):
            raise TypeError(f"dataset: expected a dataset folder or URL (a str or Path), got "
                            f"{shown(dataset)}")
        self.location = str(dataset)
        self.manifest: Manifest = load_manifest(self.location)
        m = self.manifest
        self.modalities = (name_list(modalities, "modalities", "modality names")
                           if modalities else list(m.modalities))
        unknown = [x for x in self.modalities if x not in m.modalities]
        if unknown:
            raise ValueError(f"{self.location}: modalities {unknown} not in the dataset "
                             f"(it has {sorted(m.modalities)})")
        chosen = select_bands(bands, self.modalities, m, self.location)
        self.band_index: dict[str, np.ndarray | None] = {}
        self.bands: dict[str, list[str]] = {}
        for mod in self.modalities:
            have = m.modalities[mod].bands
            names = chosen.get(mod)
            self.band_index[mod] = (None if names is None
                                    else np.array([have.index(b) for b in names]))
            self.bands[mod] = list(have) if names is None else names
        if errors not in ("skip", "strict"):
            raise ValueError(f"errors: expected 'skip' or 'strict', got {errors!r}")
        if missing_labels not in MISSING_LABELS:
            raise ValueError(f"missing_labels: expected one of {', '.join(MISSING_LABELS)}, "
                             f"got {shown(missing_labels)}")
        self.missing_labels = missing_labels
        check_retry_options(retries, retry_wait)
        if (rank is None) != (world_size is None):
            raise ValueError(f"rank, world_size: expected both (this process's split) or "
                             f"neither (torch.distributed's, else 0 of 1), got rank={rank!r}, "
                             f"world_size={world_size!r}")
        if rank is None or world_size is None:
            dist = torch.distributed
            init = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if init else 0
            world_size = dist.get_world_size() if init else 1
        check_split(rank, world_size)
        if not is_whole(shuffle_buffer) or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer: expected an int >= 0 (samples; 0 or 1: no "
                             f"shuffling), got {shown(shuffle_buffer)}")
        if (isinstance(max_skip_fraction, bool) or not isinstance(max_skip_fraction, numbers.Real)
                or not 0 <= max_skip_fraction <= 1):
            raise ValueError(f"max_skip_fraction: expected a number in [0, 1], got "
                             f"{shown(max_skip_fraction)}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.transform, self.shuffle_shards = transform, shuffle_shards
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed, self.even, self.errors = seed, even, errors
        self.max_skip_fraction, self.with_meta = float(max_skip_fraction), with_meta
        self.url_template = url_template
        self.retries, self.retry_wait = retries, float(retry_wait)
        # Shared with (persistent) DataLoader workers, which keep their own copy of the dataset
        # across epochs: the loader writes the position here before each epoch.
        self._epoch = mp.RawValue("q", 0)
        self._skip = mp.RawArray("q", MAX_WORKERS)
        self._first = mp.RawValue("q", 0)  # the stream DataLoader worker 0 reads (see __iter__)
        # The epoch read as the remainder of earlier splits (-1: none) and what it holds; the
        # positions reach workers when they start, so the loader restarts them after a change.
        self._elastic_epoch = mp.RawValue("q", -1)
        self.history: list[Split] = []
        self._remaining: np.ndarray | None = None

    @property
    def epoch(self) -> int:
        """Epoch the next iteration reads."""
        return int(self._epoch.value)

    def set_position(self, epoch: int, skip: dict[int, int] | None = None,
                     first_worker: int = 0) -> None:
        """Start the next iteration at ``epoch``, worker ``w`` skipping ``skip[w]`` samples;
        DataLoader worker ``i`` reads the stream of worker ``(i + first_worker) % workers``,
        so that a DataLoader, which takes its workers' batches in turn from worker 0, takes
        ``first_worker``'s first (a resumed epoch continues the turn where it stopped)."""
        skip = skip or {}
        if any(not 0 <= w < MAX_WORKERS for w in skip):
            raise ValueError(f"worker ids must be in [0, {MAX_WORKERS}), got {sorted(skip)}")
        if not 0 <= first_worker < MAX_WORKERS:
            raise ValueError(f"first_worker must be in [0, {MAX_WORKERS}), got {first_worker}")
        self._epoch.value = epoch
        self._first.value = first_worker
        for w in range(MAX_WORKERS):
            self._skip[w] = skip.get(w, 0)

    def set_history(self, epoch: int, history: Sequence[Split]) -> None:
        """Read ``epoch`` as what the splits in ``history`` left unread (empty: the whole
        epoch again); any other epoch is read whole."""
        self.history = list(history)
        if not self.history:
            self._elastic_epoch.value, self._remaining = -1, None
            return
        self._remaining = remaining(self.manifest.sample_count, self.seed, epoch, self.history)
        self._elastic_epoch.value = epoch

    def history_of(self, epoch: int) -> list[Split]:
        """The splits ``epoch`` continues (empty for a normal epoch)."""
        return list(self.history) if epoch == self._elastic_epoch.value else []

    @property
    def level(self) -> int:
        """Splits that came before this one in the current epoch (0: a normal epoch)."""
        return len(self.history) if self.epoch == self._elastic_epoch.value else 0

    def epoch_samples_of(self, epoch: int) -> int:
        """Samples ``epoch`` holds across all ranks: the dataset, or what earlier splits left."""
        if self.history_of(epoch) and self._remaining is not None:
            return len(self._remaining)
        return self.manifest.sample_count

    def segments(self, worker: int, num_workers: int) -> list[Segment]:
        """What one worker of this rank reads this epoch."""
        counts = [s.samples for s in self.manifest.shards]
        order = shard_order(len(counts), self.seed, self.epoch, self.shuffle_shards)
        if not self.level:
            return partition(counts, order, self.rank, self.world_size, worker, num_workers,
                             self.even)
        if self._remaining is None:
            raise RuntimeError(f"{self.location}: epoch {self.epoch} continues earlier splits, "
                               "but this copy of the dataset has not got their positions")
        lo, hi = split_range(len(self._remaining), self.rank, self.world_size, worker,
                             num_workers, self.even)
        return segments_at(self._remaining[lo:hi], counts, order)

    def __len__(self) -> int:
        """Samples this rank reads per epoch."""
        total = self.manifest.sample_count
        if self.even:
            return total // self.world_size
        return (self.rank + 1) * total // self.world_size - self.rank * total // self.world_size

    def _raw(self, segs: Sequence[Segment], stats: dict[str, int]) -> Iterator[dict]:
        """Raw samples of ``segs`` in order; consecutive segments of one shard share one pass.
        A remote shard that fails is re-opened (``retries``) and continues where it stopped;
        each sample lost with a shard (``errors="skip"``) is counted here and yields a
        placeholder (``{LOST: True}``) in its place."""
        for shard, group in itertools.groupby(segs, key=lambda g: g.shard):
            runs = list(group)
            info = self.manifest.shards[shard]
            url = (self.url_template.format(name=info.name) if self.url_template
                   else shard_url(self.location, info))
            at, lost = _Cursor(), 0
            remote = is_remote(url)
            retries = self.retries if remote else 0
            for attempt in itertools.count():
                try:
                    yield from self._shard_pass(url, info, runs, at)
                    break
                except Exception as e:
                    if not (isinstance(e, (TarError, OSError))
                            or (remote and isinstance(e, transient_errors()))):
                        raise
                    if at.closed:  # the consumer stopped taking samples: nothing is lost
                        return
                    if remote and at.i >= runs[-1].stop:
                        # every wanted sample was read; a command stopped early by the closed
                        # stream (aws s3 cp, curl) may exit non-zero: no sample is lost
                        log.debug("ignoring an error of shard %s after its last wanted sample:"
                                  " %s", redact(url), redact(str(e)))
                        break
                    if attempt < retries:
                        wait = retry_delay(self.retry_wait, attempt)
                        log.warning("reading shard %s failed at sample %d (attempt %d of %d: "
                                    "%s: %s); re-opening it in %.1f s", redact(url), at.i,
                                    attempt + 1, retries + 1, type(e).__name__,
                                    redact(str(e)), wait)
                        if wait > 0:
                            time.sleep(wait)
                        continue
                    if self.errors == "strict":
                        if remote:  # its URL or command may hold credentials
                            raise _redacted(e) from None
                        raise
                    lost = sum(r.stop - max(at.i, r.start) for r in runs[at.k:] if r.stop > at.i)
                    stats["skipped"] += lost
                    log.warning("skipping %d samples of shard %s%s: %s", lost, info.name,
                                f" after {attempt + 1} attempts" if retries else "",
                                redact(str(e)))
                    self._check_skips(stats)
                    break
            for _ in range(lost):  # keep the later samples at their stream positions
                yield {LOST: True, "__shard__": info.name}

    def _shard_pass(self, url: str, info: ShardInfo, runs: list[Segment], at: _Cursor
                    ) -> Iterator[dict]:
        """One opening of a shard: the samples of ``runs`` from sample ``at.i`` on (those
        before it were passed by an earlier opening that failed), advancing ``at``. A streamed
        member declaring more than :func:`max_member_bytes` is a TarError (skipped or raised
        by ``errors``, as any damaged shard) before it is read."""
        cap = max_member_bytes(self.manifest, info)
        with _open(url) as f:
            for j, raw in enumerate(iter_samples(f, url, max_member=cap)):
                if j < at.i:
                    continue
                while at.k < len(runs) and at.i >= runs[at.k].stop:
                    at.k += 1
                if at.k == len(runs):
                    break
                if at.i >= runs[at.k].start:
                    raw["__shard__"] = info.name
                    try:
                        yield raw
                    except GeneratorExit:
                        at.closed = True
                        raise
                at.i += 1
            if at.k < len(runs) and at.i < runs[-1].stop:
                raise TarError(f"{url}: has {at.i} samples, manifest says {info.samples}")

    def _check_skips(self, stats: dict[str, int], final: bool = False) -> None:
        """Raise :class:`TooManySkipped` when this stream's skipped share passes
        ``max_skip_fraction`` for certain (the skips pass it of ``stats["total"]``, every
        sample the stream can read, so no later sample can bring it under), after
        :data:`SKIP_CHECK_AFTER` samples read, or at the end of the iteration (``final``)."""
        skipped, seen = stats["skipped"], stats["ok"] + stats["skipped"]
        total = stats.get("total", 0)
        limit = self.max_skip_fraction
        if not skipped:
            return
        if not final and total > seen and skipped / total > limit:
            raise TooManySkipped(
                f"{self.location}: skipped {skipped} of {total} samples (at least "
                f"{skipped / total:.1%}, whatever the {total - seen} not read yet hold) > "
                f"max_skip_fraction {limit:.1%}; see the warnings above for the shards and keys"
            )
        frac = skipped / max(seen, 1)
        if (final or seen >= min(SKIP_CHECK_AFTER, max(total, 1))) and frac > limit:
            raise TooManySkipped(
                f"{self.location}: skipped {skipped} of {seen} samples "
                f"({frac:.1%}) > max_skip_fraction {limit:.1%}; see the "
                "warnings above for the shards and keys"
            )

    def decode(self, raw: dict) -> dict:
        """Decode one raw sample (bytes per extension) into arrays; raises SampleError (naming
        shard and key) for a modality array that disagrees with the manifest (bands, dtype, a
        non-empty manifest shape) or a valid mask that is not bool of the pixels' (H, W)."""
        key = raw.get("__key__")
        where = f"{raw.get('__shard__')}/{key}"
        out: dict = {"__key__": key}
        for mod in self.modalities:
            data = raw.get(f"{mod}.npy")
            if data is None:
                raise SampleError(f"{where}: no {mod}.npy in sample")
            x = decode_npy(data)
            info = self.manifest.modalities[mod]
            if (x.ndim != 3 or x.shape[0] != len(info.bands) or x.dtype != np.dtype(info.dtype)
                    or (info.shape and list(x.shape) != info.shape)):
                raise SampleError(f"{where}: {mod}.npy is {x.dtype} {x.shape}; manifest says "
                                  f"{info.dtype} with {len(info.bands)} bands"
                                  + (f", shape {tuple(info.shape)}" if info.shape else ""))
            idx = self.band_index[mod]
            out[mod] = x[idx] if idx is not None else x
            v = raw.get(f"{mod}.valid.npy")
            out[f"{mod}_valid"] = (_valid_mask(decode_npy(v), x.shape[1:], f"{where}: {mod}")
                                   if v is not None else np.ones(x.shape[1:], bool))
        if "labels.npy" in raw:
            out["label"] = decode_npy(raw["labels.npy"])
        elif (label := self._missing_label()) is not None:
            out["label"] = label
        if "seg.npy" in raw:
            out["seg"] = decode_npy(raw["seg.npy"])
        if self.with_meta and "meta.json" in raw:
            out["meta"] = decode_json(raw["meta.json"])
        return out

    def _missing_label(self) -> np.ndarray | None:
        """The ``label`` of a sample without ``labels.npy``: None when the dataset has no class
        or multilabel labels (segmentation targets are ``seg.npy``) or with
        ``missing_labels="absent"``, else :func:`.build.unlabelled_label` (class
        :data:`.build.UNLABELLED_CLASS`, an all-zero multi-hot vector)."""
        if self.missing_labels == "absent":
            return None
        return unlabelled_label(self.manifest.labels)

    def __iter__(self) -> Iterator[dict]:
        wi = get_worker_info()
        # the stream (logical worker id) this DataLoader worker reads: see set_position
        wid, nw = ((wi.id + int(self._first.value)) % wi.num_workers, wi.num_workers
                   ) if wi is not None else (0, 1)
        segs = self.segments(wid, nw)
        # ``total``: every sample this stream can read, the bound that makes a skip count
        # conclusive before the end (see _check_skips)
        stats = {"ok": 0, "skipped": 0, "total": sum(g.stop - g.start for g in segs)}
        stream = self._raw(segs, stats)
        level = self.level
        if self.shuffle_buffer > 1:
            rng = stream_rng(self.seed, self.epoch, self.rank, wid, level)
            stream = shuffle_stream(stream, self.shuffle_buffer, rng)
        skip = int(self._skip[wid])

        for pos, raw in enumerate(stream):
            if LOST in raw:  # counted as skipped where its shard failed (_raw)
                continue
            if pos < skip:  # consumed before a resume: read, as the uninterrupted run counts it
                stats["ok"] += 1
                continue
            try:
                sample = self.decode(raw)
                if self.transform is not None:
                    sample = self.transform(
                        sample, np.random.default_rng([self.seed, self.epoch, self.rank, wid, pos]
                                                      + ([level] if level else [])))
            except (SampleError, ValueError) as e:
                if self.errors == "strict":
                    raise
                stats["skipped"] += 1
                log.warning("skipping sample %s/%s: %s", raw.get("__shard__"), raw.get("__key__"), e)
                self._check_skips(stats)
                continue
            stats["ok"] += 1
            sample["__worker__"] = wid
            sample["__pos__"] = pos
            yield sample
        self._check_skips(stats, final=True)


def _valid_mask(v: np.ndarray, hw: tuple[int, ...], where: str) -> np.ndarray:
    """``v``, a decoded ``{mod}.valid.npy``, when it is bool of the pixels' ``(H, W)`` ``hw``;
    else a SampleError naming ``where`` (shard/key: modality), what came and what was expected
    (the transforms would fail on it with an IndexError, collate without naming the sample)."""
    if v.dtype != np.dtype(bool) or v.shape != tuple(hw):
        raise SampleError(f"{where}.valid.npy is {v.dtype} {v.shape}; expected bool {tuple(hw)} "
                          "(the pixels' height and width)")
    return v


def _torch_dtype(a: np.ndarray) -> torch.dtype:
    """The torch dtype ``torch.from_numpy`` gives an array of ``a``'s dtype (any shape: a class
    label is a 0-d array)."""
    return torch.from_numpy(np.empty(0, a.dtype)).dtype


def _sample_name(sample: Mapping) -> str:
    """How an error names a sample of a batch: its key."""
    return f"sample {sample.get('__key__')!r}"


def _check_batch(samples: Sequence[Mapping]) -> None:
    """Every sample of a batch has the same fields, and each array field the same dtype and
    shape in all of them; else a ValueError naming the sample and the field that differs from
    the batch's first sample (a batch built from the first one's fields would drop a field of
    the others, or fail on a later sample without naming it)."""
    first = samples[0]
    fields = set(first)
    for s in samples[1:]:
        if set(s) != fields:
            missing, extra = sorted(fields - set(s)), sorted(set(s) - fields)
            what = " and ".join(([f"lacks the field(s) {missing}"] if missing else [])
                                + ([f"has the extra field(s) {extra}"] if extra else []))
            hint = ("; a dataset of labelled and unlabelled samples reads as one with "
                    "ShardDataset(missing_labels='fill')" if "label" in missing + extra else "")
            raise ValueError(
                f"collate: {_sample_name(s)} {what}: expected the fields of "
                f"{_sample_name(first)}, the batch's first, {sorted(fields)} (every sample of a "
                f"batch needs the same fields){hint}")
        for k, v in first.items():
            if not isinstance(v, np.ndarray):
                continue
            x = s[k]
            if (not isinstance(x, np.ndarray) or x.dtype != v.dtype
                    or x.shape != v.shape):
                got = (f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray)
                       else f"a {type(x).__name__}")
                raise ValueError(
                    f"collate: {_sample_name(s)}: field {k!r} is {got}; expected {v.dtype} "
                    f"{v.shape} as in {_sample_name(first)}, the batch's first")


def collate(samples: list[dict]) -> dict:
    """Stack arrays into tensors (integers stay integers; 0-d arrays, e.g. class labels,
    become a (batch,) tensor); strings and dicts become lists. Samples with other fields, or
    arrays of another dtype or shape, than the first are a ValueError (:func:`_check_batch`)."""
    _check_batch(samples)
    out: dict = {}
    in_worker = get_worker_info() is not None
    for k in samples[0]:
        vals = [s[k] for s in samples]
        if isinstance(vals[0], np.ndarray):
            if in_worker:  # stack straight into shared memory: saves the copy on the way out
                t = torch.empty((len(vals), *vals[0].shape),
                                dtype=_torch_dtype(vals[0])).share_memory_()
                np.stack(vals, out=t.numpy())
                out[k] = t
            else:
                out[k] = torch.from_numpy(np.stack(vals))
        elif isinstance(vals[0], (int, np.integer)):
            out[k] = torch.tensor(vals, dtype=torch.int64)
        else:
            out[k] = vals
    return out
