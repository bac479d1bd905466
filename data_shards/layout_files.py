"""What every input layout shares: the item types it returns and the rules that name files.

A layout (:mod:`.layouts`) turns a folder into :class:`SourceItem` objects whose modalities list
files with the band names they hold, in file order (:class:`ModalitySource`). This module holds
those types, the user's :class:`LayoutOptions`, and the helpers that find rasters and tell a
band from a file name (``B02.tif``, ``T33UUP_..._B02_10m.jp2``, ``LC08_..._SR_B4.TIF``, ``VV.tif``)
or resolve a declared band name through the sensor's aliases. A Sentinel-2 product's quality
masks are never bands, although their names end like one: ``MSK_DETFOO_B01.jp2``,
``MSK_QUALIT_B01.jp2`` and ``MSK_CLASSI_B00.jp2`` (baseline 04.00 and later), in the
``QI_DATA`` folder, which is never a band folder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .quality import QualitySource
from .raster_io import RASTER_SUFFIXES
from .s2_baseline import OffsetDecision
from .sensors import Sensor

# the band name ends the file stem, optionally followed by the resolution Sentinel-2 L2A
# products put there (``T33UUP_20200101T100000_B02_10m.jp2``). Landsat Collection 2 Level-2
# names keep their ``SR_``/``ST_`` prefix (``LC08_L2SP_..._SR_B4.TIF`` is band SR_B4, not the
# Level-1 DN band B4: another product with another scaling).
BAND_FILE_RE = re.compile(r"(?:^|[_\-])((?:SR_|ST_)?B\d{1,2}A?|B8A|VV|VH|HH|HV)"
                          r"(?:_(?:10|20|60)m)?$", re.IGNORECASE)
# Sentinel-2 quality masks (``MSK_DETFOO_B01.jp2``, ``MSK_CLASSI_B00.jp2``): their names end
# with a band name but they are masks, as every file of a SAFE granule's QI_DATA folder is
MASK_FILE_PREFIX = "MSK_"
QUALITY_DIR_NAMES = frozenset({"QI_DATA"})
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


def rasters(folder: Path) -> list[Path]:
    """The rasters lying directly in ``folder`` (any :data:`.raster_io.RASTER_SUFFIXES`), sorted;
    hidden files (:func:`ignored_file`) are none."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in RASTER_SUFFIXES and not ignored_file(p))


def ignored_file(p: Path) -> bool:
    """Files that are never inputs: hidden ones, e.g. the macOS AppleDouble ``._B02.tif`` a tar
    made on macOS puts beside each real file (it is no raster, and would be read as one)."""
    return p.name.startswith(".")


def ignored_dir(d: Path) -> bool:
    """Folders that are never inputs: hidden (``.ipynb_checkpoints``) or ``__pycache__``-like."""
    return d.name.startswith((".", "__"))


def resolution_dirs(folder: Path) -> list[Path]:
    """The ``R10m``/``R20m``/``R60m`` children of a Sentinel-2 L2A ``IMG_DATA`` folder, finest
    first (empty for any other folder)."""
    found = [(int(m.group(1)), d) for d in folder.iterdir()
             if d.is_dir() and (m := RESOLUTION_DIR_RE.match(d.name))]
    return [d for _, d in sorted(found)]


def is_quality_dir(folder: Path) -> bool:
    """Whether ``folder`` is a Sentinel-2 granule's ``QI_DATA`` folder (quality masks, which
    are never bands, whatever their names end with)."""
    return folder.name.upper() in QUALITY_DIR_NAMES


def band_of(path: Path) -> str | None:
    """The band a file's name ends with (``..._B02_10m.jp2``: ``B02``), upper case; None if none
    and for Sentinel-2 quality masks (``MSK_DETFOO_B01.jp2``, ``MSK_CLASSI_B00.jp2``)."""
    if path.stem.upper().startswith(MASK_FILE_PREFIX):
        return None
    m = BAND_FILE_RE.search(path.stem)
    return m.group(1).upper() if m else None


def per_band_files(folder: Path) -> dict[str, Path]:
    """Band name -> file of a per-band folder. A Sentinel-2 L2A ``IMG_DATA`` folder (children
    ``R10m``/``R20m``/``R60m``) is one folder whose bands each come from their finest
    resolution (``B02`` from ``R10m``, ``B05`` from ``R20m``, ``B01`` from ``R60m``). A
    ``QI_DATA`` folder (:func:`is_quality_dir`) has no band files."""
    if is_quality_dir(folder):
        return {}
    res = resolution_dirs(folder)
    if res:
        out: dict[str, Path] = {}
        for sub in res:  # finest first: a band keeps its finest file
            for b, f in per_band_files(sub).items():
                out.setdefault(b, f)
        return out
    out = {}
    for f in rasters(folder):
        b = band_of(f)
        if b is not None:
            out[b] = f
    return out


def band_files(folder: Path, sensor: Sensor) -> ModalitySource:
    """A per-band folder as one modality of ``sensor``, its files in the sensor's band order;
    LayoutError naming the bands without a file."""
    found = per_band_files(folder)
    files, missing = [], []
    for band in sensor.band_names:
        path = next((p for b, p in found.items() if canonical_band(sensor, b) == band), None)
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


def canonical_band(sensor: Sensor, name: str) -> str | None:
    """``sensor``'s name for band ``name`` (aliases, any case); None when it has no such band."""
    try:
        return sensor.canonical(name)
    except ValueError:
        return None
