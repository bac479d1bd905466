"""Bring bands of different resolution onto one grid, and cut tiles with a size and stride.

Bands are aligned by their georeferencing: the finest pixel size is the target grid. By
default (``exact``) every coarser band must have a pixel size that is an integer multiple of it
and an origin offset by a whole number of fine pixels, otherwise the bands cannot be aligned
and we say so; ``nearest`` instead samples each band at the fine pixel centres (grids exported
centre-aligned, such as SSL4EO-S12's, or Landsat's half-pixel-offset pan band; a centre on a
coarse pixel edge always takes the pixel starting there, see :func:`centre_index`). Both keep
integer values exact; the result covers the intersection of all bands' footprints. Refusals
give sizes and origins in the CRS's unit (:func:`crs_unit`: metres, degrees, else "CRS units").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .raster_io import Geo, Raster

TOL = 1e-3
# a fine pixel centre this close to a coarse pixel edge (in coarse pixels) is on it: float
# rounding of coordinates errs by ~1e-10 pixels at most, real offsets are far larger
TIE_TOL = 1e-6

GEOGRAPHIC_CRS = {"EPSG:4326", "EPSG:4258", "EPSG:4269", "EPSG:4979"}  # grids in degrees
# projected CRS known to be in metres: WGS 84 / UTM, ETRS89 / UTM, NAD83 / UTM, ETRS89-LAEA
# Europe, Web Mercator, EASE-Grid 2.0
_METRIC_RANGES = ((32601, 32660), (32701, 32760), (25828, 25838), (26901, 26923))
_METRIC_CODES = {3035, 3857, 6933}


def crs_unit(crs: str) -> str | None:
    """Unit of a CRS's coordinates, hence of its pixel sizes and origins: ``"degrees"`` for a
    geographic CRS (:data:`GEOGRAPHIC_CRS`), ``"m"`` for a projected CRS known to be metric
    (UTM zones and a few more), None when unknown (no CRS, or a code not listed)."""
    if crs in GEOGRAPHIC_CRS:
        return "degrees"
    prefix, _, code = crs.upper().partition("EPSG:")
    if prefix or not code.isdigit():
        return None
    n = int(code)
    if n in _METRIC_CODES or any(lo <= n <= hi for lo, hi in _METRIC_RANGES):
        return "m"
    return None


def _in_units(crs: str) -> str:
    """The unit to print after a coordinate of ``crs`` (:func:`crs_unit`, else
    ``"CRS units"``): refusals of a grid in degrees must not speak of metres."""
    return crs_unit(crs) or "CRS units"


class AlignmentError(ValueError):
    """Bands whose grids cannot be brought onto one grid."""


def _as_int(v: float, what: str) -> int:
    r = round(v)
    if abs(v - r) > TOL:
        raise AlignmentError(what)
    return int(r)


def centre_index(n_fine: int, fine_origin: float, fine_step: float, origin: float,
                  step: float, n: int) -> np.ndarray:
    """Index into a coarse axis of each fine pixel centre (-1 where it falls outside).

    A centre on a coarse pixel edge (a tie: within :data:`TIE_TOL` coarse pixels of it, as in
    centre-aligned grids such as SSL4EO-S12's, where every sixth 10 m centre lies on a 60 m
    edge) always goes to the pixel that starts at the edge (the next one along the axis), so
    a coarse pixel covers the same number of fine pixels everywhere; left to float rounding,
    each tie went either way (60 m pixels repeated 5, 6 or 7 times)."""
    centres = fine_origin + (np.arange(n_fine) + 0.5) * fine_step
    q = (centres - origin) / step
    whole = np.round(q)
    q = np.where(np.abs(q - whole) < TIE_TOL, whole, q)  # ties: snapped onto the edge
    idx = np.floor(q).astype(np.int64)
    idx[(idx < 0) | (idx >= n)] = -1
    return idx


def _check_exact(name: str, r: Raster, fine: Geo, finest: Sequence[str] = (),
                 pan_like: bool = False) -> None:
    """Refuse a band whose grid does not nest in the finest one (``fine``: the grid of the
    ``finest`` bands); ``pan_like``: the finest grid is one band's, of a projected grid, among
    several coarser bands (a panchromatic band), which the hint then names."""
    g = r.geo
    assert g is not None
    hint = "; cannot align exactly (pass --resample nearest to sample it at fine pixel centres"
    unit = _in_units(fine.crs)
    if pan_like and g.sx > fine.sx:  # e.g. Landsat's 15 m pan band over its 30 m bands
        hint += (f", or leave out the {fine.sx:g} {unit} band {finest[0]} with --bands "
                 f"MODALITY=... so the coarser grid is the finest")
    hint += ")"
    _as_int(g.sx / fine.sx, f"{r.path}: band {name} pixel size {g.sx} {unit} is not an "
            f"integer multiple of the finest {fine.sx} {unit}" + hint)
    _as_int(g.sy / fine.sy, f"{r.path}: band {name} pixel size {g.sy} {unit} is not an "
            f"integer multiple of the finest {fine.sy} {unit}" + hint)
    _as_int((g.x0 - fine.x0) / fine.sx, f"{r.path}: band {name} origin x={g.x0} is not on the "
            f"{fine.sx} {unit} grid starting at {fine.x0}" + hint)
    _as_int((fine.y0 - g.y0) / fine.sy, f"{r.path}: band {name} origin y={g.y0} is not on the "
            f"{fine.sy} {unit} grid starting at {fine.y0}" + hint)


def align(bands: Sequence[tuple[str, Raster]], context: str,
          resample: str = "exact") -> tuple[np.ndarray, Geo | None]:
    """Stack single-band rasters ``[(name, raster)]`` onto the finest grid -> ``(C, H, W)``.

    ``exact`` requires every grid to nest in the finest one (integer size ratio, origin on a
    fine pixel corner) and replicates coarse pixels; ``nearest`` samples each band at the fine
    pixel centres, for grids that do not nest (e.g. centre-aligned exports). Both keep integer
    values exact and cover only where every band has data.
    """
    if resample not in ("exact", "nearest"):
        raise ValueError(f"resample: expected 'exact' or 'nearest', got {resample!r}")
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
    fine_r = min((r for _, r in bands), key=lambda r: r.geo.sx)  # type: ignore[union-attr]
    fine = fine_r.geo
    assert fine is not None
    fh, fw = fine_r.data.shape[1:]
    index = []
    finest = [n for n, r in bands if r.geo.sx == fine.sx]  # type: ignore[union-attr]
    pan_like = len(finest) == 1 < len(bands) - 1 and fine.sx >= 0.01  # metres, not degrees
    for name, r in bands:
        if resample == "exact":
            _check_exact(name, r, fine, finest, pan_like)
        g = r.geo
        assert g is not None
        rows = centre_index(fh, -fine.y0, fine.sy, -g.y0, g.sy, r.data.shape[1])
        cols = centre_index(fw, fine.x0, fine.sx, g.x0, g.sx, r.data.shape[2])
        index.append((rows, cols))
    ok_r = np.logical_and.reduce([ri >= 0 for ri, _ in index])
    ok_c = np.logical_and.reduce([ci >= 0 for _, ci in index])
    if not ok_r.any() or not ok_c.any():
        raise AlignmentError(f"{context}: band footprints do not overlap")
    r0, r1 = int(np.argmax(ok_r)), len(ok_r) - int(np.argmax(ok_r[::-1]))
    c0, c1 = int(np.argmax(ok_c)), len(ok_c) - int(np.argmax(ok_c[::-1]))
    out = np.empty((len(bands), r1 - r0, c1 - c0), dtype=bands[0][1].data.dtype)
    for i, ((_, r), (rows, cols)) in enumerate(zip(bands, index, strict=True)):
        out[i] = r.data[0][np.ix_(rows[r0:r1], cols[c0:c1])]
    geo = Geo(fine.x0 + c0 * fine.sx, fine.y0 - r0 * fine.sy, fine.sx, fine.sy, fine.crs)
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
    if size <= 0:
        raise ValueError(f"tile: expected a positive number of pixels, got {size}")
    if stride is not None and stride <= 0:
        raise ValueError(f"stride: expected a positive number of pixels (None: the tile "
                         f"size), got {stride}")
    stride = stride or size
    for r in tile_starts(x.shape[1], size, stride):
        for c in tile_starts(x.shape[2], size, stride):
            yield Tile(r, c, x[:, r : r + size, c : c + size])


def tile_geo(geo: Geo | None, row: int, col: int) -> Geo | None:
    """Georeferencing of a tile whose top-left pixel is ``(row, col)`` of ``geo``'s raster."""
    if geo is None:
        return None
    return Geo(geo.x0 + col * geo.sx, geo.y0 - row * geo.sy, geo.sx, geo.sy, geo.crs)
