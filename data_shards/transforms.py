"""Sample transforms that run in loader workers on numpy arrays, and device-side normalisation.

Spatial transforms move every modality, its validity mask and the segmentation map together,
and keep integer pixels integer (resizing is nearest-neighbour). Each takes the sample and a
``numpy.random.Generator``; the reader seeds that generator per sample position, so a resumed
job draws the same augmentation for the same sample.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .manifest import Manifest

ZOOM_KEY = "__zoom__"  # source pixels per output pixel of a resampling crop (GSD multiplier)


def _spatial_keys(sample: dict) -> list[str]:
    return [k for k, v in sample.items() if isinstance(v, np.ndarray) and k != "label"
            and v.ndim >= 2 and not k.startswith("__")]


def _square(sample: dict) -> bool:
    """Whether every spatial array of ``sample`` is as high as it is wide."""
    return all(sample[k].shape[-2] == sample[k].shape[-1] for k in _spatial_keys(sample))


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

    def grid(self, sample: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        """Draw the crop of ``sample`` (its first spatial array's size): the ``(size,)`` source
        rows and columns of the output and ``__zoom__``."""
        h, w = next(sample[k] for k in _spatial_keys(sample)).shape[-2:]
        t, left, ch, cw = self.box(h, w, rng)
        rows = t + (np.arange(self.size) * ch) // self.size
        cols = left + (np.arange(self.size) * cw) // self.size
        return rows, cols, float(np.sqrt(ch * cw)) / self.size

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        rows, cols, zoom = self.grid(sample, rng)
        # two 1-D takes, not one 2-D fancy index: the same (contiguous) array, 2-4x faster
        out = _apply(sample, lambda x: np.take(np.take(x, rows, axis=-2), cols, axis=-1))
        out[ZOOM_KEY] = zoom
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
    """Horizontal/vertical flips and 90-degree rotations (the dihedral group: no resampling).

    A non-square sample (``H != W`` in any spatial array) only turns by 0 or 180 degrees: a
    quarter turn would make it ``(W, H)`` and the samples of one batch could not be stacked.
    The draw is the same (one ``integers(4)``, then the two flips), so the random stream, and
    with it a resumed job's augmentations, does not depend on the tile shape; turns 1 and 3
    become 0 and 2, which with the flips still draws each of the four shape-keeping
    symmetries equally often.
    """

    hflip: bool = True
    vflip: bool = True
    rot90: bool = True

    def draw(self, rng: np.random.Generator, square: bool) -> tuple[int, bool, bool]:
        """(quarter turns, horizontal flip, vertical flip) for a sample that is ``square`` or
        not: the turn's ``integers(4)``, then each enabled flip's ``random()``."""
        k = int(rng.integers(4)) if self.rot90 else 0
        if not square:
            k -= k % 2  # 1 -> 0, 3 -> 2: keep (H, W)
        fh = self.hflip and rng.random() < 0.5
        fv = self.vflip and rng.random() < 0.5
        return k, fh, fv

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        k, fh, fv = self.draw(rng, _square(sample))

        def f(x: np.ndarray) -> np.ndarray:
            if fh:
                x = x[..., :, ::-1]
            if fv:
                x = x[..., ::-1, :]
            if k:
                x = np.rot90(x, k, axes=(-2, -1))
            return np.ascontiguousarray(x)

        return _apply(sample, f)


def crop_flip_rot(crop: RandomResizedCrop, flip: RandomFlipRot, sample: dict,
                  rng: np.random.Generator) -> dict:
    """``flip(crop(sample, rng), rng)`` in one pass: the same draws in the same order (the
    crop's box, then the turn and the flips) and the same arrays, bit for bit (C-contiguous,
    dtype kept), without the flipped and turned copy of each cropped array.

    The flips and an even turn only reverse the crop's source rows and columns; an odd turn
    also swaps the axes, so its output is gathered from the rows taken transposed. A crop is
    ``size x size``, so every turn is drawn as for a square sample."""
    rows, cols, zoom = crop.grid(sample, rng)
    k, fh, fv = flip.draw(rng, square=True)
    if fv:
        rows = rows[::-1]
    if fh:
        cols = cols[::-1]
    if k == 2:  # rot90 twice: both axes reversed
        rows, cols = rows[::-1], cols[::-1]
    elif k == 1:  # out[i, j] = in[j, S-1-i]
        cols = cols[::-1]
    elif k == 3:  # out[i, j] = in[S-1-j, i]
        rows = rows[::-1]

    def f(x: np.ndarray) -> np.ndarray:
        picked = np.take(x, rows, axis=-2)  # whole rows: fast
        if k % 2:  # out[..., i, j] = x[..., rows[j], cols[i]]
            return np.take(picked.swapaxes(-1, -2), cols, axis=-2)
        return np.take(picked, cols, axis=-1)

    out = _apply(sample, f)
    out[ZOOM_KEY] = zoom
    return out


@dataclass
class Compose:
    """Apply transforms in order. A :class:`RandomResizedCrop` directly followed by a
    :class:`RandomFlipRot` (those classes, not subclasses) runs as :func:`crop_flip_rot`: the
    same output, about half the time of the two."""

    transforms: Sequence

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        ts, i = list(self.transforms), 0
        while i < len(ts):
            if (type(ts[i]) is RandomResizedCrop and i + 1 < len(ts)
                    and type(ts[i + 1]) is RandomFlipRot):
                sample, i = crop_flip_rot(ts[i], ts[i + 1], sample, rng), i + 2
            else:
                sample, i = ts[i](sample, rng), i + 1
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
    bad = [b for b, sh, sc in zip(names, shift, scale, strict=True)
           if sh is None or sc is None or not (np.isfinite(sh) and np.isfinite(sc) and sc)]
    if bad:
        raise ValueError(f"{modality} bands {bad} have no usable statistics (all nodata or constant)")
    return torch.tensor(shift, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32)


def normalize(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
              valid: torch.Tensor | None = None,
              nodata: Sequence[float | None] | None = None) -> torch.Tensor:
    """Device-side ``(x - shift) / scale`` in float32 for ``x: (B, C, H, W)`` integer or float
    pixels; invalid pixels (``valid: (B, H, W)`` False) become 0, in every band.

    ``nodata``: the raw no-data value of each band of ``x`` (None: the band has none), as the
    manifest records them. A band-pixel at its band's value also becomes 0 (the band mean),
    although its pixel is valid: a band the sensor may leave empty (EnMAP's water-vapour
    bands, ``Sensor.may_be_empty``) is left out of the valid mask of a tile where it is all
    nodata, so without this its fill value (e.g. -32768) would reach the model as data.
    Non-finite values of float ``x`` become 0 as well (integer pixels cannot make any:
    :func:`band_statistics` refuses a non-finite shift or a zero or non-finite scale).
    Which band-pixels those are: :func:`normalize_with_band_valid`.
    """
    return _normalize(x, shift, scale, valid, nodata, want_bad=False)[0]


def normalize_with_band_valid(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                              valid: torch.Tensor | None = None,
                              nodata: Sequence[float | None] | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`normalize`'s output and the ``(B, C, H, W)`` bool validity of each band-pixel:
    True where the pixel is valid (``valid``, all when None) AND that band is not at its
    band's ``nodata`` value there AND (float ``x``) its value is finite, i.e. exactly the
    band-pixels :func:`normalize` did not set to 0 for being nodata. None when no band-pixel
    of a valid pixel is nodata (every band is then valid wherever the pixel is: the usual
    case, as a build marks a pixel invalid where any band is nodata), so callers keep the
    per-pixel path; deciding that reads one bool per band-pixel (a device sync on a GPU).
    Made in the same pass as the normalisation (no second read of ``x``, no float copy)."""
    y, bad = _normalize(x, shift, scale, valid, nodata, want_bad=True)
    if bad is None:  # integer pixels and no band with a nodata value their dtype holds
        return y, None
    pixel_ok = None if valid is None else valid.to(bad.device).bool()[:, None]
    if not bool((bad if pixel_ok is None else bad & pixel_ok).any()):
        return y, None
    ok = bad.logical_not_()
    if pixel_ok is not None:
        ok &= pixel_ok
    return y, ok


def _normalize(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
               valid: torch.Tensor | None, nodata: Sequence[float | None] | None,
               want_bad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`normalize`, and with ``want_bad`` the (B, C, H, W) bool of the band-pixels at
    their band's nodata value or (float ``x``) not finite, whatever their pixel's validity
    (None when there can be none)."""
    dev = x.device
    y = x.to(torch.float32, copy=True)  # the one new full-size tensor; the rest in place
    drop = None  # (B, C or 1, H, W) bool: set to 0, in one pass
    if valid is not None:
        drop = (valid.to(dev) == 0)[:, None]
    at = None
    if nodata is not None:
        at = nodata_mask(x, nodata, y)  # before y is shifted: it reads the raw values
        if at is not None:
            drop = at if drop is None else drop | at
    bad = at
    if want_bad and x.is_floating_point():
        nonfinite = torch.isfinite(x).logical_not_()
        bad = nonfinite if at is None else at | nonfinite  # not in place: ``drop`` may be ``at``
    y.sub_(shift.to(dev, torch.float32)[:, None, None]).div_(
        scale.to(dev, torch.float32)[:, None, None])  # float32 whatever the statistics' dtype
    if drop is not None:
        y.masked_fill_(drop, 0.0)
    if x.is_floating_point():
        y.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    return y, bad


_EXACT_IN_FLOAT32 = (torch.uint8, torch.int8, torch.int16, torch.uint16, torch.float16,
                     torch.bfloat16, torch.float32)


def nodata_mask(x: torch.Tensor, nodata: Sequence[float | None],
                x32: torch.Tensor | None = None) -> torch.Tensor | None:
    """``(B, C, H, W)`` bool: the band-pixels of raw ``x`` equal to their band's ``nodata``
    value (one per band, None for none), compared as ingest does (the value cast to ``x``'s
    dtype, :func:`eofm.data_shards.stats.invalid_mask`); None when no band has a value that
    ``x``'s dtype can hold. NaN values are left to the caller (they are not finite). ``x32``:
    ``x`` already converted to float32, which saves a copy when that is exact."""
    if len(nodata) != x.shape[1]:
        raise ValueError(f"nodata: expected one value (or None) per band of x ({x.shape[1]}), "
                         f"got {len(nodata)}")
    refs = _nodata_reference(tuple(nodata), x.dtype, x.device)
    if refs is None:
        return None
    ref, use = refs
    xc = x32 if ref.dtype == torch.float32 and x32 is not None else x.to(ref.dtype)
    return (xc == ref) & use


@functools.lru_cache(maxsize=32)
def _nodata_reference(nodata: tuple[float | None, ...], dtype: torch.dtype,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(C, 1, 1) values to compare pixels of ``dtype`` with, in float32 when that is exact
    (else float64), and which bands have one; None when no band does. Made once per
    (values, dtype, device): the training step calls :func:`nodata_mask` every micro-batch,
    and a host-to-device copy each time would be a sync on the GPU."""
    kind = np.dtype(np.float32) if dtype == torch.bfloat16 else np.dtype(
        str(dtype).removeprefix("torch."))  # numpy has no bfloat16 (no raw data is)
    values, has = [], []
    for nd in nodata:
        v = _in_dtype(nd, kind)
        values.append(0.0 if v is None else v)
        has.append(v is not None)
    if not any(has):
        return None
    cmp = torch.float32 if dtype in _EXACT_IN_FLOAT32 else torch.float64
    return (torch.tensor(values, dtype=cmp, device=device)[:, None, None],
            torch.tensor(has, dtype=torch.bool, device=device)[:, None, None])


def _in_dtype(nd: float | None, kind: np.dtype) -> float | None:
    """``nd`` as a value of dtype ``kind`` (as a float), or None when there is no finite such
    value (None, NaN, or out of the integer range)."""
    if nd is None or not np.isfinite(nd):
        return None
    if kind.kind in "iu":
        info = np.iinfo(kind)
        if not info.min <= nd <= info.max:
            return None
    return float(np.asarray(nd).astype(kind))
