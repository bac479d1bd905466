"""The same dataset as a zarr v3 store for random access (evaluation sets, large cubes).

Layout: one array per modality ``(N, C, H, W)`` chunked one sample per chunk (zstd), a
``{modality}_valid`` array ``(N, H, W)``, optional ``labels``/``seg``, and the manifest (minus
the shard list) plus per-sample keys in the group attributes, and each sample's metadata as one
JSON line of ``meta.jsonl`` at the store's top (not a zarr node: zarr warns "Object at
meta.jsonl is not recognized as a component of a Zarr hierarchy" when it lists the group, and
:class:`ZarrDataset` silences exactly that warning). The store is built
under a temporary name (``OUT.tmp``, removed when the build fails) and renamed into place when
complete; an existing store replaced with ``--overwrite`` stays whole until then.

Every chunk of every array is stored, all-zero ones included (zarr's ``write_empty_chunks``),
and the group attribute ``complete_chunks`` says so: zarr reads an absent chunk as its fill
value (0), so in such a store a missing chunk file can only be a loss (an interrupted copy or
rsync), and :class:`ZarrDataset` refuses it instead of reading zeros (:func:`store_damage`).
Stores built before lack the attribute; their lost chunks cannot be told from all-zero ones.

The ``labels`` array holds one row per sample, unlabelled samples of a labelled dataset
included (e.g. a scene pooled with class folders): their row is :func:`.build.unlabelled_label`
(class -1, :data:`.build.UNLABELLED_CLASS`; an all-zero multi-hot vector), which is what
:class:`ZarrDataset` and the shard reader give them by default, and the group attribute
``unlabelled_rows`` (:data:`UNLABELLED_ATTR`) lists those rows, so a reader can tell them
from a labelled sample with no class (``ZarrDataset(missing_labels="absent")``). Stores built
before wrote only the labelled rows: such a store's ``labels`` array has fewer rows than keys,
and opening it is refused (:func:`store_damage`).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from .chunk_guard import guard_array
from .manifest import LabelInfo, Manifest, ManifestError, ModalityInfo
from .outputs import out_of_space, write_failure

if TYPE_CHECKING:  # build imports this module lazily
    from .build import BuildConfig, Plan

FLUSH = 64
META_NAME = "meta.jsonl"  # per-sample metadata, one JSON line each, beside the zarr arrays
# zarr's warning for the one non-zarr file the store holds by design (ZarrUserWarning, a
# UserWarning); any other object it does not recognise is still warned about
META_WARNING = rf"Object at {re.escape(META_NAME)} is not recognized as a component"
# group attribute: every chunk of every array was written (write_empty_chunks), so a chunk
# without a stored object was lost after the build; absent in stores built before
COMPLETE_ATTR = "complete_chunks"
# group attribute: the rows (ascending) of samples built without a label, whose labels row is
# build.unlabelled_label; absent when there are none (and in stores built before)
UNLABELLED_ATTR = "unlabelled_rows"


def build_zarr(cfg: BuildConfig) -> Manifest:
    """Write ``cfg.source`` as a zarr store at ``cfg.out`` (see module docstring)."""
    from .build import make_plan

    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite to replace it")
    plan = make_plan(cfg)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = _write_store(tmp, cfg, plan)
    except BaseException as e:  # a bad tile, a full disk, Ctrl-C: no half-written store stays
        shutil.rmtree(tmp, ignore_errors=True)
        if out_of_space(e) is not None:  # zarr's own error names no file
            raise write_failure(out, e) from e
        raise
    old = out.with_name(out.name + ".old")
    if out.exists():  # --overwrite: the old store stays whole until the new one is in place
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return manifest


def _write_store(tmp: Path, cfg: BuildConfig, plan: Plan) -> Manifest:
    """Write every sample of ``plan`` and the manifest into a new zarr group at ``tmp``."""
    from .build import (
        iter_samples,
        new_stats,
        plan_user_sensors,
        s1_db_record,
        tile_record,
        unlabelled_label,
    )

    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    stats = new_stats(plan)
    counters: dict[str, int] = {}
    shapes: dict[str, set[tuple[int, ...]]] = {}
    arrays: dict[str, zarr.Array] = {}
    buf: dict[str, list[np.ndarray]] = {}
    keys: list[str] = []
    metas: list[dict] = []
    fill = unlabelled_label(plan.labels)  # an unlabelled sample's row: rows stay one per key
    unlabelled: list[int] = []

    def flush() -> None:
        for name, chunk in buf.items():
            if chunk:
                arrays[name].append(np.stack(chunk), axis=0)
                chunk.clear()

    for s in iter_samples(plan, cfg, plan.items, stats, counters, shapes):
        fields = {**s.arrays, **{f"{k}_valid": v for k, v in s.valid.items()}}
        if s.label is not None:
            fields["labels"] = s.label
        elif fill is not None:
            fields["labels"] = fill
            unlabelled.append(len(keys))
        if s.seg is not None:
            fields["seg"] = s.seg
        for name, x in fields.items():
            if name not in arrays:
                arrays[name] = group.create_array(
                    name, shape=(0, *x.shape), chunks=(1, *x.shape), dtype=x.dtype,
                    compressors=ZstdCodec(level=3), fill_value=0,
                    # store all-zero chunks too (class 0, empty masks): a missing one is a loss
                    config={"write_empty_chunks": True})
                buf[name] = []
            if arrays[name].shape[1:] != x.shape:
                raise ValueError(f"{s.key}: {name} shape {x.shape} differs from earlier samples "
                                 f"{arrays[name].shape[1:]}; zarr stores need one tile shape "
                                 "(pass --tile)")
            buf[name].append(x)
        keys.append(s.key)
        metas.append(s.meta)
        if len(keys) % FLUSH == 0:
            flush()
    flush()
    if not keys:
        raise ValueError(f"{cfg.describe_sources()}: no tiles passed the nodata limit; nothing to write")
    manifest = Manifest(
        modalities={n: ModalityInfo(m.sensor, m.bands, m.dtype,
                                    list(next(iter(shapes[n]))), m.nodata, m.gsd_m,
                                    stats[n].summary(), plan.pooled(n))
                    for n, m in plan.outputs().items()},
        labels=plan.labels, source=cfg.describe_sources(), layout=plan.layout,
        tile=tile_record(cfg),
        extra={"counters": counters, "samples": len(keys), "store": "zarr",
               "order": {"seed": cfg.order_seed},  # seed None: key order
               **({"s2_offset": plan.s2_offset} if plan.s2_offset else {}),
               **({"user_sensors": user} if (user := plan_user_sensors(plan)) else {}),
               **({"s1_linear_to_db": db} if (db := s1_db_record(plan, cfg)) else {})},
    )
    group.attrs.update({"eofm_manifest": manifest.to_dict(), "keys": keys, COMPLETE_ATTR: True,
                        **({UNLABELLED_ATTR: unlabelled} if unlabelled else {})})
    (tmp / META_NAME).write_text("".join(json.dumps(m, sort_keys=True) + "\n" for m in metas))
    return manifest


def _array_names(group: zarr.Group) -> list[str]:
    """The arrays of an eofm store's group. Listing it makes zarr warn that ``meta.jsonl`` (which
    every eofm store holds, see the module doc) is no zarr node; that one warning is dropped,
    any other is kept."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=META_WARNING, category=UserWarning)
        return list(group.array_keys())


def missing_rows(arr: zarr.Array, folder: Path) -> tuple[list[int], list[str]]:
    """``(rows, chunk keys)`` of the chunks of ``arr``, stored in the local ``folder``, that
    have no file (zarr would read them as the fill value). One ``stat`` per chunk, about 20 us:
    listing the nested chunk folders (``Array.nchunks_initialized``, which also compares every
    key with every file) takes tens of seconds for 50 000 chunks."""
    base = f"{folder}{os.sep}"  # os.path on strings: a third of pathlib's time per chunk
    lost = [c for c in itertools.product(*(range(n) for n in arr.cdata_shape))
            if not os.path.isfile(base + arr.metadata.encode_chunk_key(c))]
    per, n = arr.chunks[0], arr.shape[0]  # an eofm store's arrays: one row per chunk
    rows = sorted({r for c in lost for r in range(c[0] * per, min((c[0] + 1) * per, n))})
    return rows, [arr.metadata.encode_chunk_key(c) for c in lost]


def oversized_chunks(arrays: dict[str, zarr.Array]) -> list[tuple[str, str]]:
    """``(array name, what is wrong)`` for each array whose chunks hold more than one sample
    (row): an eofm store is chunked one sample per chunk, and a reader decodes a whole chunk
    for each sample, so chunk metadata declaring more would let one chunk file of a few KB
    decode to whatever size they declare."""
    out = []
    for name, arr in arrays.items():
        row = (1, *arr.shape[1:])
        if math.prod(arr.chunks) > math.prod(row):
            out.append((name, f"chunk shape {tuple(arr.chunks)} holds more than one sample; "
                              f"expected {row} (one sample per chunk, as eofm-shard build "
                              "writes it): rebuild it with `eofm-shard build ... --format "
                              "zarr`"))
    return out


def _some(items: list, n: int = 8) -> str:
    """The first ``n`` of ``items``, comma separated, with how many more there are."""
    more = f" ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


def store_damage(path: Path, arrays: dict[str, zarr.Array], n_keys: int, complete: bool
                 ) -> list[tuple[str, str]]:
    """``(array name, what is wrong)`` for each array of the eofm store at ``path`` (a local
    folder, one subfolder per array) whose row count is not the number of sample ``keys``, or,
    in a store written with every chunk (``complete``, see :data:`COMPLETE_ATTR`), that misses
    chunk files. Empty: nothing found."""
    out = []
    for name, arr in arrays.items():
        rows = arr.shape[0]
        if rows != n_keys:
            out.append((name, f"{rows} rows, but the group attribute 'keys' lists {n_keys} "
                              "samples (expected one row per key)"))
            continue
        if not complete:
            continue
        lost_rows, lost_keys = missing_rows(arr, path / name)
        if lost_keys:
            out.append((name, f"{len(lost_keys)} of {arr.nchunks} chunk files missing (rows "
                              f"{_some(lost_rows)}; files {name}/{_some(lost_keys, 3)}): the "
                              f"store was written with every chunk ({COMPLETE_ATTR}), so they "
                              "were lost after the build (an interrupted copy or rsync?) and "
                              "would read as zeros; copy the store again, or rebuild it with "
                              "`eofm-shard build ... --format zarr --overwrite`"))
    return out


def _sample_keys(attrs: dict, path: Path) -> list[str]:
    """The group attribute ``keys`` (one sample key per row) of the store at ``path``; a
    ValueError naming the store and the attribute when it is absent or not a list of strings."""
    if "keys" not in attrs:
        raise ValueError(f"{path / 'zarr.json'}: the group attribute 'keys' (the sample keys, "
                         "one per row) is missing; expected a list of strings: not a complete "
                         "eofm zarr store, rebuild it with `eofm-shard build ... --format zarr`")
    keys = attrs["keys"]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        bad = (type(keys).__name__ if not isinstance(keys, list)
               else "a list holding " + ", ".join(sorted({type(k).__name__ for k in keys
                                                           if not isinstance(k, str)})))
        raise ValueError(f"{path / 'zarr.json'}: the group attribute 'keys' (the sample keys, "
                         f"one per row): expected a list of strings, got {bad}")
    return keys


def _unlabelled_rows(attrs: dict, path: Path, n: int) -> frozenset[int]:
    """The group attribute ``unlabelled_rows`` (:data:`UNLABELLED_ATTR`) of the store at
    ``path`` with ``n`` samples: the rows of samples built without a label (none when absent);
    a ValueError naming the store and the attribute unless it is a list of row numbers."""
    rows = attrs.get(UNLABELLED_ATTR, [])
    if not isinstance(rows, list) or not all(
            isinstance(r, int) and not isinstance(r, bool) and 0 <= r < n for r in rows):
        raise ValueError(f"{path / 'zarr.json'}: the group attribute {UNLABELLED_ATTR!r} (the "
                         f"rows of unlabelled samples): expected a list of row numbers in "
                         f"0..{n - 1}, got {json.dumps(rows)[:80]}")
    return frozenset(rows)


class ZarrDataset:
    """Map-style reader: ``ds[i]`` -> ``{modality: (C,H,W), modality_valid, label?, seg?,
    __key__}``.

    ``missing_labels`` as :class:`~.reader.ShardDataset`'s: ``"fill"`` (the default) gives an
    unlabelled sample of a labelled store its stored row, :func:`.build.unlabelled_label`
    (class -1, an all-zero multi-hot vector), as the shard reader does; ``"absent"`` leaves
    its ``label`` out (the rows in :attr:`unlabelled`, from the group attribute
    ``unlabelled_rows``).

    ``bands`` (None, or a mapping of modality -> band names in any accepted spelling) selects
    and orders bands as :class:`~.reader.ShardDataset`'s does, checked by the same
    :func:`~.reader.select_bands`: a modality the store lacks, an empty list, a band named
    twice (B4 and B04) or one the modality lacks is a ValueError.

    Opening checks the group attribute ``keys`` (a list of strings) and, with ``check`` (the
    default), refuses a store whose arrays do not hold one row per key or, when it was written
    with every chunk (:data:`COMPLETE_ATTR`), miss chunk files (:func:`store_damage`);
    ``verify`` opens with ``check=False`` and reports them instead. ``complete_chunks`` says
    whether lost chunks can be detected in this store at all. Opening also refuses arrays
    chunked more than one sample per chunk (:func:`oversized_chunks`), and every chunk read is
    refused (:class:`.chunk_guard.ChunkTooLarge`, naming its file) when its compressed bytes
    would decode to more than its chunk shape holds, before they are decoded. A DataLoader
    batch is read with :meth:`__getitems__`: each array once for the whole batch."""

    def __init__(self, path: str | Path, bands: dict[str, list[str]] | None = None,
                 *, check: bool = True, missing_labels: str = "fill") -> None:
        from .build import MISSING_LABELS

        if missing_labels not in MISSING_LABELS:
            raise ValueError(f"missing_labels: expected one of {', '.join(MISSING_LABELS)}, "
                             f"got {missing_labels!r}")
        self.missing_labels = missing_labels
        self.path = Path(path)
        try:
            self.group = zarr.open_group(str(self.path), mode="r")
            attrs = dict(self.group.attrs)
            self.manifest = Manifest.from_dict(attrs["eofm_manifest"], source=str(self.path))
        except (KeyError, FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise ValueError(f"{self.path}: not an eofm zarr store ({e})") from None
        self.keys: list[str] = _sample_keys(attrs, self.path)
        self.complete_chunks: bool = attrs.get(COMPLETE_ATTR) is True
        # rows of samples built without a label (their labels row is the fill value)
        self.unlabelled: frozenset[int] = _unlabelled_rows(attrs, self.path, len(self.keys))
        if not self.keys:  # its manifest's sample_count is 0 for every store: keys count
            raise ManifestError(f"{self.path}: the zarr store holds no samples (no keys), so "
                                "it has no pixels to read and no band statistics: rebuild it "
                                "with `eofm-shard build ... --format zarr`, which says why no "
                                "tile passed the limits")
        self.modalities = list(self.manifest.modalities)
        chosen: dict[str, list[str]] = {}
        if bands is not None:  # imported here: .reader imports torch, which build and verify
            from .reader import select_bands  # of a zarr store do not need (seconds)

            # checked as ShardDataset checks them: a modality the store lacks, a band asked
            # for twice under any spelling (B4 and B04) or an empty list is refused
            chosen = select_bands(bands, self.modalities, self.manifest, str(self.path))
        self.index: dict[str, list[int] | None] = {}
        for mod in self.modalities:
            have = self.manifest.modalities[mod].bands
            names = chosen.get(mod)
            self.index[mod] = None if names is None else [have.index(b) for b in names]
        self.labels: LabelInfo | None = self.manifest.labels
        # opened once: looking an array up (or listing the group) reads metadata from the store,
        # milliseconds per sample for verify, stats and the readers; each chunk's compressed
        # bytes are bounded by its shape before they are decoded (chunk_guard)
        self.arrays = {name: guard_array(self.group[name]) for name in _array_names(self.group)}
        oversized = oversized_chunks(self.arrays)
        if oversized:
            raise ValueError("; ".join(f"{self.path / name}: {what}" for name, what in oversized))
        damage = store_damage(self.path, self.arrays, len(self.keys),
                              self.complete_chunks) if check else []
        if damage:
            raise ValueError("; ".join(f"{self.path / name}: {what}" for name, what in damage))

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        return self._sample(i % len(self), lambda name: self.arrays[name][i])

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """``[self[i] for i in indices]`` (the same keys, dtypes, shapes and values, each
        sample's arrays its own), each array read once for the whole batch: torch's
        ``DataLoader`` calls this with a batch's indices when the dataset has it.

        One orthogonal selection per array (``array.oindex[rows]``, the distinct rows in
        ascending order) instead of one read per sample and array: zarr's synchronous round
        trip per read was most of the time of a per-sample read. The chunks go through the
        same guarded codec pipeline as ``self[i]`` (:func:`.chunk_guard.guard_array`), so
        each is still checked before it is decoded. Memory: each array's distinct rows (one
        chunk each, :func:`oversized_chunks`: at most the batch's sample bytes), held while
        the samples are copied out of them, so about twice a batch at the peak. A label
        ``self[i]`` would leave out (``missing_labels="absent"``) is not read."""
        n = len(self)
        for i in indices:
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for {n} samples")
        rows = [i % n for i in indices]
        blocks = {name: _RowBlock.read(self.arrays[name], some)
                  for name, some in self._sample_arrays(rows).items()}
        return [self._sample(r, lambda name, r=r: blocks[name].row(r)) for r in rows]

    def _sample_arrays(self, rows: list[int]) -> dict[str, list[int]]:
        """``{array name: the rows of it}`` that :meth:`_sample` reads for samples ``rows``."""
        names = [a for mod in self.modalities for a in (mod, f"{mod}_valid")]
        out = {a: rows for a in names}
        for extra, name in (("labels", "label"), ("seg", "seg")):
            if extra in self.arrays:
                out[extra] = [r for r in rows if not self._absent(name, r)]
        return out

    def _absent(self, name: str, row: int) -> bool:
        """Whether sample ``row``'s ``name`` field is left out: the label of an unlabelled
        sample with ``missing_labels="absent"``."""
        return name == "label" and self.missing_labels == "absent" and row in self.unlabelled

    def _sample(self, row: int, read: Callable[[str], np.ndarray]) -> dict:
        """Sample ``row`` (``0 <= row < len(self)``), ``read(array name)`` giving its row of
        that array (an array the sample may keep: not shared with another)."""
        out: dict = {"__key__": self.keys[row]}
        for mod in self.modalities:
            x = read(mod)
            out[mod] = x[self.index[mod]] if self.index[mod] is not None else x
            out[f"{mod}_valid"] = read(f"{mod}_valid")
        for extra, name in (("labels", "label"), ("seg", "seg")):
            if extra in self.arrays and not self._absent(name, row):
                out[name] = read(extra)
        return out


@dataclass(frozen=True)
class _RowBlock:
    """Some rows of one array, read at once: ``data[j]`` is row ``rows[j]`` (ascending)."""

    rows: np.ndarray
    data: np.ndarray

    @classmethod
    def read(cls, arr: zarr.Array, rows: Sequence[int]) -> _RowBlock:
        """The distinct ``rows`` of ``arr`` (non-negative), in one orthogonal selection."""
        uniq = np.unique(np.asarray(rows, dtype=np.int64))
        if not len(uniq):  # no read at all, as for no sample
            return cls(uniq, np.empty((0, *arr.shape[1:]), arr.dtype))
        return cls(uniq, arr.oindex[uniq])

    def row(self, r: int) -> np.ndarray:
        """A copy of row ``r`` (an ndarray, 0-d for a 1-d array, as ``arr[r]`` gives it):
        not a view of the block, which the batch's other samples (a row asked for twice
        too) share."""
        return self.data[int(np.searchsorted(self.rows, r)), ...].copy()
