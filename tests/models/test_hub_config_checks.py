"""What :func:`eofm.models.hub.read_config` accepts and refuses in an export's config.json, and
what an export publishes: an older percentile export (timm mean/std the statistics' mean/std)
loads with the contract's shift/scale; fields of the wrong JSON type are refused naming the
file and field; a NaN nodata is kept as None (config.json strict JSON, the contract equal to
itself after a round trip); a credential holding a comma is never published in part."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import timm
import torch

import eofm.models as m
from eofm.models import InputContract, check_input, create_model, normalise_input
from eofm.models.card import public_contract, public_path
from eofm.models.hub import read_config, save_pretrained
from eofm.models.normalise import normalisation_params

pytestmark = pytest.mark.usefixtures("one_thread")

BANDS = ["B02", "B03", "B04"]
PERCENTILE_STATS = {b: {"mean": 1000.0 + i, "std": 500.0, "p2": 100.0, "p98": 3000.0 + i}
                    for i, b in enumerate(BANDS)}


def _export(tmp_path: Path, contract: InputContract | None = None, name: str = "e",
            **kw) -> Path:
    """A tiny export of ``contract`` (bands BANDS, 32 px)."""
    enc = create_model("vit_test_patch8", bands=BANDS, img_size=32, contract=contract)
    return save_pretrained(enc, tmp_path / name, **kw)


def _edit_config(folder: Path, **changes) -> Path:
    """Rewrite ``folder``'s config.json with ``changes`` (key: value, or a callable of the
    config); its path."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        config[key] = value(config) if callable(value) else value
    path.write_text(json.dumps(config, indent=2))
    return path


def _older_percentile_export(tmp_path: Path, mean=None, std=None) -> tuple[Path, InputContract]:
    """An export of a percentile contract whose pretrained_cfg mean/std are, as exports before
    2bb4d18 wrote them, the statistics' per-band mean/std (or ``mean``/``std`` given)."""
    contract = InputContract(bands=BANDS, normalisation="percentile", stats=PERCENTILE_STATS,
                             input_size=(32, 32), patch_size=8)
    out = _export(tmp_path, contract)
    older = {"mean": mean or [PERCENTILE_STATS[b]["mean"] for b in BANDS],
             "std": std or [PERCENTILE_STATS[b]["std"] for b in BANDS]}
    _edit_config(out, pretrained_cfg=lambda c: {**c["pretrained_cfg"], **older})
    return out, contract


# ------------------------------------------------------------ (1) older percentile exports
def test_an_older_percentile_export_loads_with_the_contracts_shift_and_scale(
        tmp_path, caplog) -> None:
    out, contract = _older_percentile_export(tmp_path)
    shift, scale = normalisation_params(contract)
    assert (shift, scale) == ([100.0] * 3, [2900.0, 2901.0, 2902.0])  # not the mean/std
    with caplog.at_level(logging.WARNING, logger="eofm.models.hub"):
        config = read_config(out / "config.json")
    assert config["pretrained_cfg"]["mean"] == shift and config["pretrained_cfg"]["std"] == scale
    assert f"{out / 'config.json'}: pretrained_cfg mean/std are the percentile contract's" \
        in caplog.text
    for enc in (m.from_pretrained(out), timm.create_model(f"local-dir:{out}", pretrained=True)):
        # what timm's data config normalises with: the contract's shift/scale
        assert enc.pretrained_cfg["mean"] == shift and enc.pretrained_cfg["std"] == scale
        assert enc.contract == contract


def test_an_older_percentile_export_without_mean_std_statistics_loads(tmp_path) -> None:
    """Percentile statistics without mean/std: exports before 2bb4d18 wrote nulls."""
    stats = {b: {"p2": 100.0, "p98": 3000.0} for b in BANDS}
    contract = InputContract(bands=BANDS, normalisation="percentile", stats=stats)
    out = _export(tmp_path, contract)
    _edit_config(out, pretrained_cfg=lambda c: {**c["pretrained_cfg"], "mean": [None] * 3,
                                                "std": [None] * 3})
    cfg = read_config(out / "config.json")["pretrained_cfg"]
    assert (cfg["mean"], cfg["std"]) == ([100.0] * 3, [2900.0] * 3)


@pytest.mark.parametrize("mean, std", [
    ([1000.0, 1001.0, 7.0], None),  # one band off the statistics' mean
    (None, [500.0, 500.0, 501.0]),  # one band off the statistics' std
    ([100.0, 100.0, 100.0], [500.0, 500.0, 500.0]),  # the new shift with the old std
])
def test_other_timm_normalisations_of_a_percentile_export_are_still_refused(
        tmp_path, mean, std) -> None:
    out, _ = _older_percentile_export(tmp_path, mean, std)
    with pytest.raises(ValueError, match=r"config\.json: pretrained_cfg\.(mean|std): expected "
                                         r"the eofm_contract's normalisation"):
        read_config(out / "config.json")


def test_a_meanstd_export_with_other_timm_mean_std_is_still_refused(tmp_path) -> None:
    stats = {b: {"mean": 1000.0, "std": 500.0, "p2": 100.0, "p98": 3000.0} for b in BANDS}
    out = _export(tmp_path, InputContract(bands=BANDS, normalisation="meanstd", stats=stats))
    _edit_config(out, pretrained_cfg=lambda c: {**c["pretrained_cfg"], "mean": [100.0] * 3,
                                                "std": [2900.0] * 3})
    with pytest.raises(ValueError, match=r"pretrained_cfg\.mean: expected"):
        read_config(out / "config.json")


# ------------------------------------------------------------ (2) field types
@pytest.mark.parametrize("field, value, expected", [
    ("model_args", ["bands", "B02"], "a mapping of create_model arguments, got list"),
    ("model_args", "oops", "a mapping of create_model arguments, got str 'oops'"),
    ("architecture", 7, "a registered model name \\(a string\\), got int 7"),
    ("extra_state", "decoder", "a list of tensor prefix strings \\(or absent\\), got str "
                               "'decoder'"),
    ("extra_state", ["decoder", 3], "a list of tensor prefix strings"),
    ("extra_state", None, "a list of tensor prefix strings \\(or absent\\), got NoneType"),
])
def test_config_fields_of_the_wrong_type_are_refused_naming_file_and_field(
        tmp_path, field, value, expected) -> None:
    out = _export(tmp_path, extra_state={"decoder.w": torch.zeros(2)})
    path = _edit_config(out, **{field: value})
    for load in (lambda: read_config(path), lambda: m.from_pretrained(out)):
        with pytest.raises(ValueError,
                           match=f"^{re.escape(str(path))}: {field}: expected {expected}"):
            load()


def test_an_export_without_extra_state_still_loads(tmp_path) -> None:
    out = _export(tmp_path)
    config = json.loads((out / "config.json").read_text())
    config.pop("extra_state")
    (out / "config.json").write_text(json.dumps(config))
    assert "extra_state" not in read_config(out / "config.json")
    assert m.from_pretrained(out).contract.bands == tuple(BANDS)


# ------------------------------------------------------------ (3) non-finite nodata
def test_a_nan_or_infinite_nodata_is_kept_as_none() -> None:
    nan, inf = float("nan"), float("inf")
    assert InputContract(bands=["VV"], nodata=nan).nodata is None
    assert InputContract(bands=["VV"], nodata=-inf).nodata is None
    assert InputContract(bands=["VV", "VH"], nodata=[0, nan]).nodata == (0.0, None)
    assert InputContract(bands=["VV"], nodata=-9999).nodata == -9999  # finite: unchanged
    # an export written before (config.json "nodata": NaN, as Python's json writes it)
    assert InputContract.from_dict(json.loads('{"bands": ["VV"], "nodata": NaN}')).nodata is None


def test_a_nan_nodata_export_is_strict_json_and_round_trips(tmp_path) -> None:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    stats = {b: {"mean": -12.0, "std": 5.0} for b in BANDS}
    contract = InputContract(bands=BANDS, normalisation="meanstd", nodata=float("nan"),
                             stats=stats)
    out = _export(tmp_path, contract)
    config = json.loads((out / "config.json").read_text(), parse_constant=refuse)
    assert config["eofm_contract"]["nodata"] is None
    loaded = m.from_pretrained(out)
    assert loaded.contract == create_model("vit_test_patch8", bands=BANDS, img_size=32,
                                           contract=contract).contract
    assert check_input(loaded.contract, bands=BANDS, nodata=float("nan")) == []
    # what a NaN nodata was for: float pixels that are NaN are zeroed, as before
    raw = torch.full((1, 3, 4, 4), -12.0)
    raw[0, 1, 2, 3] = float("nan")
    x = normalise_input(raw, loaded.contract)
    assert torch.isfinite(x).all() and (x[0, :, 2, 3] == 0).all()


# ------------------------------------------------------------ (4) commas in credentials
@pytest.mark.parametrize("value, public", [
    ("https://alice:s3cr,etPW@data.example.org/eo/s2", "https://data.example.org/eo/s2"),
    ("s3://bucket/s2?X-Amz-Credential=AKIAEXAMPLE%2F20250101,X-Amz-Signature=deadbeef",
     "s3://bucket/s2"),
    ("https://u:p,w@h/a, s3://b/s2?sig=x,y, /home/alice/s1", "https://h/a, s3://b/s2, .../s1"),
    ("pipe:env KEY=ab,cd aws s3 cp s3://b/x -, /home/alice/s2", "pipe:..., .../s2"),
    ("ssl4eo (https://u:pw@h/x), v1", "ssl4eo (https://h/x), v1"),
    # lists without credentials are published as before
    ("https://h/x?sig=1, /a/s2", "https://h/x, .../s2"),
    ("org/name, /abs/s2", "org/name, .../s2"),
    ("https://h1, https://u:p@h2/x", "https://h1, https://h2/x"),
])
def test_public_path_strips_credentials_before_splitting_the_list(value, public) -> None:
    assert public_path(value) == public
    assert public_contract({"data": value})["data"] == public


def test_an_export_publishes_no_part_of_a_password_or_signature_holding_a_comma(
        tmp_path) -> None:
    data = ("https://alice:s3cr,etPW@data.example.org/eo/s2, "
            "s3://bucket/s1?X-Amz-Credential=AKIA%2F2025,X-Amz-Signature=deadbeef")
    out = _export(tmp_path, InputContract(bands=BANDS, data=data))
    config, readme = (out / "config.json").read_text(), (out / "README.md").read_text()
    for text in (config, readme):  # the raw files: the card's front matter included
        for secret in ("alice", "s3cr", "etPW", "AKIA", "deadbeef", "Signature"):
            assert secret not in text, secret
    assert (json.loads(config)["eofm_contract"]["data"]
            == "https://data.example.org/eo/s2, s3://bucket/s1")
