"""Labelled data for evaluation: one modality of an eofm dataset as a map-style (x, label) set.

:func:`open_labelled` accepts what ``eofm-shard build`` writes (tar shards with a manifest, or a
zarr store) and raw folder-of-GeoTIFF datasets in a layout that carries labels (EuroSAT:
class = folder; BigEarthNet: multi-labels). Raw folders are built through
:func:`eofm.data_shards.build.build` into a temporary dataset, so band naming and ordering live
in one place (the layouts and the sensor registry), then read into memory.

Pixels a build marked invalid (``<modality>.valid.npy`` in shards, ``<modality>_valid`` in a
zarr store: nodata in any of the modality's bands, and with ``--cloud-as-nodata`` the quality
mask's flagged pixels) read as each band's nodata value (:func:`mark_invalid`), the value
convention the probe and fine-tuning already honour: normalisation zeroes them in every band,
as pretraining zeroes invalid pixels, and the band-statistics baseline leaves them out.

Sentinel-2 baseline offsets (``s2_offset``, as ``eofm-shard build --s2-offset``) are removed
when pixels are ingested: a raw folder is built with the setting asked for, while a built
dataset holds pixels its build already corrected (its manifest's ``extra.s2_offset`` records
that decision). A forced offset (``-1000``, ``none``) for a built dataset is therefore refused
unless it is what the build recorded (:func:`check_recorded_s2_offset`), and every
:class:`LabelledData` carries the record of the offset its pixels got (``s2_offset``).

A raw folder is built keeping every labelled image, however much of it is nodata
(``max_nodata`` :data:`RAW_MAX_NODATA`; nodata pixels are masked anyway): a labelled
benchmark must not lose samples. A built dataset holds what its build kept; the tiles its build
dropped (the manifest's ``extra.counters`` ``dropped_nodata``, ``dropped_cloud``) are named in
:attr:`LabelledData.dropped` and in :meth:`LabelledData.describe` (``dropped_samples``).
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.label_sets import get_label_set, remap_multihot
from eofm.data_shards.layouts import LayoutError
from eofm.data_shards.manifest import MANIFEST_NAME, Manifest
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.sensors import get_sensor, joint_processing_level

from .overlap import check_test_images, same_pixels, tile_source  # re-exported: public here too
from .s2_offset_check import applied_s2_offset, check_recorded_s2_offset  # re-exported too

KINDS = ("class", "multilabel")
RAW_MAX_NODATA = 1.0  # a raw labelled folder's build keeps every image, whatever its nodata
DROPPED_PREFIX = "dropped_"  # build counters of tiles screened out (dropped_nodata, ...)
DROP_LIMITS = {"nodata": ("max_nodata", "--max-nodata"), "cloud": ("max_cloud", "--max-cloud")}


class LabelledData:
    """Labelled samples of one modality: ``data[i] -> (x (C,H,W) in the dataset's band order,
    label: int | (K,) multi-hot)``.

    Attributes: ``bands`` (names, stored order), ``sensor`` (registry id), ``classes``,
    ``kind`` ("class" | "multilabel"), ``stats`` ({band: {mean, std, p2, ...}} from the
    manifest), ``nodata`` (per band), ``gsd`` (m), ``size`` ((H, W), None when tiles differ),
    ``labels`` ((N,) int64 or (N, K) uint8), ``keys``, ``source``, ``modality``,
    ``s2_offset`` (the Sentinel-2 offset the pixels got at ingest: :func:`applied_s2_offset`),
    ``dropped`` (the tiles its build screened out, by reason: :func:`dropped_samples`).
    """

    def __init__(self, *, source: str, modality: str, manifest: Manifest, labels: np.ndarray,
                 keys: Sequence[str], pixels: Callable[[int], np.ndarray]) -> None:
        """Wrap a manifest's modality, the label array and a per-index pixel reader."""
        _check_labelled(source, manifest)
        info = manifest.modalities[modality]
        self.source, self.modality = source, modality
        self.sensor: str = info.sensor
        self.sensors: list[str] = list(info.sensor_ids)  # every pooled sensor, ``sensor`` first
        self.bands: list[str] = list(info.bands)
        self.classes: list[str] = list(manifest.labels.classes)
        self.kind: str = manifest.labels.kind
        self.stats: dict[str, dict] = {b: dict(info.stats.get(b, {})) for b in self.bands}
        self.nodata: list[float | None] = list(info.nodata)
        self.gsd: float = float(info.gsd_m)
        self.size: tuple[int, int] | None = (
            (int(info.shape[1]), int(info.shape[2])) if len(info.shape) == 3 else None)
        self.labels: np.ndarray = labels
        self.keys: list[str] = list(keys)
        self.label_set: str | None = None  # set by :meth:`relabel`
        self.s2_offset: dict | None = applied_s2_offset(manifest, modality)
        self.dropped: dict[str, int] = dropped_samples(manifest)
        self.drop_limits: dict[str, Any] = {
            k: manifest.tile[k] for k, _ in DROP_LIMITS.values() if k in manifest.tile}
        self._pixels = pixels
        if len(self.labels) != len(self.keys):
            raise ValueError(f"{source}: {len(self.keys)} samples but {len(self.labels)} labels")

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.keys)

    @property
    def groups(self) -> list[str]:
        """Per sample, the image it was tiled from (its key without ``_r<row>_c<col>``, the
        suffix ``eofm-shard build --tile`` adds); untiled samples are their own group."""
        return [tile_source(k) for k in self.keys]

    def __getitem__(self, i: int) -> tuple[np.ndarray, int | np.ndarray]:
        """(x (C, H, W), label) of sample ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        y = self.labels[i]
        return self._pixels(int(i) % len(self)), (int(y) if self.kind == "class" else y)

    def relabel(self, name: str) -> LabelledData:
        """The same samples with their multi-labels regrouped by the named label set (e.g.
        ``bigearthnet19``: BigEarthNet's 43 CORINE names -> the 19-class nomenclature the
        literature reports); samples left without a label keep an all-zero row."""
        if self.kind != "multilabel":
            raise ValueError(f"{self.source}: label set {name!r} regroups multi-labels; this "
                             f"dataset has {self.kind} labels")
        ls = get_label_set(name)
        out = copy.copy(self)
        out.labels = remap_multihot(self.classes, self.labels, ls, source=self.source)
        out.classes, out.label_set = list(ls.classes), ls.name
        return out

    def pixels(self, i: int) -> np.ndarray:
        """(C, H, W) raw pixels of sample ``i`` in the dataset's band order."""
        return self._pixels(int(i))

    @property
    def units(self) -> str | None:
        """Raw pixel units from the sensor registry, written as eofm.pretrain.data.input_contract
        writes them into a contract, e.g. "DN (x 0.0001 = physical)"; None when bands disagree."""
        sensor = get_sensor(self.sensor)
        units = {b.units_label for b in map(sensor.band, self.bands)}
        return units.pop() if len(units) == 1 else None

    @property
    def processing_level(self) -> str | None:
        """Processing level from the sensor registry, e.g. "L1C"; data pooled from several
        levels joins them ("L1C+L2A"); None when unknown."""
        return joint_processing_level(self.sensors)

    def wavelengths(self, bands: Sequence[str]) -> tuple[list[float], list[float]]:
        """Centre wavelengths and bandwidths (nm) of ``bands`` from the sensor registry."""
        sensor = get_sensor(self.sensor)
        table = [sensor.band(b) for b in bands]
        return [b.center_wavelength_nm for b in table], [b.bandwidth_nm for b in table]

    def dropped_note(self) -> str | None:
        """A line saying how many tiles the build of this dataset dropped and why (those
        samples are not among these); None when it dropped none."""
        if not self.dropped:
            return None
        parts = []
        for reason, n in self.dropped.items():
            key, flag = DROP_LIMITS.get(reason, (None, None))
            limit = self.drop_limits.get(key) if key else None
            why = (f"more than {limit:.0%} {reason} (eofm-shard build {flag} {limit})"
                   if isinstance(limit, (int, float)) else reason)
            parts.append(f"{n} for {why}")
        total = sum(self.dropped.values())
        return (f"{self.source}: its build dropped {total} tile(s) ({'; '.join(parts)}); they "
                f"are not among these {len(self)} samples")

    def describe(self) -> dict:
        """A JSON-ready summary for reports; ``dropped_samples`` (only when the build dropped
        tiles: per reason the count, the limits and a note, :meth:`dropped_note`)."""
        counts = (np.bincount(self.labels, minlength=len(self.classes)) if self.kind == "class"
                  else self.labels.sum(axis=0))
        return {"source": self.source, "modality": self.modality, "sensor": self.sensor,
                "sensors": self.sensors,
                "bands": self.bands, "samples": len(self), "kind": self.kind,
                "classes": self.classes, "class_counts": [int(c) for c in counts],
                "size": list(self.size) if self.size else None, "gsd_m": self.gsd,
                "s2_offset": self.s2_offset,
                **({"label_set": self.label_set,
                    "unlabelled_samples": int((self.labels.sum(axis=1) == 0).sum())}
                   if self.label_set else {}),
                **({"dropped_samples": {**self.dropped, "limits": dict(self.drop_limits),
                                        "note": self.dropped_note()}}
                   if self.dropped else {})}


def align_classes(train: LabelledData, test: LabelledData, *, test_flag: str = "--test-data",
                  train_flag: str = "--data", learner: str = "the probe") -> LabelledData:
    """``test`` with its labels in ``train``'s class order, matched by name (splits built
    apart list only the classes each holds, each in its own order): class indices remapped,
    multi-hot columns moved; ``test`` itself when the lists are equal. Refused (a ValueError
    naming ``test_flag``/``train_flag`` and the build fix) when the label kinds differ or the
    test set has classes the training data lacks (``learner`` could not learn them)."""
    if test.kind != train.kind:
        raise ValueError(f"{test.source}: {test_flag} has {test.kind} labels, {train_flag} "
                         f"{train.source} has {train.kind} labels; expected the same task")
    if test.classes == train.classes:
        return test
    unknown = [c for c in test.classes if c not in train.classes]
    if unknown:
        raise ValueError(f"{test.source}: {test_flag} classes {unknown} are not in "
                         f"{train_flag} {train.source}'s {len(train.classes)} classes; "
                         f"{learner} cannot learn them (build both splits with one list: "
                         "eofm-shard build --classes FILE)")
    index = np.asarray([train.classes.index(c) for c in test.classes], np.int64)
    out = copy.copy(test)
    if test.kind == "class":
        out.labels = index[test.labels]
    else:
        out.labels = np.zeros((len(test), len(train.classes)), test.labels.dtype)
        out.labels[:, index] = test.labels
    out.classes = list(train.classes)
    return out


def _check_labelled(source: str, manifest: Manifest) -> None:
    """Refuse a dataset without class or multilabel labels."""
    if manifest.labels is None or manifest.labels.kind not in KINDS:
        got = manifest.labels.kind if manifest.labels else "none"
        raise ValueError(f"{source}: expected class or multilabel labels, got {got}; build "
                         "the dataset from a layout with labels (e.g. EuroSAT folders)")


def dropped_samples(manifest: Manifest) -> dict[str, int]:
    """The tiles a build screened out, from its manifest's ``extra.counters``: ``{reason:
    count}`` (``dropped_nodata`` -> ``nodata``, ``dropped_cloud`` -> ``cloud``), reasons with
    a count above 0 only; empty when none was dropped or the manifest has no counters."""
    counters = manifest.extra.get("counters")
    if not isinstance(counters, dict):
        return {}
    return {k.removeprefix(DROPPED_PREFIX): int(v) for k, v in sorted(counters.items())
            if k.startswith(DROPPED_PREFIX) and isinstance(v, int) and v > 0}


def pick_modality(source: str, manifest: Manifest, modality: str | None,
                   prefer_bands: Sequence[str] | None) -> str:
    """The modality asked for, the only one, or the one holding most of ``prefer_bands``.

    Refused (ValueError) when ``prefer_bands`` (an encoder's, stacked from several sensors,
    e.g. S2 + S1) lie in several modalities of the dataset (S2 and S1 paired, not stacked):
    the one holding most of them would be read alone, and its missing bands reported as
    absent from the data although the dataset holds them."""
    mods = list(manifest.modalities)
    if modality is not None:
        if modality not in mods:
            raise ValueError(f"{source}: modality {modality!r} not in the dataset (it has {mods})")
        return modality
    if len(mods) == 1 or not prefer_bands:
        return mods[0]
    want = set(prefer_bands)
    best = max(mods, key=lambda m: (len(want & set(manifest.modalities[m].bands)),
                                    -mods.index(m)))
    missing = [b for b in prefer_bands if b not in manifest.modalities[best].bands]
    elsewhere = {m: [b for b in missing if b in manifest.modalities[m].bands]
                 for m in mods if m != best}
    elsewhere = {m: bands for m, bands in elsewhere.items() if bands}
    if elsewhere:
        held = "; ".join(f"{bands} in modality {m}" for m, bands in elsewhere.items())
        raise ValueError(
            f"{source}: the encoder's bands lie in several modalities of the dataset ({held}, "
            f"the others in {best}); the encoder takes them as one input: build the dataset "
            f"with them stacked (eofm-shard build --stack {','.join([best, *elsewhere])}), "
            f"or pick one modality (eofm-probe --modality {best}, eofm-finetune "
            f"data.modality={best}) to evaluate on its bands alone")
    return best


def mark_invalid(x: np.ndarray, valid: np.ndarray | None,
                 nodata: Sequence[float | None]) -> np.ndarray:
    """``x`` (C, H, W) with the pixels where ``valid`` (H, W) is False set to each band's
    ``nodata`` value (NaN for a float band without one), a copy; ``x`` itself when every pixel
    is valid. An integer band without a nodata value keeps its values there (normalisation
    still zeroes the pixel when any other fed band has a nodata value)."""
    if valid is None or valid.all():
        return x
    if valid.shape != x.shape[1:]:
        raise ValueError(f"valid mask: expected shape {x.shape[1:]} (the pixels' H, W), got "
                         f"{valid.shape}")
    out = x.copy()
    floating = np.issubdtype(x.dtype, np.floating)
    for c, nd in enumerate(nodata):
        fill = nd if nd is not None else (np.nan if floating else None)
        if fill is not None:
            out[c][~valid] = fill
    return out


def _labels_array(raw: Sequence[np.ndarray], kind: str, k: int, *, source: str,
                  keys: Sequence[str]) -> np.ndarray:
    """Stack per-sample labels (``raw[i]`` is sample ``keys[i]``'s): (N,) int64 class indices
    in 0..K-1 for kind "class", (N, K) uint8 0/1 for "multilabel", ``k`` the manifest's
    ``labels.classes`` count. A label outside that range (a hand-edited manifest listing fewer
    classes than the labels use, a label of -1) or a multi-hot vector of another length is a
    ValueError naming ``source``, the sample and what was expected, before any model sees it
    (a loss would otherwise fail with a traceback, or a uint8 cast turn -1 into 255)."""
    if kind == "class":
        return np.asarray([_class_index(y, k, source, key)
                           for y, key in zip(raw, keys, strict=True)], np.int64)
    for y, key in zip(raw, keys, strict=True):
        _check_multihot(np.asarray(y), k, source, key)
    return np.stack([np.asarray(y).reshape(k) for y in raw]).astype(np.uint8)


def _class_index(y: Any, k: int, source: str, key: str) -> int:
    """Sample ``key``'s class label ``y`` as an int in 0..k-1; else a ValueError."""
    a = np.asarray(y)
    value = float(a.reshape(-1)[0]) if a.size == 1 and a.dtype.kind in "biuf" else None
    if value is None or not math.isfinite(value) or not value.is_integer():
        raise ValueError(f"{source}: sample {key}: expected one integer class index in "
                         f"0..{k - 1} (manifest labels.classes has {k} classes), got "
                         f"{a.tolist()!r:.80}")
    if not 0 <= value < k:
        raise ValueError(f"{source}: sample {key}: label {int(value)} outside 0..{k - 1} "
                         f"(manifest labels.classes has {k} classes)")
    return int(value)


def _check_multihot(y: np.ndarray, k: int, source: str, key: str) -> None:
    """A ValueError unless sample ``key``'s multi-label ``y`` is K = ``k`` values of 0 or 1."""
    if y.size != k:
        raise ValueError(f"{source}: sample {key}: expected a multi-hot vector of {k} values "
                         f"(manifest labels.classes has {k} classes), got {y.size} values")
    if y.dtype.kind not in "biuf" or not np.isin(y, (0, 1)).all():
        bad = sorted({v for v in y.reshape(-1).tolist() if v not in (0, 1)}, key=str)
        raise ValueError(f"{source}: sample {key}: multi-hot label values {bad!r:.60} "
                         f"outside 0..1 (one 0/1 per class of manifest labels.classes)")


def _from_shards(location: str, source: str, modality: str | None,
                 prefer_bands: Sequence[str] | None,
                 s2_offset: str | None = None) -> LabelledData:
    """Read tar shards into memory (evaluation sets are small), samples in key order
    (:func:`key_order`); ``s2_offset`` (a built dataset's): checked against the build's
    record first (:func:`check_recorded_s2_offset`), None for the raw folder's own build."""
    # "absent": an unlabelled sample (no labels.npy, e.g. of a scene pooled with class
    # folders) reads without a label and is refused below, not filled in as pretraining does
    reader = ShardDataset(location, shuffle_shards=False, rank=0, world_size=1, even=False,
                          errors="strict", missing_labels="absent")
    manifest = reader.manifest
    _check_labelled(source, manifest)
    if s2_offset is not None:
        check_recorded_s2_offset(source, manifest, s2_offset)
    mod = pick_modality(source, manifest, modality, prefer_bands)
    keys, xs, ys = [], [], []
    for s in reader:
        if "label" not in s:
            raise ValueError(f"{source}: sample {s['__key__']} has no labels.npy; expected a "
                             "labelled dataset")
        keys.append(s["__key__"])
        x = np.array(s[mod])  # copy: the shard's memory map is not kept
        xs.append(mark_invalid(x, np.asarray(s[f"{mod}_valid"]).astype(bool),
                               manifest.modalities[mod].nodata))
        ys.append(s["label"])
    order = key_order(keys)
    keys, xs, ys = [keys[i] for i in order], [xs[i] for i in order], [ys[i] for i in order]
    labels = _labels_array(ys, manifest.labels.kind, len(manifest.labels.classes),
                           source=source, keys=keys)
    return LabelledData(source=source, modality=mod, manifest=manifest, labels=labels,
                        keys=keys, pixels=xs.__getitem__)


def key_order(keys: Sequence[str]) -> list[int]:
    """Indices that put ``keys`` in sorted order. Evaluation data is presented in key order,
    whatever order a build wrote it in (``eofm-shard build`` mixes items across shards, by
    ``--order-seed`` and ``--num-writers``): the held-out split and the probe's folds are
    drawn over sample positions, so the same samples give the same split, read from a raw
    folder, shards or a zarr store."""
    return sorted(range(len(keys)), key=keys.__getitem__)


ZARR_IN_MEMORY_BYTES = 2 * 1024**3  # a labelled zarr store up to this size is read whole


def _from_zarr(path: Path, modality: str | None,
               prefer_bands: Sequence[str] | None, s2_offset: str = "auto") -> LabelledData:
    """A zarr store, samples in key order (:func:`key_order`): read whole on first use when
    its pixels take at most :data:`ZARR_IN_MEMORY_BYTES` (evaluation sets are small, and the
    probe reads every sample once per feature pass: statistics, encoder, random inits),
    else lazily, one chunk per sample. ``s2_offset`` is checked against the build's record
    (:func:`check_recorded_s2_offset`)."""
    from eofm.data_shards.zarr_store import UNLABELLED_ATTR, ZarrDataset

    ds = ZarrDataset(path)
    _check_labelled(str(path), ds.manifest)
    check_recorded_s2_offset(str(path), ds.manifest, s2_offset)
    mod = pick_modality(str(path), ds.manifest, modality, prefer_bands)
    if "labels" not in ds.group:
        raise ValueError(f"{path}: the zarr store has no labels array; expected a labelled "
                         "dataset")
    raw = ds.group["labels"][:]
    if len(raw) != len(ds.keys):
        raise ValueError(f"{path}: {len(ds.keys)} samples but {len(raw)} labels")
    if ds.unlabelled:  # as the shards' samples without labels.npy: refused, not read as -1/0
        key = min(ds.keys[r] for r in ds.unlabelled)
        raise ValueError(f"{path}: sample {key} has no label (one of {len(ds.unlabelled)} "
                         f"samples built without one: group attribute {UNLABELLED_ATTR}); "
                         "expected a labelled dataset")
    labels = _labels_array(list(raw), ds.manifest.labels.kind,
                           len(ds.manifest.labels.classes), source=str(path), keys=ds.keys)
    array = ds.group[mod]
    valid = ds.group.get(f"{mod}_valid", None)  # None: no mask array
    nodata = ds.manifest.modalities[mod].nodata
    order = key_order(ds.keys)

    whole: dict[str, np.ndarray] = {}  # the arrays read into memory, on first use
    small = array.nbytes <= ZARR_IN_MEMORY_BYTES

    def read(name: str, arr: Any, j: int) -> np.ndarray:
        if not small:
            return np.asarray(arr[j])
        if name not in whole:
            whole[name] = np.asarray(arr[:])
        return whole[name][j]

    def pixels(i: int) -> np.ndarray:
        j = int(order[i])
        v = None if valid is None else read("valid", valid, j).astype(bool)
        return mark_invalid(read("pixels", array, j), v, nodata)

    return LabelledData(source=str(path), modality=mod, manifest=ds.manifest,
                        labels=labels[order], keys=[ds.keys[i] for i in order],
                        pixels=pixels)


def _raw_build_advice(folder: Path, err: ValueError) -> str:
    """What to do when building raw ``folder`` here failed with ``err``: the options its
    message suggests are ``eofm-shard build``'s, not the reading command's, so build labelled
    shards with them first; one line (a layout's failure gets a EuroSAT-style example)."""
    example = ("--layout eurosat --sensor SENSOR --file-bands B1,B2,... --out DATASET` (class = "
               "folder name)" if isinstance(err, LayoutError) else "OPTIONS --out DATASET`")
    return (f"{folder}: raw folders are read here only as eofm-shard build reads them without "
            "options; options such as --layout, --sensor, --file-bands, --resample and --bands "
            "are eofm-shard build options, not this command's: build labelled shards first, "
            f"e.g. `eofm-shard build {folder} {example}, then pass --data DATASET")


def open_labelled(path: str | Path, *, modality: str | None = None,
                  prefer_bands: Sequence[str] | None = None, layout: str | None = None,
                  progress: bool = True, s2_offset: str = "auto") -> LabelledData:
    """Open labelled data: an ``eofm-shard build`` output (tar shards or zarr) or a raw folder.

    A raw folder (e.g. EuroSAT: ``ROOT/<Class>/*.tif``) is built with the layout detected
    (or ``layout``) into a temporary dataset and read into memory, every image kept however
    much of it is nodata (:data:`RAW_MAX_NODATA`; ``eofm-shard build`` drops a tile over half
    nodata by default: a built dataset's drops are in the result's ``dropped``), Sentinel-2
    baseline offsets removed as ``eofm-shard build --s2-offset`` does (``s2_offset``). A built
    dataset's pixels got their offset at build time: ``s2_offset`` other than ``auto`` is
    refused for one unless its manifest records that very offset
    (:func:`check_recorded_s2_offset`). The offset applied is in the result's ``s2_offset``
    (:func:`applied_s2_offset`). ``modality`` picks one of several modalities; by default the
    only one, or the one holding most of ``prefer_bands``.
    A raw folder whose build fails (its layout needs options such as ``--layout``,
    ``--sensor``, ``--file-bands``: e.g. class folders of 3-band GeoTIFFs; bands that do not
    align without ``--resample`` or ``--bands``) is a ValueError on one line that keeps the
    build's reason and says to build labelled shards with ``eofm-shard build`` first
    (:func:`_raw_build_advice`).
    """
    p = Path(path)
    if not p.exists():
        from eofm.data_shards.remote import redact

        raise ValueError(f"{redact(str(p))}: labelled data not found; expected an eofm dataset "
                         "(tar shards or a .zarr store) or a folder of GeoTIFFs such as EuroSAT's")
    if (p / MANIFEST_NAME).is_file():
        return _from_shards(str(p), str(p), modality, prefer_bands, s2_offset)
    if (p / "zarr.json").is_file():
        return _from_zarr(p, modality, prefer_bands, s2_offset)
    if not p.is_dir():
        raise ValueError(f"{p}: expected a dataset folder, got a file")
    with tempfile.TemporaryDirectory(prefix="eofm-labelled-") as tmp:
        out = Path(tmp) / "dataset"
        try:
            # key order (order_seed None): read whole, nothing to mix (and read back in key
            # order anyway, key_order)
            # every labelled image kept: nodata pixels are masked anyway (mark_invalid), and
            # a benchmark must not lose samples to eofm-shard build's tile screening
            build(BuildConfig(source=str(p), out=str(out), layout=layout, progress=progress,
                              s2_offset=s2_offset, order_seed=None,
                              ingest=IngestOptions(max_nodata=RAW_MAX_NODATA)))
        except ValueError as e:  # its advice (--layout, --resample, --bands...) is the build's
            raise ValueError(f"{e}; {_raw_build_advice(p, e)}") from None
        data = _from_shards(str(out), str(p), modality, prefer_bands)
    return data


__all__ = ["KINDS", "RAW_MAX_NODATA", "LabelledData", "align_classes", "applied_s2_offset",
           "check_recorded_s2_offset", "check_test_images", "dropped_samples", "key_order",
           "mark_invalid", "open_labelled", "pick_modality", "same_pixels", "tile_source"]
