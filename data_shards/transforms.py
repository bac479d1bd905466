"""Sample transforms that run in loader workers on numpy arrays, and device-side normalisation.

Spatial transforms move every modality, its validity mask and the segmentation map together,
and keep integer pixels integer (resizing is nearest-neighbour). Each takes the sample and a
``numpy.random.Generator``; the reader seeds that generator per sample position, so a resumed
job draws the same augmentation for the same sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .manifest import Manifest

ZOOM_KEY = "__zoom__"  # source pixels per output pixel of a resampling crop (GSD multiplier)


def _spatial_keys(sample: dict) -> list[str]:
    return [k for k, v in sample.items() if isinstance(v, np.ndarray) and k != "label"
            and v.ndim >= 2 and not k.startswith("__")]


def _apply(sample: dict, fn) -> dict:
    out = dict(sample)
    for k in _spatial_keys(sample):
        out[k] = fn(sample[k])
    return out


@dataclass
class RandomResizedCrop:
    """Crop a random box of ``scale`` area share and ``ratio`` aspect, resize to ``size``
    (nearest). ``scale=(1, 1)`` with ``ratio=(1, 1)`` gives a plain random crop of the image.

    The sample gains ``__zoom__`` (float): source pixels per output pixel (the geometric mean
    of the two axes), so the GSD of the output is the tile's GSD times ``__zoom__``.
    """

    size: int
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def box(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """Top, left, height, width of the crop."""
        for _ in range(10):
            area = h * w * rng.uniform(*self.scale)
            ar = np.exp(rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1])))
            ch, cw = round(np.sqrt(area / ar)), round(np.sqrt(area * ar))
            if 0 < ch <= h and 0 < cw <= w:
                return int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)), ch, cw
        s = min(h, w)
        return (h - s) // 2, (w - s) // 2, s, s

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        h, w = next(sample[k] for k in _spatial_keys(sample)).shape[-2:]
        t, left, ch, cw = self.box(h, w, rng)
        rows = t + (np.arange(self.size) * ch) // self.size
        cols = left + (np.arange(self.size) * cw) // self.size
        out = _apply(sample, lambda x: np.ascontiguousarray(x[..., rows[:, None], cols[None, :]]))
        out[ZOOM_KEY] = float(np.sqrt(ch * cw)) / self.size
        return out


@dataclass
class RandomCrop:
    """Random ``size`` x ``size`` window (no resizing)."""

    size: int

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        h, w = next(sample[k] for k in _spatial_keys(sample)).shape[-2:]
        if h < self.size or w < self.size:
            raise ValueError(f"{sample.get('__key__')}: tile {h}x{w} smaller than crop {self.size}")
        t, left = int(rng.integers(h - self.size + 1)), int(rng.integers(w - self.size + 1))
        return _apply(sample, lambda x: np.ascontiguousarray(x[..., t : t + self.size, left : left + self.size]))


@dataclass
class RandomFlipRot:
    """Horizontal/vertical flips and 90-degree rotations (the dihedral group: no resampling)."""

    hflip: bool = True
    vflip: bool = True
    rot90: bool = True

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        k = int(rng.integers(4)) if self.rot90 else 0
        fh = self.hflip and rng.random() < 0.5
        fv = self.vflip and rng.random() < 0.5

        def f(x: np.ndarray) -> np.ndarray:
            if fh:
                x = x[..., :, ::-1]
            if fv:
                x = x[..., ::-1, :]
            if k:
                x = np.rot90(x, k, axes=(-2, -1))
            return np.ascontiguousarray(x)

        return _apply(sample, f)


@dataclass
class Compose:
    """Apply transforms in order."""

    transforms: Sequence

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample


def band_statistics(manifest: Manifest, modality: str, bands: Sequence[str] | None = None,
                    method: str = "meanstd") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band ``(shift, scale)`` from a manifest: ``meanstd`` uses mean/std, ``percentile``
    maps p2..p98 to 0..1."""
    info = manifest.modalities[modality]
    names = list(bands or info.bands)
    missing = [b for b in names if b not in info.stats]
    if missing:
        raise ValueError(f"manifest has no statistics for {modality} bands {missing}")
    if method == "meanstd":
        shift = [info.stats[b]["mean"] for b in names]
        scale = [info.stats[b]["std"] for b in names]
    elif method == "percentile":
        shift = [info.stats[b]["p2"] for b in names]
        scale = [info.stats[b]["p98"] - info.stats[b]["p2"] for b in names]
    else:
        raise ValueError(f"method: expected 'meanstd' or 'percentile', got {method!r}")
    bad = [b for b, sh, sc in zip(names, shift, scale, strict=True) if sh is None or not sc]
    if bad:
        raise ValueError(f"{modality} bands {bad} have no usable statistics (all nodata or constant)")
    return torch.tensor(shift, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32)


def normalize(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
              valid: torch.Tensor | None = None) -> torch.Tensor:
    """Device-side ``(x - shift) / scale`` in float32 for ``x: (B, C, H, W)`` integer or float
    pixels; invalid pixels (``valid: (B, H, W)`` False) become 0."""
    dev = x.device
    y = (x.to(torch.float32) - shift.to(dev)[:, None, None]) / scale.to(dev)[:, None, None]
    if valid is not None:
        y = y * valid.to(dev)[:, None].to(y.dtype)
    return torch.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
