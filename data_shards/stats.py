"""Per-band statistics computed in one streaming pass and mergeable across parallel writers.

Each :class:`BandStats` accumulates, for every band of one modality, over valid pixels only:
count, mean and M2 (Chan et al.'s parallel update, so merging partial results equals one pass
up to float rounding), min, max, the number of nodata pixels, and a histogram from which
percentiles are read. Integer data of at most 16 bits gets an exact histogram (one bin per
value), so its percentiles are exact and its merge is exact; float data gets ``FLOAT_BINS``
fixed bins over the band's ``hist_range`` (values outside land in the edge bins), so its
percentiles are exact to one bin width. The fixed bin layout is what makes histograms mergeable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .outputs import atomic_open

FLOAT_BINS = 4096
DEFAULT_FLOAT_RANGE = (-1.0e4, 1.0e4)
PERCENTILES = (1.0, 2.0, 50.0, 98.0, 99.0)


def invalid_mask(x: np.ndarray, nodata: float | None) -> np.ndarray:
    """Boolean mask (same shape as ``x``) of pixels equal to ``nodata`` or not finite."""
    bad = np.zeros(x.shape, dtype=bool) if nodata is None else x == np.asarray(nodata, x.dtype)
    if np.issubdtype(x.dtype, np.floating):
        bad |= ~np.isfinite(x)
    return bad


@dataclass
class HistSpec:
    """Fixed histogram layout: ``bins`` bins starting at ``lo``, each ``width`` wide; ``lo``,
    ``width`` and ``exact`` may be per-band lists (stacked modalities, whose bands come from
    sensors with different value ranges)."""

    lo: float | list[float]
    width: float | list[float]
    bins: int
    exact: bool | list[bool]

    def of(self, i: int) -> tuple[float, float, bool]:
        """``(lo, width, exact)`` of band ``i``."""
        def pick(v):
            return v[i] if isinstance(v, list) else v
        return float(pick(self.lo)), float(pick(self.width)), bool(pick(self.exact))

    @classmethod
    def stacked(cls, parts: Sequence[tuple[HistSpec, int]]) -> HistSpec:
        """One layout for the bands of several parts (``(spec, band count)`` each): every band
        keeps its part's range and exactness, on the largest bin count (finer float bins)."""
        bins = max(s.bins for s, _ in parts)
        lo: list[float] = []
        width: list[float] = []
        exact: list[bool] = []
        for s, n in parts:
            for i in range(n):
                a, w, e = s.of(i)
                lo.append(a)
                width.append(w if e else w * s.bins / bins)
                exact.append(e)
        return cls(lo, width, bins, exact)

    @classmethod
    def for_dtype(cls, dtype: np.dtype, value_range: tuple[float, float] | None) -> HistSpec:
        """One bin per value for <=16-bit integers, ``FLOAT_BINS`` bins over a range otherwise."""
        dtype = np.dtype(dtype)
        if np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2:
            info = np.iinfo(dtype)
            return cls(float(info.min), 1.0, int(info.max) - int(info.min) + 1, True)
        lo, hi = value_range or DEFAULT_FLOAT_RANGE
        if not hi > lo:
            raise ValueError(f"histogram range must have hi > lo, got {value_range}")
        return cls(float(lo), (float(hi) - float(lo)) / FLOAT_BINS, FLOAT_BINS, False)

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return {"lo": self.lo, "width": self.width, "bins": self.bins, "exact": self.exact}


@dataclass
class BandStats:
    """Streaming statistics for the ``C`` bands of one modality (see module docstring)."""

    bands: list[str]
    dtype: str
    nodata: list[float | None]
    hist: HistSpec
    count: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    vmin: np.ndarray = field(init=False)
    vmax: np.ndarray = field(init=False)
    histogram: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        c = len(self.bands)
        if len(self.nodata) != c:
            raise ValueError(f"nodata list has {len(self.nodata)} entries for {c} bands")
        self.count = np.zeros(c, np.int64)
        self.total = np.zeros(c, np.int64)
        self.mean = np.zeros(c, np.float64)
        self.m2 = np.zeros(c, np.float64)
        self.vmin = np.full(c, np.inf)
        self.vmax = np.full(c, -np.inf)
        self.histogram = np.zeros((c, self.hist.bins), np.int64)

    @classmethod
    def create(
        cls,
        bands: Sequence[str],
        dtype: str | np.dtype,
        nodata: Sequence[float | None],
        value_range: tuple[float, float] | None = None,
    ) -> BandStats:
        """Empty accumulator for ``bands`` of raw pixel type ``dtype``."""
        dt = np.dtype(dtype)
        return cls(list(bands), dt.name, list(nodata), HistSpec.for_dtype(dt, value_range))

    @classmethod
    def create_stacked(cls, parts: Sequence[tuple[Sequence[str], str | np.dtype,
                                                  Sequence[float | None],
                                                  tuple[float, float] | None]]) -> BandStats:
        """Empty accumulator for a stacked modality (float32 pixels): ``parts`` are each part's
        ``(bands, raw dtype, nodata, value range)``, so every band's histogram keeps its
        part's layout (exact for 16-bit integers, its own range for floats)."""
        specs = [(HistSpec.for_dtype(np.dtype(dt), vr), len(b)) for b, dt, _, vr in parts]
        return cls([b for p in parts for b in p[0]], "float32",
                   [v for p in parts for v in p[2]], HistSpec.stacked(specs))

    def update(self, x: np.ndarray, exclude: np.ndarray | None = None) -> None:
        """Add one tile ``x: (C, H, W)``; nodata and non-finite pixels, and those of the
        ``(H, W)`` mask ``exclude`` (e.g. clouds folded into nodata), are counted, not used."""
        if x.ndim != 3 or x.shape[0] != len(self.bands):
            raise ValueError(f"expected (C={len(self.bands)}, H, W), got {x.shape}")
        if exclude is not None and exclude.shape != x.shape[1:]:
            raise ValueError(f"exclude: expected an (H, W) = {x.shape[1:]} mask, got "
                             f"{exclude.shape}")
        out = exclude.ravel() if exclude is not None else None
        for i in range(x.shape[0]):
            band = x[i].ravel()
            self.total[i] += band.size
            bad = invalid_mask(band, self.nodata[i])
            if out is not None:
                bad = bad | out
            if bad.any():
                band = band[~bad]
            n = band.size
            if n == 0:
                continue
            b64 = band.astype(np.float64)
            bmean = float(b64.mean())
            bm2 = float(((b64 - bmean) ** 2).sum())
            self._combine(i, n, bmean, bm2, float(b64.min()), float(b64.max()))
            self.histogram[i] += self._bin(i, band)

    def _bin(self, i: int, band: np.ndarray) -> np.ndarray:
        lo, width, exact = self.hist.of(i)
        if exact:
            idx = band.astype(np.int64) - int(lo)
        else:
            idx = np.floor((band.astype(np.float64) - lo) / width)
            idx = np.clip(idx, 0, self.hist.bins - 1).astype(np.int64)
        return np.bincount(idx, minlength=self.hist.bins)

    def _combine(self, i: int, n: int, mean: float, m2: float, lo: float, hi: float) -> None:
        na = self.count[i]
        tot = na + n
        delta = mean - self.mean[i]
        self.mean[i] += delta * n / tot
        self.m2[i] += m2 + delta * delta * na * n / tot
        self.count[i] = tot
        self.vmin[i] = min(self.vmin[i], lo)
        self.vmax[i] = max(self.vmax[i], hi)

    def merge(self, other: BandStats) -> None:
        """Fold another writer's statistics for the same bands into this one."""
        if other.bands != self.bands or other.hist != self.hist:
            raise ValueError(
                f"cannot merge statistics: bands/histogram differ ({self.bands} vs {other.bands})"
            )
        for i in range(len(self.bands)):
            self.total[i] += other.total[i]
            if other.count[i]:
                self._combine(
                    i, int(other.count[i]), float(other.mean[i]), float(other.m2[i]),
                    float(other.vmin[i]), float(other.vmax[i]),
                )
        self.histogram += other.histogram

    def percentile(self, q: float) -> np.ndarray:
        """Per-band ``q``-th percentile (lower value at the rank) read from the histogram."""
        out = np.full(len(self.bands), np.nan)
        for i in range(len(self.bands)):
            if self.count[i] == 0:
                continue
            cdf = np.cumsum(self.histogram[i])
            rank = max(1, int(np.ceil(q / 100.0 * self.count[i])))
            b = int(np.searchsorted(cdf, rank))
            lo, width, exact = self.hist.of(i)
            val = lo + b * width
            if not exact:
                val += 0.5 * width
            out[i] = float(np.clip(val, self.vmin[i], self.vmax[i]))
        return out

    def summary(self) -> dict[str, dict]:
        """Manifest form: ``{band: {count, mean, std, min, max, p1.., nodata_fraction}}``."""
        std = np.sqrt(np.where(self.count > 0, self.m2 / np.maximum(self.count, 1), np.nan))
        pct = {q: self.percentile(q) for q in PERCENTILES}
        out: dict[str, dict] = {}
        for i, name in enumerate(self.bands):
            has = self.count[i] > 0
            entry = {
                "count": int(self.count[i]),
                "mean": float(self.mean[i]) if has else None,
                "std": float(std[i]) if has else None,
                "min": float(self.vmin[i]) if has else None,
                "max": float(self.vmax[i]) if has else None,
                "nodata_fraction": float(1 - self.count[i] / self.total[i]) if self.total[i] else None,
            }
            for q in PERCENTILES:
                entry[f"p{q:g}"] = float(pct[q][i]) if has else None
            out[name] = entry
        return out

    def save(self, path: str | Path) -> None:
        """Write the full mergeable state (histograms included) as ``.npz``; atomic
        (:func:`.outputs.atomic_open`; the temporary ``<name>.tmp`` is one of the
        ``writer-*`` files a build clears, and a failed write removes it)."""
        path = Path(path)
        meta = {"bands": self.bands, "dtype": self.dtype, "nodata": self.nodata,
                "hist": self.hist.to_dict()}
        with atomic_open(path, "wb", tmp_name=path.name + ".tmp") as f:
            np.savez_compressed(
                f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), count=self.count,
                total=self.total, mean=self.mean, m2=self.m2, vmin=self.vmin, vmax=self.vmax,
                histogram=self.histogram,
            )

    @classmethod
    def load(cls, path: str | Path) -> BandStats:
        """Read what :meth:`save` wrote (no pickle)."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            obj = cls(meta["bands"], meta["dtype"], meta["nodata"], HistSpec(**meta["hist"]))
            for k in ("count", "total", "mean", "m2", "vmin", "vmax", "histogram"):
                setattr(obj, k, z[k].copy())
        return obj
