"""ResNet-50 encoder: registry, token/pool/intermediate shapes, refusals, the Hub round trip,
loading exports with timm (local folder and an offline Hub cache), conv1 adaptation from a
torchvision state dict, and its FLOP count."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import timm
import torch
from torchvision.models import resnet50 as tv_resnet50

from eofm.models import ResNetEncoder, create_model, from_pretrained, list_models, save_pretrained
from eofm.models.resnet import load_torchvision_resnet

BANDS = ["B01", "B02", "B03", "B04", "B08"]


def _model(**kw) -> ResNetEncoder:
    torch.manual_seed(0)
    return create_model("resnet50", **{"bands": BANDS, "img_size": 64, **kw})


def test_registered_and_sized() -> None:
    assert "resnet50" in list_models()
    m = _model()
    assert isinstance(m, ResNetEncoder) and m.model_name == "resnet50"
    assert m.model_overrides == {"bands": BANDS, "img_size": 64}
    assert (m.embed_dim, m.num_features, m.patch_size) == (2048, 2048, 32)
    assert (m.grid_size, m.num_patches, m.num_tokens, m.num_prefix_tokens) == ((2, 2), 4, 4, 1)
    assert m.tokenizer.bands == tuple(BANDS) and m.tokenizer.groups is None
    assert m.contract.bands == tuple(BANDS) and m.contract.input_size == (64, 64)
    assert m.contract.patch_size == 32
    assert m.conv1.weight.shape == (64, len(BANDS), 7, 7)
    assert not any(k.startswith("fc.") for k in m.state_dict())
    assert not isinstance(timm.create_model("resnet50"), ResNetEncoder)  # timm's stays timm's


def test_tokens_pools_and_intermediates() -> None:
    m = _model().eval()
    x = torch.randn(2, len(BANDS), 64, 64)
    with torch.no_grad():
        tokens = m.forward_features(x, bands=BANDS)
        maps = m.forward_intermediates(x)
        nlc = m.forward_intermediates(x, indices=[-1], output_fmt="NLC")
    assert tokens.shape == (2, 5, 2048)
    cells = maps[-1].flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens[:, 1:], cells)
    torch.testing.assert_close(tokens[:, 0], cells.mean(1))
    torch.testing.assert_close(m.pool(tokens, "token"), m.pool(tokens, "avg"))
    assert m(x).shape == (2, 2048)
    assert [tuple(o.shape) for o in maps] == [(2, 256, 16, 16), (2, 512, 8, 8), (2, 1024, 4, 4),
                                              (2, 2048, 2, 2)]
    torch.testing.assert_close(nlc[0], cells)


def test_intermediates_timm_keywords() -> None:
    m = _model().eval()
    x = torch.randn(1, len(BANDS), 64, 64)
    with torch.no_grad():
        final, maps = m.forward_intermediates(x, indices=[0], intermediates_only=False)
        torch.testing.assert_close(final, m.forward_features(x))
        assert [tuple(o.shape) for o in maps] == [(1, 256, 16, 16)]
        early, _ = m.forward_intermediates(x, indices=[1], stop_early=True,
                                           intermediates_only=False)
        assert early.shape == (1, 1 + 64, 512)  # tokens of the last stage run (layer2)
    with pytest.raises(ValueError, match="return_prefix_tokens"):
        m.forward_intermediates(x, return_prefix_tokens=True)
    with torch.no_grad():  # the shared encoder keywords are accepted (and ignored)
        m.forward_intermediates(x, [0], bands=BANDS, wavelengths=None, bandwidths=None, gsd=10.0)
    with pytest.raises(TypeError, match="stop_erly"):  # a typo is not silently ignored
        m.forward_intermediates(x, [0], stop_erly=True)


def test_torchvision_is_imported_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    """eofm does not depend on torchvision: the module imports without it and building a
    ResNet names what to install."""
    import importlib.util

    import eofm.models.resnet as resnet_module

    for name in ("torchvision", "torchvision.models"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    name = "eofm.models._resnet_without_torchvision"
    spec = importlib.util.spec_from_file_location(name, resnet_module.__file__)
    fresh = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, fresh)  # dataclasses look their module up there
    spec.loader.exec_module(fresh)  # raised ImportError while torchvision was a top import
    with pytest.raises(ImportError, match=r"resnet50: .*pip install torchvision"):
        fresh.resnet50(bands=BANDS, img_size=64)


def test_trains_every_parameter() -> None:
    m = _model(img_size=32).train()
    m(torch.randn(2, len(BANDS), 32, 32)).square().mean().backward()
    assert not [n for n, p in m.named_parameters() if p.grad is None]
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_refusals_name_the_field() -> None:
    m = _model(img_size=32)
    x = torch.randn(2, len(BANDS), 32, 32)
    with pytest.raises(ValueError, match="ids_keep"):
        m.forward_features(x, ids_keep=torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="ids_keep/mask"):
        m.forward_features(x, mask=torch.zeros(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="bands"):
        m.forward_features(x, bands=BANDS[::-1])
    with pytest.raises(ValueError, match="channels"):
        m.forward_features(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="img_size"):
        create_model("resnet50", img_size=40)
    with pytest.raises(ValueError, match=r"model\.tokenizer"):
        create_model("resnet50", tokenizer="spectral")
    with pytest.raises(ValueError, match="global_pool"):
        create_model("resnet50", global_pool="max")


def test_hub_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    m = _model()
    m.train()
    with torch.no_grad():  # move the BatchNorm statistics off their defaults
        m(torch.randn(4, len(BANDS), 64, 64) * 3 + 1)
    m.eval()
    out = save_pretrained(m, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "eofm_resnet50" and config["num_features"] == 2048
    assert config["model_args"] == {"bands": BANDS, "img_size": 64}
    assert config["eofm_contract"]["patch_size"] == 32
    assert "resnet50" in (out / "README.md").read_text()
    loaded = from_pretrained(out)
    assert isinstance(loaded, ResNetEncoder) and loaded.contract == m.contract
    x = torch.randn(2, len(BANDS), 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x), m.forward_features(x))


def _export(tmp_path: Path) -> tuple[ResNetEncoder, Path]:
    """A ResNet with moved BatchNorm statistics, and its export."""
    m = _model().train()
    with torch.no_grad():
        m(torch.randn(4, len(BANDS), 64, 64) * 3 + 1)
    return m.eval(), save_pretrained(m, tmp_path / "export")


def test_timm_loads_an_export_from_a_folder_and_the_hub_offline(tmp_path: Path,
                                                                 offline_hub) -> None:
    m, out = _export(tmp_path)
    repo_id = "eofm-test/tiny-resnet"
    offline_hub(out, repo_id)
    ref = from_pretrained(out)
    x = torch.randn(2, len(BANDS), 64, 64)
    local = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    hub = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
    for model in (local, hub):
        assert isinstance(model, ResNetEncoder) and model.model_name == "resnet50"
        assert model.contract == ref.contract
        for k, v in ref.state_dict().items():  # BatchNorm statistics included
            assert torch.equal(model.state_dict()[k], v), k
        with torch.no_grad():
            assert torch.equal(model(x), ref(x)) and torch.equal(model(x), m(x))
            assert torch.equal(model.forward_features(x), ref.forward_features(x))
    assert hub.pretrained_cfg["hf_hub_id"] == repo_id
    with torch.no_grad():
        assert torch.equal(from_pretrained(repo_id)(x), ref(x))
    fresh = timm.create_model(f"local-dir:{out}")  # timm's default: architecture only
    assert isinstance(fresh, ResNetEncoder) and fresh.contract == ref.contract
    assert not torch.equal(fresh.conv1.weight, ref.conv1.weight)
    with pytest.raises(ValueError, match="no registered pretrained weights"):
        timm.create_model("eofm_resnet50", pretrained=True)
    built = timm.create_model("eofm_resnet50", bands=BANDS, img_size=64)
    assert isinstance(built, ResNetEncoder) and built.tokenizer.bands == tuple(BANDS)
    assert not isinstance(timm.create_model("resnet50"), ResNetEncoder)  # timm's stays timm's
    card = (out / "README.md").read_text()
    assert 'timm.create_model("hf-hub:ORG/NAME", pretrained=True)' in card


def test_an_older_export_naming_resnet50_still_loads_with_eofm(tmp_path: Path) -> None:
    from eofm.models.card import render_model_card

    m, out = _export(tmp_path)
    config = json.loads((out / "config.json").read_text())
    config["architecture"] = "resnet50"  # what eofm wrote before the timm registration
    (out / "config.json").write_text(json.dumps(config))
    x = torch.randn(2, len(BANDS), 64, 64)
    with torch.no_grad():
        assert torch.equal(from_pretrained(out)(x), m(x))
    assert "timm.create_model" not in render_model_card(config)  # timm would build its own


def test_torchvision_weights_keep_the_rgb_response() -> None:
    torch.manual_seed(1)
    tv = tv_resnet50(weights=None).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for mod in tv.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    m = _model(img_size=64).eval()
    report = load_torchvision_resnet(m, tv.state_dict(), source="tv")
    assert report.unexpected == ["fc.bias", "fc.weight"] and report.missing == []
    assert "conv1.weight" in report.adapted[0]
    rgb = torch.randn(2, 3, 64, 64)  # R, G, B
    x = torch.zeros(2, len(BANDS), 64, 64)
    for c, band in enumerate(("B04", "B03", "B02")):
        x[:, BANDS.index(band)] = rgb[:, c]
    with torch.no_grad():
        torch.testing.assert_close(m.conv1(x), tv.conv1(rgb), rtol=1e-5, atol=1e-5)
        trunk = torch.nn.Sequential(*list(tv.children())[:-2])
        ref = trunk(rgb).flatten(2).mean(-1)
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="shape mismatch"):
        bad = dict(tv.state_dict())
        bad["layer1.0.conv1.weight"] = bad["layer1.0.conv1.weight"][:32]
        load_torchvision_resnet(m, bad)


def test_forward_flops_match_resnet50() -> None:
    with torch.device("cpu"):
        m = create_model("resnet50", img_size=224)
    flops = m.forward_flops()
    assert 7.8e9 < flops < 8.4e9  # ResNet-50 at 224 px: ~4.1 GMACs
    assert m.forward_flops() == flops  # cached


def test_probe_lastn_and_finetune_drop_path_refuse_a_resnet_clearly(tmp_path) -> None:
    import numpy as np

    from eofm.finetune.encoder import load_encoder
    from eofm.finetune.features import extract_features
    from eofm.models.contract import InputContract

    bands = ["B04", "B03", "B02"]
    enc = create_model("resnet50", bands=bands, img_size=32)
    enc.contract = InputContract(bands=tuple(bands), input_size=32, patch_size=32)

    class _Data:
        def __len__(self) -> int:
            return 1

        def pixels(self, i: int) -> np.ndarray:
            return np.zeros((3, 32, 32), np.float32)

    class _Pre:
        def encoder_kwargs(self, device):
            return {}

    with pytest.raises(ValueError, match="'lastn' needs a transformer with blocks"):
        extract_features(enc, _Data(), _Pre(), pool="lastn", progress=False)
    out = save_pretrained(enc, tmp_path / "r50")
    with pytest.raises(ValueError, match=r"encoder\.drop_path: a ResNet \(eofm_resnet50\) has no "
                                         "stochastic depth"):
        load_encoder(str(out), drop_path=0.2)  # eofm-finetune fine-tunes it without drop path
    assert isinstance(load_encoder(str(out), drop_path=None), ResNetEncoder)
