"""The spectral tokenizer's generated kernels start near 1/p, so a band's tokens are O(1) at
init like a plain tokenizer's: they were ~18x smaller (std ~0.065 for unit-variance pixels),
the added position code (std ~0.7) drowning them. Building on the meta device still works."""

from __future__ import annotations

import pytest
import torch

from eofm.models import create_model


@pytest.mark.parametrize(("name", "size"), [("vit_test_patch8", 32), ("vit_small_patch16", 64)])
@pytest.mark.parametrize(("wl", "bw"), [(665.0, 30.0), (2200.0, 180.0), (5.5e7, 1.0)])
def test_a_band_s_tokens_start_at_unit_scale(name: str, size: int, wl: float, bw: float) -> None:
    torch.manual_seed(0)
    tok = create_model(name, tokenizer="spectral", img_size=size).tokenizer
    with torch.no_grad():
        t = tok(torch.randn(4, 1, size, size), wavelengths=torch.tensor([wl]),
                bandwidths=torch.tensor([bw]))
    assert 0.3 < float(t.std()) < 3.0


def test_meta_device_build() -> None:
    with torch.device("meta"):
        enc = create_model("vit_test_patch8", tokenizer="spectral", img_size=32)
    assert enc.tokenizer.to_weight.weight.is_meta
