"""Land-cover label vectors from a class raster: per-class area fractions with a presence threshold.

SoftCon-style multi-label targets come either as a class list per sample (BigEarthNet's json,
multi-hot in the shard's ``labels.npy``) or from a land-cover map (e.g. Dynamic World, 9
classes) stored as the sample's ``seg`` raster (``eofm-shard build --seg-dir``). This module turns
such a raster into the label vector, after any crop, so the labels describe exactly the pixels
the model sees.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["class_fractions"]


def class_fractions(seg: Tensor | np.ndarray, num_classes: int, *, threshold: float = 0.0,
                    ignore_index: int | None = None, binary: bool = False) -> Tensor:
    """(..., H, W) integer class raster -> (..., num_classes) float32 class fractions.

    Pixels equal to ``ignore_index`` (nodata) and class ids outside ``[0, num_classes)`` are left
    out of the denominator. Fractions at or below ``threshold`` are set to 0 (a class must cover
    more than that share to count as present); ``binary`` turns the rest into 1 (multi-hot).
    A raster with no counted pixel gives an all-zero vector (an unlabelled sample).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold: expected a value in [0, 1), got {threshold}")
    t = torch.as_tensor(seg)
    if t.ndim < 2 or t.is_floating_point():
        raise ValueError(f"seg: expected an integer (..., H, W) class raster, got dtype "
                         f"{t.dtype} shape {tuple(t.shape)}")
    flat = t.reshape(*t.shape[:-2], -1).long()
    ok = (flat >= 0) & (flat < num_classes)
    if ignore_index is not None:
        ok &= flat != ignore_index
    onehot = torch.zeros(*flat.shape[:-1], num_classes + 1, dtype=torch.float32,
                         device=flat.device)
    onehot.scatter_add_(-1, torch.where(ok, flat, num_classes),
                        torch.ones_like(flat, dtype=torch.float32))
    counts = onehot[..., :num_classes]
    frac = counts / counts.sum(-1, keepdim=True).clamp(min=1.0)
    frac = torch.where(frac > threshold, frac, torch.zeros_like(frac))
    return (frac > 0).float() if binary else frac
