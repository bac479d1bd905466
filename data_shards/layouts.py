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
  A patch is S1 or S2 by its band files; an S1 patch's labels file must name its S2 patch
  (``corresponding_s2_patch``), and two S1 patches naming one S2 patch, or two patch folders
  of one name, are refused naming both files. Hidden files (macOS ``._*``) and hidden or
  ``__*`` folders (``__MACOSX``) are never read.
- ``per_band``: any leaf folder of one file per band (Sentinel-2 SAFE/SSL4EO ``B2.tif``,
  ``s2_B02.jp2``, Landsat ``l8_B1.tif``, Sentinel-1 ``VV.tif``); the sensor is detected from
  the band set and file names, or forced with ``--sensor``. A Sentinel-2 folder's level (L1C or
  L2A) is read from its metadata or product name (``metadata.json`` ``PRODUCT_ID``,
  ``MTD_MSIL1C.xml``, ``MSIL2A`` in a folder name, up to the enclosing ``.SAFE``), else guessed
  from the band set with a warning. A SAFE granule's ``QI_DATA`` masks (``MSK_*_B01.jp2``) are
  never bands. A Sentinel-2 L2A ``IMG_DATA``
  folder (``R10m/T33UUP_..._B02_10m.jp2``, ``R20m/...``, ``R60m/...``) is one item, each band
  read from its finest resolution.
- ``enmap``: EnMAP products (``*SPECTRAL_IMAGE.TIF``), 224 bands in one file. The processing
  level (product name, ``METADATA.XML``) must be the sensor's (L2A for ``enmap_hsi``): L1B
  (``*SPECTRAL_IMAGE_VNIR/_SWIR.TIF``) and L1C radiance is refused; the XML's per-band values
  are checked and recorded (:mod:`.enmap_metadata`).
- ``multiband``: a folder of multi-band GeoTIFFs (needs ``--sensor``; with an EnMAP sensor the
  products' level and METADATA.XML are checked as in ``enmap``, also for ``array`` inputs).
  The files' band order is declared with ``--file-bands`` (band descriptions that contradict it
  are refused); without it a GeoTIFF whose GDAL band descriptions name the sensor's bands is
  read in that order, and any other file is *assumed* to hold the sensor's order, which the
  build warns about; every sample's ``meta.json`` records which (``file_bands``,
  ``file_band_order``: ``declared``, ``described`` or ``assumed_sensor_order``).
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
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from .layout_files import (
    BAND_FILE_RE,
    LayoutError,
    LayoutOptions,
    ModalitySource,
    SourceItem,
    declared_file_bands,
    safe_key,
)
from .layout_readers import (
    ARRAY_SUFFIXES,
    BIGEARTHNET_SENSORS,
    EUROSAT_FILE_BANDS,
    detect_sensor,
    flat_reader,
    is_array,
    is_bigearthnet,
    is_enmap,
    is_eurosat,
    is_multiband,
    is_per_band,
    read_bigearthnet,
    read_enmap,
    read_eurosat,
    read_per_band,
)
from .raster_io import RASTER_SUFFIXES
from .sensors import get_sensor

__all__ = ["BAND_FILE_RE", "BIGEARTHNET_SENSORS", "EUROSAT_FILE_BANDS", "LAYOUTS", "LayoutError",
           "LayoutOptions", "ModalitySource", "SourceItem", "check_file_bands",
           "check_layout_sensor", "check_seg_dir", "check_unique_keys", "declared_file_bands",
           "detect_layout", "detect_sensor", "discover", "safe_key"]

LAYOUTS: dict[str, tuple[Callable[[Path], bool], Callable[[Path, LayoutOptions], list[SourceItem]]]] = {
    "bigearthnet": (is_bigearthnet, read_bigearthnet),
    "enmap": (is_enmap, read_enmap),
    "eurosat": (is_eurosat, read_eurosat),
    "per_band": (is_per_band, read_per_band),
    "multiband": (is_multiband, flat_reader({".tif", ".tiff"}, "multiband")),
    "array": (is_array, flat_reader(ARRAY_SUFFIXES, "array")),
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
