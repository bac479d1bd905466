"""Registry (eofm and timm names), every registered model trains at test size, the input contract."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch

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


def test_timm_clash_is_refused_without_side_effects() -> None:
    with pytest.raises(ValueError, match="timm already has"):
        registry._register_timm("resnet18")
    assert not timm.is_model("eofm_resnet18")
    ours = set(timm.list_models(module="registry"))
    assert ours == {n for e in list_models("vit_*") for n in (e, "eofm_" + e)} | {
        "eofm_resnet50"}  # timm's resnet50 stays timm's


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

    (msg,) = check_input(_contract(stats=None), bands=S2[:4])
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
