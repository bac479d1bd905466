"""``eofm-shard preview`` on real tiles: grid geometry, display bands picked by name (true
colour, SAR false colour, EnMAP nearest wavelengths), the manifest stretch, magenta for
invalid pixels, --bands, zarr input, the JSON sidecar and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.cli import build_parser, main
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.manifest import ModalityInfo, load_manifest
from eofm.data_shards.png import read_png
from eofm.data_shards.preview import (
    BACKGROUND,
    BLOCK_GAP,
    GAP,
    MAGENTA,
    band_stretch,
    choose_display,
    compose,
    preview,
)
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.sensors import get_sensor


def _build(src: Path, out: Path, fmt: str = "wds", **ingest) -> Path:
    build(BuildConfig(str(src), str(out), format=fmt, ingest=IngestOptions(**ingest),
                      progress=False))
    return out


@pytest.fixture(scope="module")
def ben(shared_data: Path, tmp_path_factory) -> Path:
    """BigEarthNet S2+S1 pairs tiled 40 px (54 samples)."""
    return _build(shared_data / "bigearthnet", tmp_path_factory.mktemp("pv") / "ben", tile=40)


@pytest.fixture(scope="module")
def cloudy_landsat(sample_data: Path, tmp_path_factory) -> Path:
    """The bundled Landsat-8 scene, 64 px tiles, BQA clouds folded into ``valid``."""
    return _build(sample_data / "landsat8_scene", tmp_path_factory.mktemp("pv") / "l8",
                  tile=64, cloud_as_nodata=True, resample="nearest")


def _samples(ds: Path, n: int) -> list[dict]:
    out = []
    for s in ShardDataset(ds, shuffle_shards=False, with_meta=True):
        out.append(s)
        if len(out) == n:
            break
    return out


def _stretch(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The documented linear stretch, written independently of the module under test."""
    t = np.clip((v.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return np.floor(t * 255.0 + 0.5).astype(np.uint8)


def _expected_rgb(sample: dict, mod: str, bands: list[str], stats: dict, names: list[str]
                  ) -> np.ndarray:
    chans = [_stretch(sample[mod][names.index(b)], stats[b]["p2"], stats[b]["p98"])
             for b in bands]
    return np.stack(chans, axis=-1)


def _tile(img: np.ndarray, t: dict) -> np.ndarray:
    return img[t["y"]:t["y"] + t["h"], t["x"]:t["x"] + t["w"]]


def test_true_colour_is_b04_b03_b02_stretched_by_the_manifest(ben: Path, tmp_path: Path) -> None:
    out = tmp_path / "s2.png"
    rep = preview(ben, out, samples=6, modality="s2", cols=4)
    img = read_png(out)
    assert img.shape == (GAP + 2 * (40 + GAP), GAP + 4 * (40 + GAP), 3)  # 6 tiles, 4 columns
    assert (rep["width"], rep["height"]) == (img.shape[1], img.shape[0])
    m = load_manifest(ben)
    info = m.modalities["s2"]
    assert rep["modalities"]["s2"]["bands"] == ["B04", "B03", "B02"]
    assert [s["source"] for s in rep["modalities"]["s2"]["stretch"]] == ["p2..p98"] * 3
    samples = _samples(ben, 6)
    assert [t["key"] for t in rep["tiles"]] == [s["__key__"] for s in samples]
    swapped_differs = False
    for t, s in zip(rep["tiles"], samples, strict=True):
        assert (t["row"], t["col"]) == divmod(t["index"], 4)
        assert (t["x"], t["y"]) == (GAP + t["col"] * 42, GAP + t["row"] * 42)
        got = _tile(img, t)
        np.testing.assert_array_equal(
            got, _expected_rgb(s, "s2", ["B04", "B03", "B02"], info.stats, info.bands))
        swapped = _expected_rgb(s, "s2", ["B02", "B03", "B04"], info.stats, info.bands)
        swapped_differs |= not np.array_equal(got, swapped)
    assert swapped_differs  # the check above would catch a B02/B03/B04 order
    # the dark frame and gaps are untouched
    assert (img[:GAP] == BACKGROUND).all() and (img[:, 42:44] == BACKGROUND).all()
    # label names for the multi-label tiles
    assert rep["tiles"][0]["label_names"] == sorted(rep["tiles"][0]["label_names"],
                                                   key=m.labels.classes.index)
    assert set(rep["tiles"][0]["label_names"]) == set(samples[0]["meta"]["label_names"])


def test_every_modality_one_block_paired_by_key_and_sar_false_colour(ben: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "both.png"
    rep = preview(ben, out, samples=5, cols=3)
    img = read_png(out)
    block = 2 * (40 + GAP)  # 5 tiles on 3 columns: 2 rows per block
    assert img.shape == (GAP + block + (BLOCK_GAP - GAP) + block, GAP + 3 * 42, 3)
    samples = _samples(ben, 5)
    keys = [s["__key__"] for s in samples]
    assert [t["key"] for t in rep["tiles"]] == keys + keys  # s2 block, then s1, same keys
    assert [t["modality"] for t in rep["tiles"]] == ["s2"] * 5 + ["s1"] * 5
    s1 = rep["modalities"]["s1"]
    assert s1["mode"] == "SAR false colour" and s1["bands"] == ["VV", "VH", "VV-VH"]
    st = load_manifest(ben).modalities["s1"].stats
    # the VV-VH channel has no manifest statistics: p2..p98 of the shown pixels
    diff = np.concatenate([(s["s1"][0].astype(np.float64) - s["s1"][1]).ravel()
                           for s in samples])
    lo, hi = np.percentile(diff, [2, 98])
    assert s1["stretch"][2]["low"] == pytest.approx(lo) and s1["stretch"][2]["high"] == \
        pytest.approx(hi)
    for t, s in zip(rep["tiles"][5:], samples, strict=True):
        vv, vh = s["s1"][0], s["s1"][1]
        want = np.stack([_stretch(vv, st["VV"]["p2"], st["VV"]["p98"]),
                         _stretch(vh, st["VH"]["p2"], st["VH"]["p98"]),
                         _stretch(vv.astype(np.float64) - vh, lo, hi)], axis=-1)
        assert t["y"] == GAP + block + (BLOCK_GAP - GAP) + t["row"] * 42
        np.testing.assert_array_equal(_tile(img, t), want)


def test_invalid_pixels_are_magenta_and_cloud_fraction_reported(cloudy_landsat: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "l8.png"
    rep = preview(cloudy_landsat, out, samples=8, cols=4)
    assert rep["modalities"]["landsat"]["bands"] == ["B4", "B3", "B2"]  # red, green, blue
    img = read_png(out)
    samples = _samples(cloudy_landsat, 8)
    st = load_manifest(cloudy_landsat).modalities["landsat"]
    n_bad = 0
    for t, s in zip(rep["tiles"], samples, strict=True):
        valid = s["landsat_valid"]
        got = _tile(img, t)
        assert (got[~valid] == MAGENTA).all()
        want = _expected_rgb(s, "landsat", ["B4", "B3", "B2"], st.stats, st.bands)
        np.testing.assert_array_equal(got[valid], want[valid])
        n_bad += int((~valid).sum())
        assert t["cloud_fraction"] == s["meta"]["cloud_fraction"]
    assert n_bad > 100  # real BQA clouds were drawn


def test_enmap_shows_bands_nearest_650_560_470_nm(shared_data: Path, tmp_path: Path) -> None:
    cube = sorted(p for p in (shared_data / "enmap_hyspecnet").iterdir() if p.is_dir())[0]
    src = tmp_path / "enmap" / cube.name
    shutil.copytree(cube, src)
    ds = _build(tmp_path / "enmap", tmp_path / "enmap_ds", tile=64)
    rep = preview(ds, tmp_path / "hsi.png", samples=4)
    info = load_manifest(ds).modalities["hsi"]
    sensor = get_sensor("enmap_hsi")
    with_data = [b for b in sensor.bands if info.stats[b.name]["count"] > 0]
    want = [min(with_data, key=lambda b: abs(b.center_wavelength_nm - nm)).name
            for nm in (650, 560, 470)]
    hsi = rep["modalities"]["hsi"]
    assert hsi["bands"] == want and hsi["mode"].startswith("hyperspectral")
    for nm, got in zip((650, 560, 470), hsi["wavelengths_nm"], strict=True):
        assert abs(got - nm) < 10
    img = read_png(tmp_path / "hsi.png")
    s = _samples(ds, 1)[0]
    t = rep["tiles"][0]
    ok = s["hsi_valid"]
    np.testing.assert_array_equal(_tile(img, t)[ok],
                                  _expected_rgb(s, "hsi", want, info.stats, info.bands)[ok])


@pytest.mark.parametrize("sensor", ["landsat8_c2l2", "landsat9_c2l2"])
def test_optical_bands_not_named_red_green_blue_show_nearest_650_560_470_nm(sensor: str
                                                                           ) -> None:
    """Landsat Level-2's SR_B4/SR_B3/SR_B2 are described "red surface reflectance" etc., not
    named red/green/blue: true colour comes by wavelength, not the grey coastal band SR_B1."""
    bands = get_sensor(sensor).band_names
    stats = {b: {"count": 10} for b in bands}
    info = ModalityInfo(sensor=sensor, bands=bands, dtype="uint16", shape=[len(bands), 8, 8],
                        nodata=[0] * len(bands), gsd_m=30.0, stats=stats)
    d = choose_display("landsat", info)
    assert [c.plus for c in d.channels] == ["SR_B4", "SR_B3", "SR_B2"]
    assert d.mode == "true colour (nearest 650/560/470 nm)"
    # a band without data is passed over; too few colour bands left: grey
    stats["SR_B3"] = {"count": 0}
    assert choose_display("landsat", info).mode == "grey (first band)"


def test_bands_override_and_its_errors(ben: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "nir.png"
    assert main(["preview", str(ben), "--out", str(out), "--modality", "s2", "--samples", "3",
                 "--bands", "b8,B4,b03"]) == 0  # aliases and case resolve to canonical names
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["modalities"]["s2"]["bands"] == ["B08", "B04", "B03"]
    info = load_manifest(ben).modalities["s2"]
    s = _samples(ben, 1)[0]
    np.testing.assert_array_equal(
        _tile(read_png(out), rep["tiles"][0]),
        _expected_rgb(s, "s2", ["B08", "B04", "B03"], info.stats, info.bands))
    capsys.readouterr()
    assert main(["preview", str(ben), "--out", str(out), "--modality", "s2",
                 "--bands", "B08,B99,B03"]) == 2
    err = capsys.readouterr().err
    assert "'B99'" in err and "B01, B02, B03" in err and "B12" in err
    assert main(["preview", str(ben), "--out", str(out), "--modality", "s2",
                 "--bands", "B08,B04"]) == 2
    assert "expected 1 (grey) or 3" in capsys.readouterr().err
    assert main(["preview", str(ben), "--out", str(out), "--bands", "VV"]) == 2  # two shown
    assert "--modality" in capsys.readouterr().err
    assert main(["preview", str(ben), "--out", str(out), "--samples", "2",
                 "--bands", "s1=VH", "--bands", "s2=B04,B03,B02"]) == 0
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["modalities"]["s1"]["bands"] == ["VH"]
    assert rep["modalities"]["s1"]["mode"] == "bands override (grey)"


def test_no_display_band_falls_back_to_first_band_in_grey(shared_data: Path,
                                                         tmp_path: Path) -> None:
    ds = _build(shared_data / "bigearthnet", tmp_path / "nir", tile=60,
                bands={"s2": ["B11", "B08"]})
    rep = preview(ds, tmp_path / "grey.png", samples=2, modality="s2")
    assert rep["modalities"]["s2"]["bands"] == ["B11"]
    img = read_png(tmp_path / "grey.png")
    info = load_manifest(ds).modalities["s2"]
    s = _samples(ds, 1)[0]
    grey = _stretch(s["s2"][0], info.stats["B11"]["p2"], info.stats["B11"]["p98"])
    np.testing.assert_array_equal(_tile(img, rep["tiles"][0]), np.stack([grey] * 3, -1))


def test_zarr_input_gives_the_same_sheet(ben: Path, shared_data: Path, tmp_path: Path) -> None:
    z = _build(shared_data / "bigearthnet", tmp_path / "ben.zarr", fmt="zarr", tile=40)
    a = preview(ben, tmp_path / "wds.png", samples=9, cols=5)
    b = preview(z, tmp_path / "zarr.png", samples=9, cols=5)
    np.testing.assert_array_equal(read_png(tmp_path / "wds.png"), read_png(tmp_path / "zarr.png"))
    assert [t["key"] for t in a["tiles"]] == [t["key"] for t in b["tiles"]]
    assert [t.get("label_names") for t in a["tiles"]] == [t.get("label_names")
                                                          for t in b["tiles"]]


def test_cli_prints_and_writes_sidecar_in_grid_order(cloudy_landsat: Path, tmp_path: Path,
                                                     capsys) -> None:
    out = tmp_path / "sub" / "sheet.png"
    assert main(["preview", str(cloudy_landsat), "--out", str(out), "--samples", "5",
                 "--cols", "2", "--size", "16"]) == 0
    text = capsys.readouterr().out
    side = json.loads((tmp_path / "sub" / "sheet.json").read_text())
    keys = [s["__key__"] for s in _samples(cloudy_landsat, 5)]
    assert [t["key"] for t in side["tiles"]] == keys
    assert [(t["row"], t["col"]) for t in side["tiles"]] == [(0, 0), (0, 1), (1, 0), (1, 1),
                                                            (2, 0)]
    assert read_png(out).shape == (GAP + 3 * (16 + GAP), GAP + 2 * (16 + GAP), 3)
    assert "B4" in text and "p2..p98" in text and all(k in text for k in keys)
    assert text.index(keys[0]) < text.index(keys[1]) < text.index(keys[4])
    assert side["modalities"]["landsat"]["stretch"][0]["band"] == "B4"


def test_size_resamples_nearest_and_smaller_tiles_are_padded() -> None:
    big = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    small = np.full((2, 3, 3), 200, np.uint8)
    sheet, placed = compose({"a": [big, small]}, cols=2)
    assert sheet.shape == (GAP + 4 + GAP, GAP + 2 * (6 + GAP), 3)
    x = placed[1].x
    assert (sheet[GAP:GAP + 2, x:x + 3] == 200).all()
    assert (sheet[GAP + 2:GAP + 4, x:x + 6] == BACKGROUND).all()  # padding below
    assert (sheet[GAP:GAP + 2, x + 3:x + 6] == BACKGROUND).all()  # padding right
    sheet, placed = compose({"a": [big]}, cols=2, size=3)
    rows, cols = [0, 2, 3], [1, 3, 5]  # floor((i + 0.5) * H / 3), floor((i + 0.5) * W / 3)
    np.testing.assert_array_equal(sheet[GAP:GAP + 3, GAP:GAP + 3], big[np.ix_(rows, cols)])


def test_stretch_falls_back_to_nearest_percentiles_then_min_max() -> None:
    full = {"p1": 1.0, "p2": 2.0, "p50": 5.0, "p98": 8.0, "p99": 9.0, "min": 0.0, "max": 10.0}
    assert band_stretch("X", full).source == "p2..p98"
    s = band_stretch("X", {"p1": 1.0, "p50": 5.0, "p99": 9.0, "min": 0.0, "max": 10.0})
    assert (s.low, s.high, s.source) == (1.0, 9.0, "p1..p99")
    s = band_stretch("X", {"p2": None, "p98": None, "min": 0.0, "max": 10.0})
    assert (s.low, s.high, s.source) == (0.0, 10.0, "min..max")
    assert band_stretch("X", {"min": None, "max": None}) is None


def test_errors_name_what_was_expected(ben: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "x.png")
    cases = [
        (["preview", str(tmp_path / "nope"), "--out", out], "no such dataset"),
        (["preview", str(tmp_path), "--out", out], "no manifest found"),
        (["preview", str(ben), "--out", out, "--modality", "hsi"], "'hsi' is not in the dataset (it has s2, s1)"),
        (["preview", str(ben), "--out", out, "--samples", "0"], "--samples: expected a positive integer, got 0"),
        (["preview", str(ben), "--out", out, "--cols", "-1"], "--cols: expected a positive integer, got -1"),
        (["preview", str(ben), "--out", str(tmp_path / "x.jpg")], "expected a .png file name"),
        (["preview", str(ben), "--out", out, "--size", "100000"],  # was a 28 GiB MemoryError
         "--size: expected at most 2048 pixels per tile"),
        (["preview", str(ben), "--out", out, "--bands", "s2=B04,B03,B02", "--bands",
          "s2=B08,B04,B03"], "--bands: modality 's2' given twice"),
        (["preview", str(ben), "--out", str(tmp_path / "isdir.png")],
         "isdir.png: is a folder; expected a .png"),  # left .isdir.png.tmp behind
    ]
    (tmp_path / "isdir.png").mkdir()
    for argv, msg in cases:
        assert main(argv) == 2, argv
        assert msg in capsys.readouterr().err, argv
    assert not (tmp_path / "x.png").exists() and not list(tmp_path.glob(".*.tmp"))


def test_an_unknown_sensor_names_the_manifest_and_its_field(cloudy_landsat: Path,
                                                            tmp_path: Path, capsys) -> None:
    """A manifest whose sensor id is not registered (hand-edited, or a user sensor whose YAML
    is not given): preview said only "unknown sensor 'nosuch'; known sensors: ..." naming no
    file or field."""
    ds = tmp_path / "ds"
    shutil.copytree(cloudy_landsat, ds)
    path = ds / "manifest.json"
    d = json.loads(path.read_text())
    d["modalities"]["landsat"]["sensor"] = "nosuch"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError) as e:
        preview(ds, tmp_path / "x.png", samples=2)
    assert str(e.value).startswith(f"{path}: modalities.landsat.sensor: unknown sensor "
                                   "'nosuch'; known sensors: ")
    assert "eofm-shard build --sensors-yaml FILE" in str(e.value)
    assert main(["preview", str(ds), "--out", str(tmp_path / "x.png")]) == 2
    assert f"error: {path}: modalities.landsat.sensor: unknown" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_every_preview_option_has_help() -> None:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    for a in action.choices["preview"]._actions:
        if a.dest not in ("help", "dataset"):
            assert a.help, f"preview {a.option_strings} has no help text"
