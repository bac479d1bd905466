"""eofm-probe / eofm-finetune resize to the contract's input size without blending nodata
(0 after normalisation) into the valid pixels along its edges."""

from __future__ import annotations

import numpy as np
import torch

from eofm.finetune.features import Preprocess


def _pre(size: tuple[int, int]) -> Preprocess:
    return Preprocess(bands=["B04", "B08"], index=[0, 1], source_bands=["B04", "B08"],
                      size=size, method="meanstd", shift=[1000.0, 2000.0], scale=[500.0, 500.0],
                      nodata=[0.0, 0.0], wavelengths=[665.0, 842.0], bandwidths=[30.0, 115.0])


def test_a_nodata_edge_does_not_darken_the_valid_pixels_beside_it() -> None:
    raw = np.full((2, 2, 60, 60), 3000, dtype=np.uint16)  # normalised: 4.0 and 2.0
    raw[0, :, :, :25] = 0  # tile 0: its left 25 columns are nodata (in every band)
    for size in ((32, 32), (120, 120)):  # down (antialiased) and up
        y = _pre(size)(raw)
        valid = y[0, 0] != 0
        assert torch.allclose(y[0, 0][valid], torch.tensor(4.0), atol=1e-5)  # no blend
        assert torch.allclose(y[0, 1][valid], torch.tensor(2.0), atol=1e-5)
        frac = valid[0].float().mean().item()  # the valid share of a row stays ~35/60
        assert abs(frac - 35 / 60) < 2 / size[1], (size, frac)
        assert (y[0, :, :, : size[1] // 3] == 0).all()  # the nodata side stays nodata
        assert torch.allclose(y[1], torch.tensor([4.0, 2.0])[:, None, None].expand_as(y[1]))


def test_tiles_without_nodata_resize_as_plain_bilinear() -> None:
    raw = np.random.default_rng(0).integers(1, 5000, (1, 2, 60, 60)).astype(np.uint16)
    y = _pre((32, 32))(raw)
    x = (torch.from_numpy(raw.astype(np.float32)) - torch.tensor([1000.0, 2000.0])[:, None, None]
         ) / 500.0
    ref = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear",
                                          align_corners=False, antialias=True)
    assert torch.equal(y, ref)
