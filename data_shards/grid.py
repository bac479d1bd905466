"""Bring bands of different resolution onto one grid, and cut tiles with a size and stride.

Bands are aligned by their georeferencing: the finest pixel size is the target grid; every
coarser band must have a pixel size that is an integer multiple of it and an origin offset by
a whole number of fine pixels, otherwise the bands cannot be aligned and we say so. Coarse
bands are upsampled by pixel replication (nearest), which keeps integer values exact; the
result covers the intersection of all bands' footprints.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .raster_io import Geo, Raster

TOL = 1e-3


class AlignmentError(ValueError):
    """Bands whose grids cannot be brought onto one grid."""


def _as_int(v: float, what: str) -> int:
    r = round(v)
    if abs(v - r) > TOL:
        raise AlignmentError(what)
    return int(r)


def align(bands: Sequence[tuple[str, Raster]], context: str) -> tuple[np.ndarray, Geo | None]:
    """Stack single-band rasters ``[(name, raster)]`` onto the finest grid -> ``(C, H, W)``."""
    if not bands:
        raise AlignmentError(f"{context}: no bands to align")
    for name, r in bands:
        if r.data.shape[0] != 1:
            raise AlignmentError(f"{r.path}: band {name} expected 1 channel, got {r.data.shape[0]}")
    dtypes = {r.data.dtype for _, r in bands}
    if len(dtypes) > 1:
        raise AlignmentError(f"{context}: bands have mixed dtypes {sorted(map(str, dtypes))}")
    geos = [r.geo for _, r in bands]
    if any(g is None for g in geos):
        shapes = {r.data.shape for _, r in bands}
        if len(shapes) != 1:
            raise AlignmentError(
                f"{context}: bands without georeferencing must share one shape, got "
                + ", ".join(f"{n}={r.data.shape[1:]}" for n, r in bands)
            )
        return np.concatenate([r.data for _, r in bands]), None
    crs = {g.crs for g in geos if g is not None}
    if len(crs) > 1:
        raise AlignmentError(f"{context}: bands are in different CRS {sorted(crs)}")
    fine = min(geos, key=lambda g: g.sx)  # type: ignore[union-attr]
    assert fine is not None
    spans = []
    for name, r in bands:
        g = r.geo
        assert g is not None
        fx = _as_int(g.sx / fine.sx, f"{r.path}: band {name} pixel size {g.sx} m is not an "
                     f"integer multiple of the finest {fine.sx} m; cannot align")
        fy = _as_int(g.sy / fine.sy, f"{r.path}: band {name} pixel size {g.sy} m is not an "
                     f"integer multiple of the finest {fine.sy} m; cannot align")
        ox = _as_int((g.x0 - fine.x0) / fine.sx, f"{r.path}: band {name} origin x={g.x0} is "
                     f"not on the {fine.sx} m grid starting at {fine.x0}; cannot align")
        oy = _as_int((fine.y0 - g.y0) / fine.sy, f"{r.path}: band {name} origin y={g.y0} is "
                     f"not on the {fine.sy} m grid starting at {fine.y0}; cannot align")
        h, w = r.data.shape[1:]
        spans.append((fx, fy, ox, oy, ox + w * fx, oy + h * fy))
    x_lo = max(s[2] for s in spans)
    y_lo = max(s[3] for s in spans)
    x_hi = min(s[4] for s in spans)
    y_hi = min(s[5] for s in spans)
    if x_hi <= x_lo or y_hi <= y_lo:
        raise AlignmentError(f"{context}: band footprints do not overlap")
    out = np.empty((len(bands), y_hi - y_lo, x_hi - x_lo), dtype=bands[0][1].data.dtype)
    for i, ((_, r), (fx, fy, ox, oy, _, _)) in enumerate(zip(bands, spans, strict=True)):
        rows = (np.arange(y_lo, y_hi) - oy) // fy
        cols = (np.arange(x_lo, x_hi) - ox) // fx
        out[i] = r.data[0][np.ix_(rows, cols)]
    geo = Geo(fine.x0 + x_lo * fine.sx, fine.y0 - y_lo * fine.sy, fine.sx, fine.sy, fine.crs)
    return out, geo


@dataclass
class Tile:
    """A window ``data[:, row:row+size, col:col+size]`` of a larger raster."""

    row: int
    col: int
    data: np.ndarray


def tile_starts(length: int, size: int, stride: int) -> list[int]:
    """Window starts along one axis; windows that would run off the edge are not produced."""
    if length < size:
        return []
    return list(range(0, length - size + 1, stride))


def tiles(x: np.ndarray, size: int | None, stride: int | None = None) -> Iterator[Tile]:
    """Cut ``x: (C, H, W)`` into square tiles; ``size=None`` yields the whole raster once."""
    if size is None:
        yield Tile(0, 0, x)
        return
    if size <= 0 or (stride is not None and stride <= 0):
        raise ValueError(f"tile size and stride must be positive, got {size}, {stride}")
    stride = stride or size
    for r in tile_starts(x.shape[1], size, stride):
        for c in tile_starts(x.shape[2], size, stride):
            yield Tile(r, c, x[:, r : r + size, c : c + size])


def tile_geo(geo: Geo | None, row: int, col: int) -> Geo | None:
    """Georeferencing of a tile whose top-left pixel is ``(row, col)`` of ``geo``'s raster."""
    if geo is None:
        return None
    return Geo(geo.x0 + col * geo.sx, geo.y0 - row * geo.sy, geo.sx, geo.sy, geo.crs)
