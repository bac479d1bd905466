"""The objectives' ``reconstruct`` hook (what preview pictures show) agrees with their loss."""

from __future__ import annotations

import pytest
import torch

from eofm.models import create_model
from eofm.models.tokenizers import patchify
from eofm.pretrain.objectives import MAE, SatMAEPP

BANDS = ["B02", "B03", "B04", "B08"]
S2 = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]


def _mae(tokenizer: str, bands: list[str], **kw) -> MAE:
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", tokenizer=tokenizer, bands=bands, img_size=32)
    return MAE(enc, bands, decoder_dim=32, decoder_depth=1, decoder_heads=2, **kw).eval()


@pytest.mark.parametrize(("tokenizer", "bands"), [("plain", BANDS), ("grouped", S2)])
@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_reconstruction_is_the_prediction_where_masked(tokenizer: str, bands: list[str],
                                                          norm_pix: bool) -> None:
    """Visible pixels are the input; each band hides mask_ratio of its pixels; the loss
    computed from the reconstruction (in the loss's own per-patch units) is the loss."""
    m = _mae(tokenizer, bands, norm_pix_loss=norm_pix)
    x = torch.randn(3, len(bands), 32, 32)
    with torch.no_grad():
        out = m.reconstruct(x, generator=torch.Generator().manual_seed(5))
        loss = m(x, generator=torch.Generator().manual_seed(5))["loss"]
    rec, hidden = out["reconstruction"], out["masked"]
    assert rec.shape == hidden.shape == x.shape and hidden.dtype == torch.bool
    torch.testing.assert_close(rec[~hidden], x[~hidden], rtol=0, atol=0)
    groups = m.group_index or [list(range(len(bands)))]
    for idx in groups:  # a group's bands are hidden together
        assert torch.equal(hidden[:, idx], hidden[:, idx[:1]].expand(-1, len(idx), -1, -1))
    share = torch.stack([hidden[:, idx[0]].float().mean() for idx in groups]).mean()
    assert share.item() == pytest.approx(0.75)  # of all G x L tokens
    p = 8
    err, n = 0.0, 0
    for idx in groups:
        t, r = patchify(x[:, idx], p), patchify(rec[:, idx], p)
        h = patchify(hidden[:, idx].float(), p)[..., 0].bool()
        scale = t.var(-1, keepdim=True) + 1e-6 if norm_pix else torch.ones_like(t[..., :1])
        per = ((r - t) ** 2 / scale).mean(-1)
        err, n = err + per[h].sum(), n + int(h.sum())
    torch.testing.assert_close(err / n, loss, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("tokenizer", "bands"), [("grouped", S2), ("plain", ["B04", "B03", "B02"])])
def test_satmaepp_reconstruction_is_at_the_model_input_scale(tokenizer: str,
                                                             bands: list[str]) -> None:
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", tokenizer=tokenizer, bands=bands, img_size=16)
    m = SatMAEPP(enc, bands, decoder_dim=32, decoder_depth=1, decoder_heads=2).eval()
    crop = m.crop_size
    x = torch.randn(2, len(bands), *crop)
    with torch.no_grad():
        out = m.reconstruct(x, generator=torch.Generator().manual_seed(1))
        ref = m(x, generator=torch.Generator().manual_seed(1))
    x0, rec, hidden = out["input"], out["reconstruction"], out["masked"]
    assert x0.shape == (2, len(bands), 16, 16) == rec.shape == hidden.shape
    torch.testing.assert_close(rec[~hidden], x0[~hidden], rtol=0, atol=0)
    assert torch.allclose(hidden.float().mean((0, 2, 3)), torch.full((len(bands),), 0.75))
    err, n = 0.0, 0
    for sel in m._group_select():
        t, r = patchify(x0[:, sel], 8), patchify(rec[:, sel], 8)
        h = patchify(hidden[:, sel].float(), 8)[..., 0].bool()
        per = ((r - t) ** 2).mean(-1)
        err, n = err + per[h].sum(), n + int(h.sum())
    torch.testing.assert_close(err / n, ref["loss_mse"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_selectivemae_reconstruction_predicts_the_reconstruction_set_only(norm_pix: bool) -> None:
    """Visible tokens are the input; the reconstruction set holds the prediction (the loss
    computed from it is the loss); other masked tokens stay at 0."""
    from eofm.pretrain.objectives import SelectiveMAE

    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=BANDS, img_size=32)
    m = SelectiveMAE(enc, BANDS, decoder_dim=32, decoder_depth=1, decoder_heads=2,
                     norm_pix_loss=norm_pix).eval()
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        out = m.reconstruct(x, generator=torch.Generator().manual_seed(3))
        ref = m(x, generator=torch.Generator().manual_seed(3))
    rec, hidden = out["reconstruction"], out["masked"]
    torch.testing.assert_close(rec[~hidden], x[~hidden], rtol=0, atol=0)
    t, r = patchify(x, 8), patchify(rec, 8)
    target = torch.zeros(2, 16, dtype=torch.bool).scatter(1, ref["ids_target"], True)
    hid = patchify(hidden.float(), 8)[..., 0].bool()
    assert hid.sum(1).tolist() == [16 - ref["ids_keep"].shape[1]] * 2 and not (target & ~hid).any()
    assert (r[hid & ~target] == 0).all()
    pred = patchify(out["predicted"].float(), 8)[..., 0].bool()
    assert torch.equal(pred, target)
    scale = t.var(-1, keepdim=True) + 1e-6 if norm_pix else torch.ones_like(t[..., :1])
    per = ((r - t) ** 2 / scale).mean(-1)
    torch.testing.assert_close(per[target].mean(), ref["loss"], rtol=1e-4, atol=1e-5)
