"""Continual-pretraining weight loading: timm/DINOv2 ViT and torchvision ResNet-50 state dicts
from local files, input layers adapted to S2/S1 bands by name, position tables resampled."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from eofm.models import InputContract, create_model
from eofm.models.adapt import (
    adapt_input_weight,
    adapt_resnet_state,
    load_eofm_encoder,
    load_timm_vit,
    match_bands,
    read_state_dict,
)
from eofm.models.pos_embed import resample_grid_table

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def _timm_vit(img_size: int = 56, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=img_size,
                             depth=2, **kw).eval()


def _as_s2(rgb: torch.Tensor) -> torch.Tensor:
    """An RGB image as 13 S2 bands: R, G, B in B04, B03, B02, every other band zero."""
    x = torch.zeros(rgb.shape[0], len(S2), *rgb.shape[-2:])
    for c, band in enumerate(["B04", "B03", "B02"]):
        x[:, S2.index(band)] = rgb[:, c]
    return x


def test_channel_adaptation_keeps_the_rgb_response(tmp_path: Path) -> None:
    vit = _timm_vit()
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    enc = create_model("vit_small_patch14", bands=S2, img_size=56, depth=2, learned_pos=True,
                       layer_scale_init=1e-5).eval()
    report = load_timm_vit(enc, read_state_dict(tmp_path / "vit.pth"))
    assert report.missing == [] and report.unexpected == []
    rgb = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        want = vit.patch_embed(rgb)  # (B, L, D)
        got = enc.tokenizer(_as_s2(rgb))[:, 0]
        assert torch.allclose(got, want, atol=1e-5)
        # the whole network too: positions, class token (its position folded in), blocks
        assert torch.allclose(enc.forward_features(_as_s2(rgb)), vit.forward_features(rgb),
                              atol=1e-4)
    w = enc.tokenizer.proj.weight
    mean_rgb = vit.patch_embed.proj.weight.mean(1)
    assert torch.allclose(w[:, S2.index("B08")], mean_rgb)  # other bands: mean RGB filter


def test_positions_interpolated_and_every_key_reported(tmp_path: Path) -> None:
    vit = _timm_vit(img_size=56, num_classes=5)  # a classifier head the encoder lacks
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()},
              str(tmp_path / "vit.safetensors"))
    state = read_state_dict(tmp_path / "vit.safetensors")
    enc = create_model("vit_small_patch14", bands=["VV", "VH"], img_size=84, depth=2,
                       learned_pos=True, layer_scale_init=1e-5)
    report = load_timm_vit(enc, state, init="random", generator=torch.Generator().manual_seed(0))
    assert report.unexpected == ["head.bias", "head.weight"] and report.missing == []
    table = vit.pos_embed.detach()[0, 1:]
    assert torch.allclose(enc.pos_table.detach(), resample_grid_table(table, (4, 4), (6, 6)))
    assert enc.tokenizer.proj.weight.shape[1] == 2  # S1: no RGB band, both filters random
    assert any("random" in a for a in report.adapted)
    # without a learned position table the encoder keeps sin-cos and says so
    fixed = create_model("vit_small_patch14", bands=["VV", "VH"], img_size=84, depth=2,
                         layer_scale_init=1e-5)
    assert "pos_embed" in load_timm_vit(fixed, state).unexpected
    # layer scale in the file but not in the encoder: refused by name
    plain = create_model("vit_small_patch14", bands=["VV", "VH"], img_size=84, depth=2)
    with pytest.raises(ValueError, match=r"ls1\.gamma"):
        load_timm_vit(plain, state)


def test_patch_size_resampled_and_wrapped_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit16 = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    torch.save({"model": {f"module.{k}": v for k, v in vit16.state_dict().items()}},
               tmp_path / "wrapped.pt")
    state = read_state_dict(tmp_path / "wrapped.pt")
    assert "patch_embed.proj.weight" in state
    enc = create_model("vit_tiny_patch8", bands=S2, img_size=32, depth=1, learned_pos=True)
    report = load_timm_vit(enc, state)
    assert enc.tokenizer.proj.weight.shape == (192, 13, 8, 8)
    assert any("resampled" in a for a in report.adapted) and not report.missing


def test_read_state_dict_refuses_pickles_and_missing_files(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(1), "obj": Path("x")}, tmp_path / "bad.pt")  # a pickled class
    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no such file"):
        read_state_dict(tmp_path / "none.pt")


def test_adapt_input_weight_by_name_and_resnet_conv1() -> None:
    w = torch.randn(4, 3, 2, 2)
    out, copied = adapt_input_weight(w, ["B02", "B11", "B04"])
    assert copied == ["B02", "B04"]
    assert torch.equal(out[:, 0], w[:, 2]) and torch.equal(out[:, 2], w[:, 0])
    assert torch.allclose(out[:, 1], w.mean(1))
    with pytest.raises(ValueError, match="init"):
        adapt_input_weight(w, ["B02"], init="zeros")
    state = {"conv1.weight": torch.randn(64, 3, 7, 7), "bn1.weight": torch.ones(64),
             "fc.weight": torch.zeros(10, 2048), "fc.bias": torch.zeros(10)}
    new, report = adapt_resnet_state(state, ["VV", "VH"])
    assert new["conv1.weight"].shape == (64, 2, 7, 7) and "fc.weight" not in new
    assert report.unexpected == ["fc.bias", "fc.weight"]


def _eofm(bands: list[str] | None = None, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    kw.setdefault("img_size", 32)
    if bands is not None:
        kw["bands"] = bands
    return create_model("vit_test_patch8", **kw).eval()


def test_an_eofm_encoder_starts_another_with_bands_by_name() -> None:
    donor = _eofm(["B02", "B03", "B04", "B08"])
    same = _eofm(["B02", "B03", "B04", "B08"], seed=1)
    report = load_eofm_encoder(same, donor)
    assert report.missing == report.unexpected == report.adapted == []
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(same.forward_features(x), donor.forward_features(x))
    # another band list: shared bands keep their filters by name, a new one gets the mean
    other = _eofm(["B08", "B04", "B11"], seed=1)
    report = load_eofm_encoder(other, donor)
    w, theirs = other.tokenizer.proj.weight, donor.tokenizer.proj.weight
    assert torch.equal(w[:, 0], theirs[:, 3]) and torch.equal(w[:, 1], theirs[:, 2])
    assert torch.allclose(w[:, 2], theirs.mean(1))
    assert "copied ['B08', 'B04']" in report.adapted[0]
    assert torch.equal(other.blocks[0].attn.qkv.weight, donor.blocks[0].attn.qkv.weight)


def test_an_eofm_encoder_on_another_grid_and_patch() -> None:
    donor = _eofm(["B02", "B03"], learned_pos=True)
    bigger = _eofm(["B02", "B03"], img_size=48, learned_pos=True)
    report = load_eofm_encoder(bigger, donor)
    assert any("pos_table: grid (4, 4) -> (6, 6)" in a for a in report.adapted)
    assert torch.allclose(bigger.pos_table, resample_grid_table(donor.pos_table, (4, 4), (6, 6)))


def test_an_eofm_encoder_that_does_not_fit_is_refused() -> None:
    donor = _eofm(["B02", "B03"])
    wider = create_model("vit_tiny_patch8", bands=["B02", "B03"], img_size=32)
    with pytest.raises(ValueError, match=r"do not fit this encoder .*blocks.0.attn.qkv.weight: "
                                         r"donor \(192, 64\) vs encoder \(576, 192\)"):
        load_eofm_encoder(wider, donor)
    with pytest.raises(ValueError, match=r"its tokenizer is PlainTokenizer, this encoder's is "
                                         r"SpectralTokenizer"):
        load_eofm_encoder(_eofm(tokenizer="spectral"), donor)


def test_bands_match_across_sensors_by_spectrum_not_name() -> None:
    from eofm.data_shards.sensors import get_sensor

    def spectra(name: str) -> dict[str, tuple[float, float]]:
        return {b.name: (b.center_wavelength_nm, b.bandwidth_nm) for b in get_sensor(name).bands}

    landsat = match_bands(spectra("landsat8_oli_tirs"), spectra("s2_l1c"))
    assert landsat == {"B1": "B01", "B2": "B02", "B3": "B03", "B4": "B04", "B5": "B8A",
                       "B6": "B11", "B7": "B12", "B8": "B03", "B9": "B10"}  # no thermal B10/B11
    assert match_bands(spectra("s1_grd"), spectra("s1_grd")) == {"VV": "VV", "VH": "VH"}
    assert match_bands(spectra("s1_grd"), spectra("s2_l1c")) == {}
    donor = _eofm(["B02", "B03", "B04", "B08"])
    donor.contract = InputContract(bands=("B02", "B03", "B04", "B08"),
                                   wavelengths=(492.4, 559.8, 664.6, 832.8),
                                   bandwidths=(66.0, 36.0, 31.0, 106.0))
    oli = _eofm(["B4", "B5", "B10"])
    own = spectra("landsat8_oli_tirs")
    report = load_eofm_encoder(oli, donor, spectra={b: own[b] for b in ["B4", "B5", "B10"]})
    w, theirs = oli.tokenizer.proj.weight, donor.tokenizer.proj.weight
    assert torch.equal(w[:, 0], theirs[:, 2]) and torch.equal(w[:, 1], theirs[:, 3])
    assert torch.allclose(w[:, 2], theirs.mean(1))  # thermal: nothing overlaps
    assert "copied ['B4<-B04', 'B5<-B08']" in report.adapted[0]


def test_the_donors_bands_in_another_order_or_a_subset_take_their_own_filters() -> None:
    """Channels of the input filter are positions: the same bands in another order (by name,
    and by spectrum as model.init_from does) must be re-cut, not copied as they are (the donor's
    B02 filter on B04), and a subset of the donor's bands in its order must be cut too."""
    donor = _eofm(["B02", "B03", "B04"])
    donor.contract = InputContract(bands=("B02", "B03", "B04"), wavelengths=(490, 560, 665),
                                   bandwidths=(65, 35, 30))
    spectra = {"B02": (490.0, 65.0), "B03": (560.0, 35.0), "B04": (665.0, 30.0)}
    x = torch.randn(2, 3, 32, 32)  # B02, B03, B04
    for how in ({}, {"spectra": spectra}):
        flipped = _eofm(["B04", "B03", "B02"], seed=1)
        report = load_eofm_encoder(flipped, donor, **how)
        assert report.adapted and "-> ['B04', 'B03', 'B02']" in report.adapted[0]
        with torch.no_grad():  # the same image, its channels in the new encoder's order
            torch.testing.assert_close(flipped.forward_features(x.flip(1)),
                                       donor.forward_features(x))
    wide = _eofm(["B02", "B03", "B04", "B08"])
    for how in ({}, {"spectra": spectra}):
        subset = _eofm(["B02", "B03", "B04"], seed=1)
        load_eofm_encoder(subset, wide, **how)  # used to fail: (64, 4, 8, 8) vs (64, 3, 8, 8)
        assert torch.equal(subset.tokenizer.proj.weight, wide.tokenizer.proj.weight[:, :3])


def test_groups_in_another_order_are_refused() -> None:
    """tokenizer.proj.{i} and the fixed group code follow group order: the same groups listed
    in another order would swap equal-size groups' filters silently, so they are refused."""
    bands = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    g1 = {"rgbn": ["B02", "B03", "B04", "B08"], "rededge": ["B05", "B06", "B07", "B8A"],
          "swir": ["B11", "B12"]}
    g2 = {k: g1[k] for k in ("rededge", "rgbn", "swir")}
    donor = _eofm(bands, tokenizer="grouped", groups=g1)
    with pytest.raises(ValueError, match=r"another order .*donor \['rgbn', 'rededge', 'swir'\], "
                                         r"encoder \['rededge', 'rgbn', 'swir'\]"):
        load_eofm_encoder(_eofm(bands, tokenizer="grouped", groups=g2), donor)
    with pytest.raises(ValueError, match="differ from this encoder's"):
        load_eofm_encoder(_eofm(bands, tokenizer="grouped",
                                groups={**g1, "swir": ["B12", "B11"]}), donor)
    same = _eofm(bands, tokenizer="grouped", groups=dict(g1), seed=1)
    assert load_eofm_encoder(same, donor).missing == []


@pytest.mark.parametrize(("kw", "names"), [({"pre_norm": True}, r"norm_pre\.bias"),
                                           ({"reg_tokens": 2, "no_embed_class": True},
                                            r"reg_token.*register tokens")])
def test_timm_trunk_tensors_without_a_place_are_refused(kw: dict, names: str) -> None:
    """CLIP-style pre-norm and DINOv2 registers are part of the trunk: dropping them gives
    another network, so the load is refused; head tensors and mask_token may go unused."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                            num_classes=0, **kw)
    enc = create_model("vit_test_patch8", bands=["B04", "B03", "B02"], img_size=32,
                       learned_pos=True)
    with pytest.raises(ValueError, match=rf"trunk tensors .*{names}"):
        load_timm_vit(enc, vit.state_dict())
    plain = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                              num_classes=5, global_pool="avg", fc_norm=False)
    # a pooled-feature norm beside the token norm (timm's fc_norm models drop ``norm``: those
    # are refused, see tests/models/test_adapt_strictness.py)
    head_norm = {"fc_norm.weight": torch.ones(64), "fc_norm.bias": torch.zeros(64)}
    state = {**plain.state_dict(), **head_norm, "mask_token": torch.zeros(1, 64)}
    report = load_timm_vit(enc, state)
    assert report.unexpected == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight",
                                 "mask_token"]


def test_rgb_weights_keep_their_colour_in_eofm_default_bands() -> None:
    """eofm's own RGB names (R, G, B: the registry's and resnet50's default bands) take the
    file's red, green and blue filters; they used to match none of B04/B03/B02, so every filter
    became the mean one (a grey model) with only an info log "copied []"."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                            num_classes=0).eval()
    enc = create_model("vit_test_patch8", img_size=32, learned_pos=True).eval()  # R, G, B
    report = load_timm_vit(enc, vit.state_dict())
    assert "copied ['R', 'G', 'B']" in report.adapted[0]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), vit.forward_features(x))
    state = {"conv1.weight": torch.randn(64, 3, 7, 7)}
    new, _ = adapt_resnet_state(state, ["B", "G", "R", "B08"])
    assert torch.equal(new["conv1.weight"][:, :3], state["conv1.weight"].flip(1))
    # and the other way round: the file's channels named R, G, B, the encoder's S2 names
    _, copied = adapt_input_weight(state["conv1.weight"], ["B02", "B04"], ("R", "G", "B"))
    assert copied == ["B02", "B04"]


def test_rgb_weights_that_would_copy_no_filter_are_refused() -> None:
    """Landsat's B4/B3/B2 (and any other names) match no RGB channel: the load is refused,
    naming source_bands / objective.params.weights_rgb_bands, not silently made grey. Naming
    the bands, or None (every band from init on purpose), loads; SAR needs neither."""
    w = torch.randn(8, 3, 2, 2)
    landsat = ["B4", "B3", "B2", "B5"]
    for call in (lambda: adapt_input_weight(w, landsat),
                 lambda: adapt_resnet_state({"conv1.weight": w}, landsat, source="tv.pth")):
        with pytest.raises(ValueError, match=r"none of the encoder's bands \['B4', 'B3', 'B2', "
                                             r"'B5'\] .*objective\.params\.weights_rgb_bands"):
            call()
    enc = create_model("vit_test_patch8", bands=landsat, img_size=32, learned_pos=True)
    torch.manual_seed(0)
    state = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2,
                              embed_dim=64, num_heads=2, patch_size=8).state_dict()
    with pytest.raises(ValueError, match=r"weights: vit\.pth: source_bands: none of"):
        load_timm_vit(enc, state, source="vit.pth")
    report = load_timm_vit(enc, state, source_bands=["B4", "B3", "B2"])
    assert "copied ['B4', 'B3', 'B2']" in report.adapted[0]
    out, copied = adapt_input_weight(w, landsat, None)  # on purpose: every band from the mean
    assert copied == [] and torch.allclose(out[:, 0], w.mean(1))
    out, copied = adapt_input_weight(w, ["VV", "VH"])  # radar: no colour to lose
    assert copied == [] and torch.allclose(out[:, 1], w.mean(1))


def test_donor_tensors_without_a_place_in_the_encoder_are_refused() -> None:
    """Layer scale or a learned position table in the donor, and an encoder built without
    them: the tensors used to be dropped with a warning (training went on from another
    network); the load is refused, naming them and the overrides to set."""
    donor = _eofm(["B04", "B03", "B02"], layer_scale_init=0.1, learned_pos=True)
    plain = _eofm(["B04", "B03", "B02"], seed=1)
    with pytest.raises(ValueError, match=r"its tensors \['pos_table', 'blocks\.0\.ls1\.gamma'"
                                         r".*set model\.overrides \{learned_pos: true, "
                                         r"layer_scale_init: 0\.1\}"):
        load_eofm_encoder(plain, donor)
    adapter = {"adapter": {"out_bands": 4}}
    wide = _eofm(tokenizer="spectral", tokenizer_kwargs=adapter)
    with pytest.raises(ValueError, match=r"tokenizer\.adapter\.conv1\.weight.*tokenizer_kwargs: "
                                         r"\{\"adapter\": \{\"out_bands\": 4\}\}"):
        load_eofm_encoder(_eofm(tokenizer="spectral"), wide)
    same = _eofm(["B04", "B03", "B02"], seed=1, layer_scale_init=1e-5, learned_pos=True)
    report = load_eofm_encoder(same, donor)
    assert report.unexpected == [] and report.missing == []
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(same.forward_features(x), donor.forward_features(x))
