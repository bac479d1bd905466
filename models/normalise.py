"""Raw pixels -> the normalised input an encoder expects, from its input contract.

One implementation of the contract's pixel rule, ``x = (raw - shift) / scale`` per band with
every pixel that is nodata (or not finite) in any band set to 0 after normalising, except that
a band with no data at all in a sample (a band its sensor may leave empty, as EnMAP's
water-vapour bands) is set to 0 alone rather than blanking every pixel, as pretraining feeds
it (``eofm.data_shards.transforms.normalize``): the model
card's "How to load" snippet calls :func:`normalise_input`, and eofm-probe / eofm-finetune's
:class:`eofm.finetune.features.Preprocess` calls :func:`normalise_masked` (:func:`normalise`
plus the invalid pixels its resize needs, from the same single nodata pass) with the same
numbers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .contract import InputContract

__all__ = ["empty_bands", "invalid_pixels", "normalisation_params", "normalise",
           "normalise_input", "normalise_masked"]

METHODS = {"meanstd": ("mean", "std"), "percentile": ("p2", "p98")}


def normalise(x: np.ndarray | Tensor, shift: Sequence[float], scale: Sequence[float],
              nodata: Sequence[float | None] | float | None = None) -> Tensor:
    """(B, C, H, W) raw pixels -> float32 ``(x - shift) / scale`` per band, and 0 at every
    pixel where any band is not finite or equals its ``nodata`` value (one value for every
    band, or one per band with None for "none"), and in every band with no data at all in
    its sample (:func:`empty_bands`; such a band does not blank the other bands' pixels).
    ``x``'s bands are in ``shift``'s order. :func:`normalise_masked` also returns the
    invalid pixels."""
    return normalise_masked(x, shift, scale, nodata)[0]


def normalise_masked(x: np.ndarray | Tensor, shift: Sequence[float], scale: Sequence[float],
                     nodata: Sequence[float | None] | float | None = None, *,
                     device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """:func:`normalise`, and its (B, 1, H, W) bool :func:`invalid_pixels` (what a resize
    must keep out of the valid pixels), from one nodata pass: ``x`` (any dtype, as read) is
    cast to float32 and moved to ``device`` (default: where it is; CPU for numpy), the
    band-pixels at nodata found once (non-finite ones only for float pixels: integer ones
    cannot be), and the output zeroed in place."""
    t, floating = _as_float32(x)
    if t.ndim != 4 or t.shape[1] != len(shift) or len(scale) != len(shift):
        raise ValueError(f"x: expected (B, {len(shift)}, H, W) with {len(shift)} shifts and "
                         f"scales, got shape {tuple(t.shape)} and {len(scale)} scales")
    if device is not None:
        t = t.to(device)
    sh = torch.tensor(list(shift), dtype=torch.float32, device=t.device)[:, None, None]
    sc = torch.tensor(list(scale), dtype=torch.float32, device=t.device)[:, None, None]
    y = (t - sh) / sc  # a new tensor: zeroed in place below, ``t`` (maybe ``x``) untouched
    bad = _band_nodata(t, nodata, finite=floating)
    if bad is None:  # integer pixels and no nodata value: nothing to mask
        return y, _no_pixels(t)
    empty, invalid = _empty_and_invalid(bad)
    return y.masked_fill_(invalid | empty[..., None, None], 0.0), invalid


def _empty_and_invalid(bad: Tensor) -> tuple[Tensor, Tensor]:
    """From (B, C, H, W) bad band-pixels: the (B, C) bands with no data at all in their
    sample, and the (B, 1, H, W) pixels bad in any band that has data (the normalisation rule:
    an empty band is zeroed alone, it does not blank the others' pixels)."""
    empty = bad.flatten(2).all(dim=-1)
    return empty, (bad & ~empty[..., None, None]).any(dim=1, keepdim=True)


def _as_float32(x: np.ndarray | Tensor) -> tuple[Tensor, bool]:
    """``x`` as a float32 tensor (numpy: on the CPU; uint16 has few torch kernels, none on
    CUDA, so the cast comes first), and whether its pixels could be non-finite (float, or a
    dtype other than integer/bool; an integer converts to a finite float32)."""
    if isinstance(x, Tensor):
        return x.to(torch.float32), x.is_floating_point() or x.is_complex()
    a = np.asarray(x)
    return torch.from_numpy(np.asarray(a, dtype=np.float32)), a.dtype.kind not in "biu"


def _band_nodata(x: Tensor, nodata: Sequence[float | None] | float | None,
                 finite: bool | None = None) -> Tensor | None:
    """(B, C, H, W) bool: band-pixels of raw ``x`` that equal their band's ``nodata`` value
    (compared in ``x``'s dtype) or are not finite; None when neither can occur (no nodata
    value and integer pixels). ``finite``: whether to look for non-finite values (default: for
    float ``x``; False for float32 converted from integer pixels, which cannot have any)."""
    values = list(nodata) if isinstance(nodata, Sequence) else [nodata] * x.shape[1]
    if len(values) != x.shape[1]:
        raise ValueError(f"nodata: expected one value per band ({x.shape[1]}), got "
                         f"{len(values)}")
    if finite is None:
        finite = x.is_floating_point() or x.is_complex()
    bad = ~torch.isfinite(x) if finite else None
    if all(nd is None for nd in values):
        return bad
    if x.is_floating_point():  # all bands at once; NaN stands for "none": equal to no pixel
        ref = torch.tensor([float("nan") if nd is None else float(nd) for nd in values],
                           dtype=x.dtype, device=x.device)[:, None, None]
        at = x == ref
        return at if bad is None else bad.logical_or_(at)
    bad = torch.zeros(x.shape, dtype=torch.bool, device=x.device) if bad is None else bad
    for c, nd in enumerate(values):  # integer pixels, compared as Python scalars promote
        if nd is not None:
            bad[:, c] |= x[:, c] == nd
    return bad


def _no_pixels(x: Tensor) -> Tensor:
    """(B, 1, H, W) all-False bool on ``x``'s device: no invalid pixel."""
    return torch.zeros((x.shape[0], 1, *x.shape[2:]), dtype=torch.bool, device=x.device)


def empty_bands(x: Tensor, nodata: Sequence[float | None] | float | None = None) -> Tensor:
    """(B, C) bool: the bands of raw ``(B, C, H, W)`` with no data at all in their sample
    (every pixel nodata or not finite)."""
    bad = _band_nodata(x, nodata)
    if bad is None:
        return torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
    return _empty_and_invalid(bad)[0]


def invalid_pixels(x: Tensor, nodata: Sequence[float | None] | float | None = None) -> Tensor:
    """(B, 1, H, W) bool: pixels of raw ``(B, C, H, W)`` that are not finite or equal their
    band's ``nodata`` value in any band that has data in the sample (the pixels
    :func:`normalise` sets to 0; a band empty in the whole sample, :func:`empty_bands`, is
    set to 0 alone)."""
    bad = _band_nodata(x, nodata)
    return _no_pixels(x) if bad is None else _empty_and_invalid(bad)[1]


def normalisation_params(contract: InputContract) -> tuple[list[float], list[float]]:
    """(shift, scale) per contract band: (mean, std) for "meanstd", (p2, p98 - p2) for
    "percentile"; a ValueError names the band whose statistics are missing or unusable."""
    method = contract.normalisation or "meanstd"
    if method not in METHODS:
        raise ValueError(f"contract.normalisation: expected one of {sorted(METHODS)}, got "
                         f"{method!r}")
    if not contract.bands or not contract.stats:
        raise ValueError("contract: expected bands and per-band statistics to normalise with, "
                         f"got bands {list(contract.bands)} and stats {contract.stats}")
    lo_key, hi_key = METHODS[method]
    shift, scale = [], []
    for b in contract.bands:
        s = contract.stats.get(b) or {}
        lo, hi = s.get(lo_key), s.get(hi_key)
        if not (_finite(lo) and _finite(hi)):
            raise ValueError(f"contract.stats[{b!r}]: expected usable {lo_key!r} and "
                             f"{hi_key!r} for {method} normalisation (finite numbers), got {s}")
        sc = float(hi) - float(lo) if method == "percentile" else float(hi)
        if not (math.isfinite(sc) and sc > 0):
            what = f"{hi_key} - {lo_key}" if method == "percentile" else hi_key
            raise ValueError(f"contract.stats[{b!r}]: expected usable {lo_key!r} and "
                             f"{hi_key!r} for {method} normalisation (a scale {what} > 0), "
                             f"got {s}")
        shift.append(float(lo))
        scale.append(sc)
    return shift, scale


def _finite(v: object) -> bool:
    """A finite real number (not a bool, not None)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def normalise_input(raw: np.ndarray | Tensor, contract: InputContract) -> Tensor:
    """(B, C, H, W) raw pixels, bands in ``contract.bands`` order -> the encoder's input:
    normalised with the contract's statistics and method, pixels equal to their band's
    ``contract.nodata`` value (one number for every band, or one value per band: a stacked
    Sentinel-2 + Sentinel-1 contract's 0 is nodata in the optical bands only) in any band,
    or not finite, set to 0 (what eofm-probe and eofm-finetune feed). Resizing to
    ``contract.input_size`` is left to the caller."""
    shift, scale = normalisation_params(contract)
    nodata = contract.nodata  # a per-band tuple (one per contract band) or one number
    return normalise(raw, shift, scale, list(nodata) if isinstance(nodata, tuple) else nodata)
