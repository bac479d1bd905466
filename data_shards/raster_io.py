"""Read rasters as they come from archives into ``(C, H, W)`` arrays with their georeferencing.

GeoTIFF/COG (also Sentinel-2 ``.jp2`` files that are really TIFFs) via tifffile; true JPEG2000
via rasterio when the ``geo`` extra is installed; ``.npy``/``.npz``; MATLAB ``.mat`` (scipy);
zarr arrays. Every failure names the file and what was expected.

Every reader checks the decoded size the file *declares* (shape x dtype, from its header:
TIFF tags, the ``.npy`` header, the ``.mat`` variable header, zarr/rasterio metadata) against
``max_bytes`` (:data:`DEFAULT_MAX_RASTER_BYTES`, ``eofm-shard build --max-raster-bytes``)
before decoding a pixel: a few hundred KB of compressed zeros can declare a raster of
hundreds of GB (a decompression bomb), which would otherwise be allocated whole. Where the
decoder does not keep to the declared shape, decoding is bounded too: each zarr chunk's
compressed bytes are checked against its chunk shape before they are decoded
(:mod:`.chunk_guard`), and v5 ``.mat`` variables are read by :mod:`.mat5`, whose data elements
must declare what their dims hold (scipy allocates what each element declares, and inflates
compressed variables a whole block at a time). GeoTIFF (tifffile decodes each tile into its
declared size), ``.npy`` and ``.npz`` (read as their header declares) need no more.

A GeoTIFF's band descriptions (GDAL's ``DESCRIPTION`` items in the ``GDAL_METADATA`` tag,
what ``gdal_translate`` and rasterio's ``set_band_description`` write) come with its pixels as
:attr:`Raster.band_names`; :func:`tiff_band_descriptions` reads them from the header alone.
Arrays (``.npy``/``.npz``/``.mat``/zarr) do not say which axis holds the bands: the one axis
whose length is the number of bands the caller expects (``expected_bands``) is, else it is
guessed from the shape (:func:`to_chw`).
"""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported when a zarr array is read
    import zarr

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
JP2_MAGIC = (b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")
RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".npy", ".npz", ".mat", ".zarr"}
TIFF_SUFFIXES = {".tif", ".tiff"}
GDAL_METADATA_TAG = "GDAL_METADATA"  # TIFF tag 42112: GDAL's <GDALMetadata> XML
DEFAULT_MAX_RASTER_BYTES = 4 * 2**30  # decoded bytes of one file (a 13-band 10980^2 S2 tile
#                                      as uint16 is 3.1 GB)
NPY_MAX_HEADER_BYTES = 10000  # numpy.load's own default (and codec.MAX_HEADER_BYTES)
MAT_BOMB = "refused before reading it (a decompression bomb, or a damaged file)"
# bytes per element of the MATLAB classes a raster can be
MAT_CLASS_ITEMSIZE = {"double": 8, "single": 4, "int8": 1, "uint8": 1, "int16": 2,
                      "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8,
                      "logical": 1}


class RasterError(ValueError):
    """A raster file that cannot be read as expected."""


class RasterTooLarge(RasterError):
    """A raster whose header declares more decoded bytes than the limit allows, or whose
    compressed data would decode to more than its header declares."""


def _human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def check_decoded_size(path: str | Path, shape: tuple[int, ...], itemsize: int, dtype: str,
                       max_bytes: int | None, what: str = "") -> int:
    """Decoded bytes of a ``shape`` x ``dtype`` array declared by ``path``'s header;
    :class:`RasterTooLarge` naming the file, shape, dtype, size, limit and how to raise it
    when over ``max_bytes`` (None: no limit)."""
    n = math.prod(int(d) for d in shape) * int(itemsize)  # Python ints: no wrap-around
    if max_bytes is not None and n > max_bytes:
        part = f" ({what})" if what else ""
        raise RasterTooLarge(
            f"{path}{part}: header declares shape {tuple(int(d) for d in shape)} of {dtype}, "
            f"{n} bytes ({_human(n)}) decoded, over the limit of {max_bytes} bytes "
            f"({_human(max_bytes)}); refused before decoding (a small compressed file can "
            "declare a huge raster). If the file is genuine, raise the limit: eofm-shard build "
            "--max-raster-bytes SIZE (e.g. 16G; IngestOptions.max_raster_bytes), or cut the "
            "raster into smaller files")
    return n


@dataclass
class Geo:
    """Axis-aligned georeferencing: top-left corner ``(x0, y0)``, pixel size ``(sx, sy)``."""

    x0: float
    y0: float
    sx: float
    sy: float
    crs: str = ""

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return {"x0": self.x0, "y0": self.y0, "sx": self.sx, "sy": self.sy, "crs": self.crs}


@dataclass
class Raster:
    """Pixels ``data: (C, H, W)`` plus what the file says about them; ``band_names``: the
    band descriptions it carries, in file order (``""`` for a band without one), None when
    it carries none (see :func:`gdal_band_descriptions`)."""

    data: np.ndarray
    path: str
    geo: Geo | None = None
    nodata: float | None = None
    band_names: list[str] | None = None


def _infer_channel_axis(shape: tuple[int, ...], expected_bands: int | None = None) -> int:
    """Channel axis of a 3-D array: the one axis of length ``expected_bands`` when exactly
    one has it; else the odd one out when two axes match, else the smallest."""
    if expected_bands is not None:
        hits = [i for i, n in enumerate(shape) if n == expected_bands]
        if len(hits) == 1:
            return hits[0]
    a, b, c = shape
    if a == b != c:
        return 2
    if b == c != a:
        return 0
    return int(np.argmin(shape))


def to_chw(x: np.ndarray, path: str, channel_axis: int | None = None,
           expected_bands: int | None = None) -> np.ndarray:
    """Bring a 2-D or 3-D array to ``(C, H, W)``. Without ``channel_axis`` the band axis of
    a 3-D array is the one axis of length ``expected_bands`` (when given and exactly one
    axis has it), else guessed from the shape; a guess that does not give ``expected_bands``
    bands is a RasterError naming the shape and the axes of that length."""
    if x.ndim == 2:
        return x[None]
    if x.ndim != 3:
        raise RasterError(f"{path}: expected a 2-D or 3-D raster, got shape {x.shape}")
    if channel_axis is not None:
        return np.moveaxis(x, channel_axis, 0)
    axis = _infer_channel_axis(x.shape, expected_bands)
    if expected_bands is not None and x.shape[axis] != expected_bands:
        shape = tuple(int(n) for n in x.shape)
        hits = [i for i, n in enumerate(shape) if n == expected_bands]
        found = (f"axes {hits} all have that length, so the shape does not say which holds "
                 "the bands" if hits else "no axis has that length")
        raise RasterError(f"{path}: expected {expected_bands} bands along one axis of the "
                          f"array, got shape {shape}: {found}; store it as (C, H, W) "
                          f"(bands first) with {expected_bands} bands")
    return np.moveaxis(x, axis, 0)


def gdal_band_descriptions(xml: str | bytes, count: int) -> list[str] | None:
    """The band descriptions in a ``GDAL_METADATA`` XML text of a ``count``-band raster
    (``<Item name="DESCRIPTION" sample="i" role="description">B01</Item>``), in band order,
    ``""`` for a band without one; None when it describes no band, is not XML, or describes
    a band the raster does not have (``sample`` outside ``0..count-1``)."""
    if isinstance(xml, bytes):
        xml = xml.decode("utf-8", errors="replace")
    try:
        root = ET.fromstring(xml.strip("\x00 \n"))
    except ET.ParseError:
        return None
    names = [""] * count
    found = False
    for item in root.iter("Item"):
        sample = item.get("sample")
        if item.get("name") != "DESCRIPTION" or sample is None \
                or item.get("role", "description") != "description":
            continue  # dataset-level items, band scale/offset/statistics
        try:
            i = int(sample)
        except ValueError:
            return None
        if not 0 <= i < count:
            return None
        names[i] = (item.text or "").strip()
        found = True
    return names if found else None


def _tiff_band_count(page, shape: tuple[int, ...]) -> int:
    """Bands of the TIFF series of ``shape`` whose first page is ``page``, as
    :func:`read_raster` reads them (contiguous samples last, planar ones first)."""
    if page.samplesperpixel > 1 and page.planarconfig == 1:
        return int(shape[-1])
    return int(shape[0]) if len(shape) == 3 else 1


def _page_descriptions(page, count: int) -> list[str] | None:
    """:func:`gdal_band_descriptions` of a TIFF page's ``GDAL_METADATA`` tag; None without."""
    tag = page.tags.get(GDAL_METADATA_TAG)
    return None if tag is None else gdal_band_descriptions(tag.value, count)


def tiff_band_descriptions(path: str | Path) -> list[str] | None:
    """The band descriptions a GeoTIFF's header carries (:func:`gdal_band_descriptions`),
    read without decoding a pixel; None for other formats, files without descriptions and
    files that cannot be read as TIFF (reading their pixels names the problem)."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page, shape = tf.pages[0], tuple(tf.series[0].shape)
            return _page_descriptions(page, _tiff_band_count(page, shape))
    except Exception:  # tifffile raises many types for damaged files
        return None


def _tiff_geo(page) -> tuple[Geo | None, float | None]:
    tags = page.tags
    geo = None
    if "ModelPixelScaleTag" in tags and "ModelTiepointTag" in tags:
        sx, sy = tags["ModelPixelScaleTag"].value[:2]
        tp = tags["ModelTiepointTag"].value
        i, j, x, y = tp[0], tp[1], tp[3], tp[4]
        crs = ""
        point = False
        if "GeoAsciiParamsTag" in tags:
            crs = str(tags["GeoAsciiParamsTag"].value).split("|")[0]
        if "GeoKeyDirectoryTag" in tags:
            keys = tags["GeoKeyDirectoryTag"].value
            for k in range(4, len(keys) - 3, 4):
                if keys[k] in (3072, 2048) and keys[k + 1] == 0:  # Projected / Geographic CRS
                    crs = f"EPSG:{keys[k + 3]}"
                if keys[k] == 1025 and keys[k + 1] == 0:  # GTRasterTypeGeoKey
                    point = keys[k + 3] == 2  # PixelIsPoint: tiepoint is a pixel centre
        x0, y0 = x - i * sx, y + j * sy
        if point:
            x0, y0 = x0 - sx / 2, y0 + sy / 2
        geo = Geo(float(x0), float(y0), float(sx), float(sy), crs)
    nodata = None
    if "GDAL_NODATA" in tags:
        try:
            nodata = float(str(tags["GDAL_NODATA"].value).strip("\x00 "))
        except ValueError:
            nodata = None
    return geo, nodata


def _read_tiff(path: Path, max_bytes: int | None) -> Raster:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page, series = tf.pages[0], tf.series[0]
            dtype = np.dtype(series.dtype)
            check_decoded_size(path, series.shape, dtype.itemsize, str(dtype), max_bytes)
            data = series.asarray()
            geo, nodata = _tiff_geo(page)
            channels_last = page.samplesperpixel > 1 and page.planarconfig == 1
            names = _page_descriptions(page, _tiff_band_count(page, tuple(series.shape)))
    except RasterTooLarge:
        raise
    except Exception as e:  # tifffile raises many types for damaged files
        raise RasterError(f"{path}: cannot read as GeoTIFF ({type(e).__name__}: {e})") from None
    if channels_last:
        data = np.moveaxis(data, -1, 0)
    return Raster(to_chw(data, str(path), 0), str(path), geo, nodata, names)


def _read_rasterio(path: Path, max_bytes: int | None) -> Raster:
    try:
        import rasterio
    except ImportError:
        raise RasterError(
            f"{path}: is JPEG2000; reading it needs rasterio: pip install 'eofm[geo]'"
        ) from None
    with rasterio.open(path) as src:
        dtype = max((np.dtype(d) for d in src.dtypes), key=lambda d: d.itemsize)
        check_decoded_size(path, (src.count, src.height, src.width), dtype.itemsize,
                           str(dtype), max_bytes)
        data = src.read()
        t = src.transform
        geo = Geo(t.c, t.f, t.a, -t.e, src.crs.to_string() if src.crs else "")
        return Raster(data, str(path), geo, src.nodata)


def _read_mat(path: Path, key: str | None, channel_axis: int | None,
              max_bytes: int | None, expected_bands: int | None = None) -> Raster:
    try:
        from scipy.io import loadmat, whosmat
        from scipy.io.matlab import matfile_version
    except ImportError:
        raise RasterError(f"{path}: reading .mat needs scipy: pip install 'eofm[mat]'") from None
    from . import mat5

    try:  # v5 files: the variables' headers alone, read by hand (mat5: scipy would inflate
        # whole blocks of a compressed variable, and allocate what its elements declare)
        v5 = matfile_version(path)[0] == 1
        head, order, variables = mat5.scan(path) if v5 else (b"", "", [])
        source = io.BytesIO(mat5.headers_only(head, order, variables)) if v5 else path
        # as loadmat gives them: sparse matrices are no arrays, char arrays are strings
        found = {name: (tuple(shape[:-1]) if cls == "char" else tuple(shape), cls)
                 for name, shape, cls in whosmat(source) if cls != "sparse"}
    except mat5.MatTooLarge as e:
        raise RasterTooLarge(f"{path}: {e}; {MAT_BOMB}") from None
    except Exception as e:
        raise RasterError(f"{path}: cannot read as .mat ({e})") from None
    name = _pick(found, key, path)
    shape, cls = found[name]
    if cls not in MAT_CLASS_ITEMSIZE:
        raise RasterError(f"{path}: variable {name!r} is a MATLAB {cls}; expected a numeric "
                          f"array ({', '.join(MAT_CLASS_ITEMSIZE)})")
    check_decoded_size(path, shape, MAT_CLASS_ITEMSIZE[cls], cls, max_bytes,
                       f"variable {name!r}")
    try:
        if v5:  # the first of that name, as loadmat reads it; '' is MATLAB's function workspace
            var = next(v for v in variables if (v.name or "__function_workspace__") == name)
            x = mat5.read_numeric(path, var, order, max_bytes)
        else:  # v4: uncompressed, its data read as the dims checked above declare
            x = loadmat(path, variable_names=[name])[name]
    except mat5.MatOverLimit as e:
        raise RasterTooLarge(f"{path} (variable {name!r}): {e}; if the file is genuine, raise "
                             "the limit: eofm-shard build --max-raster-bytes SIZE") from None
    except mat5.MatTooLarge as e:
        raise RasterTooLarge(f"{path} (variable {name!r}): {e}; {MAT_BOMB}") from None
    except Exception as e:
        raise RasterError(f"{path}: cannot read as .mat (variable {name!r}: {e})") from None
    return Raster(to_chw(x, str(path), channel_axis, expected_bands), str(path))


def _pick(shapes: dict[str, tuple], key: str | None, path: Path) -> str:
    """The name of the array to read among ``{name: (shape, ...)}``: ``key``, else the one
    2-D/3-D array."""
    if key is not None:
        if key not in shapes:
            raise RasterError(f"{path}: no array named {key!r}; found {sorted(shapes)}")
        return key
    big = sorted(k for k, v in shapes.items() if len(v[0]) in (2, 3))
    if len(big) != 1:
        raise RasterError(
            f"{path}: expected exactly one 2-D/3-D array (or pass a key), found {big}"
        )
    return big[0]


def _npy_header(f, path: Path, what: str = "") -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the ``.npy`` header at ``f``'s position; headers over
    :data:`NPY_MAX_HEADER_BYTES` are refused, as ``numpy.load`` refuses them."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f, max_header_size=NPY_MAX_HEADER_BYTES)
    except Exception as e:
        part = f" ({what})" if what else ""
        raise RasterError(f"{path}{part}: cannot read the .npy header ({e})") from None
    return tuple(shape), dtype


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{array name: (shape, dtype)}`` of an ``.npz`` file's ``.npy`` members, from their
    headers (each member inflated only as far as its header)."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.filename.endswith(".npy"):
                    with z.open(info) as f:
                        out[info.filename[:-4]] = _npy_header(f, path, info.filename)
    except (OSError, zipfile.BadZipFile) as e:
        raise RasterError(f"{path}: cannot read as .npz ({e})") from None
    return out


def _check_zarr_chunks(path: Path, z: zarr.Array, dtype: np.dtype, max_bytes: int | None
                       ) -> None:
    """:func:`check_decoded_size` of the chunk (and shard) of zarr array ``z`` when one
    declares more bytes than the whole array: zarr decodes whole chunks, however little of
    them lies inside the array."""
    whole = math.prod(z.shape) * dtype.itemsize
    for what, shape in (("chunk", z.chunks), ("shard", getattr(z, "shards", None))):
        if shape is not None and math.prod(shape) * dtype.itemsize > whole:
            check_decoded_size(path, shape, dtype.itemsize, str(dtype), max_bytes,
                               f"one {what}: zarr decodes whole {what}s")


def read_raster(
    path: str | Path, *, key: str | None = None, channel_axis: int | None = None,
    max_bytes: int | None = DEFAULT_MAX_RASTER_BYTES, expected_bands: int | None = None,
) -> Raster:
    """Read one raster file into ``(C, H, W)``; ``key`` picks an array in .npz/.mat files.
    A file whose header declares more than ``max_bytes`` decoded bytes (None: no limit) is
    refused with :class:`RasterTooLarge` before anything is decoded. ``expected_bands``: the
    bands the caller expects, which tells an array's band axis (:func:`to_chw`)."""
    path = Path(path)
    if not path.exists():
        raise RasterError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".zarr" or path.is_dir():
        import zarr

        from .chunk_guard import ChunkError, ChunkTooLarge, guard_array

        try:
            z = zarr.open_array(str(path), mode="r")
            dtype = np.dtype(z.dtype)
        except Exception as e:
            raise RasterError(f"{path}: cannot open as a zarr array ({e})") from None
        check_decoded_size(path, z.shape, dtype.itemsize, str(dtype), max_bytes)
        _check_zarr_chunks(path, z, dtype, max_bytes)
        try:  # every chunk's compressed bytes bounded by its shape before decoding
            arr = guard_array(z)[...]
        except ChunkTooLarge as e:
            raise RasterTooLarge(str(e)) from None
        except ChunkError as e:
            raise RasterError(str(e)) from None
        except Exception as e:
            raise RasterError(f"{path}: cannot open as a zarr array ({e})") from None
        return Raster(to_chw(np.asarray(arr), str(path), channel_axis, expected_bands),
                      str(path))
    if suffix == ".npy":
        try:
            with open(path, "rb") as f:
                shape, dtype = _npy_header(f, path)
        except OSError as e:
            raise RasterError(f"{path}: cannot read as .npy ({e})") from None
        check_decoded_size(path, shape, dtype.itemsize, str(dtype), max_bytes)
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:
            raise RasterError(f"{path}: cannot read as .npy ({e})") from None
        return Raster(to_chw(arr, str(path), channel_axis, expected_bands), str(path))
    if suffix == ".npz":
        headers = _npz_headers(path)
        name = _pick(headers, key, path)
        shape, dtype = headers[name]
        check_decoded_size(path, shape, dtype.itemsize, str(dtype), max_bytes,
                           f"array {name!r}")
        try:
            with np.load(path, allow_pickle=False) as z:
                arr = z[name]
        except Exception as e:
            raise RasterError(f"{path}: cannot read as .npz ({e})") from None
        return Raster(to_chw(arr, str(path), channel_axis, expected_bands), str(path))
    if suffix == ".mat":
        return _read_mat(path, key, channel_axis, max_bytes, expected_bands)
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:4] in TIFF_MAGIC:
        return _read_tiff(path, max_bytes)
    if any(head.startswith(m) for m in JP2_MAGIC):
        return _read_rasterio(path, max_bytes)
    if len(head) == 0:
        raise RasterError(f"{path}: file is empty")
    raise RasterError(
        f"{path}: unrecognised raster format (expected GeoTIFF, JPEG2000, .npy, .npz, .mat or "
        f"zarr; first bytes {head[:8]!r})"
    )
