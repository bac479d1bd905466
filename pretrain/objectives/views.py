"""Augmented views made on the device from the loader's one crop (SoftCon's two views).

:func:`make_views` draws, per sample and from the step's generator, a random resized crop,
flips, quarter turns and a per-band jitter, resampling the pixels (bilinear) and their validity
(nearest) in one ``grid_sample`` each; invalid pixels come out 0 (selected, so a NaN the
bilinear kernel spread there does too; a NaN at an invalid INPUT pixel still spreads into valid
neighbours: callers read those as 0 first, :func:`~.mae.finite_input`). :func:`view_gsd_factor` is
the views' GSD over the loaded sample's (the loader's crop resampled to the encoder's size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import radiometric_jitter

__all__ = ["make_views", "view_gsd_factor", "view_size"]


def _rot90(k: Tensor) -> Tensor:
    """(B,) quarter turns -> (B, 2, 2) rotation matrices."""
    c = torch.cos(k * (math.pi / 2)).round()
    s = torch.sin(k * (math.pi / 2)).round()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def view_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` (an int: square, or (h, w)) -> (h, w) positive ints; ValueError otherwise."""
    hw = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"size: expected a positive int or (h, w), got {size!r}")
    return hw[0], hw[1]


def view_gsd_factor(loaded: Sequence[int] | None, size: int | Sequence[int]) -> float:
    """The views' GSD over the loaded sample's for a full-frame view: ``loaded`` (ch, cw) px
    (the loader's crop, or its tiles) resampled to ``size`` (h, w), i.e.
    sqrt(ch * cw) / sqrt(h * w) (2.0 for a 48 px crop seen at 24 px); 1.0 when ``loaded`` is
    None (tiles of different sizes: no single factor). ValueError for a non-positive size."""
    h, w = view_size(size)
    if loaded is None:
        return 1.0
    ch, cw = view_size(tuple(loaded))
    return math.sqrt(ch * cw) / math.sqrt(h * w)


def make_views(x: Tensor, valid: Tensor | None, size: int | Sequence[int],
               generator: torch.Generator | None,
               crop_scale: Sequence[float] = (0.4, 1.0), flip: bool = True, rot90: bool = True,
               brightness: float = 0.0,
               ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tuple[Tensor, Tensor, Tensor]:
    """One augmented view per sample, on x's device: (B, C, h, w) for ``size`` (h, w) (an int:
    square), its validity and its (B,) zoom (input pixels per view pixel, geometric mean of the
    axes: the view's GSD is the input's times the zoom).

    Random resized crop (area share ``crop_scale``, aspect ``ratio``, both relative to the input
    frame, which is resampled to the view's frame; bilinear for pixels, nearest for the mask),
    flips and quarter turns, per-band jitter; invalid pixels are 0. A non-square view
    (h != w) turns by half turns only (``rot90`` draws 0 or 180 degrees): a quarter turn would
    need a crop of transposed shape, which the input frame cannot hold without distortion.
    """
    B, C = x.shape[:2]
    out_h, out_w = view_size(size)
    dev = x.device

    def u(*shape: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=generator, device=dev)

    area = u(B, lo=crop_scale[0], hi=crop_scale[1])
    r = torch.exp(u(B, lo=math.log(ratio[0]), hi=math.log(ratio[1])))
    w = torch.sqrt(area * r).clamp(max=1.0)  # half-extent in [-1, 1] coordinates
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = u(B, lo=-1.0, hi=1.0) * (1 - w)
    cy = u(B, lo=-1.0, hi=1.0) * (1 - h)
    fx = torch.where(u(B) < 0.5, -1.0, 1.0) if flip else torch.ones(B, device=dev)
    fy = torch.where(u(B) < 0.5, -1.0, 1.0) if flip else torch.ones(B, device=dev)
    k = torch.floor(u(B) * 4).clamp(max=3) if rot90 else torch.zeros(B, device=dev)
    if out_h != out_w:
        k = k - k.remainder(2)  # 0/1 -> 0 and 2/3 -> 2 turns: the same draws, half turns only
    lin = torch.diag_embed(torch.stack([w * fx, h * fy], -1)) @ _rot90(k)
    theta = torch.cat([lin, torch.stack([cx, cy], -1)[..., None]], -1)  # (B, 2, 3)
    grid = F.affine_grid(theta, [B, C, out_h, out_w], align_corners=False)
    xv = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                       align_corners=False)
    v = torch.ones(B, 1, *x.shape[-2:], device=dev) if valid is None else valid[:, None].float()
    vv = F.grid_sample(v, grid, mode="nearest", padding_mode="border",
                       align_corners=False) > 0.5
    # crop (w * W) x (h * H) input px onto out_w x out_h view px: geometric mean per axis
    zoom = torch.sqrt(w * h * x.shape[-1] * x.shape[-2]) / math.sqrt(out_h * out_w)
    # selected, not multiplied: NaN * 0 is NaN (a non-finite value at an invalid pixel, spread
    # by the bilinear kernel, must not survive as nodata)
    return (radiometric_jitter(torch.where(vv, xv, 0.0), vv[:, 0], brightness, brightness,
                               generator), vv[:, 0], zoom)
