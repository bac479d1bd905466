"""Paired modalities on different georeferenced grids: refused under ``exact`` (saying why),
sampled onto one grid under ``nearest``, even when their pixel counts are equal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from eofm.data_shards.ingest import (
    IngestError,
    IngestOptions,
    grid_differences,
    iter_tiles,
    plan_modality,
)
from eofm.data_shards.layouts import ModalitySource, SourceItem
from eofm.data_shards.raster_io import Geo, read_raster

N = 8  # pixels per side of every synthetic raster


def _geotiff(path: Path, x0: float, y0: float, sx: float, epsg: int = 32633) -> Path:
    """An (3, N, N) uint8 GeoTIFF whose pixel value in every band is the world column index
    ``round((x - 0) / 10)`` of its centre: equal values mean the same place."""
    cols = np.floor((x0 + (np.arange(N) + 0.5) * sx) / 10).astype(np.uint8)
    data = np.broadcast_to(cols, (3, N, N)).copy()
    keys = (1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, epsg)
    tifffile.imwrite(path, data, photometric="minisblack", planarconfig="separate", extratags=[
        (33550, "d", 3, (sx, sx, 0.0), True), (33922, "d", 6, (0, 0, 0, x0, y0, 0), True),
        (34735, "H", len(keys), keys, True)])
    return path


def _tiles(tmp_path: Path, b: dict, resample: str, a: dict | None = None) -> list:
    a = a or {}
    pa = _geotiff(tmp_path / "a.tif", a.get("x0", 0.0), 800.0, a.get("sx", 10.0))
    pb = _geotiff(tmp_path / "b.tif", b.get("x0", 0.0), 800.0, b.get("sx", 10.0),
                  b.get("epsg", 32633))
    item = SourceItem("loc7", {m: ModalitySource("rgb", [(p, ["R", "G", "B"])])
                               for m, p in (("a", pa), ("b", pb))})
    opts = IngestOptions(resample=resample)
    plans = {m: plan_modality(m, s, opts) for m, s in item.modalities.items()}
    return list(iter_tiles(item, plans, opts, None, {}))


def test_equal_sizes_on_shifted_grids_are_refused_under_exact(tmp_path: Path) -> None:
    with pytest.raises(IngestError) as err:
        _tiles(tmp_path, {"x0": 20.0}, "exact")
    msg = str(err.value)
    for part in ("loc7", "a.tif", "b.tif", "b's origin is +2, +0 px (x, y) off a's",
                 "--resample nearest"):
        assert part in msg, part


def test_equal_sizes_on_shifted_grids_are_resampled_under_nearest(tmp_path: Path) -> None:
    """b starts 2 px east of a: neither covers the other, so both land on a's grid cut to
    the 6 columns they share, the same place in the same pixel."""
    (t,) = _tiles(tmp_path, {"x0": 20.0}, "nearest")
    assert t.arrays["a"].shape == t.arrays["b"].shape == (3, N, N - 2)
    np.testing.assert_array_equal(t.arrays["a"], t.arrays["b"])
    assert t.arrays["a"][0, 0].tolist() == list(range(2, N))
    assert t.meta["modalities"]["b"]["geo"] == {"x0": 20.0, "y0": 800.0, "sx": 10.0, "sy": 10.0,
                                                "crs": "EPSG:32633"}


def test_pixel_size_drift_is_named_and_resampled(tmp_path: Path) -> None:
    """0.7% larger pixels (same origin and size) drift ~0.06 px over 8 px: a different grid."""
    with pytest.raises(IngestError, match=r"b has pixel size 10\.07 x 10\.07, a 10 x 10 "
                                          r"\(\+0\.7% in x\)"):
        _tiles(tmp_path, {"sx": 10.07}, "exact")
    (t,) = _tiles(tmp_path, {"sx": 10.07}, "nearest")  # a's grid lies inside b's
    assert t.arrays["b"].shape == (3, N, N)
    np.testing.assert_array_equal(t.arrays["a"], t.arrays["b"])


def test_other_crs_or_no_overlap_is_refused_under_nearest(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"(?s)b is in CRS EPSG:32634, a in EPSG:32633.*"
                                          r"does not reproject"):
        _tiles(tmp_path, {"epsg": 32634}, "nearest")
    with pytest.raises(IngestError, match=r"origin is \+10, \+0 px.*no part of one modality's "
                                          r"grid is covered by all of them"):
        _tiles(tmp_path, {"x0": 100.0}, "nearest")


def test_same_grid_within_tolerance_passes_exact(tmp_path: Path) -> None:
    (t,) = _tiles(tmp_path, {"x0": 1e-5}, "exact")  # 1e-6 px: the same grid
    assert t.arrays["a"].shape == t.arrays["b"].shape == (3, N, N)
    g = read_raster(tmp_path / "b.tif").geo
    assert grid_differences({"a": (N, N), "b": (N, N)}, {"a": g, "b": g}) == []
    assert grid_differences({"a": (N, N), "b": (N, N)}, {"a": None, "b": g}) == []
    assert grid_differences({"a": (N, N), "b": (N, 4)}, {"a": Geo(0, 0, 1, 1), "b": None}) == [
        "sizes differ (a 8x8, b 8x4) and b carry no georeferencing to resample by"]
