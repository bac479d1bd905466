"""Quality/cloud masks shipped beside the bands -> one boolean "cloudy/bad" mask per pixel.

One job: read the quality raster(s) of a modality, decode them by kind, and bring the result
onto the modality's grid (nearest neighbour). Ingest uses it to record each tile's
``cloud_fraction`` and, when asked, to fold flagged pixels into the ``valid`` mask or to drop
cloudy tiles. Kinds (found by file name, see :func:`quality_kind`):

- ``landsat_bqa`` (``*BQA.tif``): the Landsat-8 16-bit BQA bit field, in either of its two
  documented layouts (detected from the values, see :func:`bqa_layout`). Flagged: cloud,
  cirrus or (Collection 1 only) cloud shadow at high confidence (``11``). Fill: bit 0.
- ``landsat_qa_pixel`` (``*_QA_PIXEL.TIF`` of Landsat Collection 2 Level-1 and Level-2): the
  16-bit QA_PIXEL bit field (USGS Landsat 8-9 Collection 2 layout, see :data:`QA_PIXEL_BITS`).
  Flagged: dilated cloud (bit 1), cirrus (bit 2, high confidence; OLI only), cloud (bit 3) and
  cloud shadow (bit 4), i.e. every bit USGS's own cloud masking clears (the Earth Engine
  ``QA_PIXEL & 0b11111`` recipe): dilated cloud is the cloud's buffered edge, where thin cloud
  still brightens the surface. Fill: bit 0. Refused: fill pixels carrying any other bit (fill
  is the single value 1), and "clear" (bit 6) together with cloud or dilated cloud, which the
  spec defines as its negation. The other QA bands of a Collection 2 product (``QA_RADSAT``
  saturation, ``SR_QA_AEROSOL``, ``ST_QA``, Landsat 4-7 ``SR_CLOUD_QA``) are not cloud masks:
  :func:`quality_kind` returns None for them.
- ``s2_scl`` (``SCL.tif``, ``*_SCL_20m.jp2``): Sentinel-2 L2A scene classification. Flagged:
  3 cloud shadow, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus.
  Fill: 0 no data.
- ``majortom_cloud`` (``cloud_mask.tif`` of Major-TOM Core): SEnSeIv2 classes 0 clear,
  1 thick cloud, 2 thin cloud, 3 cloud shadow. Flagged: 1, 2, 3. Fill: 255 (SEnSeIv2 nodata).
- ``enmap_ql`` (``*-QL_QUALITY_CLOUD.TIF`` and ``*-QL_QUALITY_CLOUDSHADOW.TIF`` of EnMAP L2A):
  binary layers, 0 no / 1 yes. Flagged: cloud or cloud shadow. (HAZE, CIRRUS, SNOW,
  TESTFLAGS and the per-band PIXELMASK are not read.)

Snow is decoded where the source has it (BQA, QA_PIXEL) but never flagged: it is surface, not
cloud. Every error names the file and what was expected versus found.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .grid import centre_index
from .raster_io import DEFAULT_MAX_RASTER_BYTES, Geo, Raster, RasterError, read_raster

KINDS = ("landsat_bqa", "landsat_qa_pixel", "s2_scl", "majortom_cloud", "enmap_ql")

# Sentinel-2 L2A SCL classes (ESA Sen2Cor, Level-2A product format): 0 no data,
# 1 saturated/defective, 2 dark area, 3 cloud shadow, 4 vegetation, 5 not vegetated, 6 water,
# 7 unclassified, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus,
# 11 snow/ice.
SCL_FLAGGED = (3, 8, 9, 10)
SCL_FILL = (0,)
SCL_MAX = 11
# Major-TOM Core ``cloud_mask``: SEnSeIv2 4-class output (0 clear, 1 thick cloud, 2 thin
# cloud, 3 cloud shadow; 255 nodata).
MAJORTOM_FLAGGED = (1, 2, 3)
MAJORTOM_FILL = 255

# Landsat-8 BQA. Two documented layouts share the file name and bit 0 (designated fill):
# - Collection 1 (USGS "Landsat Collection 1 Level-1 Quality Assessment Band", LSDS-1873
#   DFCB): bit 1 terrain occlusion, bits 2-3 radiometric saturation, bit 4 cloud,
#   bits 5-6 cloud confidence, bits 7-8 cloud-shadow confidence, bits 9-10 snow/ice
#   confidence, bits 11-12 cirrus confidence, bits 13-15 unused (always 0).
# - Pre-Collection (USGS "Landsat 8 OLI Quality Assessment Band", products of 2013-2016):
#   bit 1 dropped frame, bit 2 terrain occlusion, bit 3 reserved, bits 4-5 water confidence,
#   bits 6-7 reserved (cloud shadow, never populated), bits 8-9 reserved (vegetation),
#   bits 10-11 snow/ice confidence, bits 12-13 cirrus confidence, bits 14-15 cloud confidence.
# Confidence fields: 00 not determined, 01 low/no, 10 medium/maybe, 11 high/yes.
# Our real scene (../shared/data/landsat8_scene/l8_BQA.tif) is Pre-Collection: its values
# (20480 = 0x5000 "clear": cirrus 01, cloud 01; 61440 = 0xF000 cirrus 11, cloud 11; 23552 =
# 0x5C00 snow 11; 20512 = 0x5020 water 10) use bits 14-15 and never the reserved bits 3, 6-9.
# Collection-1 fields read as (shift, width); the pre-collection ones likewise.
BQA_FIELDS = {
    "collection1": {"cloud": (5, 2), "shadow": (7, 2), "snow": (9, 2), "cirrus": (11, 2)},
    "pre_collection": {"cloud": (14, 2), "snow": (10, 2), "cirrus": (12, 2)},
}
BQA_UNUSED = {"collection1": 0b1110_0000_0000_0000, "pre_collection": 0b0000_0011_1100_1000}
HIGH = 0b11

# Landsat Collection 2 QA_PIXEL (USGS Landsat 8-9 Collection 2 Level-1/Level-2 DFCB, QA_PIXEL
# table; Level-2 carries the Level-1 band unchanged): single bits 0 fill, 1 dilated cloud,
# 2 cirrus (high confidence; OLI only, 0 for Landsat 4-7), 3 cloud, 4 cloud shadow, 5 snow,
# 6 clear (set exactly when neither cloud nor dilated cloud is), 7 water; 2-bit confidences
# (00 none, 01 low, 10 medium, 11 high) at 8-9 cloud, 10-11 cloud shadow, 12-13 snow/ice,
# 14-15 cirrus. Typical values: 1 fill, 21824 = 0x5540 clear land (all confidences low),
# 21952 = 0x55C0 clear water, 22280 = 0x5708 cloud (high confidence), 23888 = 0x5D50 cloud
# shadow (high confidence; still "clear", which only speaks of cloud), 55052 = 0xD70C cloud
# with high-confidence cirrus.
QA_PIXEL_BITS = {"fill": 0, "dilated_cloud": 1, "cirrus": 2, "cloud": 3, "shadow": 4,
                 "snow": 5, "clear": 6, "water": 7}
QA_PIXEL_CONFIDENCE = {"cloud_conf": 8, "shadow_conf": 10, "snow_conf": 12, "cirrus_conf": 14}
QA_PIXEL_FLAGGED = ("dilated_cloud", "cirrus", "cloud", "shadow")
QA_PIXEL_FILL = 1  # the one value a fill pixel has: bit 0 and nothing else


class QualityError(ValueError):
    """A quality raster that does not hold what its kind promises."""


@dataclass
class QualitySource:
    """The quality file(s) of one modality and how to read them (one of :data:`KINDS`)."""

    kind: str
    files: list[Path]

    def describe(self) -> dict:
        """Plain-JSON form for a sample's ``meta.json``."""
        return {"kind": self.kind, "files": [p.name for p in self.files]}


@dataclass
class QualityMask:
    """Decoded mask on the quality raster's own grid: ``flagged`` (cloudy/bad) and ``fill``
    (no measurement according to the mask), both ``(H, W)`` bool; ``layout`` names the bit
    layout or class table used."""

    flagged: np.ndarray
    fill: np.ndarray
    geo: Geo | None
    path: str
    layout: str


_SCL_RE = re.compile(r"(?:^|[_\-])SCL(?:[_\-]\d+m)?$", re.IGNORECASE)
_BQA_RE = re.compile(r"(?:^|[_\-])BQA$", re.IGNORECASE)
_QA_PIXEL_RE = re.compile(r"(?:^|[_\-])QA_PIXEL$", re.IGNORECASE)


def quality_kind(path: Path) -> str | None:
    """The mask kind a file name announces (``l8_BQA.tif``, ``LC08_L2SP_..._QA_PIXEL.TIF``,
    ``SCL.tif``, ``cloud_mask.tif``, ``...-QL_QUALITY_CLOUD.TIF``), or None for any other file
    (``QA_RADSAT``, ``SR_QA_AEROSOL``, ``ST_QA`` are not cloud masks)."""
    stem = path.stem
    if _BQA_RE.search(stem):
        return "landsat_bqa"
    if _QA_PIXEL_RE.search(stem):
        return "landsat_qa_pixel"
    if _SCL_RE.search(stem):
        return "s2_scl"
    if stem.lower() == "cloud_mask":
        return "majortom_cloud"
    if stem.upper().endswith(("QL_QUALITY_CLOUD", "QL_QUALITY_CLOUDSHADOW")):
        return "enmap_ql"
    return None


def _single_band(r: Raster, kind: str, dtypes: Sequence[str]) -> np.ndarray:
    """The ``(H, W)`` plane of a one-band quality raster of an allowed integer dtype."""
    if r.data.shape[0] != 1:
        raise QualityError(f"{r.path}: {kind} mask expected 1 band, found {r.data.shape[0]} "
                           f"(shape {tuple(r.data.shape)})")
    if r.data.dtype.name not in dtypes:
        raise QualityError(f"{r.path}: {kind} mask expected dtype {' or '.join(dtypes)}, "
                           f"found {r.data.dtype}")
    return r.data[0]


def _check_classes(x: np.ndarray, allowed: np.ndarray, path: str, what: str) -> None:
    bad = np.setdiff1d(np.unique(x), allowed)
    if bad.size:
        raise QualityError(f"{path}: expected {what}, found values {bad[:8].tolist()}")


def _confidence(x: np.ndarray, shift: int, width: int) -> np.ndarray:
    return (x >> shift) & ((1 << width) - 1)


def bqa_layout(x: np.ndarray, path: str = "<BQA>") -> str:
    """``"pre_collection"`` when any non-fill value uses bits 13-15 (unused in Collection 1,
    the cloud-confidence field before it), else ``"collection1"``; raises when the values
    set bits the chosen layout leaves unused."""
    v = np.unique(x)
    v = v[(v & 1) == 0]  # fill pixels carry no other meaning
    layout = "pre_collection" if (v & BQA_UNUSED["collection1"]).any() else "collection1"
    stray = v[(v & BQA_UNUSED[layout]) != 0]
    if stray.size:
        raise QualityError(f"{path}: BQA values {stray[:8].tolist()} set bits that the Landsat-8 "
                           f"{layout} layout leaves unused; expected a Collection-1 or "
                           "Pre-Collection BQA")
    return layout


def decode_bqa(x: np.ndarray, path: str = "<BQA>") -> tuple[str, dict[str, np.ndarray]]:
    """The layout of a Landsat-8 BQA plane and its documented fields as ``(H, W)`` bool
    arrays: ``fill``, and ``cloud``, ``cirrus``, ``snow``, ``shadow`` at high confidence
    (never on fill pixels; ``shadow`` is all False for Pre-Collection BQA, which never
    populated it)."""
    layout = bqa_layout(x, path)
    out = {"fill": (x & 1).astype(bool)}
    for name in ("cloud", "cirrus", "snow", "shadow"):
        field = BQA_FIELDS[layout].get(name)
        hit = np.zeros(x.shape, bool) if field is None else _confidence(x, *field) == HIGH
        out[name] = hit & ~out["fill"]
    return layout, out


def check_qa_pixel(x: np.ndarray, path: str = "<QA_PIXEL>") -> None:
    """QualityError unless the values of a QA_PIXEL plane are consistent with the spec: a fill
    pixel is exactly 1 (bit 0 and no other), and "clear" (bit 6) never sits beside cloud
    (bit 3) or dilated cloud (bit 1), the bits it is defined to negate."""
    v = np.unique(x)
    bit = QA_PIXEL_BITS
    fill = v[(((v >> bit["fill"]) & 1) == 1) & (v != QA_PIXEL_FILL)]
    if fill.size:
        raise QualityError(f"{path}: QA_PIXEL fill pixels (bit 0) expected to be exactly "
                           f"{QA_PIXEL_FILL} with no other bit, found values "
                           f"{fill[:8].tolist()}; is this a Collection 2 QA_PIXEL band?")
    cloudy = ((v >> bit["cloud"]) & 1) | ((v >> bit["dilated_cloud"]) & 1)
    both = v[(((v >> bit["clear"]) & 1) == 1) & (cloudy == 1)]
    if both.size:
        raise QualityError(f"{path}: QA_PIXEL values {both[:8].tolist()} set 'clear' (bit 6) "
                           "together with cloud (bit 3) or dilated cloud (bit 1); expected clear "
                           "only where neither is set (Collection 2 QA_PIXEL layout)")


def decode_qa_pixel(x: np.ndarray, path: str = "<QA_PIXEL>") -> dict[str, np.ndarray]:
    """The documented fields of a Landsat Collection 2 QA_PIXEL plane (checked with
    :func:`check_qa_pixel`) as ``(H, W)`` arrays: ``fill`` and the single-bit conditions of
    :data:`QA_PIXEL_BITS` as bool (never True on fill pixels), the confidences of
    :data:`QA_PIXEL_CONFIDENCE` as uint8 0..3 (0 on fill pixels)."""
    check_qa_pixel(x, path)
    fill = ((x >> QA_PIXEL_BITS["fill"]) & 1).astype(bool)
    out = {"fill": fill}
    for name, b in QA_PIXEL_BITS.items():
        if name != "fill":
            out[name] = ((x >> b) & 1).astype(bool) & ~fill
    for name, shift in QA_PIXEL_CONFIDENCE.items():
        out[name] = np.where(fill, 0, _confidence(x, shift, 2)).astype(np.uint8)
    return out


def decode(kind: str, rasters: Sequence[Raster]) -> QualityMask:
    """Decode the raster(s) of one quality source into a :class:`QualityMask`."""
    if kind not in KINDS:
        raise QualityError(f"quality kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if not rasters:
        raise QualityError(f"{kind}: no quality raster given")
    r0 = rasters[0]
    if kind == "landsat_bqa":
        layout, bits = decode_bqa(_single_band(r0, kind, ("uint16",)), r0.path)
        flagged = bits["cloud"] | bits["cirrus"] | bits["shadow"]
        return QualityMask(flagged, bits["fill"], r0.geo, r0.path, f"bqa:{layout}")
    if kind == "landsat_qa_pixel":
        bits = decode_qa_pixel(_single_band(r0, kind, ("uint16",)), r0.path)
        flagged = np.logical_or.reduce([bits[n] for n in QA_PIXEL_FLAGGED])
        return QualityMask(flagged, bits["fill"], r0.geo, r0.path, "qa_pixel:c2")
    if kind == "s2_scl":
        x = _single_band(r0, kind, ("uint8", "uint16"))
        _check_classes(x, np.arange(SCL_MAX + 1), r0.path, f"SCL classes 0..{SCL_MAX}")
        return QualityMask(np.isin(x, SCL_FLAGGED), np.isin(x, SCL_FILL), r0.geo, r0.path,
                           "scl")
    if kind == "majortom_cloud":
        x = _single_band(r0, kind, ("uint8",))
        _check_classes(x, np.array([0, *MAJORTOM_FLAGGED, MAJORTOM_FILL]), r0.path,
                       "SEnSeIv2 classes 0 clear, 1 thick cloud, 2 thin cloud, 3 cloud shadow, "
                       "255 nodata")
        return QualityMask(np.isin(x, MAJORTOM_FLAGGED), x == MAJORTOM_FILL, r0.geo, r0.path,
                           "senseiv2")
    planes = []
    for r in rasters:  # enmap_ql: binary layers, OR-ed
        x = _single_band(r, kind, ("uint8",))
        _check_classes(x, np.array([0, 1]), r.path, "a binary EnMAP quality layer (0 or 1)")
        if planes and x.shape != planes[0].shape:
            raise QualityError(f"{r.path}: expected shape {planes[0].shape} like {r0.path}, "
                               f"found {x.shape}")
        planes.append(x)
    flagged = np.logical_or.reduce([p == 1 for p in planes])
    return QualityMask(flagged, np.zeros_like(flagged), r0.geo, r0.path, "enmap_ql")


def read_quality(src: QualitySource,
                 max_bytes: int | None = DEFAULT_MAX_RASTER_BYTES) -> QualityMask:
    """Read and decode a modality's quality files (errors name the file; a file declaring
    more than ``max_bytes`` decoded bytes is refused before decoding)."""
    try:
        rasters = [read_raster(p, max_bytes=max_bytes) for p in src.files]
    except RasterError as e:
        raise QualityError(str(e)) from None
    return decode(src.kind, rasters)


def to_grid(mask: QualityMask, geo: Geo | None, shape: tuple[int, int]) -> QualityMask:
    """``mask`` sampled (nearest, at pixel centres) on the grid ``geo`` of ``shape``; the
    mask must cover that grid. Without georeferencing on either side the shapes must match."""
    h, w = shape
    if geo is None or mask.geo is None:
        if mask.flagged.shape != (h, w):
            raise QualityError(f"{mask.path}: quality mask expected shape {(h, w)} (the bands' "
                               f"grid; no georeferencing to resample by), found "
                               f"{mask.flagged.shape}")
        return mask
    g = mask.geo
    if g.crs != geo.crs:
        raise QualityError(f"{mask.path}: quality mask expected CRS {geo.crs!r} like the bands, "
                           f"found {g.crs!r}")
    mh, mw = mask.flagged.shape
    same = (g.x0, g.y0, g.sx, g.sy) == (geo.x0, geo.y0, geo.sx, geo.sy)
    if same and (mh, mw) == (h, w):
        return mask
    rows = centre_index(h, -geo.y0, geo.sy, -g.y0, g.sy, mh)
    cols = centre_index(w, geo.x0, geo.sx, g.x0, g.sx, mw)
    if (rows < 0).any() or (cols < 0).any():
        raise QualityError(
            f"{mask.path}: quality mask ({mh}x{mw} px of {g.sx} m from ({g.x0}, {g.y0})) does "
            f"not cover the bands' grid ({h}x{w} px of {geo.sx} m from ({geo.x0}, {geo.y0}))")
    ix = np.ix_(rows, cols)
    return QualityMask(mask.flagged[ix], mask.fill[ix], geo, mask.path, mask.layout)


def cloud_fraction(flagged: np.ndarray, valid: np.ndarray) -> float | None:
    """Share of ``valid`` pixels that are ``flagged``; None when no pixel is valid."""
    n = int(valid.sum())
    return None if n == 0 else float((flagged & valid).sum()) / n
