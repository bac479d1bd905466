"""Quality/cloud masks at ingest: decoding (Landsat BQA, Sentinel-2 SCL, Major-TOM cloud_mask,
EnMAP QL layers), discovery beside the bands, cloud_fraction in meta.json, --cloud-as-nodata
and --max-cloud, and clear errors for masks of the wrong kind."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from geotiff_like import write_like

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.checks import recompute_stats, summary
from eofm.data_shards.cli import main
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.layouts import discover
from eofm.data_shards.quality import (
    QualityError,
    QualityMask,
    QualitySource,
    bqa_layout,
    decode,
    decode_bqa,
    quality_kind,
    read_quality,
    to_grid,
)
from eofm.data_shards.raster_io import Geo, Raster, read_raster
from eofm.data_shards.reader import ShardDataset

NEAREST = {"resample": "nearest"}  # Landsat's pan band B8 sits half a 30 m pixel off


# ---------------------------------------------------------------- helpers
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst





def _samples(out: Path) -> dict[str, dict]:
    return {s["__key__"]: s for s in ShardDataset(out, with_meta=True, shuffle_shards=False)}


def _build(src: Path, out: Path, **ingest) -> object:
    return build(BuildConfig(str(src), str(out), ingest=IngestOptions(**ingest), progress=False))


def _mask_on_tile(mask: np.ndarray, mask_geo: Geo, tile_geo: dict, size: int) -> np.ndarray:
    """Nearest-neighbour lookup of ``mask`` at the pixel centres of a tile (from its meta geo),
    computed here independently of the code under test."""
    xs = tile_geo["x0"] + (np.arange(size) + 0.5) * tile_geo["sx"]
    ys = tile_geo["y0"] - (np.arange(size) + 0.5) * tile_geo["sy"]
    cols = np.floor((xs - mask_geo.x0) / mask_geo.sx).astype(int)
    rows = np.floor((mask_geo.y0 - ys) / mask_geo.sy).astype(int)
    return mask[np.ix_(rows, cols)]


# ---------------------------------------------------------------- Landsat BQA
def test_bqa_real_scene_decodes_pre_collection(shared_data: Path) -> None:
    path = shared_data / "landsat8_scene" / "l8_BQA.tif"
    x = read_raster(path).data[0]
    layout, bits = decode_bqa(x, str(path))
    # values such as 20480 = 0x5000 (cirrus 01, cloud 01) only make sense in the
    # Pre-Collection layout (cloud confidence in bits 14-15; Collection 1 leaves 13-15 unused)
    assert layout == "pre_collection" and 20480 in np.unique(x)
    for name in ("fill", "cloud", "cirrus", "snow", "shadow"):
        assert bits[name].dtype == bool and bits[name].shape == x.shape
        assert 0.0 <= bits[name].mean() <= 1.0
    np.testing.assert_array_equal(bits["fill"], (x & 1) == 1)
    np.testing.assert_array_equal(bits["cloud"], (x >> 14) == 3)
    np.testing.assert_array_equal(bits["cirrus"], ((x >> 12) & 3) == 3)
    np.testing.assert_array_equal(bits["snow"], ((x >> 10) & 3) == 3)
    assert not bits["shadow"].any()  # never populated before Collection 1
    assert 0.0 < bits["cloud"].mean() < 0.2 and bits["snow"].sum() == 5  # 23552 = 0x5C00
    m = read_quality(QualitySource("landsat_bqa", [path]))
    np.testing.assert_array_equal(m.flagged, bits["cloud"] | bits["cirrus"])
    assert m.layout == "bqa:pre_collection" and 0.0 < m.flagged.mean() < 1.0


def test_bqa_constructed_bits_give_exact_masks() -> None:
    # Collection 1: 1 fill, 2720 clear (all confidences low), cloud conf high = bits 5-6,
    # shadow high = bits 7-8, snow high = bits 9-10, cirrus high = bits 11-12
    c1 = np.array([[1, 2720, 2720 | (3 << 5) | 16],
                   [(3 << 7) | 32, (3 << 9) | 32, (3 << 11) | 32],
                   [(2 << 5), (2 << 7), 1 | (3 << 5)]], np.uint16)
    layout, b = decode_bqa(c1)
    assert layout == "collection1"
    f, t = False, True
    np.testing.assert_array_equal(b["fill"], [[t, f, f], [f, f, f], [f, f, t]])
    np.testing.assert_array_equal(b["cloud"], [[f, f, t], [f, f, f], [f, f, f]])
    np.testing.assert_array_equal(b["shadow"], [[f, f, f], [t, f, f], [f, f, f]])
    np.testing.assert_array_equal(b["snow"], [[f, f, f], [f, t, f], [f, f, f]])
    np.testing.assert_array_equal(b["cirrus"], [[f, f, f], [f, f, t], [f, f, f]])
    m = decode("landsat_bqa", [Raster(c1[None], "c1.tif")])
    np.testing.assert_array_equal(m.flagged, [[f, f, t], [t, f, t], [f, f, f]])  # snow is not
    # Pre-Collection: cloud bits 14-15, cirrus 12-13, snow 10-11
    pre = np.array([[0x5000, 0xD000, 0x7000, 0x5C00, 0x9000, 1]], np.uint16)
    layout, b = decode_bqa(pre)
    assert layout == "pre_collection"
    np.testing.assert_array_equal(b["cloud"], [[f, t, f, f, f, f]])
    np.testing.assert_array_equal(b["cirrus"], [[f, f, t, f, f, f]])
    np.testing.assert_array_equal(b["snow"], [[f, f, f, t, f, f]])
    np.testing.assert_array_equal(b["fill"], [[f, f, f, f, f, t]])


def test_bqa_values_outside_both_layouts_are_refused() -> None:
    with pytest.raises(QualityError, match=r"odd_BQA\.tif: BQA values \[57352\].*pre_collection"):
        bqa_layout(np.array([0x5000, 0xE008], np.uint16), "odd_BQA.tif")  # bit 3 is reserved


def test_bqa_fill_becomes_invalid_and_leaves_the_fraction(sample_data: Path,
                                                         tmp_path: Path) -> None:
    src = _copy(sample_data / "landsat8_scene", tmp_path / "l8")
    bqa = read_raster(src / "l8_BQA.tif").data[0].copy()
    bqa[:8, :8] = 1  # designated fill: the top-left 8x8 BQA pixels = 16x16 px of the 15 m grid
    write_like(sample_data / "landsat8_scene" / "l8_BQA.tif", src / "l8_BQA.tif", bqa)
    out = tmp_path / "ds"
    _build(src, out, tile=64, cloud_as_nodata=True, **NEAREST)
    s = _samples(out)["l8_r0_c0"]
    valid = s["landsat_valid"]
    assert not valid[:16, :16].any()
    flagged = np.repeat(np.repeat(decode("landsat_bqa", [Raster(bqa[None], "b")]).flagged[:32, :32],
                                  2, 0), 2, 1)
    np.testing.assert_array_equal(valid, ~flagged & ~_fill_block(64, 16))
    expected = flagged[~_fill_block(64, 16)].mean()
    assert s["meta"]["cloud_fraction"] == pytest.approx(expected)


def _fill_block(size: int, n: int) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[:n, :n] = True
    return m


# ---------------------------------------------------------------- build with BQA
def test_default_records_cloud_fraction_and_changes_nothing_else(sample_data: Path,
                                                                 tmp_path: Path) -> None:
    with_mask = tmp_path / "with"
    _build(sample_data / "landsat8_scene", with_mask, tile=64, **NEAREST)
    bare = _copy(sample_data / "landsat8_scene", tmp_path / "landsat8_scene")
    (bare / "l8_BQA.tif").unlink()
    without = tmp_path / "without"
    _build(bare, without, tile=64, **NEAREST)
    a, b = _samples(with_mask), _samples(without)
    assert sorted(a) == sorted(b) and len(a) == 16
    bqa = read_raster(sample_data / "landsat8_scene" / "l8_BQA.tif")
    flagged = decode("landsat_bqa", [bqa]).flagged
    for key, s in a.items():
        t = b[key]
        assert set(s) == set(t)  # no valid mask appears: record only
        np.testing.assert_array_equal(s["landsat"], t["landsat"])
        meta = dict(s["meta"])
        frac = meta.pop("cloud_fraction")
        quality = meta["modalities"]["landsat"].pop("quality")
        meta["source"] = t["meta"]["source"]
        assert meta == t["meta"]  # the only difference is the added cloud fields
        assert "cloud_fraction" not in t["meta"]  # no mask: absent, never a made-up 0
        assert quality["kind"] == "landsat_bqa" and quality["files"] == ["l8_BQA.tif"]
        assert quality["cloud_fraction"] == frac and quality["as_nodata"] is False
        on_tile = _mask_on_tile(flagged, bqa.geo, meta["modalities"]["landsat"]["geo"], 64)
        assert frac == pytest.approx(on_tile.mean())  # every pixel valid in this sample
    fracs = [s["meta"]["cloud_fraction"] for s in a.values()]
    assert min(fracs) == 0.0 < max(fracs) < 1.0
    # the build counts tiles per 10% of cloud fraction; inspect shows the histogram
    from eofm.data_shards.manifest import load_manifest

    counters = load_manifest(with_mask).extra["counters"]
    want: dict[str, int] = {}
    for f in fracs:
        lo = 10 * min(int(100 * f) // 10, 9)
        want[f"cloud[{lo}-{lo + 10}%]"] = want.get(f"cloud[{lo}-{lo + 10}%]", 0) + 1
    assert {k: v for k, v in counters.items() if k.startswith("cloud[")} == want
    assert not any(k.startswith("cloud[") for k in load_manifest(without).extra["counters"])
    text = summary(with_mask)
    assert "clouds    16 tiles measured (kept and dropped), by cloud fraction: 0-10%" in text


def test_cloud_as_nodata_removes_flagged_pixels_from_valid(sample_data: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "ds"
    m = _build(sample_data / "landsat8_scene", out, tile=64, cloud_as_nodata=True, **NEAREST)
    assert m.tile["cloud_as_nodata"] is True  # type: ignore[attr-defined]
    bqa = read_raster(sample_data / "landsat8_scene" / "l8_BQA.tif")
    flagged = decode("landsat_bqa", [bqa]).flagged
    cloudy = 0
    for s in _samples(out).values():
        on_tile = _mask_on_tile(flagged, bqa.geo, s["meta"]["modalities"]["landsat"]["geo"], 64)
        valid = s.get("landsat_valid", np.ones((64, 64), bool))
        np.testing.assert_array_equal(valid, ~on_tile)
        assert s["meta"]["modalities"]["landsat"]["quality"]["as_nodata"] is True
        cloudy += int(on_tile.any())
    assert cloudy >= 4  # the test exercises real flagged pixels


def test_statistics_leave_out_clouds_made_nodata(sample_data: Path, tmp_path: Path) -> None:
    """With --cloud-as-nodata the manifest's band statistics are over the valid pixels only
    (what the loss sees), and recomputing them from the shards agrees."""
    out = tmp_path / "ds"
    m = _build(sample_data / "landsat8_scene", out, tile=64, cloud_as_nodata=True, **NEAREST)
    info = m.modalities["landsat"]  # type: ignore[attr-defined]
    samples = list(_samples(out).values())
    for i in (0, 3):
        band, nodata = info.bands[i], info.nodata[i]
        px = np.concatenate([s["landsat"][i][s["landsat_valid"]] for s in samples])
        px = px[px != nodata] if nodata is not None else px
        assert px.size < sum(s["landsat_valid"].size for s in samples)  # some were left out
        st = info.stats[band]
        assert st["count"] == px.size and st["mean"] == pytest.approx(px.astype(float).mean())
    again = recompute_stats(out).modalities["landsat"].stats
    for band, st in info.stats.items():
        assert again[band]["count"] == st["count"], band
        assert again[band]["mean"] == pytest.approx(st["mean"]), band


def test_max_cloud_drops_the_right_tiles_and_counts_them(sample_data: Path,
                                                         tmp_path: Path) -> None:
    src = sample_data / "landsat8_scene"
    _build(src, tmp_path / "all", tile=64, **NEAREST)
    everything = _samples(tmp_path / "all")
    fracs = {k: s["meta"]["cloud_fraction"] for k, s in everything.items()}
    limit = 0.05
    keep = {k for k, f in fracs.items() if f <= limit}
    assert 0 < len(keep) < len(fracs)
    out = tmp_path / "clear"
    m = _build(src, out, tile=64, max_cloud=limit, **NEAREST)
    assert set(_samples(out)) == keep
    counters = m.extra["counters"]  # type: ignore[attr-defined]
    assert counters["dropped_cloud"] == len(fracs) - len(keep)
    assert counters["samples"] == len(keep) and m.tile["max_cloud"] == limit  # type: ignore
    assert f"'dropped_cloud': {len(fracs) - len(keep)}" in summary(out)


def test_cli_cloud_options(sample_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    assert main(["build", str(sample_data / "landsat8_scene"), "--out", str(out), "--tile", "64",
                 "--resample", "nearest", "--max-cloud", "0.1", "--cloud-as-nodata",
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "dropped_cloud" in text and "'cloud_as_nodata': True" in text
    for s in _samples(out).values():
        assert s["meta"]["cloud_fraction"] <= 0.1
    assert main(["build", str(sample_data / "landsat8_scene"), "--out", str(tmp_path / "x"),
                 "--max-cloud", "1.5", "--resample", "nearest", "--quiet"]) == 2
    assert "max_cloud: expected a fraction in [0, 1], got 1.5" in capsys.readouterr().err


# ---------------------------------------------------------------- Sentinel-2 SCL
def test_scl_constructed_classes() -> None:
    scl = np.arange(12, dtype=np.uint8).reshape(3, 4)
    m = decode("s2_scl", [Raster(scl[None], "SCL.tif")])
    np.testing.assert_array_equal(np.flatnonzero(m.flagged), [3, 8, 9, 10])
    np.testing.assert_array_equal(np.flatnonzero(m.fill), [0])
    assert quality_kind(Path("T33NZA_20220706T085611_SCL_20m.jp2")) == "s2_scl"
    assert quality_kind(Path("SCL.tif")) == "s2_scl" and quality_kind(Path("B02.tif")) is None
    with pytest.raises(QualityError, match=r"SCL\.tif: expected SCL classes 0\.\.11, found "
                                           r"values \[12\]"):
        decode("s2_scl", [Raster(np.full((1, 2, 2), 12, np.uint8), "SCL.tif")])


def test_scl_beside_sentinel2_bands_is_resampled_and_used(sample_data: Path,
                                                          tmp_path: Path) -> None:
    src = _copy(sample_data / "sentinel2_l1c_scene", tmp_path / "scene")
    rng = np.random.default_rng(0)
    scl = rng.choice(np.arange(12, dtype=np.uint8), size=(192, 192))  # 20 m, like B05
    write_like(src / "s2_B05.jp2", src / "SCL.tif", scl)
    name, items = discover(src)
    mod = items[0].modalities["s2"]
    assert name == "per_band" and len(mod.files) == 13  # SCL is not a band
    assert mod.quality is not None and mod.quality.kind == "s2_scl"
    out = tmp_path / "ds"
    _build(src, out, tile=96, cloud_as_nodata=True)
    up = np.repeat(np.repeat(scl, 2, 0), 2, 1)  # 20 m -> 10 m, nearest
    samples = _samples(out)
    assert len(samples) == 16
    for s in samples.values():
        w = s["meta"]["window"]
        t = up[w["row"]:w["row"] + 96, w["col"]:w["col"] + 96]
        flagged, fill = np.isin(t, [3, 8, 9, 10]), t == 0
        bands_ok = (s["s2"] != 0).all(axis=0)
        np.testing.assert_array_equal(s["s2_valid"], bands_ok & ~flagged & ~fill)
        assert s["meta"]["cloud_fraction"] == pytest.approx(
            flagged[bands_ok & ~fill].mean())


# ---------------------------------------------------------------- Major-TOM and EnMAP
def test_majortom_cloud_mask_is_read_and_honestly_zero(shared_data: Path,
                                                       tmp_path: Path) -> None:
    root = shared_data / "majortom_s2l2a"
    _, items = discover(root)
    assert len(items) == 2
    for item in items:
        mod = item.modalities["s2"]
        assert [p.name for p, _ in mod.files if "cloud" in p.name] == []  # not a band
        assert mod.quality is not None and mod.quality.kind == "majortom_cloud"
        m = read_quality(mod.quality)
        assert m.flagged.shape == (1068, 1068) and not m.flagged.any()  # our sample: all 0
    # a small crop through the whole build: the fraction is recorded as 0.0, not absent
    product = items[0].meta["source"]
    crop = tmp_path / "mt" / Path(product).name
    crop.mkdir(parents=True)
    for f in sorted(Path(product).glob("*.tif")):
        tifffile.imwrite(crop / f.name, read_raster(f).data[0, :128, :128])
    m = _build(tmp_path / "mt", tmp_path / "ds", tile=64)
    samples = _samples(tmp_path / "ds")
    assert m.sample_count == 4 and len(samples) == 4  # type: ignore[attr-defined]
    for s in samples.values():
        assert s["meta"]["cloud_fraction"] == 0.0
        assert s["meta"]["modalities"]["s2"]["quality"]["layout"] == "senseiv2"


def test_majortom_classes_decode() -> None:
    x = np.array([[0, 1, 2, 3, 255]], np.uint8)
    m = decode("majortom_cloud", [Raster(x[None], "cloud_mask.tif")])
    np.testing.assert_array_equal(m.flagged, [[False, True, True, True, False]])
    np.testing.assert_array_equal(m.fill, [[False, False, False, False, True]])


def test_enmap_quality_layers(shared_data: Path) -> None:
    _, items = discover(shared_data / "enmap_hyspecnet")
    for item in items:
        mod = item.modalities["hsi"]
        assert [p.name.rsplit("-", 1)[1] for p, _ in mod.files] == ["SPECTRAL_IMAGE.TIF"]
        assert mod.quality is not None
        assert [p.stem.rsplit("-", 1)[1] for p in mod.quality.files] == [
            "QL_QUALITY_CLOUD", "QL_QUALITY_CLOUDSHADOW"]
        m = read_quality(mod.quality)
        assert m.flagged.shape == (128, 128) and not m.flagged.any()
    one = np.zeros((1, 4, 4), np.uint8)
    other = one.copy()
    one[0, 0, 0] = other[0, 3, 3] = 1
    m = decode("enmap_ql", [Raster(one, "CLOUD.TIF"), Raster(other, "CLOUDSHADOW.TIF")])
    assert m.flagged.sum() == 2 and m.flagged[0, 0] and m.flagged[3, 3]


# ---------------------------------------------------------------- errors
def test_wrong_dtype_names_the_file(sample_data: Path, tmp_path: Path) -> None:
    src = _copy(sample_data / "sentinel2_l1c_scene", tmp_path / "scene")
    write_like(src / "s2_B05.jp2", src / "SCL.tif", np.zeros((192, 192), np.float32))
    with pytest.raises(ValueError, match=r"scene/SCL\.tif: s2_scl mask expected dtype uint8 or "
                                         r"uint16, found float32"):
        _build(src, tmp_path / "ds", tile=96)


def test_wrong_shape_names_the_file(sample_data: Path, tmp_path: Path) -> None:
    src = _copy(sample_data / "sentinel2_l1c_scene", tmp_path / "scene")
    tifffile.imwrite(src / "SCL.tif", np.zeros((10, 10), np.uint8))  # no georeferencing
    with pytest.raises(ValueError, match=r"scene/SCL\.tif: quality mask expected shape "
                                         r"\(384, 384\).*found \(10, 10\)"):
        _build(src, tmp_path / "ds", tile=96)
    with pytest.raises(QualityError, match=r"x_BQA\.tif: landsat_bqa mask expected 1 band, "
                                           r"found 2"):
        decode("landsat_bqa", [Raster(np.zeros((2, 4, 4), np.uint16), "x_BQA.tif")])


def test_mask_must_cover_the_band_grid() -> None:
    m = QualityMask(np.zeros((4, 4), bool), np.zeros((4, 4), bool),
                    Geo(0.0, 40.0, 10.0, 10.0, "EPSG:32633"), "small_mask.tif", "scl")
    with pytest.raises(QualityError, match=r"small_mask\.tif: quality mask .* does not cover"):
        to_grid(m, Geo(0.0, 40.0, 5.0, 5.0, "EPSG:32633"), (10, 10))
    with pytest.raises(QualityError, match=r"small_mask\.tif: quality mask expected CRS"):
        to_grid(m, Geo(0.0, 40.0, 5.0, 5.0, "EPSG:32634"), (8, 8))
    np.testing.assert_array_equal(
        to_grid(m, Geo(0.0, 40.0, 5.0, 5.0, "EPSG:32633"), (8, 8)).flagged.shape, (8, 8))
