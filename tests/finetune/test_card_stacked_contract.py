"""The input contract and card of pretraining on stacked Sentinel-2 + Sentinel-1 data name each
sensor's processing level beside it and each band's units.

The card read "Sensor(s) | s2_l2a+s1_grd", "Processing level | L1 GRD+L2A" (the levels sorted,
so they paired with the wrong sensors) and "Units | -" (the bands' units differ: null). Levels
now follow the sensors' order, a stacked sensor part by part; units are per band, as nodata.
"""

from __future__ import annotations

from pathlib import Path

from eofm.data_shards.manifest import load_manifest
from eofm.data_shards.sensors import joint_processing_level
from eofm.models import check_input, create_model
from eofm.models.card import render_model_card
from eofm.pretrain.data import band_info, input_contract

DN, DB = "DN (x 0.0001 = physical)", "dB"


def test_levels_follow_the_sensors_order_a_stacked_sensor_part_by_part() -> None:
    assert joint_processing_level(["s2_l2a+s1_grd"]) == "L2A+L1 GRD"
    assert joint_processing_level(["s1_grd+s2_l2a"]) == "L1 GRD+L2A"
    assert joint_processing_level(["s2_l2a", "s2_l1c"]) == "L2A+L1C"
    assert joint_processing_level(["s2_l1c", "s2_l1c"]) == "L1C"  # distinct levels once


def test_a_stacked_contract_and_card_pair_levels_with_sensors_and_give_band_units(
        sample_data: Path, tmp_path: Path) -> None:
    from eofm.data_shards.build import BuildConfig, build
    from eofm.data_shards.ingest import IngestOptions

    shards = tmp_path / "s2s1"
    build(BuildConfig(str(sample_data / "bigearthnet"), str(shards), stack="s2,s1",
                      ingest=IngestOptions(tile=40), progress=False))
    manifest = load_manifest(shards)
    info = band_info(manifest, "s2s1", None)
    enc = create_model("vit_test_patch8", bands=info.bands, img_size=40)
    c = input_contract("mae", info, manifest, enc, "d")
    assert c.sensors == ("s2_l2a+s1_grd",) and c.processing_level == "L2A+L1 GRD"
    assert c.units == (DN,) * 12 + (DB, DB)
    assert check_input(c, processing_level="L1 GRD") == []  # either level matches
    card = render_model_card({"architecture": "eofm_vit_test_patch8", "num_features": 64,
                              "global_pool": "token", "eofm_contract": c.to_dict()})
    assert "| Sensor(s) | s2_l2a+s1_grd |" in card
    assert "| Processing level | L2A+L1 GRD |" in card
    assert "| Units (before normalisation) | per band (see the band table) |" in card
    rows = {r.split(" | ")[1]: r for r in card.splitlines() if r.startswith("| 1")}
    assert rows["VV"].endswith(f" | {DB} | - |") and rows["B11"].endswith(f" | {DN} | 0 |")
