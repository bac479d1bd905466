"""A band that is nodata at a valid pixel (EnMAP's water-vapour bands, empty in some tiles) is
no reconstruction target: the loader's per-band validity reaches the MAE-family losses (MAE,
SatMAE++, SelectiveMAE incl. its token shares and score), and data without per-band nodata
scores bit for bit as before. SoftCon reads a NaN at an invalid pixel as 0."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from eofm.data_shards.manifest import Manifest, ModalityInfo
from eofm.models import create_model
from eofm.models.tokenizers import patchify
from eofm.pretrain.data import band_info, prepare_batch
from eofm.pretrain.objectives import MAE, SatMAEPP, masked_patch_loss
from eofm.pretrain.objectives.mae import patch_mean_var
from eofm.pretrain.objectives.satmaepp import downsample
from eofm.pretrain.objectives.selectivemae import SelectiveMAE
from eofm.pretrain.objectives.softcon import SoftCon
from eofm.pretrain.objectives.token_selection import semantic_score, token_validity
from eofm.pretrain.objectives.views import make_views

BANDS4 = ["B02", "B03", "B04", "B08"]
S2 = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
HSI = ["B126", "B127", "B128"]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mae(bands=BANDS4, tokenizer: str = "plain", **kw: Any) -> MAE:
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", tokenizer=tokenizer, bands=list(bands), img_size=32)
    return MAE(enc, list(bands), decoder_dim=32, decoder_depth=1, decoder_heads=2, **kw).eval()


def _selective(**kw: Any) -> SelectiveMAE:
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=BANDS4, img_size=32)
    return SelectiveMAE(enc, BANDS4, decoder_dim=32, decoder_depth=1, decoder_heads=2,
                        mask_ratio=0.75, kept_mask_ratio=0.25, **kw).eval()


def _satmaepp(tokenizer: str = "grouped", bands=S2) -> SatMAEPP:
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", tokenizer=tokenizer, bands=list(bands), img_size=16)
    return SatMAEPP(enc, list(bands), decoder_dim=32, decoder_depth=1, decoder_heads=2,
                    num_scales=2).eval()


def _batch(B: int, C: int, H: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised x (invalid pixels 0, as the loader gives them) and a pixel mask with holes."""
    g = _gen(seed)
    x = torch.randn(B, C, H, H, generator=g) * 0.7 + 0.3
    valid = torch.rand(B, H, H, generator=g) > 0.15
    valid[0, :8, :8] = False  # one whole token nodata
    return torch.where(valid[:, None], x, 0.0), valid


def _enmap_batch() -> tuple[dict, Any]:
    """A raw EnMAP-like int16 batch whose B127 is empty (-32768) in the first sample while the
    pixels stay valid (ingest leaves a may-be-empty band out of the valid mask), and the bands'
    metadata from a manifest recording -32768 as their nodata."""
    stats = {b: {"count": 10, "mean": 400.0, "std": 100.0, "min": 0.0, "max": 900.0}
             for b in HSI}
    manifest = Manifest({"hsi": ModalityInfo("enmap_hsi", HSI, "int16", [3, 32, 32],
                                             [-32768.0, -32768.0, -32768.0], 30.0, stats)})
    info = band_info(manifest, "hsi", HSI)
    rng = np.random.default_rng(0)
    raw = rng.normal(400, 150, (2, 3, 32, 32)).round().astype(np.int16)
    raw[0, 1] = -32768  # B127 all nodata in sample 0
    raw[1, 1, :16] = -32768  # and in the top half of sample 1
    valid = np.ones((2, 32, 32), bool)
    valid[1, 24:, 24:] = False
    return {"hsi": torch.from_numpy(raw), "hsi_valid": torch.from_numpy(valid),
            "__key__": ["a", "b"]}, info


def _trainer_inputs(objective: torch.nn.Module, batch: dict) -> dict[str, Any]:
    """What the trainer passes to ``forward`` besides x and valid (``Trainer._inputs``)."""
    fn = getattr(objective, "batch_inputs", None)
    return dict(fn(batch, torch.device("cpu"))) if callable(fn) else {}


# --- the loader -----------------------------------------------------------------------------


def test_prepare_batch_carries_each_band_pixels_validity() -> None:
    batch, info = _enmap_batch()
    x, valid = prepare_batch(batch, info, torch.device("cpu"))
    band_valid = _trainer_inputs(_mae(HSI), batch)["band_valid"]
    assert band_valid.shape == x.shape and band_valid.dtype == torch.bool
    assert not band_valid[0, 1].any() and band_valid[0, [0, 2]].all()  # the empty band
    assert not band_valid[1, 1, :16].any()
    expect = valid[:, None].expand_as(x).clone()
    expect[0, 1] = False
    expect[1, 1, :16] = False
    assert torch.equal(band_valid, expect)  # and False wherever the pixel is invalid
    assert valid.all(1).all(1)[0] and not valid[1, 24:, 24:].any()  # the pixel mask as loaded
    assert (x[0, 1] == 0).all()  # the encoder still sees the band mean


def test_no_per_band_validity_without_per_band_nodata() -> None:
    """Integer pixels and no nodata value: every band is valid wherever the pixel is, nothing is
    carried (and a reused batch dict loses an earlier entry), so the objectives take the
    per-pixel path exactly; float pixels carry one (a NaN-filled band has no nodata value)."""
    stats = {b: {"count": 10, "mean": 4.0, "std": 2.0, "min": 0.0, "max": 9.0} for b in HSI}
    plain = Manifest({"hsi": ModalityInfo("enmap_hsi", HSI, "int16", [3, 8, 8], None, 30.0,
                                          stats)})
    info = band_info(plain, "hsi", HSI)
    batch = {"hsi": torch.full((1, 3, 8, 8), 5, dtype=torch.int16),
             "hsi_valid": torch.ones(1, 8, 8, dtype=torch.bool),
             "__band_valid__": torch.zeros(1, 3, 8, 8, dtype=torch.bool)}
    prepare_batch(batch, info, torch.device("cpu"))
    assert _trainer_inputs(_mae(HSI), batch) == {}
    fl = Manifest({"hsi": ModalityInfo("enmap_hsi", HSI, "float32", [3, 8, 8], None, 30.0,
                                       stats)})
    raw = torch.full((1, 3, 8, 8), 5.0)
    raw[0, 2, :2] = float("nan")
    fbatch = {"hsi": raw, "hsi_valid": torch.ones(1, 8, 8, dtype=torch.bool)}
    x, _ = prepare_batch(fbatch, band_info(fl, "hsi", HSI), torch.device("cpu"))
    bv = _trainer_inputs(_mae(HSI), fbatch)["band_valid"]
    assert not bv[0, 2, :2].any() and bv.sum() == 3 * 64 - 16 and torch.isfinite(x).all()


def test_no_per_band_validity_when_nodata_lies_only_at_invalid_pixels() -> None:
    """Sentinel-2-like data: nodata 0 in every band, and a build marks a pixel invalid where
    any band is nodata; such a batch carries no per-band validity (it would equal the pixel
    mask), so the objectives take the per-pixel path at no extra cost."""
    stats = {b: {"count": 10, "mean": 4.0, "std": 2.0, "min": 0.0, "max": 9.0} for b in HSI}
    m = Manifest({"hsi": ModalityInfo("enmap_hsi", HSI, "int16", [3, 8, 8], [0.0] * 3, 30.0,
                                      stats)})
    info = band_info(m, "hsi", HSI)
    raw = torch.full((1, 3, 8, 8), 5, dtype=torch.int16)
    raw[0, :, :2] = 0  # nodata in every band of the first two rows
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    valid[0, :2] = False  # which the build marked invalid
    batch = {"hsi": raw, "hsi_valid": valid}
    prepare_batch(batch, info, torch.device("cpu"))
    assert _trainer_inputs(_mae(HSI), batch) == {}
    raw[0, 1, 4:] = 0  # one band empty at valid pixels: now it is carried
    prepare_batch(batch, info, torch.device("cpu"))
    assert _trainer_inputs(_mae(HSI), batch)["band_valid"][0, 1, 4:].any().item() is False


# --- MAE ------------------------------------------------------------------------------------


def _mae_reference(m: MAE, x: torch.Tensor, pixel_valid: torch.Tensor,
                   masks: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """MAE's loss computed by hand from its own prediction, with ``pixel_valid`` (B, C, H, W)."""
    pred = m.decoder(m.encoder.forward_features(x, ids_keep=masks[0]), masks[1])
    s, n = masked_patch_loss(pred, patchify(x, 8), masks[2], patchify(pixel_valid.float(), 8),
                             m.norm_pix_loss, m.min_valid_fraction)
    return s / n.clamp(min=1)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_through_the_trainer_path_leaves_an_empty_band_out(norm_pix: bool) -> None:
    """The reviewer's case end to end: B127 empty in a tile whose pixels are valid. Its
    band-pixels were scored as targets of 0 and, with norm_pix, shifted every other band's
    per-patch mean and variance; now the loss is the one with them left out."""
    batch, info = _enmap_batch()
    m = _mae(HSI, norm_pix_loss=norm_pix)
    x, valid = prepare_batch(batch, info, torch.device("cpu"))
    masks = m.mask(2, x.device, _gen(3))
    with torch.no_grad():
        got = m(x, valid, masks=masks, **_trainer_inputs(m, batch))["loss"]
        band_valid = valid[:, None].expand_as(x).clone()
        band_valid[0, 1] = False
        band_valid[1, 1, :16] = False
        want = _mae_reference(m, x, band_valid, masks)
        per_pixel = _mae_reference(m, x, valid[:, None].expand_as(x), masks)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0.0)
    assert abs(float(got) - float(per_pixel)) > 1e-3  # the case where it matters


class _Oracle(torch.nn.Module):
    """A decoder that returns a fixed prediction for every token."""

    def __init__(self, pred: torch.Tensor) -> None:
        super().__init__()
        self.pred = pred

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        return self.pred


def test_mae_norm_pix_exact_prediction_scores_zero_with_an_empty_band() -> None:
    """t11 through MAE: a prediction exact on the bands holding data (whatever it says for the
    empty band) scores 0; with the empty band scored as a valid 0 it scored about 1."""
    torch.manual_seed(0)
    m = MAE(create_model("vit_test_patch8", bands=BANDS4[:3], img_size=16), BANDS4[:3],
            decoder_dim=32, decoder_depth=1, decoder_heads=2, norm_pix_loss=True).eval()
    x = torch.randn(1, 3, 16, 16) * 0.5 + 2.0
    x[:, 2] = 0.0  # the empty band, as the loader feeds it
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    band_valid = valid[:, None].expand_as(x).clone()
    band_valid[:, 2] = False
    target, w = patchify(x, 8), patchify(band_valid, 8).float()
    mean, var = patch_mean_var(target, w)
    exact = (target - mean) / (var + 1e-6).sqrt()
    m.decoder = _Oracle(torch.where(w > 0, exact, torch.randn_like(exact)))
    with torch.no_grad():
        got = m(x, valid, generator=_gen(0), band_valid=band_valid)
        per_pixel = m(x, valid, generator=_gen(0))
    assert got["scored_tokens"].item() == 3
    assert got["loss"].item() == pytest.approx(0.0, abs=1e-5)
    assert per_pixel["loss"].item() > 0.5


def test_mae_min_valid_fraction_counts_band_pixels() -> None:
    """A token whose pixels are all valid but whose bands are mostly empty there is no target
    (3 of 4 bands empty: a quarter of its band-pixels valid, under 0.5); one with half its bands
    holding data is (0.5 >= 0.5)."""
    m = _mae()
    x, valid = _batch(2, 4, 32)
    valid[:] = True
    masks = m.mask(2, x.device, _gen(1))
    masked = masks[2].bool()
    b, t = (int(i) for i in masked.nonzero()[0])  # one masked token
    b2, t2 = (int(i) for i in masked.nonzero()[1])
    band_valid = torch.ones(2, 4, 32, 32, dtype=torch.bool)
    r, c = divmod(t, 4)
    band_valid[b, 1:, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = False
    r2, c2 = divmod(t2, 4)
    band_valid[b2, 2:, r2 * 8:(r2 + 1) * 8, c2 * 8:(c2 + 1) * 8] = False
    with torch.no_grad():
        out = m(x, valid, masks=masks, band_valid=band_valid)
    assert out["scored_tokens"].item() == masked.sum().item() - 1


def test_mae_grouped_band_validity_goes_by_band_name() -> None:
    """Grouped tokenizer: each group's tokens are scored under their own bands' validity (a
    group whose bands are all empty scores nothing, the others unchanged)."""
    m = _mae(S2, "grouped")
    x, valid = _batch(2, 10, 32)
    masks = m.mask(2, x.device, _gen(2))
    base = valid[:, None].expand(2, 10, 32, 32)
    swir = [S2.index("B11"), S2.index("B12")]
    band_valid = base.clone()
    band_valid[:, swir] = False
    with torch.no_grad():
        full = m(x, valid, masks=masks)
        out = m(x, valid, masks=masks, band_valid=band_valid)
        in_swir = masks[2][:, 2 * 16:].sum()  # the SWIR group's masked tokens (third group)
        swir_scored = m(x, valid, masks=masks, band_valid=base & ~band_valid)["scored_tokens"]
    assert swir_scored.item() > 0 and in_swir.item() >= swir_scored.item()
    assert out["scored_tokens"].item() == full["scored_tokens"].item() - swir_scored.item()


# --- bit for bit without per-band nodata ----------------------------------------------------


@pytest.mark.parametrize("tokenizer", ["plain", "grouped"])
@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_is_bit_identical_when_every_band_is_valid_where_the_pixel_is(
        tokenizer: str, norm_pix: bool) -> None:
    bands = S2 if tokenizer == "grouped" else BANDS4
    m = _mae(bands, tokenizer, norm_pix_loss=norm_pix)
    x, valid = _batch(3, len(bands), 32)
    band_valid = valid[:, None].expand_as(x).clone()
    a = m(x, valid, generator=_gen(5))
    b = m(x, valid, generator=_gen(5), band_valid=band_valid)
    for k in ("loss", "loss_sum", "loss_count", "mask"):
        assert torch.equal(a[k], b[k]), k
    a["loss"].backward()
    grads = [p.grad.clone() for p in m.parameters() if p.grad is not None]
    m.zero_grad()
    b["loss"].backward()
    assert all(torch.equal(g, p.grad) for g, p in
               zip(grads, [p for p in m.parameters() if p.grad is not None], strict=True))


@pytest.mark.parametrize("tokenizer", ["plain", "grouped"])
def test_satmaepp_is_bit_identical_when_every_band_is_valid_where_the_pixel_is(
        tokenizer: str) -> None:
    bands = S2 if tokenizer == "grouped" else ["B04", "B03", "B02"]
    m = _satmaepp(tokenizer, bands)
    x, valid = _batch(3, len(bands), 32)
    a = m(x, valid, generator=_gen(5))
    b = m(x, valid, generator=_gen(5), band_valid=valid[:, None].expand_as(x).clone())
    for k in ("loss", "loss_mse", "loss_ms", "scored_tokens"):
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(("score", "score_input"), [
    ("energy", "bands"), ("energy", "luminance"), ("orientation", "bands"),
    ("orientation", "luminance")])
@pytest.mark.parametrize("progress", [0.0, 0.4, 0.6, 0.9])
def test_selectivemae_is_bit_identical_when_every_band_is_valid_where_the_pixel_is(
        score: str, score_input: str, progress: float) -> None:
    m = _selective(score=score, score_input=score_input)
    m.progress = progress
    x, valid = _batch(3, 4, 32)
    a = m(x, valid, generator=_gen(5))
    b = m(x, valid, generator=_gen(5), band_valid=valid[:, None].expand_as(x).clone())
    for k in ("loss", "loss_count", "ids_keep", "ids_target"):
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("patch", [4, 7, 8, 14])
@pytest.mark.parametrize("luminance", [False, True])
@pytest.mark.parametrize("kind", ["energy", "orientation"])
def test_semantic_score_is_bit_identical_when_every_band_is_valid_where_the_pixel_is(
        patch: int, luminance: bool, kind: str) -> None:
    H = patch * 4
    x, valid = _batch(2, 5, H, seed=patch)
    a = semantic_score(x, patch, kind=kind, valid=valid, luminance=luminance)
    b = semantic_score(x, patch, kind=kind, valid=valid, luminance=luminance,
                       band_valid=valid[:, None].expand_as(x).clone())
    assert torch.equal(a, b)
    grid = (4, 4)
    assert torch.equal(token_validity(valid, patch, 2, grid, 0.5, x.device),
                       token_validity(valid, patch, 2, grid, 0.5, x.device,
                                      valid[:, None].expand_as(x).clone()))


def test_per_band_masks_are_reduced_in_chunks_with_the_same_result(monkeypatch) -> None:
    """The per-band mask is filtered (SatMAE++) and counted (SelectiveMAE) a few bands at a
    time, to bound the float/int copy of it; the result does not depend on the chunk."""
    from eofm.pretrain.objectives import satmaepp, token_selection

    x, valid = _batch(2, 7, 32)
    band_valid = valid[:, None].expand_as(x).clone()
    band_valid[:, 3, 5:20] = False
    band_valid[1, 6] = False
    whole = downsample(x, band_valid, 4)
    counts = token_selection.band_pixel_counts(band_valid, 8)
    assert torch.equal(counts, patchify(band_valid.float(), 8).sum(-1).to(torch.int32))
    monkeypatch.setattr(satmaepp, "DOWNSAMPLE_BAND_CHUNK", 2)
    monkeypatch.setattr(token_selection, "BAND_CHUNK", 3)
    chunked = downsample(x, band_valid, 4)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
    assert torch.equal(token_selection.band_pixel_counts(band_valid, 8), counts)


# --- SatMAE++ -------------------------------------------------------------------------------


def test_satmaepp_downsamples_each_band_over_its_own_valid_pixels() -> None:
    """A band empty over part of the crop: its downsampled values are the mean of its own valid
    contributors (what lies under its nodata never matters), its own validity decides; the
    other bands are as with the pixel mask alone."""
    x, valid = _batch(2, 3, 32)
    valid[:] = True
    band_valid = torch.ones(2, 3, 32, 32, dtype=torch.bool)
    band_valid[:, 1, :, :13] = False
    other = torch.where(band_valid, x, 1e4)
    xs, vs = downsample(x, band_valid, 4)
    xo, vo = downsample(other, band_valid, 4)
    assert torch.equal(xs, xo) and torch.equal(vs, vo) and vs.shape == (2, 3, 8, 8)
    assert not vs[:, 1, :, :3].any() and vs[:, 1, :, 4:].all() and vs[:, [0, 2]].all()
    ref, _ = downsample(x, valid, 4)
    assert torch.equal(xs[:, [0, 2]], ref[:, [0, 2]])
    solid = torch.ones_like(x)  # a band constant where it holds data stays constant
    ys, _ = downsample(torch.where(band_valid, solid, 0.0), band_valid, 4)
    torch.testing.assert_close(ys[:, 1][vs[:, 1]], torch.ones_like(ys[:, 1][vs[:, 1]]))


def test_satmaepp_loss_never_reads_an_empty_band() -> None:
    """Both loss terms and the model input leave a band's nodata out: any value under it gives
    the same loss; with the band valid the loss differs (the band is scored)."""
    m = _satmaepp()
    x, valid = _batch(2, 10, 32)
    band_valid = valid[:, None].expand_as(x).clone()
    band_valid[0, S2.index("B8A")] = False  # empty in sample 0
    band_valid[1, S2.index("B05"), 8:] = False  # partly empty in sample 1
    masks = m.mask(2, x.device, _gen(4))
    with torch.no_grad():
        a = m(x, valid, masks=masks, band_valid=band_valid)
        b = m(torch.where(band_valid, x, 7.0), valid, masks=masks, band_valid=band_valid)
        c = m(torch.where(band_valid, x, 7.0), valid, masks=masks)
    for k in ("loss", "loss_mse", "loss_ms", "scored_tokens"):
        assert torch.equal(a[k], b[k]), k
    assert abs(float(a["loss"]) - float(c["loss"])) > 1e-3


# --- SelectiveMAE ---------------------------------------------------------------------------


def test_selectivemae_tokens_mostly_band_nodata_are_never_targets() -> None:
    """Tokens whose pixels are valid but whose bands are mostly empty are not usable, are drawn
    as targets only when nothing else is left, and the loss's min_valid_fraction agrees: every
    drawn target that is usable is scored, no other."""
    m = _selective()
    x, valid = _batch(2, 4, 32)
    valid[:] = True
    band_valid = torch.ones(2, 4, 32, 32, dtype=torch.bool)
    band_valid[:, 1:, :16] = False  # the top half: 1 of 4 bands holds data (share 0.25)
    usable = token_validity(valid, 8, 2, (4, 4), 0.5, x.device, band_valid)
    assert usable.reshape(2, 4, 4)[:, :2].sum() == 0 and usable.reshape(2, 4, 4)[:, 2:].all()
    for seed in range(4):
        out = m(x, valid, generator=_gen(seed), band_valid=band_valid)
        assert (out["ids_target"] >= 8).all()  # the 4 targets come from the bottom half
        assert out["loss_count"].item() == out["ids_target"].numel()
    # the same tokens, only pixel-masked, would be targets: the band mask is what keeps them out
    drawn = torch.cat([m(x, valid, generator=_gen(s))["ids_target"] for s in range(4)])
    assert (drawn < 8).any()


def test_selectivemae_score_and_loss_ignore_what_lies_under_band_nodata() -> None:
    """The semantic score (the rim of a band's nodata hole is no edge) and the loss (its
    norm_pix statistics) read no band-pixel that is nodata: any value there gives the same
    selection and loss."""
    m = _selective(norm_pix_loss=True)
    x, valid = _batch(2, 4, 32)
    band_valid = valid[:, None].expand_as(x).clone()
    band_valid[:, 2, 4:20, 6:22] = False  # a hole in one band
    other = torch.where(band_valid, x, -3.0)
    for kind in ("energy", "orientation"):
        for luminance in (False, True):
            kw = {"kind": kind, "valid": valid, "band_valid": band_valid, "luminance": luminance}
            assert torch.equal(semantic_score(x, 8, **kw), semantic_score(other, 8, **kw))
    visible, targets = [0, 5, 10, 15], [1, 2, 6, 9]  # the hole touches both sets
    sel = (torch.tensor([visible] * 2), torch.tensor([targets] * 2))
    token_of_pixel = torch.arange(16).reshape(4, 4).repeat_interleave(8, 0).repeat_interleave(8, 1)
    seen = torch.isin(token_of_pixel, torch.tensor(visible))  # (32, 32): the encoded pixels
    # the encoder input keeps the loader's values, so only what the encoder never sees changes:
    # the targets' band nodata, which reaches the loss only as (excluded) targets
    changed = torch.where(band_valid | seen, x, -3.0)
    assert not torch.equal(changed, x)
    with torch.no_grad():
        la = m(x, valid, selection=sel, band_valid=band_valid)
        lb = m(changed, valid, selection=sel, band_valid=band_valid)
        lc = m(changed, valid, selection=sel)
    assert la["loss_count"].item() == 8
    torch.testing.assert_close(la["loss"], lb["loss"], rtol=1e-6, atol=0.0)
    assert abs(float(la["loss"]) - float(lc["loss"])) > 1e-3


def test_selectivemae_pruned_path_takes_band_validity_too() -> None:
    m = _selective(prune_low_loss_ratio=0.5)
    m.train()
    x, valid = _batch(2, 4, 32)
    valid[:] = True
    band_valid = torch.ones(2, 4, 32, 32, dtype=torch.bool)
    band_valid[1, 1:] = False  # sample 1: a quarter of every token's band-pixels: none usable
    out = m(x, valid, generator=_gen(0), keys=["a", "b"], band_valid=band_valid)
    assert out["loss_count"].item() == 1  # sample 1 can score nothing and is no unit
    assert m.batch_inputs({"__key__": ["a", "b"], "__band_valid__": band_valid},
                          torch.device("cpu"))["band_valid"] is band_valid


# --- SoftCon --------------------------------------------------------------------------------


def test_softcon_reads_nan_at_invalid_pixels_as_zero() -> None:
    """t7: a NaN at an invalid pixel made the whole batch's loss NaN (the views' bilinear
    resampling spread it into valid pixels; NaN * 0 kept it); now it is the 0-filled loss."""
    torch.manual_seed(0)
    x = torch.randn(4, 4, 32, 32)
    valid = torch.ones(4, 32, 32, dtype=torch.bool)
    valid[0, :4, :4] = False
    x[0, :, :4, :4] = float("nan")
    sc = SoftCon(create_model("vit_test_patch8", bands=BANDS4, img_size=32), BANDS4,
                 proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32)
    y = torch.eye(4)
    with torch.no_grad():
        got = sc(x, valid, generator=_gen(0), labels=y)["loss"]
        filled = sc(torch.where(valid[:, None], x, 0.0), valid, generator=_gen(0),
                    labels=y)["loss"]
        views = sc.views(x, valid, generator=_gen(0))
    assert torch.isfinite(got) and torch.equal(got, filled)
    assert torch.isfinite(views["view1"]).all() and torch.isfinite(views["view2"]).all()


def test_views_set_invalid_view_pixels_to_zero_whatever_was_resampled_there() -> None:
    """An invalid view pixel is 0 even when the bilinear kernel brought a NaN to it."""
    x = torch.randn(2, 3, 16, 16)
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    valid[:, :, :8] = False
    x[:, :, :, :8] = float("nan")
    v, vv, _ = make_views(x, valid, 16, _gen(0), crop_scale=(1.0, 1.0), flip=False,
                          rot90=False)
    assert (~vv).any()
    assert (v.permute(1, 0, 2, 3)[:, ~vv] == 0).all()
