"""SatMAE++: scale shapes, band-by-band alignment, the loss by hand, nodata, masking, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eofm.models import create_model
from eofm.pretrain.cli import main
from eofm.pretrain.config import ConfigError, load_config
from eofm.pretrain.objectives import SatMAEPP, build_objective
from eofm.pretrain.objectives.satmaepp import downsample, multiscale_l1, pyramid

# SatMAE's 10 bands in its published input order (groups then are positions 0,1,2,6 / 3,4,5,7 / 8,9)
S2 = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
RGB = ["B04", "B03", "B02"]


def _model(tokenizer: str = "grouped", bands=S2, img: int = 16, **kw) -> SatMAEPP:
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", tokenizer=tokenizer, bands=list(bands), img_size=img)
    return SatMAEPP(enc, list(bands), decoder_dim=32, decoder_depth=1, decoder_heads=2, **kw)


def _oracle(m: SatMAEPP, x0: torch.Tensor) -> dict[str, torch.Tensor]:
    """The perfect per-group decoder output for input-scale image x0: the known image scattered
    into group tokens (each group's bands, group order, patchify layout)."""
    tok = m.encoder.tokenizer
    return dict(zip(tok.group_names, tok.patchify_groups(x0), strict=True))


@pytest.mark.parametrize(("tokenizer", "bands", "scales", "sizes"), [
    ("grouped", S2, 3, [32, 64]), ("plain", RGB, 2, [32]), ("grouped", S2, 4, [32, 64, 128])])
def test_output_shapes_at_each_scale(tokenizer, bands, scales, sizes) -> None:
    m = _model(tokenizer, bands, num_scales=scales)
    crop = 16 * 2 ** (scales - 1)
    assert m.crop_size == (crop, crop)
    out = m.predict(torch.randn(2, len(bands), crop, crop), generator=torch.Generator().manual_seed(0))
    assert out["image"].shape == (2, len(bands), 16, 16)
    assert [tuple(s.shape) for s in out["scales"]] == [(2, len(bands), s, s) for s in sizes]
    assert [tuple(x.shape) for x, _ in out["levels"]] == [
        (2, len(bands), 16 * 2 ** s, 16 * 2 ** s) for s in range(scales)]
    loss = m(torch.randn(2, len(bands), crop, crop))
    assert torch.isfinite(loss["loss"]) and set(loss) >= {"loss", "loss_mse", "loss_ms", "mask"}


def test_default_scales_three_for_multispectral_two_for_rgb() -> None:
    assert _model().num_scales == 3 and _model("plain", RGB).num_scales == 2
    # multispectral by band count, whatever the tokenizer (METHODS: 3 scales for multispectral)
    assert _model("plain", S2, img=8).num_scales == 3
    assert _model("spectral", S2, img=8).num_scales == 3
    assert _model("spectral", RGB, img=8).num_scales == 2
    assert _model("plain", S2, img=8, num_scales=2).num_scales == 2  # explicit wins


def test_wrong_crop_size_is_refused_by_name() -> None:
    m = _model()
    with pytest.raises(ValueError, match=r"high-resolution crop \(64, 64\)"):
        m(torch.randn(1, 10, 32, 32))


def test_round_trip_group_tokens_to_image_is_identity() -> None:
    """Scatter a known image into group tokens and back: identity by name, not in legacy order."""
    x0 = torch.randn(2, 10, 16, 16)
    m = _model()
    assert torch.equal(m.prediction_image(_oracle(m, x0)), x0)
    legacy = _model(legacy_channel_order=True)
    back = legacy.prediction_image(_oracle(legacy, x0))
    assert not torch.equal(back, x0)
    # the published layout: channel 3 holds B08 (group rgbn's 4th band), not B05
    assert torch.equal(back[:, 3], x0[:, S2.index("B08")])


def test_predictions_and_targets_are_aligned_band_by_band() -> None:
    """A perfect per-group prediction scores 0 MSE; the published pairing does not (B08 is
    scored against the red-edge prediction)."""
    x = torch.randn(2, 10, 64, 64)
    for legacy, zero in ((False, True), (True, False)):
        m = _model(legacy_channel_order=legacy)
        levels = pyramid(x, torch.ones(2, 64, 64, dtype=torch.bool), m.num_scales)
        x0, v0 = levels[0]
        mask = torch.ones(2, m.encoder.num_tokens)  # every token scored
        mse, n = m.masked_mse(m.prediction_image(_oracle(m, x0)), x0, v0, mask)
        assert n.item() == 2 * m.encoder.num_tokens
        assert (mse.item() == 0.0) is zero, (legacy, mse.item())
    # band by band: changing only B08's prediction changes only rgbn's tokens' error (by name)
    m = _model()
    x0 = pyramid(x, torch.ones(2, 64, 64, dtype=torch.bool), 3)[0][0]
    pred = _oracle(m, x0)
    pred["rgbn"] = pred["rgbn"].clone()
    pred["rgbn"][..., 3::4] += 1.0  # channel-fastest layout: the 4th band of rgbn is B08
    img = m.prediction_image(pred)
    diff = (img - x0).abs().amax(dim=(0, 2, 3))
    assert diff.nonzero().flatten().tolist() == [S2.index("B08")]


def test_loss_equals_hand_computation_on_a_tiny_batch() -> None:
    """Plain tokenizer, 3 bands, 16 px input, 2 scales: MSE over masked, mostly-valid tokens
    plus L1 over valid pixels at 32 px, weighted 0.6 / 0.4."""
    m = _model("plain", RGB)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 16, 16, generator=g)
    v0 = torch.ones(2, 16, 16, dtype=torch.bool)
    v0[0, :5, :8] = False  # token (0, 0): 24 of 64 valid -> not scored; other pixels count
    x1 = torch.randn(2, 3, 32, 32, generator=g)
    v1 = torch.ones(2, 32, 32, dtype=torch.bool)
    v1[1, 3:7, 10:30] = False
    image = torch.randn(2, 3, 16, 16, generator=g)
    up = [torch.randn(2, 3, 32, 32, generator=g)]
    mask = torch.tensor([[1.0, 1, 0, 1], [0, 1, 1, 0]])
    out = m.loss({"levels": [(x0, v0), (x1, v1)], "mask": mask, "image": image, "scales": up})
    # by hand, in numpy: token l = (row block, col block) of 8x8 pixels
    xi, ii, vi = x0.numpy(), image.numpy(), v0.numpy()
    errs = []
    for b in range(2):
        for tok in range(4):
            r, c = divmod(tok, 2)
            sl = (slice(r * 8, r * 8 + 8), slice(c * 8, c * 8 + 8))
            valid = vi[b][sl]
            if mask[b, tok] == 0 or valid.mean() < 0.5:
                continue
            e = (ii[b][:, sl[0], sl[1]] - xi[b][:, sl[0], sl[1]]) ** 2
            errs.append((e * valid).sum() / (valid.sum() * 3))
    mse = np.mean(errs)
    w = v1.numpy()[:, None].astype(np.float64)
    l1 = (np.abs(up[0].numpy() - x1.numpy()) * w).sum() / (w.sum() * 3)
    assert len(errs) == 4  # (0,0) dropped for nodata, 5 masked tokens remain minus it
    assert out["loss_mse"].item() == pytest.approx(mse, rel=1e-5)
    assert out["loss_ms"].item() == pytest.approx(l1, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.6 * mse + 0.4 * l1, rel=1e-5)


def test_multiscale_l1_is_the_mean_over_scales() -> None:
    p = [torch.full((1, 2, 4, 4), 1.0), torch.full((1, 2, 8, 8), 3.0)]
    t = [torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 8, 8)]
    v = [torch.ones(1, 4, 4, dtype=torch.bool), torch.ones(1, 8, 8, dtype=torch.bool)]
    v[1][0, :4] = False  # invalid pixels carry no error
    p[1][0, :, :4] = 100.0
    assert multiscale_l1(p, t, v).item() == pytest.approx(0.5 * 1.0 + 0.5 * 3.0)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_downsampled_pixel_is_valid_when_half_its_filter_weight_is(factor: int) -> None:
    """Normalised (masked) averaging: with the crop's left half nodata (NaN there), a low-res
    pixel is valid when at least half its filter weight falls on valid pixels (the columns
    whose centre lies right of the edge, the one straddling it included) and is then the mean
    of its valid contributors; the others are 0."""
    H = 16 * factor
    x = torch.full((1, 2, H, H), 2.0)
    x[..., : H // 2] = float("nan")
    valid = torch.ones(1, H, H, dtype=torch.bool)
    valid[..., : H // 2] = False
    xs, vs = downsample(x, valid, factor)
    assert vs.shape == (1, 16, 16) and xs.shape == (1, 2, 16, 16)
    assert not vs[..., :8].any() and vs[..., 8:].all()
    assert (xs[..., :8] == 0).all()
    assert torch.allclose(xs[..., 8:], torch.full((1, 2, 16, 8), 2.0))


def test_scattered_nodata_costs_its_own_area_at_every_scale() -> None:
    """2% scattered invalid crop pixels (quality-mask speckle), 3 scales (x4 down): the model
    input and the x2 target stay valid (with an all-contributors rule 28% of the input was
    valid and zeroed elsewhere), each value the mean of its valid contributors; the crop level
    keeps the crop's own mask."""
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(2, 256, 256, generator=g) > 0.02
    x = torch.full((2, 3, 256, 256), 2.0)
    x[~valid[:, None].expand_as(x)] = float("nan")
    levels = pyramid(x, valid, 3)
    for xs, vs in levels[:-1]:
        assert vs.float().mean().item() > 0.99
        assert torch.allclose(xs[vs[:, None].expand_as(xs)], torch.tensor(2.0))
        assert (xs[~vs[:, None].expand_as(xs)] == 0).all()
    assert torch.equal(levels[-1][1], valid) and (levels[-1][0][~valid[:, None].expand_as(x)]
                                                  == 0).all()


def test_speckled_nodata_leaves_every_masked_token_scored() -> None:
    """The same 2% speckle through the model: every masked token is still an MSE target (1.9%
    were with the all-contributors rule), and the nodata values (NaN here) never reach a loss."""
    m = _model().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 10, 64, 64, generator=g)
    valid = torch.rand(2, 64, 64, generator=g) > 0.02
    x[~valid[:, None].expand_as(x)] = float("nan")
    masks = m.mask(2, x.device, torch.Generator().manual_seed(0))
    out = m(x, valid, masks=masks)
    assert out["scored_tokens"].item() == masks[2].sum().item()
    assert torch.isfinite(out["loss"]) and out["loss_ms"].item() > 0


@pytest.mark.parametrize("tokenizer", ["grouped", "plain"])
def test_nodata_pixels_do_not_change_the_loss(tokenizer: str) -> None:
    bands = S2 if tokenizer == "grouped" else RGB
    m = _model(tokenizer, bands).eval()
    crop = m.crop_size[0]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, len(bands), crop, crop, generator=g)
    valid = torch.ones(2, crop, crop, dtype=torch.bool)
    valid[0, 5:40, 7:30] = False
    valid[1, -9:, :] = False
    changed = x.clone()
    changed[~valid[:, None].expand_as(x)] = 1e4  # garbage wherever the pixel is nodata
    masks = m.mask(2, x.device, torch.Generator().manual_seed(0))
    a = m(x, valid, masks=masks)
    b = m(changed, valid, masks=masks)
    assert torch.equal(a["loss"], b["loss"])
    assert a["loss_ms"].item() > 0 and a["scored_tokens"].item() > 0
    # and the valid pixels do matter
    c = m(x + 0.5 * valid[:, None], valid, masks=masks)
    assert c["loss"].item() != a["loss"].item()


@pytest.mark.parametrize("masking", ["independent", "consistent"])
def test_masking_statistics(masking: str) -> None:
    m = _model(masking=masking)
    G, L = m.encoder.num_groups, m.encoder.num_patches
    B = 4000
    _, _, mask = m.mask(B, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert mask.shape == (B, G * L)
    per = mask.reshape(B, G, L)
    if masking == "independent":  # one shuffle over G*L: exactly floor share per sample
        assert mask.sum(1).eq(G * L - int(G * L * 0.25 + 1e-6)).all()
        # groups are masked independently: P(cell masked in g1 and g2) = K/N * (K-1)/(N-1)
        N, K = G * L, mask[0].sum().item()
        both = (per[:, 0] * per[:, 1]).mean().item()
        assert both == pytest.approx(K / N * (K - 1) / (N - 1), abs=0.01)
        assert not torch.equal(per[:, 0], per[:, 1])
        assert per.sum(2).float().std().item() > 0  # per-group share varies sample to sample
    else:  # the same cells in every group
        assert torch.equal(per[:, 0], per[:, 1]) and torch.equal(per[:, 1], per[:, 2])
        assert per[:, 0].sum(1).eq(L - int(L * 0.25 + 1e-6)).all()
    assert mask.mean().item() == pytest.approx(0.75, abs=0.02)


def test_legacy_needs_every_band_in_a_group() -> None:
    with pytest.raises(ValueError, match="legacy_channel_order"):
        _model(bands=[*S2, "B01"], legacy_channel_order=True)
    m = _model(bands=[*S2, "B01"])  # by name, uncovered bands are simply not predicted
    assert m.target_bands == S2 and m.upsampler.channels == 10


def test_legacy_needs_the_published_band_order_and_groups() -> None:
    """The published pairing is positional: with the bands in group order it would silently be
    the by-name pairing, so legacy mode refuses any layout but SatMAE's (its band order, its
    S2 groups, a grouped tokenizer), naming data.bands or the groups."""
    group_order = ["B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12"]
    with pytest.raises(ValueError, match=r"legacy_channel_order: .*data\.bands exactly in "
                                         r"SatMAE's input order"):
        _model(bands=group_order, legacy_channel_order=True)
    m = _model(bands=group_order)  # by name, any order is fine
    assert m.target_bands == group_order
    swapped = {"rededge": ["B05", "B06", "B07", "B8A"], "rgbn": ["B02", "B03", "B04", "B08"],
               "swir": ["B11", "B12"]}
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", tokenizer="grouped", bands=S2, img_size=16,
                       groups=swapped)
    with pytest.raises(ValueError, match=r"legacy_channel_order: .*SatMAE's S2 groups"):
        SatMAEPP(enc, S2, decoder_dim=32, decoder_depth=1, decoder_heads=2,
                 legacy_channel_order=True)
    with pytest.raises(ValueError, match=r"legacy_channel_order: .*grouped tokenizer"):
        _model("plain", S2, img=8, legacy_channel_order=True)
    assert _model(legacy_channel_order=True).legacy_channel_order  # the published layout


def _cfg(tmp: Path, sample: Path, **over: str) -> Path:
    cfg = tmp / "satmaepp.yaml"
    cfg.write_text(f"""
data:
  path: {tmp / "s2_64"}
  build_from: {sample / "sentinel2_l1c_scene"}
  build_args: [--tile, "64"]
  bands: {{s2: [{", ".join(S2)}]}}
  crop_size: 64
  shuffle_buffer: 20
  num_workers: 0
  batch_size: 8
model: {{name: vit_test_patch8, tokenizer: grouped, img_size: 16}}
objective:
  name: satmaepp
  norm_pix_loss: false
  decoder_dim: 32
  decoder_depth: 1
  decoder_heads: 2
  params: {{num_scales: 3}}
optim: {{base_lr: 1.0e-3, scale_lr: false}}
schedule: {{steps: 6, warmup_steps: 1}}
runtime: {{ckpt_every: 0, out_dir: {tmp / "run"}}}
logging: {{log_every: 1, progress: false}}
""")
    return cfg


def test_config_problems_are_refused_by_name(sample_data: Path, tmp_path: Path) -> None:
    """objective.norm_pix_loss=true is refused when the config loads (it was only when the
    objective was built); the crop size, which depends on the dataset's bands, when the
    objective is built, where norm_pix_loss is refused again for configs loaded unchecked."""
    with pytest.raises(ConfigError, match=r"objective.norm_pix_loss: satmaepp needs false"):
        load_config(_cfg(tmp_path, sample_data), ["objective.norm_pix_loss=true"])
    from eofm.pretrain.data import BandInfo

    info = BandInfo("s2", "s2_l1c", S2, torch.ones(10), torch.ones(10), 10.0, torch.zeros(10),
                    torch.ones(10), {})
    unchecked = load_config(_cfg(tmp_path, sample_data), ["objective.norm_pix_loss=true"],
                            check=False)
    with pytest.raises(ConfigError, match=r"objective.norm_pix_loss: satmaepp needs false"):
        build_objective(unchecked, info)
    with pytest.raises(ConfigError, match=r"data.crop_size: .*needs the high-resolution crop "
                                          r"64, got 32"):
        build_objective(load_config(_cfg(tmp_path, sample_data), ["data.crop_size=32"]), info)
    with pytest.raises(ValueError, match="did you mean 'num_scales'"):  # at load: ConfigError
        build_objective(load_config(_cfg(tmp_path, sample_data), ["objective.params.scales=2"]),
                        info)


def test_pretrain_then_export_end_to_end(sample_data: Path, tmp_path: Path) -> None:
    from eofm.finetune.export import export_run
    from eofm.models.hub import from_pretrained

    assert main(["--config", str(_cfg(tmp_path, sample_data))]) == 0
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in recs)
    for r in recs:  # the two loss terms are logged beside their weighted sum
        assert r["loss"] == pytest.approx(0.6 * r["loss_mse"] + 0.4 * r["loss_ms"], rel=1e-4)
        assert r["scored_tokens"] > 0
    out = export_run(tmp_path / "run", tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    contract = config["eofm_contract"]
    assert contract["bands"] == S2 and contract["objective"] == "satmaepp"
    assert contract["input_size"] == [16, 16]
    assert contract["gsd"] == 40.0  # the 64 px crop at 10 m downsampled 4x: not the native 10 m
    enc = from_pretrained(out)
    assert enc.tokenizer.groups is not None and enc.img_size == (16, 16)
    feats = enc(torch.randn(2, 10, 16, 16))
    assert feats.shape == (2, 64) and torch.isfinite(feats).all()
    card = (out / "README.md").read_text()
    assert "satmaepp" in card and "Mask ratio | 0.75" in card
    assert ("| Input GSD (m) | 40 |" in card and "40 m = native 10 m x 4 (the 64 px crop "
            "downsampled 4x on the device to the 16 x 16 px model input)" in card)


def test_upsampling_branch_runs_in_bf16_under_autocast() -> None:
    """Nothing in the branch forces fp32: under bf16 autocast (the trainer's GPU setting; CPU
    autocast here) every scale's prediction is bf16, and the loss is finite fp32."""
    m = _model()
    x = torch.randn(2, 10, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.predict(x, generator=torch.Generator().manual_seed(0))
        loss = m.loss(out)["loss"]
    assert out["image"].dtype == torch.bfloat16
    assert [s.dtype for s in out["scales"]] == [torch.bfloat16] * 2
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("value", [0.0, 1.5, 50])
def test_min_valid_fraction_outside_zero_one_is_refused_by_name(value: float) -> None:
    with pytest.raises(ValueError, match=r"^min_valid_fraction: .* in \(0, 1\]"):
        _model(min_valid_fraction=value)
