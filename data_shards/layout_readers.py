"""The input layouts' readers: each finds the items of one kind of archive folder.

See :mod:`.layouts` for what each layout reads and how one is chosen; the shared types and
file-naming rules are in :mod:`.layout_files`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from .enmap_metadata import EnmapProductError, EnmapProducts, expected_level
from .layout_files import (
    RESOLUTION_DIR_RE,
    LayoutError,
    LayoutOptions,
    ModalitySource,
    SourceItem,
    band_files,
    band_of,
    canonical_band,
    declared_file_bands,
    ignored_dir,
    ignored_file,
    per_band_files,
    rasters,
    resolution_dirs,
    safe_key,
)
from .quality import QualitySource, quality_kind
from .raster_io import RASTER_SUFFIXES, tiff_band_descriptions
from .s2_baseline import find_level, read_json_file
from .sensors import Sensor, get_sensor

log = logging.getLogger(__name__)

EUROSAT_FILE_BANDS = [
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A",
]


# ---------------------------------------------------------------- eurosat
def class_dirs(root: Path) -> list[Path]:
    """Sub-folders of ``root`` that hold rasters directly, sorted; hidden, ``__*`` and
    raster-free folders (an empty class, ``.ipynb_checkpoints``) are not classes."""
    return sorted(d for d in root.iterdir()
                  if d.is_dir() and not ignored_dir(d) and rasters(d))


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


def is_eurosat(root: Path) -> bool:
    """Class folders of 13-band rasters, nothing else holding rasters: at least one sub-folder
    holds rasters directly; no raster lies loose in ``root``; no other sub-folder holds rasters
    further down (an ``aux/x/*.tif`` tree is not a class); no class folder's raster is named
    after a band (those are per-band folders); and the first GeoTIFF of every class has the
    13 bands of EuroSAT-MS (the names B01..B12,B8A would otherwise be pinned on other data).
    Hidden and ``__*`` folders and raster-free ones (an empty class) are ignored."""
    classes = class_dirs(root)
    if not classes or rasters(root):
        return False
    others = [d for d in root.iterdir() if d.is_dir() and not ignored_dir(d) and d not in classes]
    if any(p.suffix.lower() in RASTER_SUFFIXES for d in others for p in d.rglob("*")):
        return False
    if any(band_of(f) is not None for d in classes for f in rasters(d)):
        return False
    counts = {_tiff_band_count(rasters(d)[0]) for d in classes} - {None}
    return counts <= {len(EUROSAT_FILE_BANDS)}


def _check_eurosat_sensor(root: Path, sensor: Sensor) -> None:
    """Refuse a ``--sensor`` that lacks some of the 13 EuroSAT-MS file bands when the files'
    bands are not declared (``--file-bands``): ``s2_l2a`` has no B10, which would be dropped
    without a word and the L1C (top-of-atmosphere) pixels labelled L2A."""
    lacking = [b for b in EUROSAT_FILE_BANDS if canonical_band(sensor, b) is None]
    if not lacking:
        return
    first = next((f for d in class_dirs(root) for f in rasters(d)), None)
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


def read_eurosat(root: Path, opts: LayoutOptions) -> list[SourceItem]:
    """The ``eurosat`` layout: one item per raster of each class folder, labelled by it."""
    sensor = opts.sensor or "s2_l1c"
    if opts.file_bands is None:
        _check_eurosat_sensor(root, get_sensor(sensor))
    bands = declared_file_bands(root, get_sensor(sensor), opts.file_bands) or EUROSAT_FILE_BANDS
    items = []
    for d in class_dirs(root):
        for f in rasters(d):
            items.append(SourceItem(
                safe_key(f"{d.name}_{f.stem}"),
                {get_sensor(sensor).modality: ModalitySource(sensor, [(f, bands)])},
                label=d.name, meta={"source": str(f)},
            ))
    return items


# ---------------------------------------------------------------- bigearthnet
# the sensor each BigEarthNet modality is read as (BigEarthNet-S2 is L2A, BigEarthNet-S1 GRD)
BIGEARTHNET_SENSORS = {"s2": "s2_l2a", "s1": "s1_grd"}


BIGEARTHNET_LABELS = "_labels_metadata.json"  # the end of a patch's labels file's name


def _labels_name(name: str) -> bool:
    """Whether a file name is a patch's labels file: ``*_labels_metadata.json``, not hidden
    (macOS tar and zip put an AppleDouble ``._<name>`` of resource data beside each file)."""
    return name.endswith(BIGEARTHNET_LABELS) and not name.startswith(".")


def is_bigearthnet(root: Path) -> bool:
    """Any ``*_labels_metadata.json`` under ``root``."""
    return any(_labels_name(p.name) for p in root.rglob(f"*{BIGEARTHNET_LABELS}"))


def _raise(e: OSError) -> None:
    """Re-raise an error of :func:`os.walk` (a folder it cannot list), as ``rglob`` does."""
    raise e


def _bigearthnet_files(root: Path) -> tuple[list[Path], list[Path]]:
    """The ``*_labels_metadata.json`` files under ``root`` and the patch folders without one
    (folders holding band rasters, ``<patch>_B02.tif``), each sorted, from one walk of the
    tree. Hidden and ``__*`` folders (``__MACOSX``) are not walked, and hidden files (macOS
    AppleDouble ``._<patch>_labels_metadata.json``) are not labels files."""
    labels: list[Path] = []
    unlabelled: list[Path] = []
    for top, dirs, files in os.walk(root, onerror=_raise):
        dirs[:] = [d for d in dirs if not ignored_dir(Path(d))]
        here = Path(top)
        found = [here / f for f in files if _labels_name(f)]
        labels += found
        if (not found and not any(ignored_dir(Path(d)) for d in here.relative_to(root).parts)
                and any(Path(f).suffix.lower() in RASTER_SUFFIXES
                        and band_of(Path(f)) is not None for f in files)):
            unlabelled.append(here)
    return sorted(labels), sorted(unlabelled)


def _warn_unlabelled(root: Path, folders: Sequence[Path]) -> None:
    """Warn that the patch ``folders`` under ``root`` have no labels file and are not built."""
    if folders:
        log.warning(
            "%s: %d patch folder(s) hold band files but no *%s, so the bigearthnet layout "
            "leaves them out (the file holds a patch's labels, and an S1 patch's S2 pair), "
            "e.g. %s", root, len(folders), BIGEARTHNET_LABELS, folders[0])


S1_BAND_NAMES = frozenset({"VV", "VH", "HH", "HV"})  # a folder of only these is an S1 patch


def _read_labels(js: Path) -> dict:
    """A patch's labels file as a dict with a ``labels`` list; LayoutError naming the file
    when it cannot be read, is not UTF-8 JSON, or lacks the list."""
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LayoutError(f"{js}: cannot read the patch's labels file, expected UTF-8 JSON "
                          f"({e})") from None
    if not isinstance(meta, dict):
        raise LayoutError(f"{js}: labels file expected a JSON object, got "
                          f"{type(meta).__name__}")
    if not isinstance(meta.get("labels"), list):
        raise LayoutError(f"{js}: field 'labels' expected a list of class names, got "
                          f"{type(meta.get('labels')).__name__}")
    return meta


def _is_s1_patch(js: Path, meta: dict) -> bool:
    """Whether the patch of labels file ``js`` is an S1 patch: told by its band files (only
    VV/VH/HH/HV: S1; Sentinel-2 bands: S2), else by its ``corresponding_s2_patch`` field. An
    S1 patch must name its S2 patch there, and an S2 patch must not: LayoutError naming the
    file and field."""
    bands = set(per_band_files(js.parent))
    pair = meta.get("corresponding_s2_patch")
    s1 = bands <= S1_BAND_NAMES if bands else "corresponding_s2_patch" in meta
    if s1 and not (isinstance(pair, str) and pair.strip()):
        got = "missing" if "corresponding_s2_patch" not in meta else repr(pair)
        raise LayoutError(f"{js}: field 'corresponding_s2_patch': expected the S2 patch name, "
                          f"got {got} (the folder holds S1 band files {sorted(bands)})")
    if not s1 and "corresponding_s2_patch" in meta:
        raise LayoutError(f"{js}: field 'corresponding_s2_patch' ({pair!r}) is an S1 patch's, "
                          f"but the folder holds Sentinel-2 band files {sorted(bands)}; "
                          "expected an S1 patch folder (VV/VH band files) or no such field")
    return s1


def _add_patch(found: dict[str, tuple[Path, dict, Path]], js: Path, meta: dict) -> None:
    """Record a patch under its folder name; LayoutError naming both labels files when the
    name is taken (two folders of one name in different places, or two labels files in one
    folder): one would silently replace the other."""
    name = js.parent.name
    if name in found:
        other = found[name][2]
        why = ("two labels files in one patch folder" if other.parent == js.parent
               else f"two patch folders named {name}")
        raise LayoutError(f"{other} and {js}: {why}; expected one labels file per patch and "
                          "patch folder names unique in the input")
    found[name] = (js.parent, meta, js)


def _s1_by_s2(s1: dict[str, tuple[Path, dict, Path]]) -> dict[str, tuple[Path, dict]]:
    """The S1 patches by the S2 patch each names; LayoutError naming both labels files when
    two S1 patches name the same S2 patch (one would silently replace the other)."""
    paired: dict[str, tuple[Path, dict, Path]] = {}
    for folder, meta, js in s1.values():
        s2_name = meta["corresponding_s2_patch"]
        if s2_name in paired:
            raise LayoutError(f"{paired[s2_name][2]} and {js}: both S1 patches name S2 patch "
                              f"{s2_name!r} in field 'corresponding_s2_patch'; expected one S1 "
                              "patch per S2 patch")
        paired[s2_name] = (folder, meta, js)
    return {k: (d, m) for k, (d, m, _) in paired.items()}


def read_bigearthnet(root: Path, opts: LayoutOptions) -> list[SourceItem]:
    """The ``bigearthnet`` layout: one item per S2 patch, its S1 patch paired, multi-labels;
    patch folders without a labels file are left out, with a warning naming how many."""
    s2: dict[str, tuple[Path, dict, Path]] = {}
    s1: dict[str, tuple[Path, dict, Path]] = {}
    label_files, unlabelled = _bigearthnet_files(root)
    _warn_unlabelled(root, unlabelled)
    for js in label_files:
        meta = _read_labels(js)
        _add_patch(s1 if _is_s1_patch(js, meta) else s2, js, meta)
    if not s2:
        raise LayoutError(f"{root}: bigearthnet layout needs S2 patch folders, found none")
    s2_sensor, s1_sensor = (get_sensor(BIGEARTHNET_SENSORS[m]) for m in ("s2", "s1"))
    paired = _s1_by_s2(s1)
    items = []
    for name, (folder, meta, _) in sorted(s2.items()):
        mods = {"s2": band_files(folder, s2_sensor)}
        info = {"source": str(folder), "acquisition_time": meta.get("acquisition_date"),
                "tile_source": meta.get("tile_source")}
        if name in paired:
            s1_folder, s1_meta = paired.pop(name)
            if sorted(s1_meta["labels"]) != sorted(meta["labels"]):
                raise LayoutError(f"{s1_folder}: labels differ from its S2 patch {folder}")
            mods["s1"] = band_files(s1_folder, s1_sensor)
            info["s1_source"] = str(s1_folder)
            info["s1_acquisition_time"] = s1_meta.get("acquisition_time")
        items.append(SourceItem(safe_key(name), mods, label=list(meta["labels"]), meta=info))
    if paired:
        raise LayoutError(
            f"{root}: S1 patches name S2 patches that are missing: {sorted(paired)}"
        )
    return items


# ---------------------------------------------------------------- per_band
PER_BAND_MASKS = ("s2_scl", "majortom_cloud", "landsat_bqa",
                  "landsat_qa_pixel")  # preference when several
LANDSAT_MASKS = ("landsat_bqa", "landsat_qa_pixel")  # one product has one of them, not both


def _folder_quality(folder: Path) -> QualitySource | None:
    """The quality mask file of a per-band folder (SCL, Major-TOM cloud_mask, Landsat BQA or
    Collection 2 QA_PIXEL). A Collection 1 ``BQA`` beside a Collection 2 ``QA_PIXEL`` means
    two products share the folder (their bands would too): LayoutError naming both."""
    found: dict[str, Path] = {}
    for sub in resolution_dirs(folder) or [folder]:  # L2A: SCL from R20m before R60m
        for f in rasters(sub):
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
    ``R10m``/``R20m``/``R60m`` children, which are not items of their own; a SAFE granule's
    ``QI_DATA`` folder has no band files, :func:`.layout_files.per_band_files`)."""
    dirs = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    return [d for d in dirs
            if not (d != root and RESOLUTION_DIR_RE.match(d.name) and resolution_dirs(d.parent))
            and len(per_band_files(d)) >= 2]


def is_per_band(root: Path) -> bool:
    """Any folder of one file per band under ``root``."""
    return bool(_leaf_band_dirs(root))


def detect_sensor(folder: Path, bands: Sequence[str], root: Path | None = None) -> str:
    """Sensor id from a folder's band set, file names (e.g. ``l8_`` means Landsat-8) and, for
    Sentinel-2, the processing level its metadata or product name gives (looked for up to
    ``root``, see :func:`.s2_baseline.find_level`). A level guessed from the band set alone
    is logged as a warning naming the guess."""
    sensor, guess = sensor_guess(folder, bands, root)
    if guess is not None:
        log.warning("%s: read as %s: %s; pass --sensor s2_l1c or --sensor s2_l2a if that is "
                    "wrong", folder, sensor, guess)
    return sensor


def sensor_guess(folder: Path, bands: Sequence[str], root: Path | None = None
                 ) -> tuple[str, str | None]:
    """:func:`detect_sensor`'s answer and, when only the band set told Sentinel-2 L1C from
    L2A (no product id or metadata names the level), why that level was guessed; else None.
    A level that contradicts the band set (an L2A product with B10 files) is a LayoutError
    naming both."""
    names = {b.upper() for b in bands}
    stems = " ".join(p.name.lower() for p in folder.iterdir())
    if names <= {"VV", "VH", "HH", "HV"}:
        return "s1_grd", None
    if any(n.startswith(("SR_", "ST_")) for n in names):  # Landsat Collection 2 Level-2
        if not all(n.startswith(("SR_", "ST_")) for n in names):
            raise LayoutError(f"{folder}: Landsat Level-2 files (SR_B*/ST_B*) mixed with other "
                              f"band files {sorted(names)}; put each product in its own folder")
        if re.search(r"(^|[^a-z])(l9|lc09)", stems):
            return "landsat9_c2l2", None
        if re.search(r"(^|[^a-z])(l8|lc08|lc8)", stems):
            return "landsat8_c2l2", None
        raise LayoutError(f"{folder}: Landsat Level-2 band files {sorted(names)} but no LC08/LC09 "
                          "product name (Landsat 4-7 number their bands differently); pass "
                          "--sensor")
    if re.search(r"(^|[^a-z])(l8|lc08|lc8)", stems):
        return "landsat8_oli_tirs", None
    if re.search(r"(^|[^a-z])(l9|lc09)", stems):
        return "landsat9_oli_tirs", None
    if "B10" in names and ("B8A" in names or len(names) >= 13):
        return _s2_level(folder, names, root, "s2_l1c")
    if "B8A" in names or "B12" in names:
        return _s2_level(folder, names, root, "s2_l2a")
    raise LayoutError(f"{folder}: cannot tell the sensor from bands {sorted(names)}; "
                      "pass --sensor")


# why a Sentinel-2 level had to be guessed from the band set
NO_LEVEL = ("no metadata.json PRODUCT_ID, MTD_MSIL1C.xml/MTD_MSIL2A.xml or MSIL1C/MSIL2A "
            "product name says the processing level")


def _s2_level(folder: Path, names: set[str], root: Path | None, by_bands: str
              ) -> tuple[str, str | None]:
    """``s2_l1c`` or ``s2_l2a`` for a folder of Sentinel-2 bands ``names``: the level its
    metadata or product name gives, else ``by_bands`` (the band set's guess: B10 with B8A or
    13 bands is L1C) with the reason (see :func:`sensor_guess`)."""
    found = find_level(folder, root)
    if found is None:
        why = "B10 is an L1C band" if by_bands == "s2_l1c" else "no L1C band set with B10"
        return by_bands, f"{NO_LEVEL}: guessed from the band set ({why})"
    level, evidence = found
    if level == "L2A" and "B10" in names:
        raise LayoutError(f"{folder}: {evidence} names a Sentinel-2 L2A product, but the folder "
                          f"holds a B10 file (an L1C band, which L2A products do not have; "
                          f"bands {sorted(names)}); put each product in its own folder or "
                          "pass --sensor")
    return ("s2_l1c" if level == "L1C" else "s2_l2a"), None


def _warn_guesses(root: Path, guesses: dict[str, tuple[str, list[Path]]]) -> None:
    """One warning per guessed sensor (``{sensor: (reason, folders)}``, :func:`sensor_guess`)
    naming how many folders and one of them."""
    for sensor, (reason, folders) in sorted(guesses.items()):
        log.warning("%s: %d folder(s) of Sentinel-2 bands (e.g. %s) read as %s: %s; pass "
                    "--sensor s2_l1c or --sensor s2_l2a if that is wrong", root, len(folders),
                    folders[0], sensor, reason)


def _folder_metadata(path: Path) -> object:
    """The JSON value of a per-band folder's ``metadata.json`` (SSL4EO / Earth Engine
    export); LayoutError naming the file when it cannot be read or parsed."""
    try:
        return read_json_file(path, "the folder's metadata, expected a JSON document")
    except ValueError as e:
        raise LayoutError(str(e)) from None


def read_per_band(root: Path, opts: LayoutOptions) -> list[SourceItem]:
    """The ``per_band`` layout: one item per folder of band files, its sensor detected."""
    items = []
    guesses: dict[str, tuple[str, list[Path]]] = {}
    for d in _leaf_band_dirs(root):
        found = per_band_files(d)
        sensor_id, guess = opts.sensor, None
        if sensor_id is None:
            sensor_id, guess = sensor_guess(d, list(found), root)
        if guess is not None:
            guesses.setdefault(sensor_id, (guess, []))[1].append(d)
        sensor = get_sensor(sensor_id)
        files, unknown = [], []
        for b, p in sorted(found.items()):
            c = canonical_band(sensor, b)
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
            meta["source_metadata"] = _folder_metadata(d / "metadata.json")
        items.append(SourceItem(safe_key(rel), {sensor.modality: ModalitySource(
            sensor.id, files, quality=_folder_quality(d))}, meta=meta))
    _warn_guesses(root, guesses)
    return items


# ---------------------------------------------------------------- enmap
# L1C/L2A ship one SPECTRAL_IMAGE, L1B one per detector (found so that they can be refused)
ENMAP_IMAGE_GLOBS = ("*SPECTRAL_IMAGE.TIF", "*SPECTRAL_IMAGE_VNIR.TIF", "*SPECTRAL_IMAGE_SWIR.TIF")


def _enmap_images(root: Path) -> list[Path]:
    """Every EnMAP spectral image under ``root`` (L1C/L2A, and L1B's detector files), sorted."""
    return sorted({f for g in ENMAP_IMAGE_GLOBS for f in root.rglob(g) if not ignored_file(f)})


def is_enmap(root: Path) -> bool:
    """Any EnMAP spectral image under ``root``."""
    return any(next(root.rglob(g), None) is not None for g in ENMAP_IMAGE_GLOBS)


ENMAP_MASK_LAYERS = ("QL_QUALITY_CLOUD", "QL_QUALITY_CLOUDSHADOW")


def read_enmap(root: Path, opts: LayoutOptions) -> list[SourceItem]:
    """The ``enmap`` layout: one item per EnMAP spectral image, its level and XML checked."""
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
                  and not ignored_file(p)
                  and not any(ignored_dir(d) for d in p.relative_to(root).parents
                              if d != Path(".")))


def described_bands(path: Path, sensor: Sensor) -> list[str] | None:
    """``sensor``'s names of the bands a GeoTIFF's band descriptions (GDAL ``DESCRIPTION``
    items) name, in file order; None when the file has none or one of them names no band of
    the sensor (``Band 1``, or a band left undescribed). Descriptions resolve as
    ``--file-bands`` does (aliases, any case); two naming one band are a LayoutError naming
    the file."""
    found = tiff_band_descriptions(path)
    if not found:
        return None
    names = [canonical_band(sensor, d) for d in found]
    if any(n is None for n in names):
        return None
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise LayoutError(f"{path}: band descriptions (GDAL_METADATA DESCRIPTION) "
                          f"{','.join(found)} name band(s) {','.join(twice)} of {sensor.id} "
                          "more than once; expected each band once: fix the descriptions or "
                          "convert the file")
    return [n for n in names if n is not None]


def _file_bands(path: Path, sensor: Sensor, declared: list[str] | None
                ) -> tuple[list[str], str]:
    """The bands ``path`` holds in file order and how that is known: ``described`` (its band
    descriptions name them), ``declared`` (``--file-bands``; descriptions, if any, agree) or
    ``assumed_sensor_order``. Descriptions that contradict ``--file-bands`` are a LayoutError
    naming the file and both orders."""
    described = described_bands(path, sensor)
    if declared is not None:
        if described is not None and described != declared:
            raise LayoutError(f"{path}: its band descriptions (GDAL_METADATA DESCRIPTION) name "
                              f"the bands {','.join(described)} in file order, but --file-bands "
                              f"declares {','.join(declared)}; expected the same order: fix "
                              "--file-bands or the file's band descriptions")
        return declared, "declared"
    if described is not None:
        return described, "described"
    return list(sensor.band_names), "assumed_sensor_order"


def flat_reader(suffixes: set[str], name: str) -> Callable[[Path, LayoutOptions], list[SourceItem]]:
    """The reader of a layout of multi-band files (``multiband``: GeoTIFFs; ``array``: arrays).
    A file's bands are ``--file-bands``, else those its band descriptions name, else (with a
    warning) the sensor's order; each item's meta records which (``file_band_order``)."""
    def build(root: Path, opts: LayoutOptions) -> list[SourceItem]:
        if opts.sensor is None:
            hint = ""
            if name == "multiband" and root.is_dir() and class_dirs(root):
                hint = (" (class folders of multi-band rasters, e.g. EuroSAT-MS: pass --layout "
                        "eurosat, which knows their band order B01..B12,B8A)")
            raise LayoutError(f"{root}: the {name} layout needs --sensor (e.g. s2_l2a); "
                              f"give the files' band order with --file-bands unless it is "
                              f"the sensor's own (then it is assumed, with a warning){hint}")
        sensor = get_sensor(opts.sensor)
        declared = declared_file_bands(root, sensor, opts.file_bands)
        # an EnMAP sensor reads its own processing level whichever layout finds the files: a
        # forced --layout must not let L1B/L1C radiance through as L2A reflectance
        enmap = (EnmapProducts(sensor, list(declared or sensor.band_names))
                 if expected_level(sensor) else None)
        items = []
        assumed: list[Path] = []
        for f in _files(root, suffixes):
            if opts.seg_dir is not None and f.is_relative_to(opts.seg_dir):
                continue
            seg = None
            if opts.seg_dir is not None:
                seg = next(iter(sorted(opts.seg_dir.glob(f.stem + ".*"))), None)
                if seg is None:
                    raise LayoutError(f"{f}: no segmentation raster {opts.seg_dir}/{f.stem}.*")
            rel = Path(f.name) if f == root else f.relative_to(root)
            bands, order = _file_bands(f, sensor, declared)
            if order == "assumed_sensor_order":
                assumed.append(f)
            meta = {"source": str(f), "file_bands": list(bands), "file_band_order": order}
            if enmap is not None:
                enmap.file_bands = list(bands)
                try:
                    meta["enmap_product"] = enmap.check(f)
                except EnmapProductError as e:
                    raise LayoutError(str(e)) from None
            items.append(SourceItem(safe_key(rel.with_suffix("").as_posix()),
                                    {sensor.modality: ModalitySource(sensor.id, [(f, bands)])},
                                    seg=seg, meta=meta))
        if enmap is not None:
            enmap.warn()
        if assumed and len(sensor.band_names) > 1:
            why = " (no band descriptions naming the sensor's bands)" if name == "multiband" else ""
            log.warning("%s: %d of %d %s files (e.g. %s) are read as holding %s bands in the "
                        "sensor's order %s; nothing in the files says so%s: if they store another "
                        "order (EuroSAT-MS stores B01..B12,B8A) pass --file-bands", root,
                        len(assumed), len(items), name, assumed[0], sensor.id,
                        ",".join(sensor.band_names), why)
        return items
    return build


def is_array(root: Path) -> bool:
    """Any array file (or store) at or under ``root``."""
    return bool(_files(root, ARRAY_SUFFIXES))


def is_multiband(root: Path) -> bool:
    """Any GeoTIFF at or under ``root``."""
    return bool(_files(root, {".tif", ".tiff"}))
