"""Token-keep indices an encoder cannot keep are refused naming ``ids_keep``: a float or bool
mask passed where indices go (it was cast to indices 0 and 1: N copies of two tokens), a
repeated index (run twice, double weight in attention), one out of range (torch's own
error, or a device-side assert on CUDA), on every tokenizer's path."""

from __future__ import annotations

import pytest
import torch

from eofm.models import create_model

BANDS = ["B02", "B03", "B04"]


@pytest.mark.parametrize("tokenizer", ["plain", "grouped", "spectral"])
def test_bad_ids_keep_are_refused(tokenizer: str) -> None:
    kw = {"groups": {"rgb": BANDS}} if tokenizer == "grouped" else {}
    enc = create_model("vit_test_patch8", bands=BANDS, img_size=16, tokenizer=tokenizer,
                       tokenizer_kwargs=kw)
    x = torch.rand(2, 3, 16, 16)
    n = 4  # 2 x 2 patches (one group)
    spec = ({"wavelengths": torch.tensor([490.0, 560.0, 665.0]),
             "bandwidths": torch.tensor([65.0, 35.0, 30.0])} if tokenizer == "spectral" else {})
    ok = torch.tensor([[0, 2], [3, 1]])
    assert enc.forward_features(x, ids_keep=ok, bands=BANDS, **spec).shape[1] == 1 + 2
    bad = {"dtype torch.float32": torch.zeros(2, n), "dtype torch.bool": torch.ones(2, n, dtype=torch.bool),
           "distinct": torch.tensor([[0, 0], [1, 2]]), "0..3": torch.tensor([[0, 4], [1, 2]]),
           "from -1": torch.tensor([[-1, 0], [1, 2]])}
    for why, ids in bad.items():
        with pytest.raises(ValueError, match="ids_keep: expected") as err:
            enc.forward_features(x, ids_keep=ids, bands=BANDS, **spec)
        assert why in str(err.value), (why, str(err.value))
    tokens = enc.embed(x, bands=BANDS, **spec)
    with pytest.raises(ValueError, match="ids_keep: expected distinct"):
        enc.forward_tokens(tokens, torch.tensor([[1, 1], [0, 2]]))
