"""Radiometric and band-correctness audit: defects a user would hit silently.

Each test failed before its fix (see the audit report):

- Landsat Collection 2 Level-2 files (``*_SR_B4.TIF``, ``*_ST_B10.TIF``) were read as Level-1
  DN bands B4/B10 (Level-2 has another scale and offset, and ST_B10 is Kelvin-coded).
- A GeoTIFF's own nodata value (``GDAL_NODATA``) was ignored when the sensor declares another
  (or none): -9999 fill in a dB raster went into the statistics as backscatter.
- An encoder's band matched a dataset band by name alone across sensors: a Sentinel-2 contract's
  B05 (red edge, 704 nm) took Landsat's B5 (NIR, 865 nm) through Landsat's ``B05`` alias.
- Sentinel-1 rasters in linear power (not dB) were ingested as dB without a word.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestError, IngestOptions
from eofm.data_shards.layouts import discover
from eofm.data_shards.manifest import load_manifest
from eofm.data_shards.sensors import get_sensor

L2_STEM = "LC08_L2SP_044034_20210508_20210517_02_T1"
UTM_KEYS = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)


def _geotiff(path: Path, data: np.ndarray, *, px: float = 30.0, nodata: str | None = None
             ) -> None:
    """``data`` (H, W) as a GeoTIFF on a UTM grid of ``px`` m pixels, optional GDAL_NODATA."""
    extra = [(33550, "d", 3, (px, px, 0.0), True),
             (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
             (34735, "H", len(UTM_KEYS), UTM_KEYS, True)]
    if nodata is not None:
        extra.append((42113, "s", len(nodata) + 1, nodata, True))
    tifffile.imwrite(path, data, extratags=extra)


# ------------------------------------------------------------------ Landsat C2 Level-2
def _landsat_l2(root: Path) -> Path:
    d = root / L2_STEM
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 8):  # SR: 7273 DN = 0 reflectance (x 2.75e-5 - 0.2)
        _geotiff(d / f"{L2_STEM}_SR_B{i}.TIF", rng.integers(7300, 20000, (16, 16), np.uint16))
    _geotiff(d / f"{L2_STEM}_ST_B10.TIF", rng.integers(40000, 45000, (16, 16), np.uint16))
    _geotiff(d / f"{L2_STEM}_QA_PIXEL.TIF", np.full((16, 16), 21824, np.uint16))
    _geotiff(d / f"{L2_STEM}_ST_QA.TIF", np.full((16, 16), 300, np.int16))
    return d


def test_landsat_c2_level2_is_not_read_as_level1(tmp_path: Path) -> None:
    _landsat_l2(tmp_path / "in")
    _, items = discover(tmp_path / "in")
    src = items[0].modalities["landsat"]
    names = [b for _, bands in src.files for b in bands]
    assert src.sensor == "landsat8_c2l2", f"Level-2 files read as {src.sensor} bands {names}"
    assert sorted(names) == sorted([*(f"SR_B{i}" for i in range(1, 8)), "ST_B10"])


def test_landsat_c2_level2_registry_scale_and_offset() -> None:
    for sid in ("landsat8_c2l2", "landsat9_c2l2"):
        s = get_sensor(sid)
        sr, st = s.band("SR_B4"), s.band("ST_B10")
        assert (sr.scale, sr.offset, sr.nodata) == (2.75e-5, -0.2, 0.0)
        assert (st.scale, st.offset, st.nodata) == (0.00341802, 149.0, 0.0)
        # L1 names never resolve to a Level-2 band (another product, another scaling)
        for l1 in ("B4", "B04", "B10"):
            with pytest.raises(ValueError, match="unknown band"):
                s.band(l1)
        assert s.processing_level != get_sensor("landsat8_oli_tirs").processing_level
    # and the Level-1 sensor refuses Level-2 names
    with pytest.raises(ValueError, match="unknown band"):
        get_sensor("landsat8_oli_tirs").band("SR_B4")


def test_landsat_level2_mixed_with_level1_files_is_refused(tmp_path: Path) -> None:
    d = _landsat_l2(tmp_path / "in")
    _geotiff(d / "LC08_L1TP_044034_20210508_20210517_02_T1_B4.TIF",
             np.full((16, 16), 9000, np.uint16))
    with pytest.raises(ValueError, match="SR_B"):
        discover(tmp_path / "in")


def test_landsat_level2_build_records_level2_physics(tmp_path: Path) -> None:
    _landsat_l2(tmp_path / "in")
    build(BuildConfig(str(tmp_path / "in"), str(tmp_path / "out"), progress=False,
                      ingest=IngestOptions()))
    m = load_manifest(tmp_path / "out")
    info = m.modalities["landsat"]
    assert info.sensor == "landsat8_c2l2"
    assert "ST_B10" in info.bands and "B10" not in info.bands


# ------------------------------------------------------------------ file nodata
def test_geotiff_nodata_that_the_sensor_does_not_declare_is_nodata(tmp_path: Path) -> None:
    """S1 dB with -9999 fill declared in GDAL_NODATA: the fill must not reach the statistics."""
    d = tmp_path / "in" / "scene"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for pol in ("VV", "VH"):
        x = rng.uniform(-25, -5, (20, 20)).astype(np.float32)
        x[:4] = -9999.0
        _geotiff(d / f"{pol}.tif", x, px=10.0, nodata="-9999")
    build(BuildConfig(str(tmp_path / "in"), str(tmp_path / "out"), progress=False,
                      ingest=IngestOptions(nan_policy="nodata")))
    st = load_manifest(tmp_path / "out").modalities["s1"].stats
    for pol in ("VV", "VH"):
        assert st[pol]["min"] > -30, f"{pol}: -9999 fill counted as backscatter: {st[pol]}"
        assert st[pol]["nodata_fraction"] == pytest.approx(0.2)


def test_geotiff_nodata_refused_under_the_default_nan_policy(tmp_path: Path) -> None:
    d = tmp_path / "in" / "scene"
    d.mkdir(parents=True)
    for pol in ("VV", "VH"):
        x = np.full((20, 20), -12.0, np.float32)
        x[0, 0] = -9999.0
        _geotiff(d / f"{pol}.tif", x, px=10.0, nodata="-9999")
    with pytest.raises(IngestError, match="nodata"):
        build(BuildConfig(str(tmp_path / "in"), str(tmp_path / "out"), progress=False,
                          ingest=IngestOptions()))


def test_geotiff_nodata_other_than_the_sensors_becomes_the_sensors(tmp_path: Path) -> None:
    """Integer bands: pixels at the file's nodata (65535) are stored at the band's nodata (0)."""
    d = tmp_path / "in" / "scene"
    d.mkdir(parents=True)
    for b in ("B02", "B03", "B04", "B8A", "B11", "B12"):
        x = np.full((20, 20), 1500, np.uint16)
        x[:, :5] = 65535
        _geotiff(d / f"{b}.tif", x, px=10.0, nodata="65535")
    build(BuildConfig(str(tmp_path / "in"), str(tmp_path / "out"), progress=False,
                      ingest=IngestOptions(max_nodata=0.5)))
    st = load_manifest(tmp_path / "out").modalities["s2"].stats
    assert st["B02"]["max"] == 1500 and st["B02"]["nodata_fraction"] == pytest.approx(0.25)


def test_bundled_enmap_nodata_tag_agrees_with_the_registry(shared_data: Path) -> None:
    from eofm.data_shards.raster_io import read_raster

    f = next((shared_data / "enmap_hyspecnet").rglob("*SPECTRAL_IMAGE.TIF"), None)
    if f is None:
        pytest.skip("no EnMAP cube in ../shared/data")
    r = read_raster(f)
    assert r.nodata == get_sensor("enmap_hsi").bands[0].nodata == -32768


# ------------------------------------------------------------------ names across sensors
def _data(sensor: str, bands: list[str]) -> SimpleNamespace:
    s = get_sensor(sensor)
    stats = {b: {"mean": 1000.0, "std": 100.0, "p2": 500.0, "p98": 1500.0} for b in bands}

    def wavelengths(names):
        t = [s.band(b) for b in names]
        return [b.center_wavelength_nm for b in t], [b.bandwidth_nm for b in t]

    return SimpleNamespace(bands=bands, sensor=sensor, sensors=[sensor], stats=stats,
                           nodata=[0.0] * len(bands), size=(32, 32), gsd=30.0, units="DN",
                           processing_level=s.processing_level, wavelengths=wavelengths)


def _s2_contract(bands: list[str]):
    from eofm.models.contract import InputContract

    s2 = get_sensor("s2_l1c")
    t = [s2.band(b) for b in bands]
    return InputContract(sensors=("s2_l1c",), bands=tuple(bands),
                         wavelengths=[b.center_wavelength_nm for b in t],
                         bandwidths=[b.bandwidth_nm for b in t], units="DN",
                         processing_level="L1C", nodata=0.0, normalisation="meanstd",
                         stats={b: {"mean": 1000.0, "std": 100.0} for b in bands},
                         input_size=(32, 32), patch_size=8)


def test_same_name_other_meaning_across_sensors_is_refused() -> None:
    from eofm.finetune.features import apply_contract

    data = _data("landsat8_oli_tirs", [f"B{i}" for i in range(1, 8)])
    contract = _s2_contract(["B02", "B03", "B04", "B05"])  # B05: red edge 704 nm
    with pytest.raises(ValueError, match="B05"):
        apply_contract(data, contract, override=True)


def test_same_name_same_meaning_across_sensors_still_matches() -> None:
    from eofm.finetune.features import apply_contract

    data = _data("landsat8_oli_tirs", [f"B{i}" for i in range(1, 8)])
    pre = apply_contract(data, _s2_contract(["B02", "B03", "B04"]), override=True)
    assert pre.source_bands == ["B2", "B3", "B4"] and pre.index == [1, 2, 3]


def test_b8a_aliases_and_case_resolve_within_one_sensor() -> None:
    for sid in ("s2_l1c", "s2_l2a"):
        s = get_sensor(sid)
        assert s.canonical("b08a") == s.canonical("B8a") == "B8A"
        assert s.canonical("B8") == "B08" != s.canonical("B8A")


# ------------------------------------------------------------------ S1 units
def test_sentinel1_linear_power_is_flagged(tmp_path: Path, caplog) -> None:
    d = tmp_path / "in" / "scene"
    d.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for pol, level in (("VV", 0.1), ("VH", 0.02)):  # sigma0 in linear power, not dB
        _geotiff(d / f"{pol}.tif", rng.gamma(4.0, level / 4, (20, 20)).astype(np.float32),
                 px=10.0)
    with caplog.at_level(logging.WARNING):
        build(BuildConfig(str(tmp_path / "in"), str(tmp_path / "out"), progress=False,
                          ingest=IngestOptions()))
    said = [r.getMessage() for r in caplog.records if "linear" in r.getMessage()]
    assert said and "10*log10" in said[0]
    assert load_manifest(tmp_path / "out").extra["counters"].get("s1_looks_linear") == 1


def test_sentinel1_db_is_not_flagged(shared_data: Path, tmp_path: Path, caplog) -> None:
    folders = sorted((shared_data / "ssl4eo_s12" / "s1").glob("*/*/"))
    if not folders:
        pytest.skip("no SSL4EO-S12 S1 in ../shared/data")
    from eofm.data_shards.ingest import looks_linear_power
    from eofm.data_shards.raster_io import read_raster

    x = np.concatenate([read_raster(folders[0] / f"{p}.tif").data for p in ("VV", "VH")])
    assert not looks_linear_power(x, [None, None])
    assert looks_linear_power(10 ** (x / 10), [None, None])


def test_units_label_states_the_offset() -> None:
    """The contract's units say how raw becomes physical: Level-2's -0.2 offset included."""
    from eofm.finetune.datasets import LabelledData

    assert get_sensor("s2_l2a").band("B02").units_label == "DN (x 0.0001 = physical)"
    assert get_sensor("landsat8_oli_tirs").band("B4").units_label == "DN"
    sr = get_sensor("landsat8_c2l2").band("SR_B4")
    assert sr.units_label == "DN (x 2.75e-05 -0.2 = physical)"
    data = SimpleNamespace(sensor="landsat8_c2l2", bands=["SR_B2", "SR_B3", "SR_B4"])
    assert LabelledData.units.fget(data) == sr.units_label
