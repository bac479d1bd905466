"""Read rasters as they come from archives into ``(C, H, W)`` arrays with their georeferencing.

GeoTIFF/COG (also Sentinel-2 ``.jp2`` files that are really TIFFs) via tifffile; true JPEG2000
via rasterio when the ``geo`` extra is installed; ``.npy``/``.npz``; MATLAB ``.mat`` (scipy);
zarr arrays. Every failure names the file and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
JP2_MAGIC = (b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")
RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".npy", ".npz", ".mat", ".zarr"}


class RasterError(ValueError):
    """A raster file that cannot be read as expected."""


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
    """Pixels ``data: (C, H, W)`` plus what the file says about them."""

    data: np.ndarray
    path: str
    geo: Geo | None = None
    nodata: float | None = None


def _infer_channel_axis(shape: tuple[int, ...]) -> int:
    """Channel axis of a 3-D array: the odd one out when two axes match, else the smallest."""
    a, b, c = shape
    if a == b != c:
        return 2
    if b == c != a:
        return 0
    return int(np.argmin(shape))


def to_chw(x: np.ndarray, path: str, channel_axis: int | None = None) -> np.ndarray:
    """Bring a 2-D or 3-D array to ``(C, H, W)``."""
    if x.ndim == 2:
        return x[None]
    if x.ndim != 3:
        raise RasterError(f"{path}: expected a 2-D or 3-D raster, got shape {x.shape}")
    axis = _infer_channel_axis(x.shape) if channel_axis is None else channel_axis
    return np.moveaxis(x, axis, 0)


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


def _read_tiff(path: Path) -> Raster:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            data = tf.series[0].asarray()
            geo, nodata = _tiff_geo(page)
            channels_last = page.samplesperpixel > 1 and page.planarconfig == 1
    except Exception as e:  # tifffile raises many types for damaged files
        raise RasterError(f"{path}: cannot read as GeoTIFF ({type(e).__name__}: {e})") from None
    if channels_last:
        data = np.moveaxis(data, -1, 0)
    return Raster(to_chw(data, str(path), 0), str(path), geo, nodata)


def _read_rasterio(path: Path) -> Raster:
    try:
        import rasterio
    except ImportError:
        raise RasterError(
            f"{path}: is JPEG2000; reading it needs rasterio: pip install 'eofm[geo]'"
        ) from None
    with rasterio.open(path) as src:
        data = src.read()
        t = src.transform
        geo = Geo(t.c, t.f, t.a, -t.e, src.crs.to_string() if src.crs else "")
        return Raster(data, str(path), geo, src.nodata)


def _read_mat(path: Path, key: str | None, channel_axis: int | None) -> Raster:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise RasterError(f"{path}: reading .mat needs scipy: pip install 'eofm[mat]'") from None
    try:
        d = loadmat(path)
    except Exception as e:
        raise RasterError(f"{path}: cannot read as .mat ({e})") from None
    arrays = {k: v for k, v in d.items() if not k.startswith("__") and isinstance(v, np.ndarray)}
    return Raster(to_chw(_pick(arrays, key, path), str(path), channel_axis), str(path))


def _pick(arrays: dict[str, np.ndarray], key: str | None, path: Path) -> np.ndarray:
    if key is not None:
        if key not in arrays:
            raise RasterError(f"{path}: no array named {key!r}; found {sorted(arrays)}")
        return arrays[key]
    big = {k: v for k, v in arrays.items() if v.ndim in (2, 3)}
    if len(big) != 1:
        raise RasterError(
            f"{path}: expected exactly one 2-D/3-D array (or pass a key), found {sorted(big)}"
        )
    return next(iter(big.values()))


def read_raster(
    path: str | Path, *, key: str | None = None, channel_axis: int | None = None
) -> Raster:
    """Read one raster file into ``(C, H, W)``; ``key`` picks an array in .npz/.mat files."""
    path = Path(path)
    if not path.exists():
        raise RasterError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".zarr" or path.is_dir():
        import zarr

        try:
            arr = zarr.open_array(str(path), mode="r")[...]
        except Exception as e:
            raise RasterError(f"{path}: cannot open as a zarr array ({e})") from None
        return Raster(to_chw(np.asarray(arr), str(path), channel_axis), str(path))
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:
            raise RasterError(f"{path}: cannot read as .npy ({e})") from None
        return Raster(to_chw(arr, str(path), channel_axis), str(path))
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:
            raise RasterError(f"{path}: cannot read as .npz ({e})") from None
        return Raster(to_chw(_pick(arrays, key, path), str(path), channel_axis), str(path))
    if suffix == ".mat":
        return _read_mat(path, key, channel_axis)
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:4] in TIFF_MAGIC:
        return _read_tiff(path)
    if any(head.startswith(m) for m in JP2_MAGIC):
        return _read_rasterio(path)
    if len(head) == 0:
        raise RasterError(f"{path}: file is empty")
    raise RasterError(
        f"{path}: unrecognised raster format (expected GeoTIFF, JPEG2000, .npy, .npz, .mat or "
        f"zarr; first bytes {head[:8]!r})"
    )
