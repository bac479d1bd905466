"""Real Sentinel-2 L1C crops for the benchmarks: a scene's bands aligned to one 10 m grid,
standardised per band, cut at seeded random places (the scene tiled when a crop is larger)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from eofm.data_shards.grid import align
from eofm.data_shards.raster_io import read_raster

__all__ = ["scene_crops"]


def scene_crops(scene: Path, bands: Sequence[str], size: int, n: int, seed: int = 0) -> Tensor:
    """(n, len(bands), size, size) float32 crops of the ``s2_<band>.jp2`` files in ``scene``."""
    x, _ = align([(b, read_raster(scene / f"s2_{b}.jp2")) for b in bands], str(scene))
    x = torch.from_numpy(x.astype(np.float32))
    x = (x - x.mean((1, 2), keepdim=True)) / x.std((1, 2), keepdim=True).clamp(min=1e-6)
    side = min(x.shape[1:])
    if size > side:  # a crop larger than the scene: tile the scene
        reps = -(-size // side)
        x = x.repeat(1, reps, reps)
    H, W = x.shape[1:]
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, H - size + 1, (n,), generator=g).tolist()
    cols = torch.randint(0, W - size + 1, (n,), generator=g).tolist()
    return torch.stack([x[:, r:r + size, c:c + size] for r, c in zip(rows, cols, strict=True)])
