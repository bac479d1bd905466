"""``inspect``, ``verify`` and ``stats`` over a built dataset (tar shards or zarr store)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .build import UNLABELLED_CLASS, UNLABELLED_COUNTER
from .codec import decode_npy
from .manifest import MANIFEST_NAME, Manifest, ManifestError, load_manifest
from .outputs import unwritable_reason
from .remote import redact
from .s2_baseline import describe as describe_s2_offset
from .stats import BandStats
from .tario import TarError, iter_samples
from .writer import file_sha256

log = logging.getLogger(__name__)


def is_zarr(path: str | Path) -> bool:
    """Whether ``path`` is a zarr store written by ``eofm-shard build --format zarr``."""
    return (Path(path) / "zarr.json").exists()


def local_dataset(path: str | Path, command: str) -> Path:
    """``path`` as a local folder for ``command`` (``verify``, ``stats``), which read every
    shard file; a URL or ``pipe:`` command is refused (ValueError, exit 2) rather than made a
    ``Path`` (``http:/host/ds``: "no manifest found" on a mangled name)."""
    text = str(path)
    if "://" in text or text.startswith("pipe:"):
        raise ValueError(f"{command} needs a local dataset folder; got URL {redact(text)}: "
                         "download the dataset first (`eofm-shard inspect` and `preview` "
                         "read a URL)")
    return Path(path)


def open_manifest(path: str | Path, *, check_stats: bool = True) -> Manifest:
    """Manifest of a shard folder or a zarr store. Without ``check_stats`` a shard folder's
    stored statistics are neither checked nor kept (:func:`.manifest.load_manifest`); a zarr
    store's are always checked."""
    if is_zarr(path):
        from .zarr_store import ZarrDataset

        return ZarrDataset(path, check=False).manifest  # the manifest only: no chunk reads
    return load_manifest(path, check_stats=check_stats)


def summary(path: str | Path) -> str:
    """Readable description: samples, shards, modalities and bands, labels, statistics."""
    m = open_manifest(path)
    zarr = is_zarr(path)
    n = m.extra.get("samples", m.sample_count) if zarr else m.sample_count
    lines = [f"dataset   {path}", f"format    {'zarr v3' if zarr else 'webdataset tar'} "
             f"(eofm-shards v{m.format_version}), layout {m.layout or '-'}",
             f"samples   {n}" + ("" if zarr else f" in {len(m.shards)} shards "
                                 f"({sum(s.bytes for s in m.shards) / 2**20:.1f} MiB)"),
             f"tiles     {m.tile}", f"counters  {_plain_counters(m)}",
             *_cloud_lines(m), *describe_s2_offset(m.extra.get("s2_offset"))]
    if m.labels is not None:
        unlabelled = m.extra.get("counters", {}).get(UNLABELLED_COUNTER)
        lines.append(f"labels    {m.labels.kind}, {len(m.labels.classes)} classes: "
                     + " | ".join(m.labels.classes[:12]) + (" ..." if len(m.labels.classes) > 12 else "")
                     + (f"; {unlabelled} samples unlabelled" if unlabelled else ""))
    for name, info in m.modalities.items():
        lines.append(f"\nmodality {name}: {_sensor_mix(m, name)}, {info.dtype} {info.shape}, "
                     f"GSD {info.gsd_m:g} m")
        lines.append(f"  {'band':<6}{'mean':>10}{'std':>10}{'min':>10}{'p2':>10}{'p98':>10}"
                     f"{'max':>10}{'nodata':>8}")
        for b in info.bands:
            s = info.stats.get(b, {})

            def f(k: str, s: dict = s) -> str:
                v = s.get(k)
                return f"{v:>10.4g}" if isinstance(v, (int, float)) else f"{'-':>10}"
            nd = s.get("nodata_fraction")
            lines.append(f"  {b:<6}{f('mean')}{f('std')}{f('min')}{f('p2')}{f('p98')}{f('max')}"
                         + (f"{nd:>8.1%}" if nd is not None else f"{'-':>8}"))
    return "\n".join(lines)


def _plain_counters(m: Manifest) -> dict:
    """The build counters without the per-sensor sample counts (shown with each modality) and
    the cloud histogram (shown on its own line)."""
    return {k: v for k, v in m.extra.get("counters", {}).items()
            if not k.startswith(("samples[", "cloud["))}


def _cloud_lines(m: Manifest) -> list[str]:
    """The tiles' cloud_fraction histogram (quality masks read at build), when there is one."""
    bins = {k: v for k, v in m.extra.get("counters", {}).items() if k.startswith("cloud[")}
    if not bins:
        return []
    total = sum(bins.values())
    order = sorted(bins, key=lambda k: int(k[len("cloud["):].split("-")[0]))
    return [f"clouds    {total} tiles measured (kept and dropped), by cloud fraction: "
            + ", ".join(f"{k[len('cloud['):-1]} {100 * bins[k] / total:.0f}%" for k in order)]


def _sensor_mix(m: Manifest, name: str) -> str:
    """``sensor X``, or for a pooled modality every sensor with its sample count and level
    (``sensors s2_l1c (L1C, 9 samples) + s2_l2a (L2A, 8 samples)``)."""
    from .build import sensor_counter
    from .sensors import get_sensor

    info = m.modalities[name]
    if len(info.sensor_ids) == 1:
        return f"sensor {info.sensor}"
    counters = m.extra.get("counters", {})
    parts = []
    for sid in info.sensor_ids:
        try:
            level = get_sensor(sid).processing_level
        except ValueError:  # a user sensor not registered here
            level = ""
        n = counters.get(sensor_counter(name, sid))
        what = [w for w in (level, f"{n} samples" if n is not None else "") if w]
        parts.append(f"{sid} ({', '.join(what)})" if what else sid)
    return "sensors " + " + ".join(parts) + " pooled"


@dataclass
class Problem:
    """One thing wrong with a dataset: where, and what."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def _check_sample(raw: dict, m: Manifest, where: str) -> list[Problem]:
    """Problems of one raw sample (bytes per member) of shard ``where``: members that do not
    decode, modality arrays that disagree with the manifest, valid masks that are not bool of
    the pixels' (H, W) (:func:`_check_valid`), labels outside the manifest's classes
    (:func:`_check_label`), a ``meta.json`` that does not read or records other bands or
    another sensor than the manifest (:func:`meta_problems`)."""
    out = []
    key = raw["__key__"]
    for ext, data in raw.items():
        if ext.endswith(".npy") and ext.split(".")[0] not in m.modalities:
            try:
                decode_npy(data)
            except ValueError as e:
                out.append(Problem(where, f"sample {key}: {ext} {e}"))
    for mod, info in m.modalities.items():
        data = raw.get(f"{mod}.npy")
        if data is None:
            out.append(Problem(where, f"sample {key} has no {mod}.npy"))
            continue
        try:
            x = decode_npy(data)
        except ValueError as e:
            out.append(Problem(where, f"sample {key}: {mod}.npy {e}"))
            continue
        if x.dtype != np.dtype(info.dtype) or (info.shape and list(x.shape) != info.shape):
            out.append(Problem(where, f"sample {key}: {mod} is {x.dtype} "
                                      f"{list(x.shape)}, manifest says {info.dtype} {info.shape}"))
        elif x.ndim != 3 or x.shape[0] != len(info.bands):  # shape [] (tiles of several sizes)
            out.append(Problem(where, f"sample {key}: {mod} is {list(x.shape)}, "
                                      f"manifest lists {len(info.bands)} bands (expected "
                                      f"[{len(info.bands)}, height, width])"))
        elif (what := _check_valid(raw.get(f"{mod}.valid.npy"), x.shape[1:])) is not None:
            out.append(Problem(where, f"sample {key}: {mod}.valid.npy {what}"))
    if m.labels is not None and "labels.npy" in raw:
        try:
            what = _check_label(decode_npy(raw["labels.npy"]), m.labels.kind,
                                len(m.labels.classes))
        except ValueError:  # reported with the other members above
            what = None
        if what is not None:
            out.append(Problem(where, f"sample {key}: labels.npy {what}"))
    if "meta.json" in raw:
        try:
            meta = json.loads(bytes(raw["meta.json"]))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            out.append(Problem(where, f"sample {key}: meta.json is not JSON text ({e})"))
        else:
            out += [Problem(where, f"sample {key}: meta.json {what}")
                    for what in meta_problems(meta, m)]
    return out


SHOWN_BANDS = 16  # band lists longer than this are shown by their first difference


def _bands_text(sample: list, manifest: list[str]) -> str:
    """``sample``'s band list against the manifest's: both lists, or for long ones (a
    hyperspectral modality) their lengths and the first position where they differ."""
    if max(len(sample), len(manifest)) <= SHOWN_BANDS:
        return f"bands {sample}, the manifest lists {manifest}"
    i = next((i for i, (a, b) in enumerate(zip(sample, manifest, strict=False)) if a != b),
             min(len(sample), len(manifest)))

    def at(names: list) -> str:
        return repr(names[i]) if i < len(names) else "nothing"
    return (f"{len(sample)} bands, the manifest lists {len(manifest)}; first difference at "
            f"band {i}: {at(sample)} in the sample, {at(manifest)} in the manifest")


def meta_problems(meta: object, m: Manifest) -> list[str]:
    """How one sample's metadata (a shard's ``meta.json``, a zarr store's ``meta.jsonl`` line)
    disagrees with the manifest ``m``: for each modality it records
    (``modalities.<name>.bands``/``.sensor``, written by the build), a band list other than the
    manifest's (an edited or swapped band order) or a sensor not among the modality's
    :attr:`.manifest.ModalityInfo.sensor_ids` (pooled sensors each keep their own). Empty:
    it agrees, or records neither."""
    if not isinstance(meta, dict):
        return [f"is {type(meta).__name__}, expected a JSON object"]
    mods = meta.get("modalities")
    if not isinstance(mods, dict):
        return []
    out = []
    for name, info in m.modalities.items():
        rec = mods.get(name)
        if not isinstance(rec, dict):
            continue
        if "bands" in rec and rec["bands"] != info.bands:
            bands = rec["bands"] if isinstance(rec["bands"], list) else [rec["bands"]]
            out.append(f"records {name} {_bands_text(bands, info.bands)}")
        if "sensor" in rec and rec["sensor"] not in info.sensor_ids:
            says = (f"sensor {info.sensor!r}" if len(info.sensor_ids) == 1
                    else f"sensors {info.sensor_ids}")
            out.append(f"records {name} sensor {rec['sensor']!r}, the manifest says {says}")
    return out


def _check_valid(data: bytes | None, hw: tuple[int, ...]) -> str | None:
    """What is wrong with a modality's encoded valid mask (``None``: absent, or bool of the
    pixels' ``(H, W)`` ``hw``), or None."""
    if data is None:
        return None
    try:
        v = decode_npy(data)
    except ValueError as e:
        return str(e)
    if v.dtype != np.dtype(bool) or v.shape != tuple(hw):
        return (f"is {v.dtype} {list(v.shape)}, expected bool {list(hw)} (the pixels' "
                "height and width)")
    return None


def _check_label(y: np.ndarray, kind: str, n_classes: int) -> str | None:
    """What is wrong with a sample's decoded label (``labels.npy``, a zarr ``labels`` row) for
    the manifest's label ``kind`` and class count, or None: a ``class`` label is one integer in
    ``0..n_classes-1`` or :data:`.build.UNLABELLED_CLASS` (-1: unlabelled, as a sample without
    ``labels.npy`` reads), a ``multilabel`` one a vector of ``n_classes`` entries (an
    unlabelled sample's all zero); segmentation labels are ``seg.npy``."""
    if kind == "class":
        if not np.issubdtype(y.dtype, np.integer) or y.size != 1:
            return (f"is {y.dtype} {list(y.shape)}, expected one integer class index "
                    f"0..{n_classes - 1} (the manifest lists {n_classes} classes)")
        c = int(y.reshape(()))
        if not 0 <= c < n_classes and c != UNLABELLED_CLASS:
            return (f"is class {c}, outside 0..{n_classes - 1} (the manifest lists "
                    f"{n_classes} classes)")
    elif kind == "multilabel" and y.shape != (n_classes,):
        return (f"is a multi-hot vector of shape {list(y.shape)}, expected [{n_classes}] (the "
                f"manifest lists {n_classes} classes)")
    return None


def _verify_manifest(path: Path) -> tuple[Manifest | None, list[Problem]]:
    """The manifest of dataset folder ``path`` for :func:`verify`; one that is there and
    readable but damaged (invalid JSON, fields that disagree with each other) is a
    :class:`Problem` at ``manifest.json`` (exit 1: damage verify found), not an error. No
    manifest there (not a dataset) or one that cannot be read still raises (exit 2)."""
    try:
        return load_manifest(path), []
    except ManifestError as e:
        where = path / MANIFEST_NAME
        if not where.is_file() or not os.access(where, os.R_OK):
            raise
        return None, [Problem(str(where), str(e).removeprefix(f"{where}: "))]


def verify(path: str | Path, decode: bool = True) -> list[Problem]:
    """Check every shard against the manifest: presence, size, sha256, decodability, shapes,
    sample counts, each sample's ``meta.json`` bands and sensor; also stray temporary or
    unlisted shard files. A damaged manifest is one problem (its shards are not checked).
    Empty list = healthy. ``path`` must be a local folder (:func:`local_dataset`)."""
    path = local_dataset(path, "verify")
    if is_zarr(path):
        return _verify_zarr(path)
    m, problems = _verify_manifest(path)
    if m is None:
        return problems
    listed = {s.name for s in m.shards}
    for stray in sorted(path.glob("*.tar*")):
        if stray.name not in listed:
            problems.append(Problem(str(stray), "shard file not listed in the manifest "
                                    "(interrupted or foreign write)"))
    for s in m.shards:
        f = path / s.name
        if not f.exists():
            problems.append(Problem(str(f), "listed in the manifest but missing"))
            continue
        if f.stat().st_size != s.bytes:
            problems.append(Problem(str(f), f"size {f.stat().st_size} bytes, manifest says {s.bytes}"))
        if file_sha256(f) != s.sha256:
            problems.append(Problem(str(f), "sha256 differs from the manifest (damaged or replaced)"))
        if not decode:
            continue
        n = 0
        try:
            with open(f, "rb") as fh:
                for raw in iter_samples(fh, str(f)):
                    n += 1
                    problems += _check_sample(raw, m, str(f))
        except TarError as e:
            problems.append(Problem(str(f), str(e)))
            continue
        if n != s.samples:
            problems.append(Problem(str(f), f"holds {n} samples, manifest says {s.samples}"))
    return problems


def _verify_zarr(path: Path) -> list[Problem]:
    """Problems of the zarr store ``path``: arrays whose rows are not one per sample key, lost
    chunk files (in a store written with every chunk, see :mod:`.zarr_store`), a ``meta.jsonl``
    without one JSON line per key or recording other bands or sensors than the manifest
    (:func:`_zarr_meta_problems`), samples that cannot be read, labels outside the manifest's
    classes (:func:`_check_label`, as for shards). A store built before chunks were all
    written gets a logged note instead: its lost chunks read as zeros and cannot be told from
    all-zero ones."""
    from .zarr_store import ZarrDataset, store_damage

    ds = ZarrDataset(path, check=False)
    labels = ds.manifest.labels
    problems = [Problem(f"{path}/{name}", what)
                for name, what in store_damage(path, ds.arrays, len(ds), ds.complete_chunks)]
    problems += _zarr_meta_problems(path, ds.keys, ds.manifest)
    if not ds.complete_chunks:
        log.warning("%s: built before eofm stored every zarr chunk: a chunk file lost since "
                    "(an interrupted copy or rsync) reads as zeros and cannot be detected; "
                    "rebuild it (eofm-shard build ... --format zarr --overwrite) to make "
                    "verify and readers refuse lost chunks", path)
    for i in range(len(ds)):
        try:
            sample = ds[i]
        except Exception as e:
            problems.append(Problem(f"{path}[{i}]", f"cannot read sample ({e})"))
            continue
        if labels is not None and "label" in sample and (what := _check_label(
                np.asarray(sample["label"]), labels.kind, len(labels.classes))) is not None:
            problems.append(Problem(f"{path}/labels[{i}]", f"sample {sample['__key__']}: "
                                                          f"label {what}"))
    return problems


def _zarr_meta_problems(path: Path, keys: list[str], m: Manifest) -> list[Problem]:
    """Problems of the store's ``meta.jsonl`` (:data:`.zarr_store.META_NAME`, written with
    every store): missing or unreadable, not one line per sample key (a lost line shifts every
    later sample's metadata), a line that is not a JSON object, or one recording other bands
    or another sensor than the manifest (:func:`meta_problems`). Read a line at a time."""
    from .zarr_store import META_NAME

    f = path / META_NAME
    if not f.is_file():
        return [Problem(str(f), f"missing: the store keeps each sample's metadata there, one "
                                f"JSON line per sample ({len(keys)}); restore it or rebuild "
                                "the store (eofm-shard build ... --format zarr --overwrite)")]
    problems: list[Problem] = []
    n = 0
    try:
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                key = keys[n - 1] if n <= len(keys) else None
                try:
                    meta = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as e:
                    problems.append(Problem(f"{f}:{n}", f"sample {key}: not a JSON line ({e})"))
                    continue
                problems += [Problem(f"{f}:{n}", f"sample {key}: {what}")
                             for what in meta_problems(meta, m)]
    except (OSError, UnicodeDecodeError) as e:
        return [*problems, Problem(str(f), f"cannot read it after line {n} ({e})")]
    if n != len(keys):
        problems.append(Problem(str(f), f"{n} lines, expected one per sample: {len(keys)} "
                                        "(lines lost or added); restore it or rebuild the store"))
    return problems


def _sample_arrays(raw: dict, m: Manifest, where: str, valid: bool) -> dict[str, np.ndarray]:
    """The modality arrays (with ``valid`` also ``MOD_valid`` masks) of one raw sample of shard
    ``where``; a member missing, not decoding, or of another shape than the manifest's is a
    ValueError naming the shard, the sample and the modality (not a KeyError or a shape error
    from the statistics without either)."""
    key = raw.get("__key__")
    out: dict[str, np.ndarray] = {}
    for mod in m.modalities:
        data = raw.get(f"{mod}.npy")
        if data is None:
            raise ValueError(f"{where}: sample {key} has no {mod}.npy (the manifest lists "
                             f"modality {mod}); run `eofm-shard verify` for every problem")
        try:
            out[mod] = decode_npy(data)
        except ValueError as e:
            raise ValueError(f"{where}: sample {key}: {mod}.npy {e}") from None
    _check_arrays(out, m, where, key)
    if valid:
        for mod, x in list(out.items()):
            v = raw.get(f"{mod}.valid.npy")
            if v is not None and (what := _check_valid(v, x.shape[1:])) is not None:
                raise ValueError(f"{where}: sample {key}: {mod}.valid.npy {what}")
            out[f"{mod}_valid"] = decode_npy(v) if v is not None else np.ones(x.shape[1:], bool)
    return out


def _check_arrays(arrays: dict[str, np.ndarray], m: Manifest, where: str, key: object) -> None:
    """Each modality array of sample ``key`` is ``(C, H, W)`` with the manifest's band count C
    (and its shape, when it records one); else a ValueError naming where, the sample, the
    modality, the shape found and the manifest's."""
    for mod, info in m.modalities.items():
        x = arrays[mod]
        if x.ndim != 3 or x.shape[0] != len(info.bands) or (
                info.shape and list(x.shape) != info.shape):
            expected = info.shape or f"[{len(info.bands)}, height, width]"
            raise ValueError(f"{where}: sample {key}: {mod} is {list(x.shape)}, the manifest "
                             f"says {expected} ({len(info.bands)} bands); run `eofm-shard "
                             "verify` for every problem")


def iter_arrays(path: str | Path, valid: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Every sample's modality arrays, in shard order (for recomputing statistics); with
    ``valid`` also each modality's ``(H, W)`` mask as ``MOD_valid`` (all true when absent).
    The stored statistics are not read, so damaged ones do not stop it. A sample that does
    not fit the manifest is a ValueError naming its shard and key (:func:`_sample_arrays`)."""
    path = local_dataset(path, "stats")
    if is_zarr(path):
        from .zarr_store import ZarrDataset

        ds = ZarrDataset(path)
        for i in range(len(ds)):
            sample = ds[i]
            out = {k: v for k, v in sample.items()
                   if k in ds.modalities or (valid and k.removesuffix("_valid") in ds.modalities)}
            _check_arrays(out, ds.manifest, f"{path}[{i}]", sample.get("__key__"))
            yield out
        return
    m = load_manifest(path, check_stats=False)
    for s in m.shards:
        with open(path / s.name, "rb") as fh:
            for raw in iter_samples(fh, str(path / s.name)):
                yield _sample_arrays(raw, m, str(path / s.name), valid)


def _stats_problem(folder: Path, m: Manifest, write: bool) -> str | None:
    """Why recomputing the statistics of the tar dataset ``folder`` (manifest ``m``) would fail
    only after every shard was read, or None: with ``write`` a folder that cannot be written
    (read-only), or a shard the manifest lists that is missing."""
    if write and (reason := unwritable_reason(folder)):
        return (f"{folder / MANIFEST_NAME}: cannot write the recomputed statistics: {reason}; "
                "make the folder writable, or run without --write to print them")
    missing = [s.name for s in m.shards if not (folder / s.name).is_file()]
    if not missing:
        return None
    more = f" (and {len(missing) - 1} more of its {len(m.shards)})" if len(missing) > 1 else ""
    return (f"{folder / missing[0]}: missing{more}: a shard the manifest lists; restore it, or "
            "rebuild the dataset (eofm-shard build ... --overwrite)")


def recompute_stats(path: str | Path, write: bool = False) -> Manifest:
    """Recompute per-band statistics from the pixels; with ``write`` update the manifest. The
    stored statistics are neither checked nor used (a manifest whose statistics are damaged
    is repaired this way); every other field is checked as always. Refused before any pixel
    is read (:func:`_stats_problem`): ``write`` on a zarr store or an unwritable folder, a
    shard the manifest lists that is missing."""
    path = local_dataset(path, "stats")
    if write and is_zarr(path):
        raise ValueError(f"{path}: --write is supported for tar datasets only (a zarr store's "
                         "statistics are written when it is built: rebuild it with "
                         "`eofm-shard build ... --format zarr`)")
    m = open_manifest(path, check_stats=False)
    folder = Path(path)
    if folder.is_dir() and not is_zarr(folder) and (why := _stats_problem(folder, m, write)):
        raise ValueError(why)
    from .sensors import get_sensor
    from .stacking import stacked_stats_for

    stats = {}
    for name, info in m.modalities.items():
        sensor = get_sensor(info.sensor)
        ranges = [r for b in info.bands if (r := sensor.band(b).hist_range) is not None]
        vr = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None
        stats[name] = (stacked_stats_for(info.sensor, info.bands, info.nodata)
                       or BandStats.create(info.bands, info.dtype, info.nodata, vr))
    clouds_out = bool(m.tile.get("cloud_as_nodata"))  # as the build did (see build.iter_samples)
    for arrays in iter_arrays(path, valid=clouds_out):
        for name in stats:
            stats[name].update(arrays[name], ~arrays[f"{name}_valid"] if clouds_out else None)
    for name, st in stats.items():
        m.modalities[name].stats = st.summary()
    if write:
        m.save(path)
    return m


__all__ = ["MANIFEST_NAME", "Problem", "recompute_stats", "summary", "verify"]
