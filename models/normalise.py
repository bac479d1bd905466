"""Raw pixels -> the normalised input an encoder expects, from its input contract.

One implementation of the contract's pixel rule, ``x = (raw - shift) / scale`` per band with
every pixel that is nodata (or not finite) in any band set to 0 after normalising, except that
a band with no data at all in a sample (a band its sensor may leave empty, as EnMAP's
water-vapour bands) is set to 0 alone rather than blanking every pixel, as pretraining feeds
it (``eofm.data_shards.transforms.normalize``): the model
card's "How to load" snippet calls :func:`normalise_input`, and eofm-probe / eofm-finetune's
:class:`eofm.finetune.features.Preprocess` calls :func:`normalise` with the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .contract import InputContract

__all__ = ["empty_bands", "invalid_pixels", "normalisation_params", "normalise",
           "normalise_input"]

METHODS = {"meanstd": ("mean", "std"), "percentile": ("p2", "p98")}


def normalise(x: np.ndarray | Tensor, shift: Sequence[float], scale: Sequence[float],
              nodata: Sequence[float | None] | float | None = None) -> Tensor:
    """(B, C, H, W) raw pixels -> float32 ``(x - shift) / scale`` per band, and 0 at every
    pixel where any band is not finite or equals its ``nodata`` value (one value for every
    band, or one per band with None for "none"), and in every band with no data at all in
    its sample (:func:`empty_bands`; such a band does not blank the other bands' pixels).
    ``x``'s bands are in ``shift``'s order."""
    if not isinstance(x, Tensor):  # uint16 has few kernels (none on CUDA): float32 first
        x = torch.from_numpy(np.asarray(x, dtype=np.float32))
    if x.ndim != 4 or x.shape[1] != len(shift) or len(scale) != len(shift):
        raise ValueError(f"x: expected (B, {len(shift)}, H, W) with {len(shift)} shifts and "
                         f"scales, got shape {tuple(x.shape)} and {len(scale)} scales")
    t = x.to(torch.float32)
    invalid = invalid_pixels(t, nodata)
    sh = torch.tensor(list(shift), dtype=torch.float32, device=t.device)[:, None, None]
    sc = torch.tensor(list(scale), dtype=torch.float32, device=t.device)[:, None, None]
    y = (t - sh) / sc
    empty = empty_bands(t, nodata)[..., None, None]
    return torch.where(invalid | empty, torch.zeros_like(y), y)


def _band_nodata(x: Tensor, nodata: Sequence[float | None] | float | None) -> Tensor:
    """(B, C, H, W) bool: band-pixels of raw ``x`` that are not finite or equal their band's
    ``nodata`` value."""
    values = list(nodata) if isinstance(nodata, Sequence) else [nodata] * x.shape[1]
    if len(values) != x.shape[1]:
        raise ValueError(f"nodata: expected one value per band ({x.shape[1]}), got "
                         f"{len(values)}")
    bad = ~torch.isfinite(x)
    for c, nd in enumerate(values):
        if nd is not None:
            bad[:, c] |= x[:, c] == nd
    return bad


def empty_bands(x: Tensor, nodata: Sequence[float | None] | float | None = None) -> Tensor:
    """(B, C) bool: the bands of raw ``(B, C, H, W)`` with no data at all in their sample
    (every pixel nodata or not finite)."""
    return _band_nodata(x, nodata).flatten(2).all(dim=-1)


def invalid_pixels(x: Tensor, nodata: Sequence[float | None] | float | None = None) -> Tensor:
    """(B, 1, H, W) bool: pixels of raw ``(B, C, H, W)`` that are not finite or equal their
    band's ``nodata`` value in any band that has data in the sample (the pixels
    :func:`normalise` sets to 0; a band empty in the whole sample, :func:`empty_bands`, is
    set to 0 alone)."""
    bad = _band_nodata(x, nodata)
    empty = bad.flatten(2).all(dim=-1)[..., None, None]
    return (bad & ~empty).any(dim=1, keepdim=True)


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
        sc = (hi - lo if lo is not None and hi is not None else None) \
            if method == "percentile" else hi
        if lo is None or not sc:
            raise ValueError(f"contract.stats[{b!r}]: expected usable {lo_key!r} and "
                             f"{hi_key!r} for {method} normalisation, got {s}")
        shift.append(float(lo))
        scale.append(float(sc))
    return shift, scale


def normalise_input(raw: np.ndarray | Tensor, contract: InputContract) -> Tensor:
    """(B, C, H, W) raw pixels, bands in ``contract.bands`` order -> the encoder's input:
    normalised with the contract's statistics and method, pixels at ``contract.nodata`` (in
    any band) or not finite set to 0 (what eofm-probe and eofm-finetune feed). Resizing to
    ``contract.input_size`` is left to the caller."""
    shift, scale = normalisation_params(contract)
    return normalise(raw, shift, scale, contract.nodata)
