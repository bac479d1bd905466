"""Weight loads that used to pass silently with another network than the file's, or that were
refused for the wrong reason: a ResNet export's conv1 copied by channel position, ResNet and
ViT files with tensors missing or left over, wrapped checkpoints (DINO teacher, DDP student,
AveragedModel), and files whose format differs from their name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from torchvision.models import resnet50 as tv_resnet50
from torchvision.models import resnet101 as tv_resnet101

from eofm.models import InputContract, create_model
from eofm.models.adapt import load_eofm_encoder, load_timm_vit, read_state_dict
from eofm.models.resnet import load_torchvision_resnet

FOUR = ["B02", "B03", "B04", "B08"]
S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
SPECTRA = {"B02": (490.0, 65.0), "B03": (560.0, 35.0), "B04": (665.0, 30.0),
           "B08": (842.0, 115.0)}


def _resnet(bands: list[str], seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet50", bands=bands, img_size=64).eval()


def _vit(**kw: object) -> VisionTransformer:
    """A tiny timm ViT (patch 8, width 64: the shape of eofm's vit_test_patch8)."""
    torch.manual_seed(0)
    kw.setdefault("num_classes", 0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                             **kw).eval()


def _encoder(**kw: object) -> torch.nn.Module:
    return create_model("vit_test_patch8", bands=["B04", "B03", "B02"], img_size=32,
                        **kw).eval()


# --- ResNet export -> ResNet encoder (model.init_from) ---------------------------------------

def test_a_resnet_export_on_reordered_bands_takes_each_filter_by_name() -> None:
    """conv1's channels are positions: an export over [B02, B03, B04, B08] started on
    [B08, B04, B03, B02] used to put the donor's B02 filter on B08 (copied as it was, since the
    shapes matched); each band now takes the donor's filter of its name, by name and by
    spectrum, and the same scene gives the same features."""
    donor = _resnet(FOUR)
    donor.contract = InputContract(bands=tuple(FOUR), wavelengths=(490, 560, 665, 842),
                                   bandwidths=(65, 35, 30, 115))
    flipped = FOUR[::-1]
    x = torch.randn(2, 4, 64, 64)
    for how in ({}, {"spectra": SPECTRA}):
        enc = _resnet(flipped, seed=1)
        report = load_eofm_encoder(enc, donor, **how)
        assert any(a.startswith("conv1.weight: bands") for a in report.adapted)
        for c, band in enumerate(flipped):
            assert torch.equal(enc.conv1.weight[:, c], donor.conv1.weight[:, FOUR.index(band)])
        with torch.no_grad():
            # channels summed in another order: float rounding only (by position: 6% apart)
            torch.testing.assert_close(enc(x.flip(1)), donor(x), rtol=1e-3, atol=1e-4)


def test_a_resnet_export_on_more_bands_adapts_as_a_vit_does() -> None:
    """4 -> 13 bands used to be refused ("start from an export of the same architecture");
    the shared bands keep their filters, the others get the mean one, as a ViT's tokenizer."""
    donor = _resnet(FOUR)
    enc = _resnet(S2, seed=1)
    report = load_eofm_encoder(enc, donor)
    assert report.missing == [] and "copied ['B02', 'B03', 'B04', 'B08']" in report.adapted[0]
    w, theirs = enc.conv1.weight, donor.conv1.weight
    for c, band in enumerate(FOUR):
        assert torch.equal(w[:, S2.index(band)], theirs[:, c])
    torch.testing.assert_close(w[:, S2.index("B11")], theirs.mean(1))
    assert w.shape[-2:] == (7, 7)  # not resampled to the output stride like a patch
    assert torch.equal(enc.layer4[2].conv3.weight, donor.layer4[2].conv3.weight)


def test_an_export_of_another_family_is_refused_by_architecture() -> None:
    vit = create_model("vit_test_patch8", bands=FOUR, img_size=64)
    with pytest.raises(ValueError, match=r"it is a ResNetEncoder, this encoder a ViTEncoder; "
                                         r"set model\.name"):
        load_eofm_encoder(vit, _resnet(FOUR))


# --- torchvision ResNet files --------------------------------------------------------------

def test_a_deeper_resnet_or_a_params_only_file_is_refused_naming_the_file() -> None:
    """A ResNet-101 used to load into the ResNet-50 cut off after its first blocks, and a file
    saved from parameters only with every BatchNorm's running statistics left at 0 and 1; both
    only logged a warning."""
    enc = _resnet(FOUR)
    with pytest.raises(ValueError, match=r"weights: rn101\.pth is not the torchvision "
                                         r"ResNet-50 .*layer3\.10\.bn1\.bias.*ResNet-101"):
        load_torchvision_resnet(enc, tv_resnet101(weights=None).state_dict(), source="rn101.pth")
    tv = tv_resnet50(weights=None)
    params = {k: v.detach() for k, v in tv.named_parameters()}
    with pytest.raises(ValueError, match=r"weights: params\.pth is not .*lacks the encoder's "
                                         r"tensors \['bn1\.running_mean'.*running statistics"):
        load_torchvision_resnet(enc, params, source="params.pth")
    # allowed: the classifier unused, num_batches_tracked missing
    state = {k: v for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}
    report = load_torchvision_resnet(enc, state)
    assert report.unexpected == ["fc.bias", "fc.weight"]
    assert report.missing and all(k.endswith(".num_batches_tracked") for k in report.missing)


# --- timm ViT files ------------------------------------------------------------------------

def test_a_plain_vit_into_a_layer_scale_encoder_is_refused_naming_the_override() -> None:
    """Every ls*.gamma used to stay at layer_scale_init (1e-5): another network, one warning."""
    vit = _vit()
    with pytest.raises(ValueError, match=r"weights: vit\.pth lacks the encoder's tensors "
                                         r"\['blocks\.0\.ls1\.gamma'.*set model\.overrides "
                                         r"\{layer_scale_init: null\}"):
        load_timm_vit(_encoder(layer_scale_init=1e-5, learned_pos=True), vit.state_dict(),
                      source="vit.pth")
    enc = _encoder(learned_pos=True)
    assert load_timm_vit(enc, vit.state_dict()).missing == []
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), vit.forward_features(x))


def test_other_missing_trunk_tensors_are_refused() -> None:
    # an fc_norm model has no final token norm; a one-block file for a two-block encoder
    with pytest.raises(ValueError, match=r"lacks the encoder's tensors \['norm\.bias', "
                                         r"'norm\.weight'\] \(the file's ViT has no final norm"):
        load_timm_vit(_encoder(learned_pos=True), _vit(global_pool="avg", fc_norm=True)
                      .state_dict())
    shallow = {k: v for k, v in _vit().state_dict().items() if not k.startswith("blocks.1.")}
    with pytest.raises(ValueError, match=r"'blocks\.1\.attn\.proj\.bias'.*overrides "
                                         r"\{depth: 1\} .*\(the file's depth is 1\)"):
        load_timm_vit(_encoder(learned_pos=True), shallow)
    with pytest.raises(ValueError, match=r"cls_token.*\{class_token: false, global_pool: avg\}"):
        load_timm_vit(_encoder(learned_pos=True),
                      _vit(class_token=False, global_pool="avg", fc_norm=False).state_dict())


def test_a_patch_embedding_without_bias_loads_with_a_zero_bias() -> None:
    """The one tensor allowed missing: left as initialised it was a random bias."""
    vit = _vit()
    with torch.no_grad():
        vit.patch_embed.proj.bias.zero_()
    state = {k: v for k, v in vit.state_dict().items() if k != "patch_embed.proj.bias"}
    enc = _encoder(learned_pos=True)
    report = load_timm_vit(enc, state)
    assert report.missing == [] and any(a.startswith("tokenizer.proj.bias: 0") for a in
                                        report.adapted)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), vit.forward_features(x))


# --- wrapped checkpoints -------------------------------------------------------------------

def _same_network(state: dict[str, torch.Tensor], vit: VisionTransformer,
                  set_aside: list[str]) -> None:
    assert sorted(getattr(state, "set_aside", ())) == set_aside
    enc = _encoder(learned_pos=True)
    report = load_timm_vit(enc, state, source="ck.pth")
    assert report.unexpected == set_aside and report.missing == []
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), vit.forward_features(x))


def test_the_network_is_taken_out_of_dino_ddp_and_averaged_checkpoints(tmp_path: Path) -> None:
    """DINO's teacher (backbone.* beside dino_head.*), a DDP student (module.backbone.* beside
    module.head.*) and AveragedModel (module.* beside n_averaged) used to be refused, every
    tensor listed as having no counterpart; the network is taken, the rest reported unused."""
    from torch.optim.swa_utils import AveragedModel

    vit = _vit()
    sd = vit.state_dict()
    teacher = {"teacher": {**{f"backbone.{k}": v for k, v in sd.items()},
                           "dino_head.mlp.0.weight": torch.randn(8, 64)}}
    torch.save(teacher, tmp_path / "dino.pth")
    _same_network(read_state_dict(tmp_path / "dino.pth"), vit, ["dino_head.mlp.0.weight"])
    student = {**{f"module.backbone.{k}": v for k, v in sd.items()},
               "module.head.last_layer.weight": torch.randn(8, 64)}
    torch.save(student, tmp_path / "ddp.pth")
    _same_network(read_state_dict(tmp_path / "ddp.pth"), vit, ["module.head.last_layer.weight"])
    ema = AveragedModel(vit).state_dict()
    save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp_path / "ema.safetensors"))
    _same_network(read_state_dict(tmp_path / "ema.safetensors"), vit, ["n_averaged"])
    tv = tv_resnet50(weights=None)
    torch.save(AveragedModel(tv).state_dict(), tmp_path / "rn_ema.pth")
    report = load_torchvision_resnet(_resnet(FOUR), read_state_dict(tmp_path / "rn_ema.pth"))
    assert report.unexpected == ["fc.bias", "fc.weight", "n_averaged"] and report.missing == []


def test_two_networks_or_no_network_are_refused_naming_the_prefixes(tmp_path: Path) -> None:
    sd = _vit().state_dict()
    moco = {**{f"module.encoder_q.{k}": v for k, v in sd.items()},
            **{f"module.encoder_k.{k}": v for k, v in sd.items()}, "module.queue": torch.ones(2)}
    torch.save(moco, tmp_path / "moco.pth")
    with pytest.raises(ValueError, match=r"moco\.pth holds more than one network, under the "
                                         r"prefixes \['encoder_q\.', 'encoder_k\.'\]"):
        read_state_dict(tmp_path / "moco.pth")
    odd = {f"net.{k}": v for k, v in sd.items() if not k.startswith("patch_embed.")}
    odd["other.w"] = torch.ones(1)
    with pytest.raises(ValueError, match=r"has no patch_embed\.proj\.weight.*keys start with "
                                         r"'net\.' \(\d+ tensors\), 'other\.' \(1 tensor\)"):
        load_timm_vit(_encoder(learned_pos=True), odd, source="odd.pth")
    with pytest.raises(ValueError, match=r"has no conv1\.weight.*keys start with 'net\.'"):
        load_torchvision_resnet(_resnet(FOUR), odd)


# --- file formats --------------------------------------------------------------------------

def test_the_format_is_read_from_the_bytes_not_the_name(tmp_path: Path) -> None:
    """A torch file named .safetensors raised safetensors' own error, a safetensors file named
    .pth was refused with 'convert it to .safetensors', and model.module.* kept module."""
    sd = {"conv1.weight": torch.randn(4, 3, 7, 7)}
    torch.save(sd, tmp_path / "torch.safetensors")
    assert torch.equal(read_state_dict(tmp_path / "torch.safetensors")["conv1.weight"],
                       sd["conv1.weight"])
    save_file(sd, str(tmp_path / "st.pth"))
    assert torch.equal(read_state_dict(tmp_path / "st.pth")["conv1.weight"], sd["conv1.weight"])
    torch.save({f"model.module.{k}": v for k, v in sd.items()}, tmp_path / "lm.pth")
    assert list(read_state_dict(tmp_path / "lm.pth")) == ["conv1.weight"]
    (tmp_path / "junk.safetensors").write_bytes(b"not a weights file at all")
    with pytest.raises(ValueError, match=r"cannot read .*junk\.safetensors \(named "
                                         r"\.safetensors, but it does not start with a "
                                         r"safetensors header\).*weights_only=True"):
        read_state_dict(tmp_path / "junk.safetensors")
    cut = (tmp_path / "st.pth").read_bytes()
    (tmp_path / "cut.bin").write_bytes(cut[:len(cut) - 100])  # header whole, data cut off
    with pytest.raises(ValueError, match=r"cannot read .*cut\.bin as safetensors"):
        read_state_dict(tmp_path / "cut.bin")

