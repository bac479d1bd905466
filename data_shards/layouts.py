"""Input layouts: find the samples in a raw archive folder and say which file holds which band.

A layout turns a folder into :class:`SourceItem` objects, each one place (and time) with one
or more modalities, each modality a list of files with the band names they hold in file
order. Detection is by structure; ``--layout NAME`` forces one. Layouts:

- ``eurosat``: ``ROOT/<Class>/*.tif``, 13-band EuroSAT-MS tiles, class from the folder name
  (detected only when class folders hold the rasters directly and nothing else holds any).
  Their band order is B01..B12 then B8A (not ESA order): we name bands, never assume. With
  ``--sensor`` (e.g. ``rgb`` and ``--file-bands R,G,B``) the modality is that sensor's; without
  ``--file-bands``, a sensor lacking one of the 13 bands (``s2_l2a``: no B10) is refused. Hidden,
  ``__*`` and raster-free folders (``.ipynb_checkpoints``, an empty class) are not classes.
- ``bigearthnet``: ``*-S2-*/<patch>/<patch>_B02.tif ...`` and ``*-S1-*/<patch>/<patch>_VV.tif``
  with ``*_labels_metadata.json``; S1 patches are paired with their S2 patch; multi-labels.
  Its sensors are fixed (S2 ``s2_l2a``, S1 ``s1_grd``): any other ``--sensor`` is refused.
- ``per_band``: any leaf folder of one file per band (Sentinel-2 SAFE/SSL4EO ``B2.tif``,
  ``s2_B02.jp2``, Landsat ``l8_B1.tif``, Sentinel-1 ``VV.tif``); the sensor is detected from
  the band set and file names, or forced with ``--sensor``. A Sentinel-2 L2A ``IMG_DATA``
  folder (``R10m/T33UUP_..._B02_10m.jp2``, ``R20m/...``, ``R60m/...``) is one item, each band
  read from its finest resolution.
- ``enmap``: EnMAP products (``*SPECTRAL_IMAGE.TIF``), 224 bands in one file. The processing
  level (product name, ``METADATA.XML``) must be the sensor's (L2A for ``enmap_hsi``): L1B
  (``*SPECTRAL_IMAGE_VNIR/_SWIR.TIF``) and L1C radiance is refused; the XML's per-band values
  are checked and recorded (:mod:`.enmap_metadata`).
- ``multiband``: a folder of multi-band GeoTIFFs (needs ``--sensor``; with an EnMAP sensor the
  products' level and METADATA.XML are checked as in ``enmap``, also for ``array`` inputs). The files' band order
  is declared with ``--file-bands``; without it it is *assumed* to be the sensor's order, which
  the build warns about and records in every sample's ``meta.json`` (``file_bands``,
  ``file_band_order``: ``declared`` or ``assumed_sensor_order``).
- ``array``: ``.npy``/``.npz``/``.mat``/``.zarr`` files (or one such file or ``.zarr`` store
  as the input), same rules as ``multiband``.

``--file-bands`` (read by the eurosat, enmap, multiband and array layouts; refused for the
per_band and bigearthnet layouts, whose files each hold one band named by the file) names
resolve through the sensor's aliases, any case (``b4`` is ``B04``); a name the sensor lacks,
or one named twice, is refused, listing the sensor's bands (an empty one, as an empty
``--sensor``, by :class:`LayoutOptions`). PNG/JPEG pictures are not read: the "found nothing"
errors say so and how to convert them (GeoTIFF or ``.npy``, ``--sensor rgb``).

Quality masks beside the bands are never bands: ``per_band`` folders attach an ``SCL``,
Major-TOM ``cloud_mask``, Landsat ``BQA`` or Collection 2 ``QA_PIXEL`` file (a folder with
both Landsat kinds mixes collections and is refused; ``QA_RADSAT``/``SR_QA_AEROSOL`` are
never masks), ``enmap`` products their
``QL_QUALITY_CLOUD``/``QL_QUALITY_CLOUDSHADOW`` layers, as the modality's ``quality``
(decoded by :mod:`.quality`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .enmap_metadata import EnmapProductError, EnmapProducts, expected_level
from .quality import QualitySource, quality_kind
from .raster_io import RASTER_SUFFIXES
from .s2_baseline import OffsetDecision
from .sensors import Sensor, get_sensor

log = logging.getLogger(__name__)

EUROSAT_FILE_BANDS = [
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A",
]
# the band name ends the file stem, optionally followed by the resolution Sentinel-2 L2A
# products put there (``T33UUP_20200101T100000_B02_10m.jp2``). Landsat Collection 2 Level-2
# names keep their ``SR_``/``ST_`` prefix (``LC08_L2SP_..._SR_B4.TIF`` is band SR_B4, not the
# Level-1 DN band B4: another product with another scaling).
BAND_FILE_RE = re.compile(r"(?:^|[_\-])((?:SR_|ST_)?B\d{1,2}A?|B8A|VV|VH|HH|HV)"
                          r"(?:_(?:10|20|60)m)?$", re.IGNORECASE)
# resolution folders of a Sentinel-2 L2A ``IMG_DATA`` folder (``R10m``, ``R20m``, ``R60m``)
RESOLUTION_DIR_RE = re.compile(r"^R(\d+)m$", re.IGNORECASE)


class LayoutError(ValueError):
    """An input folder that does not match the layout it was taken for."""


@dataclass
class ModalitySource:
    """The files holding one modality of one item: ``[(path, band names in the file)]``, for
    Sentinel-2 the DN offset correction the build decided (see :mod:`.s2_baseline`), and the
    quality/cloud mask shipped beside the bands, if any (see :mod:`.quality`)."""

    sensor: str
    files: list[tuple[Path, list[str]]]
    correction: OffsetDecision | None = None
    quality: QualitySource | None = None


@dataclass
class SourceItem:
    """One place (and time): its modalities, label and descriptive metadata."""

    key: str
    modalities: dict[str, ModalitySource]
    label: str | list[str] | None = None
    seg: Path | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class LayoutOptions:
    """User choices that layouts honour."""

    sensor: str | None = None
    file_bands: list[str] | None = None
    seg_dir: Path | None = None

    def __post_init__(self) -> None:
        """Refuse an empty ``--sensor`` or ``--file-bands`` (or an empty entry of it): each
        would otherwise be taken as not given, the sensor detected and the sensor's order
        assumed, without a word."""
        if self.sensor is not None and not str(self.sensor).strip():
            raise ValueError(f"--sensor: expected a sensor id (e.g. s2_l1c, s2_l2a, s1_grd, "
                             f"landsat8_oli_tirs, enmap_hsi, rgb), got {self.sensor!r}")
        if self.file_bands is not None:
            names = [str(b).strip() for b in self.file_bands]
            if not names or not all(names):
                raise ValueError(f"--file-bands: expected band names in file order, separated "
                                 f"by commas (e.g. B04,B03,B02), got "
                                 f"{','.join(map(str, self.file_bands))!r}")


def safe_key(s: str) -> str:
    """``s`` with every character outside ``[A-Za-z0-9_-]`` replaced by ``_`` (a sample key)."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", s)


def _rasters(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)


def _ignored_dir(d: Path) -> bool:
    """Folders that are never inputs: hidden (``.ipynb_checkpoints``) or ``__pycache__``-like."""
    return d.name.startswith((".", "__"))


def _resolution_dirs(folder: Path) -> list[Path]:
    """The ``R10m``/``R20m``/``R60m`` children of a Sentinel-2 L2A ``IMG_DATA`` folder, finest
    first (empty for any other folder)."""
    found = [(int(m.group(1)), d) for d in folder.iterdir()
             if d.is_dir() and (m := RESOLUTION_DIR_RE.match(d.name))]
    return [d for _, d in sorted(found)]


def _band_of(path: Path) -> str | None:
    m = BAND_FILE_RE.search(path.stem)
    return m.group(1).upper() if m else None


# ---------------------------------------------------------------- eurosat
def _class_dirs(root: Path) -> list[Path]:
    """Sub-folders of ``root`` that hold rasters directly, sorted; hidden, ``__*`` and
    raster-free folders (an empty class, ``.ipynb_checkpoints``) are not classes."""
    return sorted(d for d in root.iterdir()
                  if d.is_dir() and not _ignored_dir(d) and _rasters(d))


def _tiff_band_count(path: Path) -> int | None:
    """Bands of a GeoTIFF from its header (as :func:`.raster_io.read_raster` reads them);
    None for other formats and unreadable files (nothing to judge by)."""
    if path.suffix.lower() not in {".tif", ".tiff"}:
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page, shape = tf.pages[0], tf.series[0].shape
            contig = page.samplesperpixel > 1 and page.planarconfig == 1
    except Exception:  # tifffile raises many types for damaged files: the build names them
        return None
    return int(shape[-1] if contig else shape[0] if len(shape) == 3 else 1)


def _is_eurosat(root: Path) -> bool:
    """Class folders of 13-band rasters, nothing else holding rasters: at least one sub-folder
    holds rasters directly; no raster lies loose in ``root``; no other sub-folder holds rasters
    further down (an ``aux/x/*.tif`` tree is not a class); no class folder's raster is named
    after a band (those are per-band folders); and the first GeoTIFF of every class has the
    13 bands of EuroSAT-MS (the names B01..B12,B8A would otherwise be pinned on other data).
    Hidden and ``__*`` folders and raster-free ones (an empty class) are ignored."""
    classes = _class_dirs(root)
    if not classes or _rasters(root):
        return False
    others = [d for d in root.iterdir() if d.is_dir() and not _ignored_dir(d) and d not in classes]
    if any(p.suffix.lower() in RASTER_SUFFIXES for d in others for p in d.rglob("*")):
        return False
    if any(_band_of(f) is not None for d in classes for f in _rasters(d)):
        return False
    counts = {_tiff_band_count(_rasters(d)[0]) for d in classes} - {None}
    return counts <= {len(EUROSAT_FILE_BANDS)}


def _check_eurosat_sensor(root: Path, sensor: Sensor) -> None:
    """Refuse a ``--sensor`` that lacks some of the 13 EuroSAT-MS file bands when the files'
    bands are not declared (``--file-bands``): ``s2_l2a`` has no B10, which would be dropped
    without a word and the L1C (top-of-atmosphere) pixels labelled L2A."""
    lacking = [b for b in EUROSAT_FILE_BANDS if _canon(sensor, b) is None]
    if not lacking:
        return
    first = next((f for d in _class_dirs(root) for f in _rasters(d)), None)
    if first is None:  # no file: the layout's "found no input files" says what it reads
        return
    count = _tiff_band_count(first)
    if count is not None and count != len(EUROSAT_FILE_BANDS):
        return  # not EuroSAT-MS files: reading them against the 13 names fails, naming them
    raise LayoutError(
        f"{root}: --sensor {sensor.id}: the EuroSAT-MS files hold {len(EUROSAT_FILE_BANDS)} "
        f"bands (Sentinel-2 L1C, with B10; e.g. {first}), "
        f"sensor {sensor.id} has {len(sensor.band_names)} (no {','.join(lacking)}, which "
        "would be dropped); build them with --sensor s2_l1c (or declare the files' bands in "
        "file order with --file-bands)")


def _eurosat(root: Path, opts: LayoutOptions) -> list[SourceItem]:
    sensor = opts.sensor or "s2_l1c"
    if opts.file_bands is None:
        _check_eurosat_sensor(root, get_sensor(sensor))
    bands = declared_file_bands(root, get_sensor(sensor), opts.file_bands) or EUROSAT_FILE_BANDS
    items = []
    for d in _class_dirs(root):
        for f in _rasters(d):
            items.append(SourceItem(
                safe_key(f"{d.name}_{f.stem}"),
                {get_sensor(sensor).modality: ModalitySource(sensor, [(f, bands)])},
                label=d.name, meta={"source": str(f)},
            ))
    return items


# ---------------------------------------------------------------- bigearthnet
# the sensor each BigEarthNet modality is read as (BigEarthNet-S2 is L2A, BigEarthNet-S1 GRD)
BIGEARTHNET_SENSORS = {"s2": "s2_l2a", "s1": "s1_grd"}


def _is_bigearthnet(root: Path) -> bool:
    return next(root.rglob("*_labels_metadata.json"), None) is not None


def _per_band_files(folder: Path) -> dict[str, Path]:
    """Band name -> file of a per-band folder. A Sentinel-2 L2A ``IMG_DATA`` folder (children
    ``R10m``/``R20m``/``R60m``) is one folder whose bands each come from their finest
    resolution (``B02`` from ``R10m``, ``B05`` from ``R20m``, ``B01`` from ``R60m``)."""
    res = _resolution_dirs(folder)
    if res:
        out: dict[str, Path] = {}
        for sub in res:  # finest first: a band keeps its finest file
            for b, f in _per_band_files(sub).items():
                out.setdefault(b, f)
        return out
    out = {}
    for f in _rasters(folder):
        b = _band_of(f)
        if b is not None:
            out[b] = f
    return out


def _bigearthnet(root: Path, opts: LayoutOptions) -> list[SourceItem]:
    s2: dict[str, tuple[Path, dict]] = {}
    s1: dict[str, tuple[Path, dict]] = {}
    for js in sorted(root.rglob("*_labels_metadata.json")):
        try:
            meta = json.loads(js.read_text())
        except json.JSONDecodeError as e:
            raise LayoutError(f"{js}: labels file is not valid JSON ({e})") from None
        if not isinstance(meta.get("labels"), list):
            raise LayoutError(f"{js}: field 'labels' expected a list of class names, got "
                              f"{type(meta.get('labels')).__name__}")
        (s1 if "corresponding_s2_patch" in meta else s2)[js.parent.name] = (js.parent, meta)
    if not s2:
        raise LayoutError(f"{root}: bigearthnet layout needs S2 patch folders, found none")
    s2_sensor, s1_sensor = (get_sensor(BIGEARTHNET_SENSORS[m]) for m in ("s2", "s1"))
    paired = {m["corresponding_s2_patch"]: (d, m) for d, m in s1.values()}
    items = []
    for name, (folder, meta) in sorted(s2.items()):
        mods = {"s2": _band_files(folder, s2_sensor)}
        info = {"source": str(folder), "acquisition_time": meta.get("acquisition_date"),
                "tile_source": meta.get("tile_source")}
        if name in paired:
            s1_folder, s1_meta = paired.pop(name)
            if sorted(s1_meta["labels"]) != sorted(meta["labels"]):
                raise LayoutError(f"{s1_folder}: labels differ from its S2 patch {folder}")
            mods["s1"] = _band_files(s1_folder, s1_sensor)
            info["s1_source"] = str(s1_folder)
            info["s1_acquisition_time"] = s1_meta.get("acquisition_time")
        items.append(SourceItem(safe_key(name), mods, label=list(meta["labels"]), meta=info))
    if paired:
        raise LayoutError(
            f"{root}: S1 patches name S2 patches that are missing: {sorted(paired)}"
        )
    return items


def _band_files(folder: Path, sensor: Sensor) -> ModalitySource:
    found = _per_band_files(folder)
    files, missing = [], []
    for band in sensor.band_names:
        path = next((p for b, p in found.items() if _canon(sensor, b) == band), None)
        if path is None:
            missing.append(band)
        else:
            files.append((path, [band]))
    if missing:
        raise LayoutError(
            f"{folder}: missing band files for {sensor.id}: {missing} (found {sorted(found)})"
        )
    return ModalitySource(sensor.id, files)


def declared_file_bands(root: Path, sensor: Sensor,
                        names: Sequence[str] | None) -> list[str] | None:
    """``--file-bands`` as ``sensor``'s canonical band names (aliases and any case accepted,
    as ``--bands`` accepts them); None when not given. A name the sensor does not have, or a
    band named twice, is a LayoutError naming them and listing the sensor's bands: a file
    band without a known name would otherwise be dropped without a word."""
    if names is None:
        return None
    if not names:
        raise LayoutError(f"{root}: --file-bands: expected band names in file order "
                          f"(e.g. {','.join(sensor.band_names[:3])}), got none")
    try:
        return [sensor.bands[i].name for i in sensor.indices(list(names))]
    except ValueError as e:
        raise LayoutError(f"{root}: --file-bands {','.join(names)}: {e}") from None


def _canon(sensor: Sensor, name: str) -> str | None:
    try:
        return sensor.canonical(name)
    except ValueError:
        return None


# ---------------------------------------------------------------- per_band
PER_BAND_MASKS = ("s2_scl", "majortom_cloud", "landsat_bqa",
                  "landsat_qa_pixel")  # preference when several
LANDSAT_MASKS = ("landsat_bqa", "landsat_qa_pixel")  # one product has one of them, not both


def _folder_quality(folder: Path) -> QualitySource | None:
    """The quality mask file of a per-band folder (SCL, Major-TOM cloud_mask, Landsat BQA or
    Collection 2 QA_PIXEL). A Collection 1 ``BQA`` beside a Collection 2 ``QA_PIXEL`` means
    two products share the folder (their bands would too): LayoutError naming both."""
    found: dict[str, Path] = {}
    for sub in _resolution_dirs(folder) or [folder]:  # L2A: SCL from R20m before R60m
        for f in _rasters(sub):
            if (k := quality_kind(f)) in PER_BAND_MASKS:
                found.setdefault(k, f)
    if all(k in found for k in LANDSAT_MASKS):
        raise LayoutError(f"{folder}: a Landsat Collection 1/Pre-Collection mask "
                          f"({found['landsat_bqa'].name}) and a Collection 2 mask "
                          f"({found['landsat_qa_pixel'].name}) in one folder: expected one "
                          "Landsat product per folder; put each product in its own folder")
    kind = next((k for k in PER_BAND_MASKS if k in found), None)
    return None if kind is None else QualitySource(kind, [found[kind]])


def _leaf_band_dirs(root: Path) -> list[Path]:
    """Folders holding one file per band (an L2A ``IMG_DATA`` folder stands for its
    ``R10m``/``R20m``/``R60m`` children, which are not items of their own)."""
    dirs = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    return [d for d in dirs
            if not (d != root and RESOLUTION_DIR_RE.match(d.name) and _resolution_dirs(d.parent))
            and len(_per_band_files(d)) >= 2]


def _is_per_band(root: Path) -> bool:
    return bool(_leaf_band_dirs(root))


def detect_sensor(folder: Path, bands: Sequence[str]) -> str:
    """Sensor id from a folder's band set and file names (e.g. ``l8_`` means Landsat-8)."""
    names = {b.upper() for b in bands}
    stems = " ".join(p.name.lower() for p in folder.iterdir())
    if names <= {"VV", "VH", "HH", "HV"}:
        return "s1_grd"
    if any(n.startswith(("SR_", "ST_")) for n in names):  # Landsat Collection 2 Level-2
        if not all(n.startswith(("SR_", "ST_")) for n in names):
            raise LayoutError(f"{folder}: Landsat Level-2 files (SR_B*/ST_B*) mixed with other "
                              f"band files {sorted(names)}; put each product in its own folder")
        if re.search(r"(^|[^a-z])(l9|lc09)", stems):
            return "landsat9_c2l2"
        if re.search(r"(^|[^a-z])(l8|lc08|lc8)", stems):
            return "landsat8_c2l2"
        raise LayoutError(f"{folder}: Landsat Level-2 band files {sorted(names)} but no LC08/LC09 "
                          "product name (Landsat 4-7 number their bands differently); pass "
                          "--sensor")
    if re.search(r"(^|[^a-z])(l8|lc08|lc8)", stems):
        return "landsat8_oli_tirs"
    if re.search(r"(^|[^a-z])(l9|lc09)", stems):
        return "landsat9_oli_tirs"
    if "B10" in names and ("B8A" in names or len(names) >= 13):
        return "s2_l1c"
    if "B8A" in names or "B12" in names:
        return "s2_l2a"
    raise LayoutError(f"{folder}: cannot tell the sensor from bands {sorted(names)}; "
                      "pass --sensor")


def _per_band(root: Path, opts: LayoutOptions) -> list[SourceItem]:
    items = []
    for d in _leaf_band_dirs(root):
        found = _per_band_files(d)
        sensor = get_sensor(opts.sensor or detect_sensor(d, list(found)))
        files, unknown = [], []
        for b, p in sorted(found.items()):
            c = _canon(sensor, b)
            if c is None:
                unknown.append(b)
            else:
                files.append((p, [c]))
        if unknown:
            raise LayoutError(f"{d}: files for bands {unknown} that sensor {sensor.id} does not "
                              f"have (its bands: {sensor.band_names})")
        rel = d.relative_to(root).as_posix() if d != root else root.name
        meta = {"source": str(d)}
        if (d / "metadata.json").exists():
            meta["source_metadata"] = json.loads((d / "metadata.json").read_text())
        items.append(SourceItem(safe_key(rel), {sensor.modality: ModalitySource(
            sensor.id, files, quality=_folder_quality(d))}, meta=meta))
    return items


# ---------------------------------------------------------------- enmap
# L1C/L2A ship one SPECTRAL_IMAGE, L1B one per detector (found so that they can be refused)
ENMAP_IMAGE_GLOBS = ("*SPECTRAL_IMAGE.TIF", "*SPECTRAL_IMAGE_VNIR.TIF", "*SPECTRAL_IMAGE_SWIR.TIF")


def _enmap_images(root: Path) -> list[Path]:
    return sorted({f for g in ENMAP_IMAGE_GLOBS for f in root.rglob(g)})


def _is_enmap(root: Path) -> bool:
    return any(next(root.rglob(g), None) is not None for g in ENMAP_IMAGE_GLOBS)


ENMAP_MASK_LAYERS = ("QL_QUALITY_CLOUD", "QL_QUALITY_CLOUDSHADOW")


def _enmap(root: Path, opts: LayoutOptions) -> list[SourceItem]:
    sensor = get_sensor(opts.sensor or "enmap_hsi")
    bands = declared_file_bands(root, sensor, opts.file_bands) or sensor.band_names
    items = []
    products = EnmapProducts(sensor, list(bands))
    for f in _enmap_images(root):
        try:
            product = products.check(f)
        except EnmapProductError as e:
            raise LayoutError(str(e)) from None
        key = f.parent.name if f.parent != root else f.stem
        key += f.stem[-5:] if f.stem.endswith(("_VNIR", "_SWIR")) else ""
        m = re.search(r"_(\d{8}T\d{6})Z", f.name)
        ql = [q for layer in ENMAP_MASK_LAYERS
              if (q := f.with_name(f.name.replace("SPECTRAL_IMAGE", layer))).exists()]
        quality = QualitySource("enmap_ql", ql) if ql else None
        items.append(SourceItem(safe_key(key[-60:]), {"hsi": ModalitySource(sensor.id, [(f, bands)],
                                                                            quality=quality)},
                                meta={"source": str(f), "acquisition_time": m.group(1) if m else None,
                                      "enmap_product": product}))
    products.warn()
    return items


# ---------------------------------------------------------------- multiband / array
ARRAY_SUFFIXES = {".npy", ".npz", ".mat", ".zarr"}


def _files(root: Path, suffixes: set[str]) -> list[Path]:
    """The input files under ``root``; ``root`` itself when it is one (a file, or a ``.zarr``
    store, which is a folder)."""
    if root.is_file() or root.suffix.lower() == ".zarr":
        return [root] if root.suffix.lower() in suffixes else []
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes
                  and not any(_ignored_dir(d) for d in p.relative_to(root).parents
                              if d != Path(".")))


def _flat(suffixes: set[str], name: str) -> Callable[[Path, LayoutOptions], list[SourceItem]]:
    def build(root: Path, opts: LayoutOptions) -> list[SourceItem]:
        if opts.sensor is None:
            hint = ""
            if name == "multiband" and root.is_dir() and _class_dirs(root):
                hint = (" (class folders of multi-band rasters, e.g. EuroSAT-MS: pass --layout "
                        "eurosat, which knows their band order B01..B12,B8A)")
            raise LayoutError(f"{root}: the {name} layout needs --sensor (e.g. s2_l2a); "
                              f"give the files' band order with --file-bands unless it is "
                              f"the sensor's own (then it is assumed, with a warning){hint}")
        sensor = get_sensor(opts.sensor)
        declared_bands = declared_file_bands(root, sensor, opts.file_bands)
        bands = declared_bands or sensor.band_names
        declared = declared_bands is not None
        order = {"file_bands": list(bands),
                 "file_band_order": "declared" if declared else "assumed_sensor_order"}
        # an EnMAP sensor reads its own processing level whichever layout finds the files: a
        # forced --layout must not let L1B/L1C radiance through as L2A reflectance
        enmap = EnmapProducts(sensor, list(bands)) if expected_level(sensor) else None
        items = []
        for f in _files(root, suffixes):
            if opts.seg_dir is not None and f.is_relative_to(opts.seg_dir):
                continue
            seg = None
            if opts.seg_dir is not None:
                seg = next(iter(sorted(opts.seg_dir.glob(f.stem + ".*"))), None)
                if seg is None:
                    raise LayoutError(f"{f}: no segmentation raster {opts.seg_dir}/{f.stem}.*")
            rel = Path(f.name) if f == root else f.relative_to(root)
            meta = {"source": str(f), **order}
            if enmap is not None:
                try:
                    meta["enmap_product"] = enmap.check(f)
                except EnmapProductError as e:
                    raise LayoutError(str(e)) from None
            items.append(SourceItem(safe_key(rel.with_suffix("").as_posix()),
                                    {sensor.modality: ModalitySource(sensor.id, [(f, bands)])},
                                    seg=seg, meta=meta))
        if enmap is not None:
            enmap.warn()
        if items and not declared and len(bands) > 1:
            log.warning("%s: %s files are read as holding %s bands in the sensor's order %s; "
                        "nothing in the files says so: if they store another order (EuroSAT-MS "
                        "stores B01..B12,B8A) pass --file-bands", root, name, sensor.id,
                        ",".join(bands))
        return items
    return build


def _is_array(root: Path) -> bool:
    return bool(_files(root, ARRAY_SUFFIXES))


def _is_multiband(root: Path) -> bool:
    return bool(_files(root, {".tif", ".tiff"}))


LAYOUTS: dict[str, tuple[Callable[[Path], bool], Callable[[Path, LayoutOptions], list[SourceItem]]]] = {
    "bigearthnet": (_is_bigearthnet, _bigearthnet),
    "enmap": (_is_enmap, _enmap),
    "eurosat": (_is_eurosat, _eurosat),
    "per_band": (_is_per_band, _per_band),
    "multiband": (_is_multiband, _flat({".tif", ".tiff"}, "multiband")),
    "array": (_is_array, _flat(ARRAY_SUFFIXES, "array")),
}


# the layouts that pair each input file with LayoutOptions.seg_dir/<stem>.*
SEG_DIR_LAYOUTS = ("multiband", "array")
# the layouts whose files hold several bands, in the order LayoutOptions.file_bands declares
FILE_BANDS_LAYOUTS = ("eurosat", "enmap", "multiband", "array")

# what each layout reads, for "found nothing" messages
LAYOUT_INPUTS = {
    "bigearthnet": "*_labels_metadata.json beside per-band .tif patch folders",
    "enmap": "*SPECTRAL_IMAGE.TIF files (L1B: *SPECTRAL_IMAGE_VNIR/_SWIR.TIF)",
    "eurosat": f"class folders of {'/'.join(sorted(RASTER_SUFFIXES))} rasters",
    "per_band": "folders of one .tif/.jp2 file per band (B02.tif, VV.tif, ...)",
    "multiband": ".tif/.tiff files",
    "array": f"{'/'.join(sorted(ARRAY_SUFFIXES))} files",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}  # pictures without georeferencing: not read


def _image_note(root: Path) -> str:
    """A note on the PNG/JPEG files under ``root`` (not supported, and how to convert them);
    empty when there are none."""
    if root.is_file():
        found = [root] if root.suffix.lower() in IMAGE_SUFFIXES else []
    else:
        found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        return ""
    return (f". It holds {len(found)} PNG/JPEG file(s) (e.g. {found[0]}), which eofm-shard does "
            "not read: convert them to GeoTIFF (e.g. `gdal_translate -of GTiff x.png x.tif`) "
            "and build with --layout multiband --sensor rgb, or to .npy arrays "
            "(`np.save('x.npy', np.asarray(PIL.Image.open('x.png')))`) and build with "
            "--layout array --sensor rgb; class folders of either keep their labels with "
            "--layout eurosat --sensor rgb --file-bands R,G,B")


def detect_layout(root: Path) -> str:
    """First layout (in the order of ``LAYOUTS``) whose structure matches ``root``."""
    if root.suffix.lower() == ".zarr":  # one array store (a folder)
        return "array"
    if root.is_dir():
        for name, (probe, _) in LAYOUTS.items():
            if probe(root):
                return name
    elif root.suffix.lower() in {".npy", ".npz", ".mat"}:
        return "array"
    elif root.suffix.lower() in {".tif", ".tiff"}:
        return "multiband"
    searched = ", ".join(f"{k}: {v}" for k, v in LAYOUT_INPUTS.items())
    raise LayoutError(f"{root}: no known input layout found (searched for {searched}); "
                      f"pass --layout to force one{_image_note(root)}")


def discover(root: str | Path, layout: str | None = None,
             opts: LayoutOptions | None = None) -> tuple[str, list[SourceItem]]:
    """Find every item under ``root``; returns the layout used and the items, sorted by key
    (a stable starting point: a shard build writes them in a seeded random order,
    :func:`.build.write_order`)."""
    root = Path(root)
    if not root.exists():
        reason = _missing_reason(root)
        raise LayoutError(f"{root}: input {reason}")
    opts = opts or LayoutOptions()
    name = layout or detect_layout(root)
    if name not in LAYOUTS:
        raise LayoutError(f"unknown layout {name!r}; expected one of {', '.join(LAYOUTS)}")
    check_seg_dir(opts.seg_dir, name, root)
    check_file_bands(opts.file_bands, name, root)
    check_layout_sensor(opts.sensor, name, root)
    items = LAYOUTS[name][1](root, opts)
    if not items:
        raise LayoutError(f"{root}: the {name} layout found no input files (it reads "
                          f"{LAYOUT_INPUTS[name]}){_image_note(root)}")
    check_unique_keys(items, f"{root}: several inputs map to the same sample key")
    return name, sorted(items, key=lambda i: i.key)


def _missing_reason(path: Path) -> str:
    """Why ``path``, which does not exist, cannot be read: ``"not found"``, or that it is a
    symlink loop or a broken symlink (both also fail ``exists()``)."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return ("is a symlink loop (its symlinks point at each other and never reach a file "
                    "or folder)")
    if path.is_symlink():
        return f"is a broken symlink (to {os.readlink(path)}, which does not exist)"
    return "not found"


def check_seg_dir(seg_dir: Path | None, layout: str, root: Path) -> None:
    """Refuse a ``--seg-dir`` (``LayoutOptions.seg_dir``) that is not a folder, or given for a
    layout that does not read one (it would be ignored and no segmentation written)."""
    if seg_dir is None:
        return
    seg_dir = Path(seg_dir)
    if not seg_dir.is_dir():
        why = "is not a folder" if seg_dir.exists() else _missing_reason(seg_dir)
        why = "does not exist" if why == "not found" else why
        raise LayoutError(f"--seg-dir: expected a folder of segmentation rasters, got "
                          f"{seg_dir}, which {why}")
    if layout not in SEG_DIR_LAYOUTS:
        raise LayoutError(f"--seg-dir: the {layout} layout (of {root}) does not read "
                          f"segmentation rasters; only the {' and '.join(SEG_DIR_LAYOUTS)} "
                          f"layouts use --seg-dir (force one with --layout, or drop --seg-dir), "
                          f"got --seg-dir {seg_dir}")


def check_file_bands(file_bands: Sequence[str] | None, layout: str, root: Path) -> None:
    """Refuse ``--file-bands`` (``LayoutOptions.file_bands``) for a layout that names each
    band by its own file (``per_band``: ``B02.tif``; ``bigearthnet``): it would be ignored."""
    if file_bands is None or layout in FILE_BANDS_LAYOUTS:
        return
    raise LayoutError(f"--file-bands: the {layout} layout (of {root}) names each band by its "
                      f"file (B02.tif, VV.tif, ...), so there is no file band order to declare; "
                      f"only the {', '.join(FILE_BANDS_LAYOUTS)} layouts read --file-bands "
                      f"(drop it, or force one of those with --layout), got --file-bands "
                      f"{','.join(file_bands)}")


def check_layout_sensor(sensor: str | None, layout: str, root: Path) -> None:
    """Refuse a ``--sensor`` (``LayoutOptions.sensor``) that a layout with fixed sensors would
    ignore: ``bigearthnet`` reads its S2 bands as ``s2_l2a`` and its S1 bands as ``s1_grd``
    whatever is asked, so only those ids (or their spellings) are accepted."""
    if sensor is None or layout != "bigearthnet":
        return
    fixed = BIGEARTHNET_SENSORS.values()
    if get_sensor(sensor).id in fixed:  # an unknown id is refused there, listing the known ones
        return
    uses = " and ".join(f"{m.upper()} as {s}" for m, s in BIGEARTHNET_SENSORS.items())
    raise LayoutError(f"--sensor: the {layout} layout (of {root}) reads its bands with fixed "
                      f"sensors ({uses}); expected no --sensor or one of {', '.join(fixed)}, "
                      f"got --sensor {sensor}")


def check_unique_keys(items: Sequence[SourceItem], problem: str) -> None:
    """LayoutError ``"{problem}: [first duplicated keys]"`` unless every item key is unique."""
    counts = Counter(i.key for i in items)
    dup = sorted(k for k, n in counts.items() if n > 1)
    if dup:
        raise LayoutError(f"{problem}: {dup[:5]}")
