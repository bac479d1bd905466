"""Landsat Collection 2 ``QA_PIXEL`` quality masks: decoding the USGS bit layout (typical
values checked bit by bit here), refusing values the spec rules out, detection by the real
product file names (and never taking ``QA_RADSAT``/``SR_QA_AEROSOL`` for a mask), and an
end-to-end build of a Collection 2 Level-2 folder that records ``cloud_fraction``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.cli import main
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.layouts import LayoutError, discover
from eofm.data_shards.manifest import load_manifest
from eofm.data_shards.quality import (
    QualityError,
    QualitySource,
    decode_qa_pixel,
    quality_kind,
    read_quality,
)
from eofm.data_shards.reader import ShardDataset

L2 = "LC08_L2SP_044034_20210508_20210517_02_T1"
L1 = "LC09_L1TP_044034_20220503_20220503_02_T1"
C1 = "LC08_L1TP_044034_20170410_20170414_01_T1"
UTM_KEYS = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)

# Typical QA_PIXEL values, decomposed by hand from the USGS Landsat 8-9 Collection 2 table
# (bits: 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 shadow, 5 snow, 6 clear, 7 water;
# confidences 00 none / 01 low / 10 medium / 11 high at 8-9 cloud, 10-11 shadow, 12-13 snow,
# 14-15 cirrus). "low4" = 0x5500 = every confidence low.
FILL = 1          # 0x0001: bit 0 only
CLEAR = 21824     # 0x5540 = low4 | clear (0x40)
WATER = 21952     # 0x55C0 = low4 | clear | water (0x80)
CLOUD = 22280     # 0x5708 = cloud (0x08) | cloud conf 11 (0x300) | shadow/snow/cirrus low
SHADOW = 23888    # 0x5D50 = shadow (0x10) | clear | shadow conf 11 (0xC00) | others low
CIRRUS = 55052    # 0xD70C = cirrus (0x04) | cloud | cloud conf 11 | cirrus conf 11 (0xC000)
DILATED = 21762   # 0x5502 = low4 | dilated cloud (0x02); not clear
SNOW = 30048      # 0x7560 = snow (0x20) | clear | snow conf 11 (0x3000) | others low
VALUES = [FILL, CLEAR, WATER, CLOUD, SHADOW, CIRRUS, DILATED, SNOW]


def _geotiff(path: Path, data: np.ndarray, px: float = 30.0) -> None:
    """``data`` (H, W) as a GeoTIFF on a UTM grid of ``px`` m pixels."""
    extra = [(33550, "d", 3, (px, px, 0.0), True),
             (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
             (34735, "H", len(UTM_KEYS), UTM_KEYS, True)]
    tifffile.imwrite(path, data, extratags=extra)


def _qa_file(tmp_path: Path, values: list[int], name: str = f"{L2}_QA_PIXEL.TIF",
             dtype: type = np.uint16) -> Path:
    path = tmp_path / name
    tifffile.imwrite(path, np.array([values], dtype))
    return path


# ---------------------------------------------------------------- decoding
def test_typical_values_decode_to_flagged_and_fill(tmp_path: Path) -> None:
    assert hex(CLEAR) == "0x5540" and hex(CLOUD) == "0x5708" and hex(CIRRUS) == "0xd70c"
    m = read_quality(QualitySource("landsat_qa_pixel", [_qa_file(tmp_path, VALUES)]))
    f, t = False, True
    #                                  FILL CLEAR WATER CLOUD SHADOW CIRRUS DILATED SNOW
    np.testing.assert_array_equal(m.fill[0], [t, f, f, f, f, f, f, f])
    np.testing.assert_array_equal(m.flagged[0], [f, f, f, t, t, t, t, f])  # snow: surface
    assert m.layout == "qa_pixel:c2" and m.path.endswith("_QA_PIXEL.TIF")


def test_every_field_matches_the_hand_decomposition() -> None:
    b = decode_qa_pixel(np.array(VALUES, np.uint16))
    f, t = False, True
    #                                        FILL CLEAR WATER CLOUD SHADOW CIRRUS DILATED SNOW
    expected = {"dilated_cloud": [f, f, f, f, f, f, t, f],
                "cirrus":        [f, f, f, f, f, t, f, f],
                "cloud":         [f, f, f, t, f, t, f, f],
                "shadow":        [f, f, f, f, t, f, f, f],
                "snow":          [f, f, f, f, f, f, f, t],
                "clear":         [f, t, t, f, t, f, f, t],
                "water":         [f, f, t, f, f, f, f, f],
                "cloud_conf":    [0, 1, 1, 3, 1, 3, 1, 1],
                "shadow_conf":   [0, 1, 1, 1, 3, 1, 1, 1],
                "snow_conf":     [0, 1, 1, 1, 1, 1, 1, 3],
                "cirrus_conf":   [0, 1, 1, 1, 1, 3, 1, 1]}
    for name, want in expected.items():
        np.testing.assert_array_equal(b[name], want, err_msg=name)


def test_fill_with_other_bits_is_refused() -> None:
    with pytest.raises(QualityError, match=r"x_QA_PIXEL\.TIF: QA_PIXEL fill pixels .* exactly 1 "
                                           r"with no other bit, found values \[21825\]"):
        decode_qa_pixel(np.array([CLEAR, CLEAR | 1], np.uint16), "x_QA_PIXEL.TIF")


def test_clear_beside_cloud_is_refused() -> None:
    for bad in (CLEAR | 0x08, CLEAR | 0x02):  # clear + cloud, clear + dilated cloud
        with pytest.raises(QualityError, match=rf"x_QA_PIXEL\.TIF: QA_PIXEL values \[{bad}\] "
                                               r"set 'clear' \(bit 6\) together with cloud"):
            decode_qa_pixel(np.array([CLOUD, bad], np.uint16), "x_QA_PIXEL.TIF")


def test_wrong_dtype_and_band_count_name_the_file(tmp_path: Path) -> None:
    path = _qa_file(tmp_path, [0, 1], dtype=np.uint8)
    with pytest.raises(QualityError, match=r"_QA_PIXEL\.TIF: landsat_qa_pixel mask expected "
                                           r"dtype uint16, found uint8"):
        read_quality(QualitySource("landsat_qa_pixel", [path]))
    path = tmp_path / "two_QA_PIXEL.TIF"
    tifffile.imwrite(path, np.full((2, 4, 4), CLEAR, np.uint16), planarconfig="separate")
    with pytest.raises(QualityError, match=r"two_QA_PIXEL\.TIF: landsat_qa_pixel mask expected "
                                           r"1 band, found 2"):
        read_quality(QualitySource("landsat_qa_pixel", [path]))


# ---------------------------------------------------------------- detection
def test_detection_by_real_collection2_names() -> None:
    for name in (f"{L2}_QA_PIXEL.TIF", f"{L1}_QA_PIXEL.TIF", "qa_pixel.tif"):
        assert quality_kind(Path(name)) == "landsat_qa_pixel", name
    for name in (f"{L2}_QA_RADSAT.TIF", f"{L2}_SR_QA_AEROSOL.TIF", f"{L2}_ST_QA.TIF",
                 "LT05_L2SP_044034_20100508_20200824_02_T1_SR_CLOUD_QA.TIF", f"{L2}_SR_B4.TIF"):
        assert quality_kind(Path(name)) is None, name
    assert quality_kind(Path(f"{C1}_BQA.TIF")) == "landsat_bqa"


def _level2_folder(root: Path, qa: np.ndarray | None, extra_qa: bool = True) -> Path:
    """A Collection 2 Level-2 folder: SR_B1..SR_B7, ST_B10 (0 = fill where ``qa`` is fill),
    ``QA_PIXEL`` (when given) and the product's other QA bands."""
    d = root / L2
    d.mkdir(parents=True)
    h, w = (qa.shape if qa is not None else (16, 16))
    rng = np.random.default_rng(0)
    fill = (qa == FILL) if qa is not None else np.zeros((h, w), bool)
    for band in [*(f"SR_B{i}" for i in range(1, 8)), "ST_B10"]:
        x = rng.integers(7300, 20000, (h, w), np.uint16)
        x[fill] = 0
        _geotiff(d / f"{L2}_{band}.TIF", x)
    if qa is not None:
        _geotiff(d / f"{L2}_QA_PIXEL.TIF", qa.astype(np.uint16))
    if extra_qa:  # saturation and aerosol QA: bit fields, but not cloud masks
        _geotiff(d / f"{L2}_QA_RADSAT.TIF", np.zeros((h, w), np.uint16))
        _geotiff(d / f"{L2}_SR_QA_AEROSOL.TIF", np.full((h, w), 224, np.uint8))
    return d


def test_per_band_folder_picks_qa_pixel_and_never_the_other_qa_bands(tmp_path: Path) -> None:
    _level2_folder(tmp_path / "a", np.full((16, 16), CLEAR))
    _, items = discover(tmp_path / "a")
    src = items[0].modalities["landsat"]
    assert src.sensor == "landsat8_c2l2"
    assert src.quality is not None and src.quality.kind == "landsat_qa_pixel"
    assert [p.name for p in src.quality.files] == [f"{L2}_QA_PIXEL.TIF"]
    assert not any("QA" in p.name for p, _ in src.files)  # no QA file is read as a band
    _level2_folder(tmp_path / "b", None)  # only QA_RADSAT and SR_QA_AEROSOL: no mask
    _, items = discover(tmp_path / "b")
    assert items[0].modalities["landsat"].quality is None


def test_level1_collection2_folder_gets_its_qa_pixel(tmp_path: Path) -> None:
    d = tmp_path / "l1" / L1
    d.mkdir(parents=True)
    for i in range(1, 12):
        _geotiff(d / f"{L1}_B{i}.TIF", np.full((8, 8), 9000, np.uint16))
    _geotiff(d / f"{L1}_QA_PIXEL.TIF", np.full((8, 8), CLEAR, np.uint16))
    _geotiff(d / f"{L1}_QA_RADSAT.TIF", np.zeros((8, 8), np.uint16))
    _, items = discover(tmp_path / "l1")
    src = items[0].modalities["landsat"]
    assert src.sensor == "landsat9_oli_tirs"
    assert src.quality is not None and src.quality.kind == "landsat_qa_pixel"


def test_bqa_beside_qa_pixel_is_refused_naming_both(tmp_path: Path) -> None:
    d = _level2_folder(tmp_path / "in", np.full((16, 16), CLEAR))
    _geotiff(d / f"{C1}_BQA.TIF", np.full((16, 16), 2720, np.uint16))
    with pytest.raises(LayoutError, match=rf"{C1}_BQA\.TIF.*{L2}_QA_PIXEL\.TIF.*one Landsat "
                                          r"product per folder"):
        discover(tmp_path / "in")


# ---------------------------------------------------------------- end to end
def _scene_qa() -> np.ndarray:
    """32 x 32 QA_PIXEL: top-left tile clear land with a 4x4 fill corner, top-right half
    cloud / half water, bottom-left shadow stripe + snow, bottom-right cirrus + dilated."""
    qa = np.full((32, 32), CLEAR, np.uint16)
    qa[:4, :4] = FILL
    qa[:8, 16:] = CLOUD
    qa[8:16, 16:] = WATER
    qa[16:20, :16] = SHADOW
    qa[20:24, :16] = SNOW
    qa[16:24, 16:] = CIRRUS
    qa[24:26, 16:] = DILATED
    return qa


def _expected_fraction(qa: np.ndarray) -> float:
    """Share of non-fill pixels flagged, from the QA_PIXEL values the helper wrote."""
    flagged = np.isin(qa, [CLOUD, SHADOW, CIRRUS, DILATED])
    keep = qa != FILL
    return float(flagged[keep].mean())


def test_build_records_cloud_fraction_per_tile(tmp_path: Path) -> None:
    qa = _scene_qa()
    _level2_folder(tmp_path / "in", qa)
    m = build(BuildConfig(str(tmp_path / "in"), str(tmp_path / "out"), progress=False,
                          ingest=IngestOptions(tile=16)))
    assert m is not None and m.modalities["landsat"].sensor == "landsat8_c2l2"
    samples = {s["__key__"]: s for s in ShardDataset(tmp_path / "out", with_meta=True,
                                                     shuffle_shards=False)}
    assert len(samples) == 4
    for s in samples.values():
        win = s["meta"]["window"]
        part = qa[win["row"]:win["row"] + 16, win["col"]:win["col"] + 16]
        assert s["meta"]["cloud_fraction"] == pytest.approx(_expected_fraction(part))
        q = s["meta"]["modalities"]["landsat"]["quality"]
        assert q["kind"] == "landsat_qa_pixel" and q["layout"] == "qa_pixel:c2"
        assert q["files"] == [f"{L2}_QA_PIXEL.TIF"]
        # by default only the fill (band DN 0) is invalid, never the clouds
        np.testing.assert_array_equal(s["landsat_valid"], part != FILL)
    fractions = sorted(s["meta"]["cloud_fraction"] for s in samples.values())
    assert fractions[0] == 0.0 and fractions[-1] == pytest.approx(160 / 256)
    counters = load_manifest(tmp_path / "out").extra["counters"]
    assert sum(v for k, v in counters.items() if k.startswith("cloud[")) == 4


def test_cli_cloud_as_nodata_and_max_cloud_with_qa_pixel(tmp_path: Path, capsys) -> None:
    qa = _scene_qa()
    _level2_folder(tmp_path / "in", qa)
    out = tmp_path / "out"
    assert main(["build", str(tmp_path / "in"), "--out", str(out), "--tile", "16", "--quiet",
                 "--cloud-as-nodata", "--max-cloud", "0.5"]) == 0
    samples = list(ShardDataset(out, with_meta=True, shuffle_shards=False))
    assert len(samples) == 3  # the bottom-right tile (10/16 cloudy) is dropped
    flagged = np.isin(qa, [CLOUD, SHADOW, CIRRUS, DILATED])
    for s in samples:
        win = s["meta"]["window"]
        win_ = np.s_[win["row"]:win["row"] + 16, win["col"]:win["col"] + 16]
        np.testing.assert_array_equal(s["landsat_valid"], ~flagged[win_] & (qa[win_] != FILL))
    assert load_manifest(out).extra["counters"]["dropped_cloud"] == 1
