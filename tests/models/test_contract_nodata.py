"""Per-band nodata in the input contract: a stacked Sentinel-2 + Sentinel-1 input has a fill
value (0) in its optical bands and none in its radar bands; one contract number could not say
so, and the contract held None, so :func:`eofm.models.normalise_input` fed S2's fill as data."""

from __future__ import annotations

import json

import pytest
import torch

import eofm.models
from eofm.models import InputContract, check_input

BANDS = ("B02", "B03", "B04", "VV", "VH")
NODATA = [0.0, 0.0, 0.0, None, None]  # S2 fills with 0; S1 (dB) has no fill value


def _contract(**kw) -> InputContract:
    stats = {b: {"mean": 1000.0, "std": 500.0} for b in BANDS[:3]}
    stats.update(VV={"mean": -10.0, "std": 4.0}, VH={"mean": -17.0, "std": 4.0})
    base = dict(sensors=("s2_l2a+s1_grd",), bands=BANDS, gsd=10.0, nodata=NODATA,
                normalisation="meanstd", stats=stats, input_size=(8, 8), patch_size=8)
    return InputContract(**{**base, **kw})


def test_a_stacked_contract_round_trips_its_per_band_nodata() -> None:
    c = _contract()
    assert c.nodata == (0.0, 0.0, 0.0, None, None)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["nodata"] == NODATA
    back = InputContract.from_dict(d, where="enc/config.json: eofm_contract")
    assert back == c and back.to_dict() == c.to_dict()
    assert [c.band_nodata(b) for b in BANDS] == NODATA and c.band_nodata("B08") is None


@pytest.mark.parametrize("value", [0.0, 0, -32768.0, None])
def test_an_old_contract_with_one_nodata_or_none_loads_unchanged(value) -> None:
    """Exports written before per-band nodata: the number (or null) comes back as it was,
    and writes the same JSON. (A NaN comes back as None, which says the same:
    tests/models/test_hub_config_checks.py.)"""
    d = _contract(nodata=value).to_dict()
    text = json.dumps(d)
    c = InputContract.from_dict(json.loads(text))
    assert json.dumps(c.to_dict()) == text and type(c.nodata) is type(value)
    assert [repr(c.band_nodata(b)) for b in BANDS] == [repr(value)] * len(BANDS)


@pytest.mark.parametrize(("value", "match"), [
    ([0.0, 0.0, None], r"nodata: expected 5 values \(one per band\), got 3"),
    ([0.0, "0", 0.0, None, None], r"nodata: expected .*one number or null per band, got .*'0'"),
    ([0.0, True, 0.0, None, None], r"nodata: expected .*one number or null per band, got .*True"),
    ("0", r"nodata: expected a number, or a list of one number or null per band, got str"),
])
def test_a_per_band_nodata_of_the_wrong_length_or_type_is_refused(value, match) -> None:
    d = {**_contract().to_dict(), "nodata": value}
    with pytest.raises(ValueError, match=match) as err:
        InputContract.from_dict(d, where="enc/config.json: eofm_contract")
    assert str(err.value).startswith("enc/config.json: eofm_contract")
    with pytest.raises(ValueError, match=match):
        _contract(nodata=value)
    with pytest.raises(ValueError, match=r"nodata: expected 0 values.*takes one number"):
        InputContract(nodata=[0.0])


def test_normalise_input_zeroes_the_optical_fill_but_not_a_radar_zero() -> None:
    """A pixel at 0 in an S2 band is nodata (0 in every band after normalising); 0 dB in VV
    is a measurement, normalised like any other value."""
    raw = torch.full((1, 5, 8, 8), 1500.0)
    raw[:, 3:] = -10.0
    raw[0, 1, 2, 2] = 0.0  # S2 fill in B03
    raw[0, 3, 5, 5] = 0.0  # 0 dB in VV: data
    x = eofm.models.normalise_input(raw, _contract())
    assert (x[0, :, 2, 2] == 0).all()
    assert x[0, 3, 5, 5] == pytest.approx(2.5) and x[0, 0, 5, 5] == pytest.approx(1.0)
    assert int((x[0] == 0).all(dim=0).sum()) == 1
    single = eofm.models.normalise_input(raw[:, :3], _contract().subset(BANDS[:3]))
    assert torch.equal(single, eofm.models.normalise_input(raw[:, :3], _contract(
        bands=BANDS[:3], nodata=0.0, stats={b: _contract().stats[b] for b in BANDS[:3]})))


def test_subset_carries_each_bands_nodata() -> None:
    c = _contract()
    sub = c.subset(["VH", "B04"])
    assert sub.nodata == (None, 0.0) and sub.to_dict()["nodata"] == [None, 0.0]
    assert c.subset(["VV"]).nodata == (None,)
    assert _contract(nodata=0.0).subset(["VV", "B02"]).nodata == 0.0


def _nodata(contract: InputContract, **kw) -> list[str]:
    """check_input's nodata messages (a batch of some of the bands also misses the others)."""
    return [m for m in check_input(contract, **kw) if "nodata" in m]


def test_check_input_compares_nodata_band_by_band() -> None:
    c = _contract()
    assert check_input(c, bands=BANDS, nodata=NODATA) == []
    assert _nodata(c, bands=["VH", "B02"], nodata=[None, 0.0]) == []  # by name
    assert _nodata(c, bands=["VH", "B02"], nodata=[0.0, 0.0]) == []  # VH: none to compare
    assert _nodata(c, bands=BANDS[:3], nodata=0.0) == []  # one number for S2 alone
    (msg,) = check_input(c, bands=BANDS, nodata=[0.0, -9999.0, 0.0, None, None])
    assert msg == ("different nodata for band(s) ['B03']: the contract expects [0.0], the "
                   "batch has [-9999.0]")
    (msg,) = _nodata(c, bands=BANDS[:3], nodata=-1.0)
    assert msg == "different nodata: the contract expects 0.0, the batch has -1.0"
    # a one-number contract against a batch's per-band values, and as it always was
    (msg,) = check_input(_contract(nodata=0.0), bands=BANDS, nodata=[0.0, 0.0, 7.0, None, 0.0])
    assert "band(s) ['B04']" in msg and "[7.0]" in msg
    (msg,) = check_input(_contract(nodata=0.0), nodata=-1.0)
    assert msg == "different nodata: the contract expects 0.0, the batch has -1.0"
    assert check_input(_contract(nodata=None), bands=BANDS, nodata=NODATA) == []
    with pytest.raises(ValueError, match="nodata: a per-band list needs bands="):
        check_input(c, nodata=NODATA)
