"""The input contract of pretraining on a stacked Sentinel-2 + Sentinel-1 modality carries each
band's nodata (0 for S2, none for S1): it held null because the bands' values differ, so the
exported card's snippet fed S2's fill value as data. Single-sensor contracts keep one number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eofm.data_shards.manifest import load_manifest
from eofm.models import InputContract, create_model
from eofm.pretrain.data import band_info, input_contract

S2_BANDS = 12  # the stacked modality: B01..B12 without B10, then VV, VH


@pytest.fixture(scope="module")
def builds(sample_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The bundled BigEarthNet sample built as 40 px tiles twice: S2 and S1 stacked into one
    modality (``--stack s2,s1``, as launch/configs/mae_s2s1_cpu.yaml), and paired."""
    from eofm.data_shards.build import BuildConfig, build
    from eofm.data_shards.ingest import IngestOptions

    root = tmp_path_factory.mktemp("nodata")
    src = str(sample_data / "bigearthnet")
    build(BuildConfig(src, str(root / "s2s1"), stack="s2,s1", ingest=IngestOptions(tile=40),
                      progress=False))
    build(BuildConfig(src, str(root / "pair"), ingest=IngestOptions(tile=40), progress=False))
    return root / "s2s1", root / "pair"


def _contract(path: Path, modality: str) -> InputContract:
    manifest = load_manifest(path)
    info = band_info(manifest, modality, None)
    enc = create_model("vit_test_patch8", bands=info.bands, img_size=40)
    return input_contract("mae", info, manifest, enc, "d")


def test_a_stacked_s2_s1_contract_carries_each_bands_nodata(builds) -> None:
    stacked, _ = builds
    c = _contract(stacked, "s2s1")
    assert c.bands[-2:] == ("VV", "VH") and len(c.bands) == S2_BANDS + 2
    assert c.nodata == (0.0,) * S2_BANDS + (None, None)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["nodata"] == [0.0] * S2_BANDS + [None, None]
    assert InputContract.from_dict(d) == c
    assert c.subset(["VH", "B02"]).nodata == (None, 0.0)


def test_a_single_sensor_contract_keeps_one_number_or_none(builds) -> None:
    _, paired = builds
    assert _contract(paired, "s2").to_dict()["nodata"] == 0.0
    assert _contract(paired, "s1").to_dict()["nodata"] is None


def test_resuming_a_checkpoint_from_before_per_band_nodata_is_not_a_data_change(
        caplog: pytest.LogCaptureFixture) -> None:
    """A stacked run's checkpoint written before contracts carried per-band nodata says none
    (null); resumed now, the same data gives one value per band: no "the dataset was rebuilt"
    warning for that. A real change of a band's value, or of a single number, still warns."""
    from eofm.pretrain.resume import warn_resume_changes

    bands = {"bands": ["B02", "VV"], "gsd": 10.0}
    per_band = {**bands, "nodata": [0.0, None]}
    with caplog.at_level("WARNING", logger="eofm.pretrain.resume"):
        warn_resume_changes({"contract": {**bands, "nodata": None}}, {}, per_band, 4)
    assert "input contract differs" not in caplog.text
    for then in ({**bands, "nodata": [1.0, None]}, {**bands, "nodata": 0.0}):
        caplog.clear()
        with caplog.at_level("WARNING", logger="eofm.pretrain.resume"):
            warn_resume_changes({"contract": then}, {}, per_band, 4)
        assert "the input contract differs from the checkpoint's (nodata)" in caplog.text
