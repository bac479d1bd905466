"""Class-fraction label vectors from a land-cover raster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eofm.data_shards.landcover import class_fractions


def test_fractions_threshold_nodata_and_batches() -> None:
    seg = np.array([[0, 0, 1, 1], [0, 0, 1, 2], [3, 3, 3, 3], [255, 255, 255, 255]], np.uint8)
    frac = class_fractions(seg, 4, ignore_index=255)
    assert torch.allclose(frac, torch.tensor([4, 3, 1, 4]) / 12.0)
    assert torch.equal(class_fractions(seg, 4, threshold=0.1, ignore_index=255),
                       torch.tensor([4, 3, 0, 4]) / 12.0)
    assert torch.equal(class_fractions(seg, 4, threshold=0.1, ignore_index=255, binary=True),
                       torch.tensor([1.0, 1, 0, 1]))
    batch = torch.from_numpy(np.stack([seg, np.full_like(seg, 255)]))
    out = class_fractions(batch, 4, ignore_index=255)
    assert out.shape == (2, 4) and torch.equal(out[0], frac) and not out[1].any()


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="integer"):
        class_fractions(torch.rand(4, 4), 3)
    with pytest.raises(ValueError, match="threshold"):
        class_fractions(torch.zeros(4, 4, dtype=torch.long), 3, threshold=1.0)
