"""Turn one :class:`~.layouts.SourceItem` into validated tiles: bands by name on one grid,
nodata masks, labels and metadata, ready for any writer (tar shards or zarr). Sentinel-2
pixels leave here offset-free (reflectance x 10000): the modality's ``correction`` (decided by
the build, see :mod:`.s2_baseline`) is applied to the valid pixels before tiling. Paired
modalities share one grid: when all are georeferenced, their CRS, size, pixel size and origin
are compared (:func:`grid_differences`), not just their pixel counts. With ``resample="exact"``
any difference is refused, naming the item, its files and what differs; with ``"nearest"``
modalities on different grids of one CRS (SSL4EO-S12 S1 and S2) are sampled on the grid of the
first one the others cover, else on the first one's grid cut to the part all of them cover.

A modality's quality/cloud mask (:mod:`.quality`), when its source has one, is resampled
(nearest) to the modality's grid; every tile then records ``cloud_fraction`` (share of its valid
pixels flagged, max over masked modalities) in ``meta.json``, absent when no modality has a
mask. ``cloud_as_nodata`` folds flagged (and mask-fill) pixels into ``valid``; ``max_cloud``
drops tiles whose fraction exceeds it (counted as ``dropped_cloud``). The ``max_nodata`` check
looks at band nodata only, so a cloudy tile is a cloud drop, never a nodata drop.

Backscatter of a sensor that stores dB (Sentinel-1) that looks like linear power (no negative
pixel) is warned about and counted (``s1_looks_linear``); with ``s1_linear_to_db`` it is
converted instead (:func:`linear_to_db`: ``10*log10(power)``, power 0 or invalid -> nodata),
before statistics and writing, and input that is already dB (negative pixels) is refused.

A segmentation raster (``--seg-dir``) must have the first modality's grid size; each tile's
``seg`` is cut with that tile's own height and width (:func:`seg_window`), so a whole
non-square raster (no ``--tile``) keeps every column under its pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

import numpy as np

from .grid import GEOGRAPHIC_CRS, TOL, Tile, align, centre_index, tile_geo, tiles
from .layouts import ModalitySource, SourceItem
from .quality import QualityMask, cloud_fraction, read_quality, to_grid
from .raster_io import DEFAULT_MAX_RASTER_BYTES, Geo, Raster, RasterError, read_raster
from .s2_baseline import correct
from .sensors import get_sensor
from .stats import invalid_mask

log = logging.getLogger(__name__)

CLOUD_BIN = 10  # percent: width of the build's cloud_fraction histogram counters


class IngestError(ValueError):
    """Input rasters that do not satisfy what their sensor and layout promise."""


@dataclass
class IngestOptions:
    """How items become tiles."""

    tile: int | None = None
    stride: int | None = None
    max_nodata: float = 0.5
    bands: dict[str, list[str]] = field(default_factory=dict)  # modality -> band names, in order
    nan_policy: str = "error"  # "error" | "nodata"
    resample: str = "exact"  # "exact" | "nearest" (see grid.align)
    cloud_as_nodata: bool = False  # fold quality-mask flagged pixels into `valid`
    max_cloud: float | None = None  # drop tiles whose cloud_fraction exceeds this
    s1_linear_to_db: bool = False  # dB-declared backscatter given as linear power: convert it
    # decoded bytes one input file may declare (checked from its header, before decoding)
    max_raster_bytes: int = DEFAULT_MAX_RASTER_BYTES

    def __post_init__(self) -> None:
        if (isinstance(self.max_raster_bytes, bool) or not isinstance(self.max_raster_bytes, int)
                or self.max_raster_bytes <= 0):
            raise ValueError(f"max_raster_bytes: expected a positive number of bytes, got "
                             f"{self.max_raster_bytes!r}")
        if self.max_cloud is not None and not 0.0 <= self.max_cloud <= 1.0:
            raise ValueError(f"max_cloud: expected a fraction in [0, 1], got {self.max_cloud}")
        if not 0.0 <= self.max_nodata <= 1.0:  # also refuses NaN
            raise ValueError(f"--max-nodata: expected a fraction in [0, 1] (the share of a "
                             f"tile's pixels that may be nodata), got {self.max_nodata}")
        _check_pixels("--tile", self.tile, "unset: one tile per whole raster")
        _check_pixels("--stride", self.stride, "unset: the tile size")
        if self.stride is not None and self.tile is None:  # one tile per raster has no stride
            raise ValueError(f"--stride: {self.stride} given without --tile; the stride steps "
                             "tiles of --tile pixels (without --tile each raster is one tile)")


def _check_pixels(flag: str, value: object, unset: str) -> None:
    """ValueError naming ``flag`` (the :class:`IngestOptions` field without dashes) unless
    ``value`` is None or a positive whole number of pixels."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value <= 0:
        raise ValueError(f"{flag}: expected a positive number of pixels ({unset}), "
                         f"got {value!r}")


@dataclass
class TileSample:
    """One output sample: per-modality ``(C, H, W)`` arrays and ``(H, W)`` validity masks."""

    key: str
    arrays: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    meta: dict
    label: np.ndarray | None = None
    seg: np.ndarray | None = None


@dataclass
class ModalityPlan:
    """The resolved contract of one modality: sensor, band names in output order, nodata."""

    sensor: str
    bands: list[str]
    dtype: str
    nodata: list[float | None]
    gsd_m: float
    hist_range: tuple[float, float] | None


def plan_modality(name: str, src: ModalitySource, opts: IngestOptions) -> ModalityPlan:
    """Resolve the output bands of a modality (``opts.bands[name]`` or the sensor's order)."""
    sensor = get_sensor(src.sensor)
    wanted = opts.bands.get(name)
    names = sensor.band_names if wanted is None else [sensor.canonical(b) for b in wanted]
    available = {b for _, bands in src.files for b in bands}
    missing = [b for b in names if b not in available]
    if missing and wanted is not None:
        raise IngestError(f"modality {name}: requested bands {missing} are not in the input "
                          f"(it has {sorted(available)})")
    if missing:  # sensor order, restricted to what the archive holds (e.g. L2A without B10)
        names = [b for b in names if b in available]
    if not names:
        raise IngestError(f"none of sensor {sensor.id}'s bands "
                          f"({', '.join(sensor.band_names)}) is in the input (its files hold "
                          f"{sorted(available)}); declare the files' band names in file order "
                          "with --file-bands")
    bands = [sensor.band(b) for b in names]
    ranges = [b.hist_range for b in bands if b.hist_range is not None]
    return ModalityPlan(
        sensor.id, names, sensor.dtype, [b.nodata for b in bands],
        min(b.gsd_m for b in bands),
        (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None,
    )


def check_band_modalities(bands: Mapping[str, Sequence[str]], modalities: Iterable[str]) -> None:
    """Refuse ``--bands`` (``opts.bands``) keys that name no modality of the input, which would
    otherwise be ignored and every band written. Modality names match exactly, as everywhere
    else (``--modality``, ``--stack``, the reader's ``bands``); a key that differs only in case
    gets a hint."""
    have = sorted(set(modalities))
    unknown = [k for k in bands if k not in have]
    if not unknown:
        return
    hints = [f"{k!r} -> {m!r}" for k in unknown for m in have if k.lower() == m.lower()]
    hint = f" (modality names are case-sensitive: {', '.join(hints)})" if hints else ""
    raise IngestError(f"--bands: modality {', '.join(repr(k) for k in unknown)} is not in the "
                      f"input; its modalities are {', '.join(have)}{hint}")


def load_modality(src: ModalitySource, plan: ModalityPlan, context: str,
                  resample: str = "exact", max_bytes: int | None = DEFAULT_MAX_RASTER_BYTES,
                  ) -> tuple[np.ndarray, Geo | None]:
    """Read a modality's files, check them against the plan, align to one grid: ``(C, H, W)``.
    A file declaring more than ``max_bytes`` decoded bytes is refused before decoding; an
    array's band axis is the one as long as the bands the file is listed with."""
    per_band: dict[str, Raster] = {}
    for path, names in src.files:
        wanted = [n for n in names if n in plan.bands]
        if not wanted:
            continue
        r = read_raster(path, max_bytes=max_bytes, expected_bands=len(names))
        if r.data.shape[0] != len(names):
            raise IngestError(
                f"{path}: expected {len(names)} bands ({', '.join(names)}) for {plan.sensor}, "
                f"file has {r.data.shape[0]}"
            )
        if r.data.dtype != np.dtype(plan.dtype):
            raise IngestError(f"{path}: expected pixels of dtype {plan.dtype} for {plan.sensor}, "
                              f"got {r.data.dtype}")
        for i, n in enumerate(names):
            if n in plan.bands:
                band = file_nodata(r.data[i : i + 1], r.nodata,
                                   plan.nodata[plan.bands.index(n)], f"{path} band {n}")
                per_band[n] = Raster(band, r.path, r.geo, r.nodata)
    missing = [b for b in plan.bands if b not in per_band]
    if missing:
        raise IngestError(f"{context}: no file provides bands {missing}")
    ordered = [(b, per_band[b]) for b in plan.bands]
    shapes = {r.data.shape for _, r in ordered}
    geos = {(r.geo.x0, r.geo.y0, r.geo.sx, r.geo.sy) if r.geo else None for _, r in ordered}
    if len(shapes) == 1 and len(geos) == 1:
        return np.concatenate([r.data for _, r in ordered]), ordered[0][1].geo
    return align(ordered, context, resample)


def file_nodata(x: np.ndarray, declared: float | None, nodata: float | None,
                context: str) -> np.ndarray:
    """Honour the nodata value a raster file declares (GeoTIFF ``GDAL_NODATA``) when the
    sensor's band uses another one or none: its pixels become the band's nodata value, or NaN
    for float bands without one (then ``--nan-policy`` decides: refused by default, masked with
    ``nodata``). An integer band without a nodata value cannot mark them: IngestError. Without
    this, fill such as -9999 in a dB raster entered the statistics as data."""
    if declared is None or (nodata is not None and (declared == nodata or
                                                    (np.isnan(declared) and np.isnan(nodata)))):
        return x
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        if np.isnan(declared) or not float(declared).is_integer() \
                or not info.min <= declared <= info.max:
            return x  # a fractional or out-of-range nodata cannot match integer pixels
    bad = np.isnan(x) if np.isnan(declared) else x == np.asarray(declared).astype(x.dtype)
    if not bad.any():
        return x
    if nodata is not None:
        return np.where(bad, np.asarray(nodata, x.dtype), x)
    if np.issubdtype(x.dtype, np.floating):
        return np.where(bad, np.asarray(np.nan, x.dtype), x)
    raise IngestError(f"{context}: {int(bad.sum())} pixels at the file's nodata value "
                      f"{declared:g}, but the sensor declares no nodata for this band; declare "
                      "it in a sensors YAML (band nodata) or clear the file's nodata tag")


def looks_linear_power(x: np.ndarray, nodata: Sequence[float | None]) -> bool:
    """Whether ``(C, H, W)`` backscatter declared in dB looks like linear power instead: no
    valid pixel of any band is negative (sigma0 in dB is mostly -30..0; 10*log10 of linear
    power < 1). False when no band has a valid pixel."""
    seen = False
    for i in range(x.shape[0]):
        band = x[i][~invalid_mask(x[i], nodata[i])]
        if band.size == 0:
            continue
        if band.min() < 0:
            return False
        seen = True
    return seen


LINEAR_TO_DB_FLAG = "--s1-linear-to-db"


def stores_db(plan: ModalityPlan) -> bool:
    """Whether every band of the modality is declared in dB by its sensor (Sentinel-1)."""
    sensor = get_sensor(plan.sensor)
    return all(sensor.band(b).units == "dB" for b in plan.bands)


def _check_db(x: np.ndarray, plan: ModalityPlan, context: str, counters: dict[str, int]) -> None:
    """Warn (and count ``s1_looks_linear``) when a modality whose sensor stores dB looks like
    linear power: the statistics and the model would take power for decibels."""
    if not stores_db(plan):
        return
    if looks_linear_power(x, plan.nodata):
        counters["s1_looks_linear"] = counters.get("s1_looks_linear", 0) + 1
        log.warning("%s: sensor %s stores backscatter in dB, but no pixel is negative: these "
                    "look like linear power. Pass %s to convert them at ingest (dB = "
                    "10*log10(power), power 0 made nodata), or convert first, or the statistics "
                    "and the model take power for decibels", context, plan.sensor,
                    LINEAR_TO_DB_FLAG)


def linear_to_db(x: np.ndarray, plan: ModalityPlan, context: str) -> tuple[np.ndarray, int]:
    """``(C, H, W)`` linear power as dB (``10*log10``, computed in float64, returned in ``x``'s
    float dtype) and the number of pixels made nodata. Pixels already invalid (the band's
    nodata, NaN, inf) and power 0 become the band's nodata (NaN for a band without one).
    IngestError when a valid pixel is negative (linear power never is: the input is already
    dB, and converting it again would corrupt it) or the dtype is not floating."""
    if not np.issubdtype(x.dtype, np.floating):
        raise IngestError(f"{context}: {LINEAR_TO_DB_FLAG}: expected float pixels for "
                          f"{plan.sensor}, found {x.dtype}")
    bad = [invalid_mask(x[i], plan.nodata[i]) for i in range(x.shape[0])]
    negative = {b: int((~bad[i] & (x[i] < 0)).sum()) for i, b in enumerate(plan.bands)}
    if any(negative.values()):
        found = ", ".join(f"{b}: {n} px" for b, n in negative.items() if n)
        raise IngestError(f"{context}: {LINEAR_TO_DB_FLAG} expects linear power (>= 0), but "
                          f"bands have negative pixels ({found}): this backscatter is already "
                          f"in dB; build it without {LINEAR_TO_DB_FLAG} (if it is power with "
                          "negative noise-subtraction residue, set those pixels to 0 first)")
    out = np.empty_like(x)
    made = 0
    for i in range(x.shape[0]):
        drop = bad[i] | (x[i] == 0)
        made += int((drop & ~bad[i]).sum())
        fill = np.nan if plan.nodata[i] is None else plan.nodata[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            db = 10.0 * np.log10(x[i].astype(np.float64))
        out[i] = np.where(drop, fill, db)
    return out, made


def _backscatter(x: np.ndarray, plan: ModalityPlan, context: str, counters: dict[str, int],
                 convert: bool) -> np.ndarray:
    """A dB-declared modality as dB: converted from linear power when ``convert`` (counted as
    ``s1_linear_to_db`` items and ``s1_zero_power_px`` pixels made nodata), else checked
    (:func:`_check_db`); other modalities unchanged."""
    if not stores_db(plan):
        return x
    if not convert:
        _check_db(x, plan, context, counters)
        return x
    out, made = linear_to_db(x, plan, context)
    counters["s1_linear_to_db"] = counters.get("s1_linear_to_db", 0) + 1
    if made:
        counters["s1_zero_power_px"] = counters.get("s1_zero_power_px", 0) + made
    return out


def _check_finite(x: np.ndarray, plan: ModalityPlan, context: str, policy: str) -> None:
    if not np.issubdtype(x.dtype, np.floating) or policy == "nodata":
        return
    bad = ~np.isfinite(x)
    if bad.any():
        counts = {plan.bands[i]: int(n) for i, n in enumerate(bad.sum(axis=(1, 2))) if n}
        raise IngestError(
            f"{context}: NaN/inf pixels in bands {counts}; expected finite values "
            "(pass --nan-policy nodata to treat them as nodata; pixels at a file's own nodata "
            "value count as NaN when the sensor declares none)"
        )


def validity(x: np.ndarray, nodata: list[float | None],
             may_be_empty: Sequence[int] = ()) -> tuple[np.ndarray, list[int]]:
    """``(H, W)`` mask of the pixels valid in every band, and the indices of the bands that are
    entirely nodata in ``x``. A band in ``may_be_empty`` (the sensor's ``may_be_empty``, e.g.
    EnMAP's water-vapour bands) that is entirely nodata is left out of the mask; any other
    entirely-nodata band leaves no pixel valid, so ``max_nodata`` drops the tile."""
    bad = np.stack([invalid_mask(x[i], nodata[i]) for i in range(x.shape[0])])
    empty = [i for i in range(x.shape[0]) if bad[i].all()]
    skip = set(empty) & set(may_be_empty)
    keep = [i for i in range(x.shape[0]) if i not in skip]
    if not keep:
        return np.zeros(x.shape[1:], bool), empty
    return ~bad[keep].any(axis=0), empty


def may_be_empty(plan: ModalityPlan) -> list[int]:
    """Positions in ``plan.bands`` of the bands its sensor may leave entirely nodata
    (:attr:`~eofm.data_shards.sensors.Sensor.may_be_empty`)."""
    allowed = set(get_sensor(plan.sensor).may_be_empty)
    return [i for i, b in enumerate(plan.bands) if b in allowed]


def _gsd(geo: Geo | None, plan: ModalityPlan) -> float:
    """Pixel size in metres: from the grid when it is projected, else the sensor's band table
    (grids in degrees, e.g. EPSG:4326 exports, or no georeferencing)."""
    if geo is None or geo.sx < 0.01 or geo.crs in GEOGRAPHIC_CRS:
        return plan.gsd_m
    return geo.sx


def grid_differences(shapes: dict[str, tuple[int, ...]],
                     geo: dict[str, Geo | None]) -> list[str]:
    """Why paired modalities are not on one grid (empty when they are): compared with the
    first modality, a different CRS, size, pixel size or origin. Pixel sizes count as equal
    when they drift apart by at most ``grid.TOL`` pixels across the raster, origins when they
    are that close. Without georeferencing on every modality only the shapes can be compared."""
    names = list(shapes)
    first, (h0, w0) = names[0], shapes[names[0]]
    if any(geo[n] is None for n in names):
        if len(set(shapes.values())) == 1:
            return []
        bare = [n for n in names if geo[n] is None]
        return [f"sizes differ ({', '.join(f'{n} {h}x{w}' for n, (h, w) in shapes.items())}) "
                f"and {', '.join(bare)} carry no georeferencing to resample by"]
    g0 = geo[first]
    assert g0 is not None
    out = []
    for name in names[1:]:
        g, (h, w) = geo[name], shapes[name]
        assert g is not None
        if g.crs != g0.crs:
            out.append(f"{name} is in CRS {g.crs or '(none)'}, {first} in {g0.crs or '(none)'}")
            continue
        if (h, w) != (h0, w0):
            out.append(f"{name} is {h}x{w} px, {first} {h0}x{w0} px")
        if (abs(g.sx - g0.sx) * max(w, w0) > TOL * g0.sx
                or abs(g.sy - g0.sy) * max(h, h0) > TOL * g0.sy):
            out.append(f"{name} has pixel size {g.sx:.6g} x {g.sy:.6g}, {first} "
                       f"{g0.sx:.6g} x {g0.sy:.6g} ({100 * (g.sx / g0.sx - 1):+.2g}% in x)")
        dx, dy = (g.x0 - g0.x0) / g0.sx, (g0.y0 - g.y0) / g0.sy
        if abs(dx) > TOL or abs(dy) > TOL:
            out.append(f"{name}'s origin is {dx:+.3g}, {dy:+.3g} px (x, y) off {first}'s")
    return out


def _onto_one_grid(full: dict[str, np.ndarray], geo: dict[str, Geo | None],
                   quality: dict[str, QualityMask]) -> bool:
    """Paired modalities on different grids of one CRS (SSL4EO-S12 exports S1 and S2 apart):
    sample every modality (nearest, at pixel centres) on the grid of the first modality, in
    order, that the others all cover, else on the first modality's grid cut to the part that
    every modality covers; in place. False (nothing changed) when georeferencing is missing,
    the CRS differ or no pixel is covered by all."""
    grids = [g for g in geo.values() if g is not None]
    if len(grids) != len(geo) or len({g.crs for g in grids}) != 1:
        return False
    index: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for target in full:
        t, (h, w) = geo[target], full[target].shape[1:]
        assert t is not None
        index[target] = {}
        for name, x in full.items():
            g = geo[name]
            assert g is not None
            index[target][name] = (centre_index(h, -t.y0, t.sy, -g.y0, g.sy, x.shape[1]),
                                   centre_index(w, t.x0, t.sx, g.x0, g.sx, x.shape[2]))
        if all((r >= 0).all() and (c >= 0).all() for r, c in index[target].values()):
            break
    else:  # none covered by all: the first one's grid, where every modality has data
        target = next(iter(full))
    t = geo[target]
    assert t is not None
    ok_r = np.logical_and.reduce([r >= 0 for r, _ in index[target].values()])
    ok_c = np.logical_and.reduce([c >= 0 for _, c in index[target].values()])
    if not ok_r.any() or not ok_c.any():
        return False
    r0, r1 = int(np.argmax(ok_r)), len(ok_r) - int(np.argmax(ok_r[::-1]))
    c0, c1 = int(np.argmax(ok_c)), len(ok_c) - int(np.argmax(ok_c[::-1]))
    out = Geo(t.x0 + c0 * t.sx, t.y0 - r0 * t.sy, t.sx, t.sy, t.crs)
    for name, (rows, cols) in index[target].items():
        full[name] = full[name][:, rows[r0:r1, None], cols[None, c0:c1]]
        geo[name] = out
        if name in quality:
            quality[name] = to_grid(quality[name], out, (r1 - r0, c1 - c0))
    return True


def iter_tiles(item: SourceItem, plans: dict[str, ModalityPlan], opts: IngestOptions,
               label: np.ndarray | None, counters: dict[str, int]) -> Iterator[TileSample]:
    """Load an item and yield its tiles that pass the nodata and cloud limits (drops are
    counted)."""
    if opts.max_cloud is not None:
        counters.setdefault("dropped_cloud", 0)
    full: dict[str, np.ndarray] = {}
    geo: dict[str, Geo | None] = {}
    quality: dict[str, QualityMask] = {}
    allowed_empty = {name: may_be_empty(p) for name, p in plans.items()}
    for name, src in item.modalities.items():
        try:
            full[name], geo[name] = load_modality(src, plans[name], item.key, opts.resample,
                                                  opts.max_raster_bytes)
        except RasterError as e:
            raise IngestError(str(e)) from None
        # the modality's own files (a paired S1 patch's, not its S2 partner's)
        where = item.meta.get(f"{name}_source") or item.meta.get("source", item.key)
        _check_finite(full[name], plans[name], str(where), opts.nan_policy)
        full[name] = correct(full[name], src.correction, plans[name].nodata,
                             str(item.meta.get("source", item.key)), counters)
        full[name] = _backscatter(full[name], plans[name], f"{where} ({name})", counters,
                                  opts.s1_linear_to_db)
        if src.quality is not None:
            quality[name] = to_grid(read_quality(src.quality, opts.max_raster_bytes), geo[name],
                                    full[name].shape[1:])
    shapes = {k: v.shape[1:] for k, v in full.items()}
    differences = grid_differences(shapes, geo) if len(full) > 1 else []
    if differences and opts.resample == "nearest" and _onto_one_grid(full, geo, quality):
        differences = []
        shapes = {k: v.shape[1:] for k, v in full.items()}
    if differences:
        if any(g is None for g in geo.values()):
            hint = "resampling needs georeferencing on every modality"
        elif opts.resample != "nearest":
            hint = "pass --resample nearest to sample them on one grid at pixel centres"
        elif len({g.crs for g in geo.values() if g}) > 1:
            hint = "--resample nearest does not reproject: give them one CRS first"
        else:
            hint = "no part of one modality's grid is covered by all of them"
        used = {n: next(f for f, b in src.files if set(b) & set(plans[n].bands))
                for n, src in item.modalities.items()}
        files = "; ".join(f"{n}: {f}" for n, f in used.items())
        raise IngestError(f"{item.key} ({files}): paired modalities must share one grid: "
                          f"{'; '.join(differences)} ({hint})")
    seg = None
    if item.seg is not None:
        seg = read_raster(item.seg, max_bytes=opts.max_raster_bytes).data
        if seg.shape[0] != 1 or seg.shape[1:] != next(iter(shapes.values())):
            raise IngestError(f"{item.seg}: segmentation raster expected shape (1, "
                              f"{next(iter(shapes.values()))}), got {seg.shape}")
    first = next(iter(full))
    h, w = shapes[first]
    if opts.tile is not None and (h < opts.tile or w < opts.tile):
        raise IngestError(f"{item.key}: raster {h}x{w} is smaller than the tile size {opts.tile}")
    per_mod = {name: tiles(x, opts.tile, opts.stride) for name, x in full.items()}
    for group in zip(*per_mod.values(), strict=True):
        parts = dict(zip(per_mod, group, strict=True))
        t0 = parts[first]
        counters["tiles"] = counters.get("tiles", 0) + 1
        arrays, valid, empty, clouds = {}, {}, {}, {}
        too_empty = False
        for name, t in parts.items():
            v, e = validity(t.data, plans[name].nodata, allowed_empty[name])
            for i in e:
                if i not in allowed_empty[name]:  # its pixels are invalid: counted per band
                    key = f"empty_band[{name}:{plans[name].bands[i]}]"
                    counters[key] = counters.get(key, 0) + 1
            if 1.0 - v.mean() > opts.max_nodata:
                too_empty = True
            if name in quality:
                q, win = quality[name], np.s_[t.row : t.row + t.data.shape[1],
                                              t.col : t.col + t.data.shape[2]]
                flagged, fill = q.flagged[win], q.fill[win]
                clouds[name] = cloud_fraction(flagged, v & ~fill)
                if opts.cloud_as_nodata:
                    v = v & ~flagged & ~fill
            arrays[name] = np.ascontiguousarray(t.data)
            valid[name] = v
            empty[name] = [plans[name].bands[i] for i in e]
        if too_empty:
            counters["dropped_nodata"] = counters.get("dropped_nodata", 0) + 1
            continue
        known = [f for f in clouds.values() if f is not None]
        tile_cloud = max(known) if known else None
        if tile_cloud is not None:  # the source's cloudiness, kept and dropped tiles alike
            bin_ = CLOUD_BIN * min(int(100 * tile_cloud) // CLOUD_BIN, 100 // CLOUD_BIN - 1)
            name = f"cloud[{bin_}-{bin_ + CLOUD_BIN}%]"
            counters[name] = counters.get(name, 0) + 1
        if opts.max_cloud is not None and tile_cloud is not None and tile_cloud > opts.max_cloud:
            counters["dropped_cloud"] += 1
            continue
        key = item.key if opts.tile is None else f"{item.key}_r{t0.row}_c{t0.col}"
        meta = {
            **{k: v for k, v in item.meta.items() if v is not None},
            "window": {"row": t0.row, "col": t0.col, "height": t0.data.shape[1],
                       "width": t0.data.shape[2]},
            "modalities": {
                name: {"sensor": plans[name].sensor, "bands": plans[name].bands,
                       "gsd_m": _gsd(geo[name], plans[name]),
                       "geo": (g.to_dict() if (g := tile_geo(geo[name], t0.row, t0.col)) else None),
                       "empty_bands": empty[name]}
                for name in parts
            },
        }
        if quality:
            meta["cloud_fraction"] = tile_cloud
            for name, q in quality.items():
                meta["modalities"][name]["quality"] = {
                    **item.modalities[name].quality.describe(),  # type: ignore[union-attr]
                    "layout": q.layout, "cloud_fraction": clouds[name],
                    "as_nodata": opts.cloud_as_nodata}
        if isinstance(item.label, (str, list)):
            meta["label_names"] = item.label
        seg_tile = None if seg is None else seg_window(seg, t0, str(item.seg))
        yield TileSample(key, arrays, valid, meta, label, seg_tile)


def seg_window(seg: np.ndarray, tile: Tile, path: str) -> np.ndarray:
    """The ``(th, tw)`` window of a ``(1, H, W)`` segmentation raster under ``tile`` (its
    ``data: (C, th, tw)``): the tile's own height and width, so a whole non-square raster
    (no ``--tile``) keeps all its columns. IngestError naming ``path`` when the window does not
    cover the tile (image and labels would no longer be registered)."""
    th, tw = tile.data.shape[1:]
    out = np.ascontiguousarray(seg[0, tile.row : tile.row + th, tile.col : tile.col + tw])
    if out.shape != (th, tw):
        raise IngestError(f"{path}: segmentation tile at row {tile.row}, col {tile.col} "
                          f"expected shape ({th}, {tw}) like its image tile, got {out.shape}")
    return out


def source_paths(item: SourceItem) -> list[Path]:
    """Every file an item reads (for error messages and progress)."""
    return [p for m in item.modalities.values()
            for p in [*(f for f, _ in m.files), *(m.quality.files if m.quality else [])]]
