"""The same dataset as a zarr v3 store for random access (evaluation sets, large cubes).

Layout: one array per modality ``(N, C, H, W)`` chunked one sample per chunk (zstd), a
``{modality}_valid`` array ``(N, H, W)``, optional ``labels``/``seg``, and the manifest (minus
the shard list) plus per-sample keys in the group attributes, and each sample's metadata as one
JSON line of ``meta.jsonl`` at the store's top (not a zarr node: zarr warns "Object at
meta.jsonl is not recognized as a component of a Zarr hierarchy" when it lists the group, and
:class:`ZarrDataset` silences exactly that warning). The store is built
under a temporary name (``OUT.tmp``, removed when the build fails) and renamed into place when
complete; an existing store replaced with ``--overwrite`` stays whole until then.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from .manifest import LabelInfo, Manifest, ManifestError, ModalityInfo
from .outputs import out_of_space, write_failure
from .sensors import get_sensor

if TYPE_CHECKING:  # build imports this module lazily
    from .build import BuildConfig, Plan

FLUSH = 64
META_NAME = "meta.jsonl"  # per-sample metadata, one JSON line each, beside the zarr arrays
# zarr's warning for the one non-zarr file the store holds by design (ZarrUserWarning, a
# UserWarning); any other object it does not recognise is still warned about
META_WARNING = rf"Object at {re.escape(META_NAME)} is not recognized as a component"


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
    from .build import iter_samples, new_stats, plan_user_sensors, s1_db_record, tile_record

    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    stats = new_stats(plan)
    counters: dict[str, int] = {}
    shapes: dict[str, set[tuple[int, ...]]] = {}
    arrays: dict[str, zarr.Array] = {}
    buf: dict[str, list[np.ndarray]] = {}
    keys: list[str] = []
    metas: list[dict] = []

    def flush() -> None:
        for name, chunk in buf.items():
            if chunk:
                arrays[name].append(np.stack(chunk), axis=0)
                chunk.clear()

    for s in iter_samples(plan, cfg, plan.items, stats, counters, shapes):
        fields = {**s.arrays, **{f"{k}_valid": v for k, v in s.valid.items()}}
        if s.label is not None:
            fields["labels"] = s.label
        if s.seg is not None:
            fields["seg"] = s.seg
        for name, x in fields.items():
            if name not in arrays:
                arrays[name] = group.create_array(
                    name, shape=(0, *x.shape), chunks=(1, *x.shape), dtype=x.dtype,
                    compressors=ZstdCodec(level=3), fill_value=0)
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
    group.attrs.update({"eofm_manifest": manifest.to_dict(), "keys": keys})
    (tmp / META_NAME).write_text("".join(json.dumps(m, sort_keys=True) + "\n" for m in metas))
    return manifest


def _array_names(group: zarr.Group) -> list[str]:
    """The arrays of an eofm store's group. Listing it makes zarr warn that ``meta.jsonl`` (which
    every eofm store holds, see the module doc) is no zarr node; that one warning is dropped,
    any other is kept."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=META_WARNING, category=UserWarning)
        return list(group.array_keys())


class ZarrDataset:
    """Map-style reader: ``ds[i]`` -> ``{modality: (C,H,W), modality_valid, label?, seg?,
    __key__}``."""

    def __init__(self, path: str | Path, bands: dict[str, list[str]] | None = None) -> None:
        self.path = Path(path)
        try:
            self.group = zarr.open_group(str(self.path), mode="r")
            attrs = dict(self.group.attrs)
            self.manifest = Manifest.from_dict(attrs["eofm_manifest"], source=str(self.path))
        except (KeyError, FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise ValueError(f"{self.path}: not an eofm zarr store ({e})") from None
        self.keys: list[str] = attrs["keys"]
        if not self.keys:  # its manifest's sample_count is 0 for every store: keys count
            raise ManifestError(f"{self.path}: the zarr store holds no samples (no keys), so "
                                "it has no pixels to read and no band statistics: rebuild it "
                                "with `eofm-shard build ... --format zarr`, which says why no "
                                "tile passed the limits")
        self.modalities = list(self.manifest.modalities)
        self.index: dict[str, list[int] | None] = {}
        for mod in self.modalities:
            have = self.manifest.modalities[mod].bands
            want = (bands or {}).get(mod)
            if want:  # any accepted spelling (B4 for B04), as ShardDataset
                sensor = get_sensor(self.manifest.modalities[mod].sensor)
                want = [sensor.canonical(b) for b in want]
            missing = [b for b in want or [] if b not in have]
            if missing:
                raise ValueError(f"{self.path}: modality {mod} has no bands {missing} (has {have})")
            self.index[mod] = [have.index(b) for b in want] if want else None
        self.labels: LabelInfo | None = self.manifest.labels
        # opened once: looking an array up (or listing the group) reads metadata from the store,
        # milliseconds per sample for verify, stats and the readers
        self.arrays = {name: self.group[name] for name in _array_names(self.group)}

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        out: dict = {"__key__": self.keys[i]}
        for mod in self.modalities:
            x = self.arrays[mod][i]
            out[mod] = x[self.index[mod]] if self.index[mod] is not None else x
            out[f"{mod}_valid"] = self.arrays[f"{mod}_valid"][i]
        for extra, name in (("labels", "label"), ("seg", "seg")):
            if extra in self.arrays:
                out[name] = self.arrays[extra][i]
        return out
