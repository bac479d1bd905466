"""Nearest resampling of centre-aligned grids: fine pixel centres that lie exactly on a coarse
pixel edge (ties) all go the same way, whatever float rounding makes of them."""

from __future__ import annotations

import numpy as np
import pytest

from eofm.data_shards.grid import align, centre_index
from eofm.data_shards.raster_io import Geo, Raster

# SSL4EO-S12 (EPSG:4326, centre-aligned export), patch 0000200: B4 (10 m) and B1 (60 m)
B4 = Geo(73.29254430236014, 30.47557326306315, 0.0001014112844859978, 8.797200686307421e-05,
         "EPSG:4326")
B1 = Geo(73.29229077414892, 30.47579319308031, 0.0006084677069159868, 0.0005278320411784453,
         "EPSG:4326")


def _runs(idx: np.ndarray) -> list[int]:
    """Lengths of the runs of equal values along ``idx``."""
    edges = np.flatnonzero(np.diff(idx.astype(np.int64)) != 0) + 1
    return np.diff(np.r_[0, edges, len(idx)]).tolist()


def test_reviewer_grid_repeats_each_60m_pixel_six_times() -> None:
    cols = centre_index(264, B4.x0, B4.sx, B1.x0, B1.sx, 44)
    rows = centre_index(264, -B4.y0, B4.sy, -B1.y0, B1.sy, 44)
    # the 60 m grid starts 2.5 fine pixels before the 10 m one: 3 centres before the first
    # tie, then 6 per coarse pixel, and the last 3 centres (the last a tie) fall outside (-1);
    # each tie goes to the pixel that starts at it
    assert _runs(cols) == [3] + [6] * 43 + [3]
    assert _runs(rows) == [3] + [6] * 43 + [3]
    assert cols[:10].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 2]


@pytest.mark.parametrize("x0, sx", [(73.29254430236014, 1.014112844859978e-4),
                                    (12.3456789, 9.1234567e-5),
                                    (-45.6789, 8.797200686307421e-05),
                                    (500010.0, 10.0)])
def test_synthetic_centre_aligned_6_to_1_grids_give_runs_of_six(x0: float, sx: float) -> None:
    # the first three fail on float rounding alone (runs of 5, 6 and 7 without tie snapping)
    cols = centre_index(264, x0, sx, x0 - 2.5 * sx, 6 * sx, 44)
    assert _runs(cols) == [3] + [6] * 43 + [3]


def test_centres_off_the_edges_are_not_moved() -> None:
    # a 3:1 nesting offset by a third of a fine pixel: no centre is near an edge
    sx = 1.014112844859978e-4
    cols = centre_index(12, 0.0, sx, -sx / 3, 3 * sx, 4)
    assert cols.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    # centres outside the coarse axis stay -1
    assert centre_index(4, 0.0, 1.0, 1.0, 2.0, 1).tolist() == [-1, 0, 0, -1]


def test_align_nearest_replicates_b1_six_times_along_x() -> None:
    fine = Raster(np.zeros((1, 264, 264), np.uint16), "B4.tif", B4)
    values = np.arange(44 * 44, dtype=np.uint16).reshape(1, 44, 44)
    coarse = Raster(values, "B1.tif", B1)
    out, geo = align([("B04", fine), ("B01", coarse)], "patch 0000200", resample="nearest")
    # B1 ends 2.5 fine pixels before B4 does: the last 3 columns and rows are cut
    assert out.shape == (2, 261, 261) and geo == B4
    assert _runs(out[1, 100]) == [3] + [6] * 43
    assert _runs(out[1, :, 100]) == [3] + [6] * 43
    assert out[1, 3, 3] == values[0, 1, 1]  # a tie in both axes: the pixel starting there
