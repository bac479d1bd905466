"""Device-side data helpers of the pretraining runtime."""

from __future__ import annotations

import torch

from eofm.pretrain.data import radiometric_jitter


def test_radiometric_jitter_is_per_sample_and_band_and_keeps_nodata_zero() -> None:
    x = torch.ones(4, 3, 8, 8)
    valid = torch.ones(4, 8, 8, dtype=torch.bool)
    valid[0, :2] = False
    assert radiometric_jitter(x, valid, 0.0, 0.0) is x  # off: untouched
    out = radiometric_jitter(x, valid, 0.3, 0.5, torch.Generator().manual_seed(0))
    per = out[:, :, 4, 4]  # one value per (sample, band): constant over valid pixels
    assert torch.equal(out[1], per[1][:, None, None].expand(3, 8, 8))
    assert per.unique().numel() == 12
    assert ((per >= 1 * 0.7 - 0.5) & (per <= 1 * 1.3 + 0.5)).all()
    assert (out[0, :, :2] == 0).all()
    again = radiometric_jitter(x, valid, 0.3, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # reproducible from the step's generator
