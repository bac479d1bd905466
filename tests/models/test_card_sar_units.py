"""The model card's band table for radar bands and per-band units.

A SAR band's wavelength and "bandwidth" are the tokenizer's stand-ins (the radar wavelength in
nm, a polarisation code): the table showed VV's code 1 as "Bandwidth (nm)" at a 5.5e7 nm
wavelength with no word on what they are. A stacked Sentinel-2 + Sentinel-1 contract's units
were null (the bands' units differ) and the card said "Units: -"; the contract now carries one
unit per band, as it does nodata, and the card shows them in a Units column.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from eofm.models import InputContract, check_input
from eofm.models.card import render_model_card

S1 = ["VV", "VH"]
S1_NM, S1_CODES = [55465764.66, 55465764.66], [1.0, 2.0]
STACKED = ["B02", "B03", "B04", "VV", "VH"]
DN, DB = "DN (x 0.0001 = physical)", "dB"


def _card(contract: InputContract) -> str:
    """The card of a spectral encoder with ``contract`` (config.json's form)."""
    config = {"architecture": "eofm_vit_test_patch8", "num_features": 64, "global_pool": "avg",
              "model_args": {"tokenizer": "spectral"}, "eofm_contract": contract.to_dict()}
    return render_model_card(config)


def _rows(card: str) -> dict[str, list[str]]:
    """The band table's rows by band name: the cells after "#" and the name."""
    out = {}
    for line in card.splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if len(cells) > 2 and cells[0].isdigit():
            out[cells[1]] = cells[2:]
    return out


def _stacked(**kw) -> InputContract:
    stats = {b: {"mean": 1000.0, "std": 300.0} for b in STACKED[:3]}
    stats.update(VV={"mean": -10.0, "std": 4.0}, VH={"mean": -17.0, "std": 4.0})
    base = dict(sensors=("s2_l2a+s1_grd",), bands=STACKED, gsd=10.0,
                wavelengths=[492.4, 559.8, 664.6, *S1_NM], bandwidths=[66.0, 36.0, 31.0, *S1_CODES],
                units=[DN, DN, DN, DB, DB], processing_level="L2A+L1 GRD",
                nodata=[0.0, 0.0, 0.0, None, None], normalisation="meanstd", stats=stats,
                input_size=(16, 16), patch_size=8)
    return InputContract(**{**base, **kw})


def test_a_sar_bands_cells_say_they_are_the_radar_wavelength_and_a_polarisation_code() -> None:
    stats = {"VV": {"mean": -10.0, "std": 4.0}, "VH": {"mean": -17.0, "std": 4.0}}
    card = _card(InputContract(sensors=("s1_grd",), bands=S1, wavelengths=S1_NM,
                               bandwidths=S1_CODES, units=DB, normalisation="meanstd",
                               stats=stats, input_size=(16, 16), patch_size=8))
    rows = _rows(card)
    assert rows["VV"][:2] == ["5.54658e+07 (radar: C-band, 5.55 cm)", "1 (polarisation code)"]
    assert rows["VH"][:2] == ["5.54658e+07 (radar: C-band, 5.55 cm)", "2 (polarisation code)"]
    assert "Radar (SAR) bands have no optical wavelength or bandwidth" in card
    assert "in place of a bandwidth, a code for the polarisation (not nm)" in card
    optical = _card(_stacked(bands=STACKED[:3], wavelengths=[492.4, 559.8, 664.6],
                             bandwidths=[66.0, 36.0, 31.0], units=DN, nodata=0.0,
                             stats={b: {"mean": 1.0, "std": 1.0} for b in STACKED[:3]}))
    assert _rows(optical)["B02"][:2] == ["492.4", "66"] and "Radar (SAR)" not in optical


def test_a_stacked_card_gives_each_bands_units_in_the_band_table() -> None:
    card = _card(_stacked())
    assert "| Units (before normalisation) | per band (see the band table) |" in card
    assert "| Native GSD (m) | Units | Nodata |" in card
    rows = _rows(card)
    assert rows["B02"][-2:] == [DN, "0"] and rows["VV"][-2:] == [DB, "-"]
    assert rows["VH"][:2] == ["5.54658e+07 (radar: C-band, 5.55 cm)", "2 (polarisation code)"]
    assert "| Processing level | L2A+L1 GRD |" in card  # in the order of the sensors
    one = _card(_stacked(bands=S1, wavelengths=S1_NM, bandwidths=S1_CODES, units=DB,
                         nodata=None, stats={"VV": {"mean": -10.0, "std": 4.0},
                                             "VH": {"mean": -17.0, "std": 4.0}}))
    assert "| Units (before normalisation) | dB |" in one and "| Units |" not in one


def test_per_band_units_round_trip_follow_a_subset_and_are_checked_band_by_band() -> None:
    c = _stacked()
    assert c.units == (DN, DN, DN, DB, DB) and c.band_units("VV") == DB
    d = json.loads(json.dumps(c.to_dict()))
    assert d["units"] == [DN, DN, DN, DB, DB] and InputContract.from_dict(d) == c
    s1 = c.subset(["VH", "VV"])
    assert s1.units == (DB, DB)
    # S1 data on the encoder's S1 bands: the same units; on every band: S2's differ
    assert check_input(s1, bands=["VH", "VV"], units=DB) == []
    assert check_input(replace(c, any_bands=True), bands=["VV", "VH"], units=DB) == []
    assert check_input(c, bands=STACKED, units=DB) == [
        f"different units for band(s) ['B02', 'B03', 'B04']: the contract expects "
        f"{[DN] * 3}, the batch has 'dB'"]
    assert check_input(c, units=None) == [] and check_input(c, bands=STACKED) == []
    with pytest.raises(ValueError, match=re.escape("units: expected 5 values (one per band), "
                                                   "got 2")):
        _stacked(units=[DN, DB])
    with pytest.raises(ValueError, match="units: expected a string, or a list of one string"):
        InputContract.from_dict({**d, "units": [1, 2, 3, 4, 5]})
    single = _stacked(units=DN)  # one string for every band: compared as it always was
    assert check_input(single, units=DB) == [
        f"different units: the contract expects {DN!r}, the batch has 'dB'"]
