"""Sample transforms: the resampling crop records its zoom (the GSD multiplier)."""

from __future__ import annotations

import numpy as np
import pytest

from eofm.data_shards.transforms import ZOOM_KEY, RandomCrop, RandomResizedCrop


def _sample() -> dict:
    return {"__key__": "a", "s2": np.arange(2 * 64 * 64, dtype=np.uint16).reshape(2, 64, 64),
            "s2_valid": np.ones((64, 64), bool)}


def test_resized_crop_records_source_pixels_per_output_pixel() -> None:
    rng = np.random.default_rng(0)
    crop = RandomResizedCrop(16, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    out = crop(_sample(), rng)
    assert out["s2"].shape == (2, 16, 16) and out["s2_valid"].shape == (16, 16)
    assert out[ZOOM_KEY] == pytest.approx(2.0)  # a 32 px box resized to 16 px
    full = RandomResizedCrop(64, scale=(1.0, 1.0), ratio=(1.0, 1.0))(_sample(), rng)
    assert full[ZOOM_KEY] == pytest.approx(1.0)
    assert np.array_equal(full["s2"], _sample()["s2"])  # full box at full size: unchanged


def test_zoom_is_the_geometric_mean_of_the_box_axes() -> None:
    crop = RandomResizedCrop(32, scale=(0.2, 1.0))
    for seed in range(20):
        rng = np.random.default_rng(seed)
        _, _, ch, cw = crop.box(64, 64, np.random.default_rng(seed))
        out = crop(_sample(), rng)
        assert out[ZOOM_KEY] == pytest.approx((ch * cw) ** 0.5 / 32)


def test_plain_crop_does_not_resample() -> None:
    out = RandomCrop(32)(_sample(), np.random.default_rng(0))
    assert ZOOM_KEY not in out and out["s2"].shape == (2, 32, 32)
