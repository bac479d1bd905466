"""Registry (eofm and timm names), every registered model trains at test size, the input contract."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types

import pytest
import timm
import torch
from timm.models import _registry as timm_registry

import eofm.models as m
from eofm.models import InputContract, check_input, create_model, list_models, registry

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
S2_NM = [443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1375, 1610, 2190]
S2_BW = [20, 65, 35, 30, 15, 15, 20, 115, 20, 20, 30, 90, 180]
TEST_ARCH = {"embed_dim": 64, "depth": 1, "num_heads": 2}


def _size(name: str) -> int:
    """A tiny image size divisible by the model's patch size (two patches a side)."""
    return 2 * int(name.rsplit("patch", 1)[1])


def _train_step(model: torch.nn.Module, x: torch.Tensor, **kw) -> None:
    """Forward + backward; every parameter gets a finite, non-None gradient."""
    model.train()
    y = model(x, **kw)
    assert y.shape == (x.shape[0], model.embed_dim) and torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"


# ---- every registered model ----------------------------------------------------------------


@pytest.mark.parametrize("name", list_models("*test*"))
def test_test_size_models_train(name: str) -> None:
    torch.manual_seed(0)
    s = _size(name)
    model = create_model(name, img_size=s, drop_path_rate=0.1)
    _train_step(model, torch.randn(2, 3, s, s))


@pytest.mark.parametrize("name", [n for n in list_models("vit_*") if "test" not in n])
def test_every_registered_model_at_test_width_trains(name: str) -> None:
    torch.manual_seed(0)
    s = _size(name)
    model = create_model(name, img_size=s, **TEST_ARCH)
    _train_step(model, torch.randn(1, 3, s, s))


def test_sizes_match_the_registered_widths() -> None:
    for size, arch in m.SIZES.items():
        assert f"vit_{size}_patch16" in list_models()
        with torch.device("meta"):
            model = create_model(f"vit_{size}_patch16")
        assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (
            arch["embed_dim"], arch["depth"], arch["num_heads"])


def test_grouped_instance_trains() -> None:
    torch.manual_seed(0)
    model = create_model("vit_test_patch8", tokenizer="grouped", bands=S2, img_size=16)
    assert model.num_groups == 3 and model.num_tokens == 12
    assert model.contract.bands == tuple(S2)
    _train_step(model, torch.randn(2, 13, 16, 16), bands=S2)


def test_spectral_instance_trains_on_any_bands() -> None:
    torch.manual_seed(0)
    model = create_model("vit_test_patch8", tokenizer="spectral", img_size=16,
                         global_pool="avg", gsd_pos=True)
    assert model.contract.bands == ()
    wl, bw = torch.tensor(S2_NM, dtype=torch.float32), torch.tensor(S2_BW, dtype=torch.float32)
    _train_step(model, torch.randn(2, 13, 16, 16), wavelengths=wl, bandwidths=bw,
                gsd=torch.tensor([10.0, 20.0]))
    vv_vh = m.sar_stand_in(["VV", "VH"])
    with torch.no_grad():
        assert model(torch.randn(2, 2, 16, 16), wavelengths=vv_vh[0], bandwidths=vv_vh[1]).shape \
            == (2, 64)


# ---- registry and timm ---------------------------------------------------------------------


def test_registry_errors_list_what_is_valid() -> None:
    with pytest.raises(ValueError, match="vit_test_patch8"):
        create_model("vit_tset_patch8")
    with pytest.raises(ValueError, match="drop_path_rate"):
        create_model("vit_test_patch8", dropout=0.1)
    with pytest.raises(ValueError, match="tokenizer"):
        create_model("vit_test_patch8", tokenizer="hyper")
    with pytest.raises(ValueError, match="global_pool"):
        create_model("vit_test_patch8", global_pool="max")


def test_register_model_and_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    def vit_custom_unit(**kw) -> torch.nn.Module:
        return create_model("vit_test_patch8", img_size=16, **kw)

    registry.register_model(vit_custom_unit, timm=False)
    assert "vit_custom_unit" in list_models("vit_custom*")
    assert create_model("vit_custom_unit").img_size == (16, 16)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_model(name="vit_custom_unit", timm=False)(lambda: None)


def test_timm_names_registered() -> None:
    ours = set(timm.list_models(module="registry"))
    assert ours == {n for e in list_models("vit_*") for n in (e, "eofm_" + e)} | {
        "eofm_resnet50"}  # timm's resnet50 stays timm's
    # exports name the unambiguous timm architecture, whatever else timm has
    assert registry.timm_architecture("vit_test_patch8") == "eofm_vit_test_patch8"
    assert registry.timm_architecture("resnet50") == "eofm_resnet50"


def _plugin_model(name: str) -> types.FunctionType:
    """A timm entrypoint named ``name`` from a module that is not eofm's (a timm plugin)."""

    def entry(pretrained: bool = False, **kwargs) -> torch.nn.Module:
        return torch.nn.Identity()

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = "fake_timm_plugin"
    return entry


def test_timm_clash_on_the_bare_name_keeps_timms_and_imports(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "fake_timm_plugin", types.ModuleType("fake_timm_plugin"))
    for attr in ("_MODELS", "_TIMM_NAMES"):
        monkeypatch.setattr(registry, attr, dict(getattr(registry, attr)))
    monkeypatch.setattr(registry, "__all__", list(registry.__all__))  # timm appends to it
    names = ["vit_clash_unit", "eofm_vit_clash_unit", "vit_clash_two", "eofm_vit_clash_two"]
    try:
        timm_registry.register_model(_plugin_model("vit_clash_unit"))

        def vit_clash_unit(**kw) -> torch.nn.Module:
            return create_model("vit_test_patch8", img_size=16, **kw)

        with caplog.at_level(logging.WARNING, logger=registry.__name__):
            registry.register_model(vit_clash_unit)  # raised before: import eofm.models failed
        assert "timm already has a model named 'vit_clash_unit'" in caplog.text
        assert isinstance(timm.create_model("vit_clash_unit"), torch.nn.Identity)  # timm's
        assert isinstance(timm.create_model("eofm_vit_clash_unit"), m.ViTEncoder)
        assert registry.timm_architecture("vit_clash_unit") == "eofm_vit_clash_unit"
        assert create_model("vit_clash_unit").img_size == (16, 16)
        # the prefixed name is eofm's namespace: a plugin holding it is still refused
        timm_registry.register_model(_plugin_model("eofm_vit_clash_two"))
        with pytest.raises(ValueError, match="'eofm_vit_clash_two' that is not eofm's"):
            registry.register_model(vit_clash_unit, name="vit_clash_two")
        assert not timm.is_model("vit_clash_two")
    finally:
        for n in names:
            timm_registry._clear_model_entries(n)
            timm_registry._model_entrypoints.pop(n, None)
            if n in vars(registry):
                delattr(registry, n)
    assert not any(timm.is_model(n) for n in names)


def test_exports_with_bare_or_prefixed_architecture_load(tmp_path) -> None:
    from eofm.models.hub import read_config, save_pretrained

    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=["B02", "B03"], img_size=16).eval()
    out = save_pretrained(enc, tmp_path / "enc")
    config = read_config(out / "config.json")
    assert config["architecture"] == "eofm_vit_test_patch8"
    x = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        ref = enc(x)
        for source in (out, f"local-dir:{out}"):
            loaded = (m.from_pretrained(source) if isinstance(source, type(out)) else
                      timm.create_model(source, pretrained=True).eval())
            torch.testing.assert_close(loaded(x), ref)
        config["architecture"] = "vit_test_patch8"  # what older exports wrote
        (out / "config.json").write_text(json.dumps(config))
        for loaded in (m.from_pretrained(out),
                       timm.create_model(f"local-dir:{out}", pretrained=True).eval()):
            assert loaded.model_name == "vit_test_patch8"
            torch.testing.assert_close(loaded(x), ref)


def test_timm_num_classes_and_in_chans() -> None:
    name = "eofm_vit_test_patch8"
    model = timm.create_model(name, num_classes=0, img_size=16)  # features only: accepted
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 64)
    with pytest.raises(ValueError, match=r"num_classes: .*only num_classes=0.*got 10.*LinearHead"):
        timm.create_model(name, num_classes=10, img_size=16)
    assert timm.create_model(name, in_chans=3, img_size=16).contract.bands == ("R", "G", "B")
    s2 = timm.create_model(name, in_chans=2, bands=["B02", "B03"], img_size=16)
    assert s2.contract.bands == ("B02", "B03")
    with pytest.raises(ValueError, match=r"in_chans: .* takes 3 channels.*in_chans=12.*bands="):
        timm.create_model(name, in_chans=12, img_size=16)
    spectral = timm.create_model(name, in_chans=13, tokenizer="spectral", img_size=16)
    assert spectral.tokenizer.bands is None  # any band count: in_chans has nothing to contradict
    rn = timm.create_model("eofm_resnet50", num_classes=0, in_chans=2, bands=["VV", "VH"],
                           img_size=32)
    assert rn.contract.bands == ("VV", "VH")
    with pytest.raises(ValueError, match=r"in_chans: eofm_resnet50 takes 2 channels"):
        timm.create_model("eofm_resnet50", in_chans=4, bands=["VV", "VH"], img_size=32)


def test_timm_create_model() -> None:
    name = list_models("*test*")[0]
    model = timm.create_model(name, img_size=16)
    assert isinstance(model, m.ViTEncoder) and model.model_name == name
    prefixed = timm.create_model("eofm_" + name, bands=["VV", "VH"], img_size=16)
    assert prefixed.contract.bands == ("VV", "VH")
    assert create_model("eofm_" + name).model_name == name
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model(name, pretrained=True)


@pytest.mark.slow
def test_acceptance_commands() -> None:
    """The issue's two acceptance commands, in a fresh interpreter (~7 s: importing timm)."""
    code = ("import eofm.models as m, timm; print(m.list_models()); "
            "timm.create_model(m.list_models('*test*')[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    for name in list_models():
        assert repr(name) in out


# ---- input contract ------------------------------------------------------------------------


def _contract(**kw) -> InputContract:
    stats = {b: {"mean": 1000.0 + i, "std": 500.0} for i, b in enumerate(S2[:4])}
    base = dict(sensors=("sentinel2_l2a",), bands=S2[:4], wavelengths=S2_NM[:4],
                bandwidths=S2_BW[:4], gsd=10.0, units="reflectance x 10000",
                processing_level="L2A", nodata=0.0, normalisation="meanstd", stats=stats,
                input_size=(32, 32), patch_size=8, objective="mae", data="ssl4eo-s12 v1")
    return InputContract(**{**base, **kw})


def test_contract_round_trip_and_validation() -> None:
    c = _contract()
    assert InputContract.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="unknown keys"):
        InputContract.from_dict({**c.to_dict(), "bnads": []})
    with pytest.raises(ValueError, match="wavelengths") as err:
        InputContract(bands=("a", "b"), wavelengths=(1.0,), stats={"a": {"mean": 0.0}})
    assert "stats" in str(err.value)  # every problem reported at once


def test_check_input_names_each_mismatch() -> None:
    c = _contract()
    stats = {b: dict(s) for b, s in c.stats.items()}
    assert check_input(c, bands=S2[:4], size=(32, 32), stats=stats, gsd=10.0,
                       normalisation="meanstd", nodata=0.0) == []

    (msg,) = check_input(c, bands=S2[:3], stats=stats)
    assert "missing band" in msg and "B04" in msg
    (msg,) = check_input(c, bands=[S2[1], S2[0], S2[2], S2[3]])
    assert "different band order" in msg
    (msg,) = check_input(c, size=(64, 64))
    assert "different size" in msg
    assert "not a multiple" in check_input(c, size=(36, 36))[-1]
    assert "unexpected band" in check_input(c, bands=[*S2[:4], "B05"])[0]

    (msg,) = check_input(_contract(stats=None), bands=S2[:4], stats=stats)
    assert "statistics absent" in msg
    (msg,) = check_input(c, bands=S2[:4], stats={b: stats[b] for b in S2[:3]})
    assert "statistics absent" in msg and "B04" in msg
    stats["B03"]["mean"] = 0.1
    (msg,) = check_input(c, bands=S2[:4], stats=stats)
    assert "statistics differ" in msg and "B03" in msg

    assert "GSD" in check_input(c, gsd=20.0)[0]
    assert "normalisation" in check_input(c, normalisation="percentile")[0]
    with pytest.raises(ValueError, match="missing band"):
        check_input(c, bands=S2[:2], raise_on_mismatch=True)


def test_contract_attached_to_every_encoder() -> None:
    c = _contract()
    model = create_model("vit_test_patch8", bands=S2[:4], img_size=32, contract=c.to_dict())
    assert model.contract == c
    default = create_model("vit_test_patch16", img_size=32)
    assert default.contract.bands == ("R", "G", "B") and default.contract.patch_size == 16
    assert default.contract.input_size == (32, 32)
    with pytest.raises(ValueError, match="contract"):
        create_model("vit_test_patch8", bands=S2[:3], contract=c)


def test_check_input_leaves_unpassed_statistics_unchecked() -> None:
    bare = InputContract(bands=("B02", "B03"), gsd=10.0)  # no statistics
    assert check_input(bare, gsd=10.0) == []  # the docstring: None arguments are not checked
    assert check_input(create_model("vit_test_patch8", img_size=16).contract,
                       bands=["R", "G", "B"], size=16) == []
    (msg,) = check_input(bare, stats={"B02": {"mean": 0.0, "std": 1.0}})
    assert msg.startswith("statistics absent: the contract carries no")
    assert check_input(bare, gsd=20.0) == ["different GSD: the contract expects 10 m, the batch "
                                           "has 20 m"]


def test_a_string_is_not_a_band_list() -> None:
    for build in (lambda: create_model("vit_test_patch8", bands="B02"),
                  lambda: create_model("resnet50", bands="B02"),
                  lambda: InputContract(bands="B02"),
                  lambda: m.PlainTokenizer("B02", 8, 64),
                  lambda: m.GroupedTokenizer({"a": "B02"}, 8, 64)):
        with pytest.raises(ValueError, match=r"expected a list of band names, got the string "
                                             r"'B02'; write \['B02'\]"):
            build()
    with pytest.raises(ValueError, match=r"InputContract\.sensors: expected a list of sensor ids"):
        InputContract(sensors="s2_l2a")
    # check_input too: "VV" used to split into ['V', 'V'] ("missing band(s) ['VV']")
    vv = create_model("vit_test_patch8", bands=["VV"], img_size=32).contract
    with pytest.raises(ValueError, match=r"^bands: expected a list of band names, got the "
                                         r"string 'VV'; write \['VV'\]"):
        check_input(vv, bands="VV")
    assert check_input(vv, bands=("VV",)) == []


@pytest.mark.parametrize("build", [
    lambda c: create_model("vit_test_patch8", bands=S2[:4], img_size=32, contract=c),
    lambda c: create_model("vit_test_patch8", tokenizer="grouped", bands=S2[:4], img_size=32,
                           groups={"a": S2[:2], "b": S2[2:4]}, contract=c),
    lambda c: create_model("resnet50", bands=S2[:4], img_size=32, contract=c)])
@pytest.mark.parametrize("given", [{"gsd": 10.0, "normalisation": "meanstd"},
                                   InputContract(gsd=10.0, normalisation="meanstd")])
def test_a_fixed_band_encoder_fills_in_what_its_contract_leaves_out(build, given,
                                                                    tmp_path) -> None:
    """A contract without band names (or sizes) on a fixed-band encoder used to be kept as
    is: empty bands mean "any bands", so check_input let a reversed band order pass, the
    export stored ``bands: []`` and its card said the encoder takes any bands."""
    model = build(given)
    c = model.contract
    assert c.bands == tuple(S2[:4]) and not c.any_bands
    assert c.input_size == (32, 32) and c.patch_size == model.patch_size
    assert c.gsd == 10.0 and c.normalisation == "meanstd"
    if isinstance(given, InputContract):
        assert given.bands == () and given.input_size is None  # the caller's is not changed
    (msg,) = check_input(c, bands=S2[:4][::-1])
    assert msg.startswith("different band order")
    assert check_input(c, size=64)[0].startswith("different size")
    out = m.save_pretrained(model, tmp_path / "export")
    stored = json.loads((out / "config.json").read_text())["eofm_contract"]
    assert stored["bands"] == S2[:4] and stored["input_size"] == [32, 32]
    assert "takes any bands" not in (out / "README.md").read_text()
    assert m.from_pretrained(out).contract.bands == tuple(S2[:4])


def test_a_contract_that_only_fills_in_with_wrong_statistics_is_refused() -> None:
    """Filled-in bands are checked like given ones: statistics for some of them only are
    refused, naming what was filled in; a spectral encoder keeps its contract's empty bands."""
    with pytest.raises(ValueError, match=r"contract: with the tokenizer's bands=\['B01', 'B02', "
                                         r"'B03', 'B04'\].* filled in .*stats: no entry for "
                                         r"bands \['B02', 'B03', 'B04'\]"):
        create_model("vit_test_patch8", bands=S2[:4], img_size=32,
                     contract={"stats": {"B01": {"mean": 0.0, "std": 1.0}}})
    spectral = create_model("vit_test_patch8", tokenizer="spectral", img_size=32,
                            contract={"gsd": 10.0})
    assert spectral.contract.bands == () and spectral.contract.any_bands
    assert spectral.contract.input_size == (32, 32) and spectral.contract.patch_size == 8


def test_contract_size_must_fit_the_encoder() -> None:
    c = _contract()  # 32 x 32, patch 8
    with pytest.raises(ValueError, match=r"input_size \(32, 32\) differs from the encoder's "
                                         r"img_size \(64, 64\)"):
        create_model("vit_test_patch8", bands=S2[:4], img_size=64, contract=c)
    with pytest.raises(ValueError, match=r"input_size: expected positive multiples of "
                                         r"patch_size 8, got \(30, 30\)"):
        InputContract(input_size=30, patch_size=8)
    loose = _contract(patch_size=None, input_size=(36, 36))  # valid alone, not for patch 8
    with pytest.raises(ValueError, match=r"input_size \(36, 36\) is not a multiple of the "
                                         r"tokenizer's patch size 8"):
        create_model("vit_test_patch8", bands=S2[:4], img_size=32, contract=loose)
    with pytest.raises(ValueError, match=r"input_size \(32, 32\) differs.*img_size \(64, 64\)"):
        create_model("resnet50", bands=S2[:4], img_size=64, contract=_contract(patch_size=32))
    for depth in (0, -3):
        with pytest.raises(ValueError, match=f"depth: expected at least 1 transformer block, "
                                             f"got {depth}"):
            create_model("vit_test_patch8", img_size=16, depth=depth)


def test_an_export_builds_at_another_img_size_and_its_contract_follows(tmp_path, caplog) -> None:
    """timm's ordinary ``img_size=`` override (and from_pretrained's) on an export trained at
    16: the weights load and the contract says the new size, with a log note; an inconsistent
    contract passed explicitly to create_model is still refused (test above)."""
    from eofm.models.hub import save_pretrained

    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=["B02", "B03"], img_size=16).eval()
    out = save_pretrained(enc, tmp_path / "enc")
    x = torch.randn(1, 2, 32, 32)
    with caplog.at_level(logging.INFO, logger="eofm.models.hub"), torch.no_grad():
        for big in (timm.create_model(f"local-dir:{out}", pretrained=True, img_size=32).eval(),
                    m.from_pretrained(out, img_size=32)):
            assert big.img_size == big.contract.input_size == (32, 32)
            assert big.contract.bands == enc.contract.bands
            for k, v in enc.state_dict().items():
                assert torch.equal(v, big.state_dict()[k]), k
            assert big(x).shape == (1, 64) and check_input(big.contract, size=32) == []
            assert big.pretrained_cfg["input_size"] == [2, 32, 32]
    assert "img_size [32, 32] overrides the export's input size [16, 16]" in caplog.text
    assert m.from_pretrained(out).contract.input_size == (16, 16)  # no override: as exported
    with pytest.raises(ValueError, match=r"img_size: expected a multiple of the export's patch "
                                         r"size 8, got \[20, 20\]"):
        m.from_pretrained(out, img_size=20)


def test_an_export_publishes_no_local_absolute_path(tmp_path) -> None:
    """The contract's data and the card's sources reach config.json, the card's YAML front
    matter and its text in their public form: each local absolute input cut to its last part."""
    from eofm.models.card import public_path
    from eofm.models.hub import save_pretrained

    enc = create_model("vit_test_patch8", bands=S2[:4], img_size=32,
                       contract=_contract(data="/home/alice/secret/ds"))
    card = {"pretraining": {"data_source": "/home/alice/a/s1, /home/alice/a/s2a",
                            "continued_from": "/home/alice/runs/x"}}
    out = save_pretrained(enc, tmp_path / "enc", card=card)
    config, readme = (out / "config.json").read_text(), (out / "README.md").read_text()
    for text in (config, readme):  # the raw files: front matter included
        assert "alice" not in text and "/home" not in text
    assert json.loads(config)["eofm_contract"]["data"] == ".../ds"
    assert "    data: '.../ds'" in readme.split("\n---\n", 1)[0]  # the YAML front matter
    assert "| Data source | .../s1, .../s2a |" in readme  # both inputs, not only the last
    assert "| Continued from | .../x |" in readme and "| Data | .../ds |" in readme
    assert m.from_pretrained(out).contract.data == ".../ds"
    assert enc.contract.data == "/home/alice/secret/ds"  # the encoder itself is untouched
    for value, public in (("C:\\data\\eurosat", ".../eurosat"), ("~/d/s2/", ".../s2"),
                          ("file:///home/a/b", ".../b"), ("s3://bucket/ds", "s3://bucket/ds"),
                          ("data/s2_64", "data/s2_64"), ("ssl4eo-s12 v1", "ssl4eo-s12 v1"),
                          ("org/name, /abs/s2", "org/name, .../s2"), (None, None), (3, 3)):
        assert public_path(value) == public, value


def test_timm_features_only_gives_the_intermediate_maps(tmp_path) -> None:
    """timm.create_model(..., features_only=True): the block (ViT) or stage (ResNet) maps of
    forward_intermediates, with timm's feature_info, from an export's weights too."""
    from eofm.models.hub import save_pretrained

    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=["B02", "B03"], img_size=16).eval()
    out = save_pretrained(enc, tmp_path / "enc")
    net = timm.create_model(f"local-dir:{out}", pretrained=True, features_only=True).eval()
    depth = len(enc.blocks)
    assert net.feature_info.channels() == [enc.embed_dim] * min(3, depth)
    assert net.feature_info.reduction() == [8] * min(3, depth)
    assert net.contract.bands == ("B02", "B03")
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        got, want = net(x), enc.forward_intermediates(x, indices=min(3, depth))
    assert len(got) == len(want) and got[0].shape == (2, enc.embed_dim, 2, 2)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    last = timm.create_model("eofm_vit_test_patch8", features_only=True, out_indices=(-1,),
                             output_fmt="NLC", img_size=16)
    assert [t.shape for t in last(torch.randn(1, 3, 16, 16))] == [(1, 4, enc.embed_dim)]
    rn = timm.create_model("eofm_resnet50", features_only=True, bands=["VV", "VH"], img_size=32)
    assert rn.feature_info.channels() == [256, 512, 1024, 2048]
    assert rn.feature_info.reduction() == [4, 8, 16, 32]
    with pytest.raises(ValueError, match=r"out_indices: .* has 2 feature maps.*got \(5,\)"):
        timm.create_model("eofm_vit_test_patch8", features_only=True, out_indices=(5,))
    with pytest.raises(ValueError, match=r"\['out_indices'\]: go with features_only=True"):
        timm.create_model("eofm_vit_test_patch8", out_indices=(0,))
    with pytest.raises(ValueError, match=r"feature_cls: .* got 'hook'"):
        timm.create_model("eofm_vit_test_patch8", features_only=True, feature_cls="hook")


def test_features_only_with_the_spectral_tokenizer_is_refused_at_creation() -> None:
    """timm's feature wrapper passes its forward only x, and the spectral tokenizer needs the
    wavelengths: refused when built, pointing to forward_intermediates, not at the first call."""
    with pytest.raises(ValueError, match=r"features_only: .*spectral tokenizer.*"
                                         r"forward_intermediates"):
        timm.create_model("eofm_vit_test_patch8", tokenizer="spectral", img_size=32,
                          features_only=True)


def test_check_input_reports_statistics_of_another_kind_or_empty() -> None:
    """Statistics sharing no key with the contract's (percentiles against mean/std) or empty
    per-band entries compare nothing, so they are reported, not passed as matching."""
    c = InputContract(bands=("B02", "B03"), normalisation="meanstd",
                      stats={"B02": {"mean": 1000.0, "std": 500.0}, "B03": {"mean": 1100.0,
                                                                           "std": 520.0}})
    pct = {"B02": {"p2": 0.0, "p98": 3000.0}, "B03": {"p2": 0.0, "p98": 3000.0}}
    msgs = check_input(c, bands=["B02", "B03"], stats=pct)
    assert len(msgs) == 2 and all(mm.startswith("statistics of a different kind") for mm in msgs)
    assert "'B02'" in msgs[0] and "['mean', 'std']" in msgs[0] and "['p2', 'p98']" in msgs[0]
    msgs = check_input(c, bands=["B02", "B03"], stats={"B02": {}, "B03": {"mean": None}})
    assert len(msgs) == 2 and all(mm.startswith("statistics absent for band") for mm in msgs)
    empty = InputContract(bands=("B02",), stats={"B02": {}})
    (msg,) = check_input(empty, bands=["B02"], stats={"B02": {"mean": 1.0}})
    assert "statistics absent for band 'B02' in the contract" in msg
    both = {"B02": {"mean": 1000.0, "p2": 1.0}, "B03": {"std": 520.0}}  # some in common: fine
    assert check_input(c, bands=["B02", "B03"], stats=both) == []


def test_a_learned_position_table_loads_at_another_img_size(tmp_path, caplog) -> None:
    """learned_pos: an export built at another img_size (from_pretrained's and timm's) gets its
    stored table resampled from the export's grid, as the encoder does for other inputs."""
    from eofm.models.hub import save_pretrained

    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=["B02", "B03"], img_size=16,
                       learned_pos=True).eval()
    with torch.no_grad():
        enc.pos_table.normal_()
    out = save_pretrained(enc, tmp_path / "enc")
    x = torch.randn(1, 2, 32, 32)
    with caplog.at_level(logging.INFO, logger="eofm.models"), torch.no_grad():
        for big in (m.from_pretrained(out, img_size=32),
                    timm.create_model(f"local-dir:{out}", pretrained=True, img_size=32).eval()):
            assert big.pos_table.shape == (16, 64)
            torch.testing.assert_close(big(x), enc(x))  # enc resamples on the fly
    assert "resampled to this encoder's grid [4, 4]" in caplog.text
    wide = m.from_pretrained(out, img_size=(16, 32))  # not square
    assert wide.pos_table.shape == (8, 64)


def test_a_learned_table_for_another_grid_of_as_many_cells_is_resampled(tmp_path) -> None:
    """Trained at 16x64 (grid 2x8), loaded at 32x32 (grid 4x4): the 16 rows have one shape, so
    every loader (from_pretrained, timm, init_from's load_eofm_encoder) copied them as they were,
    each row on another cell; the encoder, fed 32x32 itself, resamples its table to 4x4."""
    from eofm.models.adapt import load_eofm_encoder
    from eofm.models.hub import save_pretrained

    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=["B02", "B03"], img_size=(16, 64),
                       learned_pos=True).eval()
    with torch.no_grad():
        enc.pos_table.normal_()
    out = save_pretrained(enc, tmp_path / "enc")
    x = torch.randn(1, 2, 32, 32)
    start = create_model("vit_test_patch8", bands=["B02", "B03"], img_size=32,
                         learned_pos=True).eval()
    report = load_eofm_encoder(start, enc)
    assert report.adapted == ["pos_table: grid (2, 8) -> (4, 4)"]
    with torch.no_grad():
        for square in (m.from_pretrained(out, img_size=32), start,
                       timm.create_model(f"local-dir:{out}", pretrained=True, img_size=32).eval()):
            assert tuple(square.grid_size) == (4, 4)
            torch.testing.assert_close(square(x), enc(x))


def test_a_spectral_encoders_contract_takes_any_of_its_bands(tmp_path) -> None:
    """The spectral tokenizer takes any bands: its encoder's contract says so (``any_bands``,
    also after an export round trip, which stores no new field), check_input then names only
    bands without statistics, and ``subset`` gives each kept band its own spectrum and
    statistics. A fixed-band encoder's contract does not take any bands."""
    c = _contract()
    spectral = create_model("vit_test_patch8", tokenizer="spectral", img_size=32, contract=c)
    plain = create_model("vit_test_patch8", bands=S2[:4], img_size=32, contract=c)
    assert spectral.contract.any_bands and not plain.contract.any_bands
    assert not c.any_bands and spectral.contract == c  # the caller's contract is not changed
    assert "any_bands" not in spectral.contract.to_dict()
    loaded = m.from_pretrained(m.save_pretrained(spectral, tmp_path / "spectral"))
    assert loaded.contract.any_bands
    assert "any_bands" not in json.loads((tmp_path / "spectral" / "config.json").read_text())[
        "eofm_contract"]
    stats = {b: dict(s) for b, s in c.stats.items()}
    some = [S2[3], S2[1]]
    assert check_input(spectral.contract, bands=some, stats=stats) == []  # any subset, any order
    (msg,) = check_input(spectral.contract, bands=[*some, "B05"])
    assert "unexpected band(s) ['B05']" in msg
    assert check_input(plain.contract, bands=some)[0].startswith("missing band(s)")
    sub = spectral.contract.subset(some)
    assert sub.bands == tuple(some) and sub.any_bands
    assert sub.wavelengths == (S2_NM[3], S2_NM[1]) and sub.bandwidths == (S2_BW[3], S2_BW[1])
    assert sub.stats == {b: c.stats[b] for b in some} and sub.gsd == c.gsd
    with pytest.raises(ValueError, match=r"bands: expected some of the contract's.*\['B05'\]"):
        c.subset(["B02", "B05"])


def test_a_spectral_encoders_card_says_any_subset_in_any_order(tmp_path) -> None:
    """The card of a fixed-band encoder says the band order matters; a spectral encoder's says
    it takes any subset of its bands in any order, each with its own spectrum and statistics."""
    c = _contract()
    spectral = create_model("vit_test_patch8", tokenizer="spectral", img_size=32, contract=c)
    plain = create_model("vit_test_patch8", bands=S2[:4], img_size=32, contract=c)
    spectral_card = (m.save_pretrained(spectral, tmp_path / "s") / "README.md").read_text()
    plain_card = (m.save_pretrained(plain, tmp_path / "p") / "README.md").read_text()
    assert "It takes any subset of them, in any order" in spectral_card
    assert "the order matters" not in spectral_card
    assert "Bands in input channel order (the order matters)" in plain_card


def test_an_export_leaves_the_attention_backend_to_the_machine_that_loads_it(
        tmp_path, caplog, monkeypatch) -> None:
    """A GPU run with attn_backend=xformers exported model_args.attn_backend 'xformers': its
    export failed at the first forward wherever xFormers or CUDA is missing (a CPU probe), and
    from_pretrained had no way round it. Exports store no backend; an older export's stored
    'xformers' runs here as 'sdpa' (the same attention), logged; one that runs here is kept."""
    from eofm.models import attention, hub
    from eofm.models.hub import read_config, save_pretrained

    monkeypatch.setattr(hub, "xformers_available", lambda: False, raising=False)  # as on CPU
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=["B02", "B03"], img_size=16,
                       attn_backend="xformers").eval()
    out = save_pretrained(enc, tmp_path / "enc")
    config = read_config(out / "config.json")
    assert "attn_backend" not in config["model_args"]
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad(), attention.attention_backend("sdpa"):
        ref = enc(x)
    with torch.no_grad():
        torch.testing.assert_close(m.from_pretrained(out)(x), ref)
    config["model_args"]["attn_backend"] = "xformers"  # what an older export stored
    (out / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="eofm.models.hub"), torch.no_grad():
        for loaded in (m.from_pretrained(out),
                       timm.create_model(f"local-dir:{out}", pretrained=True).eval()):
            assert {b.attn.backend for b in loaded.blocks} == {"sdpa"}
            torch.testing.assert_close(loaded(x), ref)  # the first forward runs on the CPU
    assert "model_args.attn_backend: 'xformers'" in caplog.text and "using 'sdpa'" in caplog.text
    config["model_args"]["attn_backend"] = "reference"  # runs anywhere: kept
    (out / "config.json").write_text(json.dumps(config))
    assert {b.attn.backend for b in m.from_pretrained(out).blocks} == {"reference"}


@pytest.mark.parametrize("name", ["vit_test_patch8", "resnet50"])
def test_every_loading_path_reports_the_timm_architecture(name, tmp_path, offline_hub) -> None:
    """timm's local-dir:/hf-hub: loading attached pretrained_cfg['architecture'] = eofm's bare
    name ('resnet50': timm's own, different model) where from_pretrained and config.json give
    timm's name for it (eofm_resnet50)."""
    from eofm.models.hub import read_config, save_pretrained

    out = save_pretrained(create_model(name, bands=["B02", "B03"], img_size=32), tmp_path / "e")
    offline_hub(out, "eofm-test/arch")
    want = registry.timm_architecture(name)
    assert want == f"eofm_{name}" == read_config(out / "config.json")["architecture"]
    for model in (m.from_pretrained(out), timm.create_model(f"local-dir:{out}", pretrained=True),
                  timm.create_model("hf-hub:eofm-test/arch", pretrained=True),
                  timm.create_model(f"local-dir:{out}")):
        assert model.pretrained_cfg["architecture"] == want
