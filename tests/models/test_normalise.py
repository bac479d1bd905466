"""eofm.models.normalise (and eofm-probe's Preprocess built on it) against a straightforward
reference: cast to float32, a per-band nodata/non-finite mask, ``torch.where`` to 0. The
one-pass implementation must give the same tensors, bit for bit: nodata pixels, a band with no
data in every image or in one image only, float input with NaN and inf, integer and float
input, one nodata value for all bands or one per band (None: none), and through Preprocess band
selection, both normalisation methods and the nodata-aware resize."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

import eofm.models.normalise as norm
from eofm.finetune import features
from eofm.finetune.features import Preprocess

SHIFT = [1000.0, 2000.0, 1500.0]
SCALE = [500.0, 700.0, 300.0]


def _reference(x: np.ndarray | Tensor, shift: Sequence[float], scale: Sequence[float],
               nodata: Sequence[float | None] | float | None
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Straightforward normalise: (y, invalid (B, 1, H, W), empty bands (B, C))."""
    t = x.to(torch.float32) if isinstance(x, Tensor) else torch.from_numpy(
        np.asarray(x, dtype=np.float32))
    values = list(nodata) if isinstance(nodata, Sequence) else [nodata] * t.shape[1]
    bad = ~torch.isfinite(t)
    for c, nd in enumerate(values):
        if nd is not None:
            bad[:, c] |= t[:, c] == nd
    empty = bad.flatten(2).all(dim=-1)[..., None, None]
    invalid = (bad & ~empty).any(dim=1, keepdim=True)
    y = (t - torch.tensor(shift)[:, None, None]) / torch.tensor(scale)[:, None, None]
    return torch.where(invalid | empty, torch.zeros_like(y), y), invalid, empty[..., 0, 0]


def _uint16() -> np.ndarray:
    """(3, 3, 12, 12) uint16 with nodata (0) pixels, a band empty in image 1 only and, in
    image 2, every band but one at nodata in a corner."""
    x = np.random.default_rng(0).integers(1, 6000, (3, 3, 12, 12)).astype(np.uint16)
    x[0, 0, :3, :4] = 0  # nodata in one band: the pixel is invalid in every band
    x[0, 2, 5, 5] = 0
    x[1, 1] = 0  # band 1 has no data in image 1 only: it alone is set to 0 there
    x[2, :2, -2:, -2:] = 0
    return x


def _cases() -> list[tuple[str, np.ndarray | Tensor, object]]:
    x = _uint16()
    f = x.astype(np.float32)
    f[0, 1, 7, 7] = np.nan
    f[2, 2, 0, 0] = np.inf
    f[1, 0, 3, 3] = -np.inf
    i16 = x.astype(np.int16)
    i16[0, 2, 8:, 8:] = -32768
    all_empty = x.copy()
    all_empty[:, 2] = 0  # a band with no data in any image
    return [
        ("uint16, one nodata value", x, 0.0),
        ("uint16, per band with None", x, [0.0, None, 0.0]),
        ("uint16, no nodata", x, None),
        ("uint16 tensor", torch.from_numpy(x.astype(np.int32)), [0, 0, 0]),
        ("float32 with NaN and inf", f, 0.0),
        ("float32 with NaN, no nodata", f, None),
        ("float64 tensor with NaN", torch.from_numpy(f.astype(np.float64)), [0.0, 0.0, None]),
        ("float16 with inf", f.astype(np.float16), None),
        ("int16 with -32768", i16, [0.0, None, -32768.0]),
        ("a band empty in every image", all_empty, 0.0),
        ("a nodata value no pixel has", x, 65535.0),
    ]


@pytest.mark.parametrize("case", _cases(), ids=[c[0] for c in _cases()])
def test_normalise_equals_the_reference(case: tuple[str, object, object]) -> None:
    _, x, nodata = case
    ref, ref_invalid, ref_empty = _reference(x, SHIFT, SCALE, nodata)
    assert torch.equal(norm.normalise(x, SHIFT, SCALE, nodata), ref)
    y, invalid = norm.normalise_masked(x, SHIFT, SCALE, nodata)
    assert torch.equal(y, ref) and torch.equal(invalid, ref_invalid)
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
    assert torch.equal(norm.invalid_pixels(t, nodata), ref_invalid)
    assert torch.equal(norm.empty_bands(t, nodata), ref_empty)


def test_normalise_does_not_write_into_a_float32_input() -> None:
    x = torch.from_numpy(_uint16().astype(np.float32))
    before = x.clone()
    norm.normalise(x, SHIFT, SCALE, 0.0)
    assert torch.equal(x, before)


def test_normalise_names_a_wrong_shape_or_nodata_length() -> None:
    with pytest.raises(ValueError, match=r"x: expected \(B, 3, H, W\)"):
        norm.normalise(np.zeros((2, 2, 4, 4), np.uint16), SHIFT, SCALE)
    with pytest.raises(ValueError, match=r"nodata: expected one value per band \(3\), got 2"):
        norm.normalise(np.zeros((2, 3, 4, 4), np.uint16), SHIFT, SCALE, [0.0, 0.0])


def _preprocess(size: tuple[int, int] | None, method: str = "meanstd") -> Preprocess:
    """Feeds dataset bands 3, 0, 2 (of 4)."""
    return Preprocess(bands=["B08", "B02", "B04"], index=[3, 0, 2],
                      source_bands=["B08", "B02", "B04"], size=size, method=method,
                      shift=SHIFT, scale=SCALE, nodata=[0.0, None, 0.0],
                      wavelengths=[842.0, 490.0, 665.0], bandwidths=[115.0, 65.0, 30.0])


def _preprocess_reference(pre: Preprocess, x: np.ndarray | Tensor) -> Tensor:
    """Preprocess as a straightforward composition: cast, select, normalise, resize."""
    t = x.to(torch.float32) if isinstance(x, Tensor) else torch.from_numpy(
        np.asarray(x, dtype=np.float32))
    y, invalid, _ = _reference(t[:, pre.index], pre.shift, pre.scale, pre.nodata)
    if pre.size is not None and tuple(y.shape[-2:]) != pre.size:
        y = features._resize(y, invalid, pre.size)
    return y


@pytest.mark.parametrize("size", [None, (6, 6), (24, 24)])
@pytest.mark.parametrize("method", ["meanstd", "percentile"])
def test_preprocess_equals_the_reference(size: tuple[int, int] | None, method: str) -> None:
    x = np.random.default_rng(1).integers(1, 6000, (3, 4, 12, 12)).astype(np.uint16)
    x[0, 3, :4, :5] = 0  # nodata in a fed band
    x[1, 0] = 0  # a fed band with no data in image 1
    x[2, 1, :6] = 0  # the band with no nodata value: 0 is data
    x[2, 1, 0, 0] = 0
    f = x.astype(np.float32)
    f[0, 2, 9, 9] = np.nan
    pre = _preprocess(size, method)
    for raw in (x, f, torch.from_numpy(f), torch.from_numpy(x.astype(np.int32))):
        assert torch.equal(pre(raw), _preprocess_reference(pre, raw))


def test_preprocess_finds_the_nodata_mask_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """One nodata pass per batch for normalising and the resize (it was three)."""
    calls = []
    original = norm._band_nodata

    def counted(*args: object, **kwargs: object) -> Tensor | None:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(norm, "_band_nodata", counted)
    x = np.random.default_rng(2).integers(1, 6000, (2, 4, 12, 12)).astype(np.uint16)
    x[0, 0, :3] = 0
    _preprocess((24, 24))(x)
    assert len(calls) == 1
