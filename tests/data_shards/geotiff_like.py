"""Test helper: write pixels as a GeoTIFF on another GeoTIFF's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile


def write_like(ref: Path, dst: Path, data: np.ndarray, tiepoint_shift: float = 0.0) -> None:
    """Write ``data`` to ``dst`` as a GeoTIFF on the grid (scale, tiepoint, CRS) of ``ref``,
    its origin moved ``tiepoint_shift`` map units in x (``dst`` may be ``ref`` itself)."""
    with tifffile.TiffFile(ref) as tf:
        tags = tf.pages[0].tags
        tiepoint = list(tags["ModelTiepointTag"].value)
        tiepoint[3] += tiepoint_shift
        extra = [(33550, "d", 3, tags["ModelPixelScaleTag"].value, True),
                 (33922, "d", 6, tuple(tiepoint), True),
                 (34735, "H", len(tags["GeoKeyDirectoryTag"].value),
                  tags["GeoKeyDirectoryTag"].value, True)]
    dst.unlink(missing_ok=True)
    tifffile.imwrite(dst, data, extratags=extra)
