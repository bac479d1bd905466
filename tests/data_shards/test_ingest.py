"""Band planning at ingest: --bands keys and the band names a modality's files hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestError, IngestOptions, validity
from eofm.data_shards.layouts import LayoutOptions
from eofm.data_shards.sensors import ENMAP_HYSPECNET_NODATA_BANDS, Sensor, get_sensor


def _three_band_classes(root: Path) -> Path:
    for cls in ("Forest", "River"):
        (root / cls).mkdir(parents=True)
        tifffile.imwrite(root / cls / "a.tif", np.full((8, 8, 3), 7, np.uint16),
                         photometric="minisblack", planarconfig="contig")
    return root


def test_bands_for_a_modality_the_input_lacks_is_refused(tmp_path: Path) -> None:
    """`--bands S2=...` or `--bands s1=VV` on S2-only data used to be ignored (every band
    written, exit 0); now refused naming the key and the input's modalities, with a hint when
    only the case differs."""
    src = _three_band_classes(tmp_path / "src")
    opts = LayoutOptions(sensor="s2_l2a", file_bands=["B04", "B03", "B02"])
    for bands, why in (({"S2": ["B04"]}, r"'S2' is not in the input; its modalities are s2 "
                                         r"\(modality names are case-sensitive: 'S2' -> 's2'\)"),
                       ({"s2": ["B04"], "s1": ["VV"]}, r"'s1' is not in the input; its "
                                                       r"modalities are s2$")):
        with pytest.raises(IngestError, match=rf"^--bands: modality {why}"):
            build(BuildConfig(str(src), str(tmp_path / "o"), layout="multiband", progress=False,
                              layout_options=opts, ingest=IngestOptions(bands=bands)))
    assert not (tmp_path / "o").exists()
    build(BuildConfig(str(src), str(tmp_path / "ok"), layout="multiband", progress=False,
                      layout_options=opts, ingest=IngestOptions(bands={"s2": ["b3"]})))


def test_no_band_of_the_sensor_in_the_files_is_named(tmp_path: Path) -> None:
    """EuroSAT folders built as --sensor rgb without --file-bands: the files are taken to hold
    B01..B8A, none an RGB band; refused by name instead of "min() arg is an empty sequence".
    With --file-bands R,G,B the modality is called rgb (it was "s2" whatever the sensor)."""
    src = _three_band_classes(tmp_path / "src")
    for p in src.rglob("*.tif"):
        tifffile.imwrite(p, np.full((8, 8, 3), 7, np.uint8), photometric="minisblack",
                         planarconfig="contig")
    with pytest.raises(IngestError, match=r"none of sensor rgb's bands \(R, G, B\) is in the "
                                          r"input .*'B01'.*--file-bands"):
        build(BuildConfig(str(src), str(tmp_path / "o"), layout="eurosat", progress=False,
                          layout_options=LayoutOptions(sensor="rgb")))
    m = build(BuildConfig(str(src), str(tmp_path / "ok"), layout="eurosat", progress=False,
                          layout_options=LayoutOptions(sensor="rgb", file_bands=["R", "G", "B"])))
    assert list(m.modalities) == ["rgb"] and m.labels.classes == ["Forest", "River"]


def test_a_band_empty_in_one_tile_leaves_no_pixel_valid(tmp_path: Path) -> None:
    """A band that holds no data in a tile (a swath edge) used to be left out of the valid
    mask, so the tile passed --max-nodata and the band reached the model as a constant that
    looks like a measurement. Now its pixels are invalid, the tile is dropped and the band is
    counted; the sensor's ``may_be_empty`` bands (EnMAP's water-vapour bands) keep the old
    allowance."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        x = rng.integers(100, 3000, (3, 8, 8)).astype(np.uint16)
        if i < 2:
            x[0] = 0  # B04 entirely nodata (s2's nodata is 0)
        np.save(src / f"t{i}.npy", x)
    m = build(BuildConfig(str(src), str(tmp_path / "o"), layout="array", progress=False,
                          layout_options=LayoutOptions(sensor="s2_l2a",
                                                       file_bands=["B04", "B03", "B02"])))
    assert m.sample_count == 2
    assert m.extra["counters"]["dropped_nodata"] == 2
    assert m.extra["counters"]["empty_band[s2:B04]"] == 2


def test_validity_allows_only_the_declared_empty_bands() -> None:
    x = np.ones((3, 4, 4), np.int16)
    x[1] = -1
    x[2, 0, 0] = -1
    valid, empty = validity(x, [-1, -1, -1])
    assert empty == [1] and not valid.any()
    valid, empty = validity(x, [-1, -1, -1], may_be_empty=[1])
    assert empty == [1] and valid.sum() == 15 and not valid[0, 0]
    valid, _ = validity(x, [-1, -1, -1], may_be_empty=[2])  # declared, but not empty here
    assert not valid.any()


def test_enmap_declares_its_water_vapour_bands() -> None:
    enmap = get_sensor("enmap_hsi")
    assert enmap.may_be_empty == ENMAP_HYSPECNET_NODATA_BANDS
    assert enmap.select(["B001", "B130", "B200"]).may_be_empty == ("B130",)
    assert Sensor.from_dict(enmap.to_dict()) == enmap
    assert get_sensor("s2_l1c").may_be_empty == ()
    with pytest.raises(ValueError, match=r"may_be_empty: 'B999' is not one of the sensor's "
                                         r"bands.*\n.*may_be_empty: 'b001' is listed twice"):
        Sensor.from_dict({**enmap.to_dict(), "may_be_empty": ["B001", "B999", "b001"]})
