"""Tests for eofm.data_shards.sensors: built-in tables, look-ups, validation and YAML round trips."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from eofm.data_shards import sensors as S
from eofm.data_shards.sensors import (
    Band,
    Sensor,
    get_sensor,
    list_sensors,
    load_sensors_yaml,
    register_sensor,
    resolve_band_names,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
S2_L1C_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                "B11", "B12"]
EXPECTED_COUNTS = {"s2_l1c": 13, "s2_l2a": 12, "s1_grd": 2, "landsat8_oli_tirs": 11,
                   "landsat9_oli_tirs": 11, "enmap_hsi": 224, "rgb": 3}


@pytest.fixture
def restore_registry():
    saved, origin = dict(S._REGISTRY), dict(S._ORIGIN)
    yield
    S._REGISTRY.clear()
    S._REGISTRY.update(saved)
    S._ORIGIN.clear()
    S._ORIGIN.update(origin)


def _band(name: str, wl: float = 500.0, bw: float = 10.0, **kw) -> Band:
    return Band(name=name, center_wavelength_nm=wl, bandwidth_nm=bw, gsd_m=10.0, units="DN", **kw)


# ---------------------------------------------------------------- built-in tables


def test_every_builtin_sensor_loads_with_expected_band_count_and_dtype():
    assert set(EXPECTED_COUNTS) <= set(list_sensors())
    assert list_sensors() == sorted(list_sensors())
    dtypes = {"s2_l1c": "uint16", "s2_l2a": "uint16", "s1_grd": "float32", "rgb": "uint8",
              "landsat8_oli_tirs": "uint16", "landsat9_oli_tirs": "uint16", "enmap_hsi": "int16"}
    modalities = {"s2_l1c": "s2", "s2_l2a": "s2", "s1_grd": "s1", "rgb": "rgb", "enmap_hsi": "hsi",
                  "landsat8_oli_tirs": "landsat", "landsat9_oli_tirs": "landsat"}
    for sid, n in EXPECTED_COUNTS.items():
        s = get_sensor(sid)
        assert s.id == sid and len(s.bands) == n == len(s.band_names)
        assert s.dtype == dtypes[sid] and s.modality == modalities[sid]
        assert all(isinstance(b, Band) for b in s.bands) and isinstance(s.bands, tuple)


def test_canonical_band_order():
    assert get_sensor("s2_l1c").band_names == S2_L1C_ORDER
    assert get_sensor("s2_l2a").band_names == [b for b in S2_L1C_ORDER if b != "B10"]
    assert get_sensor("s1_grd").band_names == ["VV", "VH"]
    assert get_sensor("landsat8_oli_tirs").band_names == [f"B{i}" for i in range(1, 12)]
    assert get_sensor("enmap_hsi").band_names == [f"B{i:03d}" for i in range(1, 225)]
    assert get_sensor("rgb").band_names == ["R", "G", "B"]


def test_sentinel2_values_match_esa_s2a_table():
    s2 = get_sensor("s2_l1c")
    table = {"B01": (442.7, 21, 60), "B02": (492.4, 66, 10), "B03": (559.8, 36, 10),
             "B04": (664.6, 31, 10), "B05": (704.1, 15, 20), "B06": (740.5, 15, 20),
             "B07": (782.8, 20, 20), "B08": (832.8, 106, 10), "B8A": (864.7, 21, 20),
             "B09": (945.1, 20, 60), "B10": (1373.5, 31, 60), "B11": (1613.7, 91, 20),
             "B12": (2202.4, 175, 20)}
    for name, (wl, bw, gsd) in table.items():
        b = s2.band(name)
        assert (b.center_wavelength_nm, b.bandwidth_nm, b.gsd_m) == (wl, bw, gsd)
        assert (b.scale, b.offset, b.nodata, b.hist_range, b.units) == (1e-4, 0.0, 0.0, None, "DN")
        if name != "B10":  # L2A shares the table
            assert get_sensor("s2_l2a").band(name) == b
    for sid in ("s2_l1c", "s2_l2a"):  # the processing-baseline 04.00 offset is documented
        d = get_sensor(sid).description
        assert "2022-01-25" in d and "1000" in d and "04.00" in d


def test_landsat_tables():
    l8, l9 = get_sensor("landsat8_oli_tirs"), get_sensor("landsat9_oli_tirs")
    assert l8.bands == l9.bands and l8.id != l9.id
    assert l8.band("B8").gsd_m == 15.0 and "panchromatic" in l8.band("B8").description
    assert l8.band("B10").gsd_m == l8.band("B11").gsd_m == 100.0
    assert all(l8.band(f"B{i}").gsd_m == 30.0 for i in (1, 2, 3, 4, 5, 6, 7, 9))
    # USGS band-pass: B4 red 636-673 nm, B10 10.60-11.19 um
    b4, b10 = l8.band("B4"), l8.band("B10")
    assert b4.center_wavelength_nm - b4.bandwidth_nm / 2 == pytest.approx(636)
    assert b4.center_wavelength_nm + b4.bandwidth_nm / 2 == pytest.approx(673)
    assert (b10.center_wavelength_nm - b10.bandwidth_nm / 2,
            b10.center_wavelength_nm + b10.bandwidth_nm / 2) == pytest.approx((10600, 11190))
    assert all(b.nodata == 0 and b.units == "DN" for b in l8.bands)


def test_sar_stand_in_wavelength_and_distinct_polarisation_codes():
    s1 = get_sensor("s1_grd")
    vv, vh = s1.band("VV"), s1.band("VH")
    c_band_nm = 299_792_458 / 5.405e9 * 1e9
    assert vv.center_wavelength_nm == pytest.approx(c_band_nm, rel=1e-9)
    assert vv.center_wavelength_nm == pytest.approx(S.SAR_C_BAND_WAVELENGTH_NM, abs=0.01)
    assert (vv.center_wavelength_nm, vv.bandwidth_nm) != (vh.center_wavelength_nm, vh.bandwidth_nm)
    assert (vv.bandwidth_nm, vh.bandwidth_nm) == (S.SAR_POLARISATION_CODES["VV"],
                                                  S.SAR_POLARISATION_CODES["VH"])
    for b in (vv, vh):
        assert b.units == "dB" and b.nodata is None and b.hist_range == (-60.0, 40.0)
        assert b.gsd_m == 10.0 and b.scale == 1.0


def test_wavelengths_inside_plausible_ranges():
    # (low, high) bounds that the whole band-pass [centre - bw/2, centre + bw/2] must respect
    optical = {"s2_l1c": (400, 2400), "s2_l2a": (400, 2400), "rgb": (400, 720),
               "enmap_hsi": (400, 2460)}
    for sid, (lo, hi) in optical.items():
        for b in get_sensor(sid).bands:
            assert lo < b.center_wavelength_nm - b.bandwidth_nm / 2, (sid, b.name)
            assert b.center_wavelength_nm + b.bandwidth_nm / 2 < hi, (sid, b.name)
    for b in get_sensor("landsat8_oli_tirs").bands:
        lo, hi = (10_000, 13_000) if b.name in ("B10", "B11") else (400, 2400)
        assert lo < b.center_wavelength_nm < hi and 0 < b.bandwidth_nm < 1100
    for sid in list_sensors():  # a wavelength-conditioned tokenizer must tell every band apart
        pairs = [(b.center_wavelength_nm, b.bandwidth_nm) for b in get_sensor(sid).bands]
        assert len(set(pairs)) == len(pairs), sid


def test_enmap_table_is_physical():
    en = get_sensor("enmap_hsi")
    wl = np.array([b.center_wavelength_nm for b in en.bands])
    fwhm = np.array([b.bandwidth_nm for b in en.bands])
    detector = np.array([b.description.split()[0] for b in en.bands])
    assert set(detector) == {"VNIR", "SWIR"} and (detector == "VNIR").sum() == 91
    vnir, swir = wl[detector == "VNIR"], wl[detector == "SWIR"]
    assert np.all(np.diff(vnir) > 0) and np.all(np.diff(swir) > 0)
    assert 415 < vnir[0] < 425 and 990 < vnir[-1] < 1000  # VNIR 420-1000 nm
    assert 895 < swir[0] < 910 and 2440 < swir[-1] < 2450  # SWIR 900-2450 nm
    steps = np.concatenate([np.diff(vnir), np.diff(swir)])
    steps = steps[steps < 20]  # ignore the two water-vapour gaps in the SWIR
    assert steps.min() > 4 and steps.max() < 13  # 6.5 nm (VNIR) / 10 nm (SWIR) mean sampling
    assert fwhm.min() > 5 and fwhm.max() < 12
    assert wl[0] == pytest.approx(418.416) and wl[-1] == pytest.approx(2445.30)
    for b in en.bands:
        assert (b.gsd_m, b.scale, b.nodata, b.units) == (30.0, 1e-4, -32768.0, "DN")
    assert len(S.ENMAP_HYSPECNET_NODATA_BANDS) == 22
    for name in en.band_names:
        flagged = "nodata in HySpecNet" in en.band(name).description
        assert flagged == (name in S.ENMAP_HYSPECNET_NODATA_BANDS)
    # the all-nodata bands sit in the 1.4 um and 1.9 um water-vapour absorptions
    for name in S.ENMAP_HYSPECNET_NODATA_BANDS:
        w = en.band(name).center_wavelength_nm
        assert 1290 < w < 1520 or 1730 < w < 1970


# Centre wavelengths (nm) of bands 79-102 of a real L2A product, as the EnMAP-Box names them in
# its SRF file (enmapbox/exampledata/enmap_potsdam_srf.geojson, "band N (centre nm)", scene
# ENMAP01-____L2A-DT0000001867_20220724T104526Z_008_V010302): they rise with the band number.
ENMAP_L2A_BANDS_79_102_NM = {
    79: 895.5, 80: 902.3, 81: 903.6, 82: 911.7, 83: 911.9, 84: 919.8, 85: 921.6, 86: 928.0,
    87: 931.5, 88: 936.1, 89: 941.5, 90: 944.2, 91: 951.7, 92: 952.4, 93: 960.5, 94: 961.9,
    95: 968.6, 96: 972.3, 97: 976.8, 98: 982.9, 99: 984.9, 100: 993.1, 101: 993.5, 102: 1004.2}


def test_enmap_bands_are_in_the_l2a_products_wavelength_order():
    """B{k} is the k-th band of an L2A SPECTRAL_IMAGE, which is in wavelength order: the VNIR
    and SWIR detectors' bands interleave in their ~900-1000 nm overlap (not VNIR B001-B091 then
    SWIR B092-B224, which put bands 80-100 up to 50 nm off)."""
    en = get_sensor("enmap_hsi")
    for k, nm in ENMAP_L2A_BANDS_79_102_NM.items():  # scene vs nominal: < 0.5 nm
        assert en.band(f"B{k:03d}").center_wavelength_nm == pytest.approx(nm, abs=0.5), k
    detector = "".join(b.description[0] for b in en.bands)
    assert detector[:79] == "V" * 79 and detector[101:] == "S" * 123
    assert detector[79:101] == "SVVSVSVSVSVSVVSVSVSVVS"  # B080..B101
    wl = [b.center_wavelength_nm for b in en.bands]
    falls = [en.bands[i + 1].name for i in range(223) if wl[i + 1] <= wl[i]]
    assert falls == ["B083", "B101"]  # the two < 0.5 nm VNIR/SWIR near-ties, VNIR first
    for vnir, swir in (("B082", "B083"), ("B100", "B101")):
        a, b = en.band(vnir), en.band(swir)
        assert (a.description, b.description) == ("VNIR", "SWIR")
        assert 0 < a.center_wavelength_nm - b.center_wavelength_nm < 0.5


@pytest.mark.shared_data
def test_enmap_overlap_detectors_match_real_cubes():
    """Over the water of both HySpecNet cubes the VNIR detector reads negative reflectance
    (-55..-234 DN at file positions 77-104), the SWIR ~0 (-16..+3 DN): which file position holds
    which detector's band must match the table's descriptions, near-tie pairs included."""
    tifffile = pytest.importorskip("tifffile")
    cubes = sorted((SHARED / "enmap_hyspecnet").glob("*/*SPECTRAL_IMAGE.TIF"))
    if not cubes:
        pytest.skip("../shared/data/enmap_hyspecnet not available")
    en = get_sensor("enmap_hsi")
    window = range(76, 104)  # B077..B104: the overlap and a few bands either side
    expected = "".join(en.bands[p].description[0] for p in window)
    for path in cubes:
        mean = tifffile.imread(path).reshape(224, -1).astype(np.float64).mean(axis=1)
        seen = "".join("V" if mean[p] < -35 else "S" for p in window)
        assert seen == expected, (path.name, seen, expected)


@pytest.mark.shared_data
def test_enmap_nodata_bands_match_real_hyspecnet_cubes():
    tifffile = pytest.importorskip("tifffile")
    cubes = sorted((SHARED / "enmap_hyspecnet").glob("*/*SPECTRAL_IMAGE.TIF"))
    if not cubes:
        pytest.skip("../shared/data/enmap_hyspecnet not available")
    en = get_sensor("enmap_hsi")
    for path in cubes:
        cube = tifffile.imread(path)
        assert cube.shape[0] == len(en.bands) and cube.dtype == np.dtype(en.dtype)
        nodata = en.bands[0].nodata
        empty = [en.bands[i].name for i in range(cube.shape[0]) if np.all(cube[i] == nodata)]
        assert tuple(empty) == S.ENMAP_HYSPECNET_NODATA_BANDS


@pytest.mark.shared_data
def test_ssl4eo_file_stems_resolve():
    for modality, sid, n in (("s2c", "s2_l1c", 13), ("s2a", "s2_l2a", 12), ("s1", "s1_grd", 2)):
        folders = sorted((SHARED / "ssl4eo_s12" / modality).glob("*/*"))
        if not folders:
            pytest.skip("../shared/data/ssl4eo_s12 not available")
        stems = sorted(p.stem for p in folders[0].glob("*.tif"))
        names = resolve_band_names(get_sensor(sid), stems)
        assert len(names) == n and set(names) == set(get_sensor(sid).band_names)


# ---------------------------------------------------------------- look-ups


def test_alias_resolution_is_case_insensitive():
    s2 = get_sensor("s2_l2a")
    ssl4eo = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12"]
    assert resolve_band_names(s2, ssl4eo) == s2.band_names
    assert [s2.canonical(n) for n in ("B8a", "b8a", " B8A ", "b04", "B4")] == \
        ["B8A", "B8A", "B8A", "B04", "B04"]
    assert s2.band("B1") is s2.band("B01")
    assert get_sensor("landsat8_oli_tirs").canonical("B01") == "B1"
    assert resolve_band_names(get_sensor("rgb"), ["red", "Green", "BLUE"]) == ["R", "G", "B"]
    with pytest.raises(ValueError, match=r"B10.*Valid bands: B01, B02"):
        s2.band("B10")  # L2A has no cirrus band


def test_indices_reports_every_unknown_and_duplicate_at_once():
    s2 = get_sensor("s2_l1c")
    assert s2.indices(["B8a", "B1", "b04"]) == [8, 0, 3]
    with pytest.raises(ValueError) as err:
        s2.indices(["B04", "B13", "B4", "nir", "b01", "B1", "B99"])
    msg = str(err.value)
    for token in ("'B13'", "'nir'", "'B99'", "'B4' repeats 'B04'", "'B1' repeats 'b01'",
                  "s2_l1c", "B8A, B09"):
        assert token in msg
    with pytest.raises(ValueError, match="sequence of band names"):
        s2.indices("B04")


def test_select_reorders_and_keeps_id():
    s2 = get_sensor("s2_l1c")
    sub = s2.select(["B4", "B03", "b2", "B8A"])
    assert sub.id == s2.id and sub.dtype == s2.dtype
    assert sub.band_names == ["B04", "B03", "B02", "B8A"]
    assert sub.bands == (s2.band("B04"), s2.band("B03"), s2.band("B02"), s2.band("B8A"))
    assert sub.canonical("B4") == "B04" and sub.indices(["B8A", "B04"]) == [3, 0]
    with pytest.raises(ValueError, match="B05"):
        sub.band("B05")
    with pytest.raises(ValueError, match="'B13'"):
        s2.select(["B04", "B13"])
    with pytest.raises(ValueError):
        s2.select([])


def test_get_sensor_unknown_lists_known_ids():
    with pytest.raises(ValueError) as err:
        get_sensor("sentinel-3")
    assert "sentinel-3" in str(err.value)
    assert all(sid in str(err.value) for sid in EXPECTED_COUNTS)


# ---------------------------------------------------------------- serialisation


@pytest.mark.parametrize("sid", sorted(EXPECTED_COUNTS))
def test_to_dict_from_dict_round_trip(sid):
    s = get_sensor(sid)
    d = s.to_dict()
    assert Sensor.from_dict(d) == s
    # through YAML text too: plain types only
    again = Sensor.from_dict(yaml.safe_load(yaml.safe_dump(d, sort_keys=False)))
    assert again == s and hash(again) == hash(s)
    for b in s.bands:
        assert Band.from_dict(b.to_dict()) == b


def test_register_and_overwrite(restore_registry):
    s = get_sensor("s2_l1c").select(["B04", "B03", "B02"])
    with pytest.raises(ValueError, match="already registered"):
        register_sensor(s)
    custom = Sensor.from_dict({**s.to_dict(), "id": "s2_rgb_only", "name": "S2 RGB"})
    register_sensor(custom)
    assert get_sensor("s2_rgb_only") == custom and "s2_rgb_only" in list_sensors()
    register_sensor(s, overwrite=True)
    assert get_sensor("s2_l1c").band_names == ["B04", "B03", "B02"]


def test_load_valid_user_yaml(tmp_path, restore_registry):
    path = tmp_path / "my_sensors.yaml"
    path.write_text(
        "sensors:\n"
        "  - id: planet_sr\n"
        "    name: PlanetScope SR\n"
        "    modality: planet\n"
        "    dtype: uint16\n"
        "    band_defaults: {gsd_m: 3, units: DN, scale: 1e-4, nodata: 0}\n"
        "    bands:\n"
        "      - {name: blue, center_wavelength_nm: 490, bandwidth_nm: 50, aliases: [b1]}\n"
        "      - {name: nir, center_wavelength_nm: 865, bandwidth_nm: 40, gsd_m: 3.7}\n"
    )
    (loaded,) = load_sensors_yaml(path)
    assert get_sensor("planet_sr") is loaded
    assert loaded.band("B1").scale == 1e-4 and loaded.band("nir").gsd_m == 3.7
    assert loaded.band("blue").nodata == 0.0 and loaded.bands[1].aliases == ()
    assert load_sensors_yaml(path) == [loaded]  # the identical definition again: fine
    changed = tmp_path / "changed.yaml"
    changed.write_text(path.read_text().replace("nodata: 0", "nodata: 1"))
    with pytest.raises(ValueError, match=r"sensors\[0\]\.id: 'planet_sr' is already registered "
                       r"\(from .*my_sensors\.yaml\) with another definition \(differs in "
                       r"bands\[0\]\.nodata \(0\.0 vs 1\.0\); bands\[1\]\.nodata"):
        load_sensors_yaml(changed)
    assert get_sensor("planet_sr") is loaded
    assert load_sensors_yaml(str(changed), overwrite=True)[0].bands[0].nodata == 1.0


def test_user_yaml_reports_all_problems_naming_the_file(tmp_path, restore_registry):
    path = tmp_path / "broken_sensors.yaml"
    path.write_text(
        "sensors:\n"
        "  - id: ok_one\n"
        "    name: fine\n"
        "    modality: x\n"
        "    dtype: uint8\n"
        "    bands: [{name: A, center_wavelength_nm: 500, bandwidth_nm: 10, gsd_m: 1, units: DN}]\n"
        "  - id: bad_one\n"
        "    name: broken\n"
        "    modality: x\n"
        "    dtype: uint17\n"
        "    colour: red\n"
        "    band_defaults: {gsd_m: 10, units: DN}\n"
        "    bands:\n"
        "      - {name: B1, center_wavelength_nm: 500, bandwidth_nm: 10}\n"
        "      - {name: B2, center_wavelength_nm: 600, bandwidth_nm: 0, aliases: [b1]}\n"
        "      - {name: B3, center_wavelength_nm: 700, bandwidth_nm: 10, gsd_m: fast}\n"
        "      - {name: B4, center_wavelength_nm: -5, bandwidth_nm: 10, hist_range: [3, 1]}\n"
        "      - {name: B5, center_wavelength_nm: 800, bandwidth_nm: 10, aliases: [b1]}\n"
        "  - id: ok_one\n"
        "    name: duplicate\n"
        "    modality: x\n"
        "    dtype: uint8\n"
        "    bands: [{name: A, center_wavelength_nm: 500, bandwidth_nm: 10, gsd_m: 1, units: DN,\n"
        "             nodata: 300}]\n"
    )
    before = list_sensors()
    with pytest.raises(ValueError) as err:
        load_sensors_yaml(path)
    msg = str(err.value)
    assert str(path) in msg
    expected = [
        "sensors[1].dtype: expected a numeric numpy dtype name",
        "got 'uint17'",
        "sensors[1].colour: unknown field",
        "sensors[1].bands[1].bandwidth_nm: expected a finite number > 0, got 0",
        "sensors[1].bands[4].aliases: 'b1' is already used by bands[0]",
        "sensors[1].bands[2].gsd_m: expected a finite number > 0, got 'fast'",
        "sensors[1].bands[3].center_wavelength_nm: expected a finite number > 0, got -5",
        "sensors[1].bands[3].hist_range",
        "sensors[2].bands[0].nodata: expected an integer in [0, 255] for dtype uint8, got 300",
    ]
    for fragment in expected:
        assert fragment in msg, fragment
    assert f"{len(expected) - 1} problem(s)" in msg  # the dtype problem yields two fragments
    assert list_sensors() == before  # nothing registered from a broken file


def test_user_yaml_structure_errors(tmp_path):
    bad_yaml = tmp_path / "not_yaml.yaml"
    bad_yaml.write_text("sensors: [\n")
    with pytest.raises(ValueError, match=r"not_yaml\.yaml: not valid YAML"):
        load_sensors_yaml(bad_yaml)
    empty = tmp_path / "empty.yaml"
    empty.write_text("sensors: []\n")
    with pytest.raises(ValueError, match=r"(?s)empty\.yaml.*sensors: expected a non-empty list"):
        load_sensors_yaml(empty)
    missing = tmp_path / "missing_fields.yaml"
    missing.write_text("sensors:\n  - {id: s, bands: [{name: A}]}\n")
    with pytest.raises(ValueError) as err:
        load_sensors_yaml(missing)
    for field in ("sensors[0].name", "sensors[0].modality", "sensors[0].dtype",
                  "sensors[0].bands[0].center_wavelength_nm", "sensors[0].bands[0].bandwidth_nm",
                  "sensors[0].bands[0].gsd_m", "sensors[0].bands[0].units"):
        assert f"{field}: expected" in str(err.value) and "field missing" in str(err.value)


def test_band_from_dict_names_source_fields_expected_and_got():
    with pytest.raises(ValueError) as err:
        Band.from_dict({"name": "X", "center_wavelength_nm": float("nan"), "bandwidth_nm": -1,
                        "gsd_m": True, "units": "", "scale": 0})
    msg = str(err.value)
    assert msg.startswith("<dict>: 5 problem(s)")
    for field in ("center_wavelength_nm", "bandwidth_nm", "gsd_m", "units", "scale"):
        assert f"\n  - {field}: expected" in msg
    assert "got nan" in msg and "got -1" in msg and "got True" in msg
    with pytest.raises(ValueError, match=r"my\.yaml: 1 problem"):
        Band.from_dict({"name": "X"} | {"center_wavelength_nm": 500, "bandwidth_nm": 1,
                                         "gsd_m": 1, "units": "DN", "wavelength": 3},
                       source="my.yaml")


def test_direct_construction_is_validated():
    with pytest.raises(ValueError, match="bandwidth_nm"):
        _band("A", bw=0)
    with pytest.raises(ValueError, match=r"bands\[1\]\.name: 'a' is already used by bands\[0\]"):
        Sensor(id="x", name="x", modality="x", dtype="uint8", bands=(_band("A"), _band("a", 600)))
    with pytest.raises(ValueError, match="dtype"):
        Sensor(id="x", name="x", modality="x", dtype="str", bands=(_band("A"),))
    with pytest.raises(ValueError, match="bands: expected a non-empty list"):
        Sensor(id="x", name="x", modality="x", dtype="uint8", bands=())
    b = _band("A", aliases=["a1"], hist_range=[0, 1], nodata=np.int16(-1))
    assert b.aliases == ("a1",) and b.hist_range == (0.0, 1.0) and b.nodata == -1.0
    assert isinstance(b.nodata, float) and not math.isnan(b.center_wavelength_nm)
    s = Sensor(id="x", name="x", modality="x", dtype="float", bands=[b])
    assert s.dtype == "float64" and isinstance(s.bands, tuple)


def test_bands_sharing_wavelength_and_bandwidth_refused(tmp_path, restore_registry):
    """Two bands with the same (center_wavelength_nm, bandwidth_nm) get identical spectral
    tokenizer kernels: refused, naming the file, the sensor, both bands and the pair (for SAR,
    pointing at the polarisation codes)."""
    path = tmp_path / "odd_sensors.yaml"
    path.write_text(
        "sensors:\n"
        "  - id: my_sar_l\n"
        "    name: L-band SAR\n"
        "    modality: sar\n"
        "    dtype: float32\n"
        "    band_defaults: {units: dB, gsd_m: 25}\n"
        "    bands:\n"
        "      - {name: HH, center_wavelength_nm: 236000000, bandwidth_nm: 3}\n"
        "      - {name: HV, center_wavelength_nm: 236000000, bandwidth_nm: 3}\n"
        "  - id: my_cam\n"
        "    name: camera\n"
        "    modality: cam\n"
        "    dtype: uint8\n"
        "    band_defaults: {units: DN, gsd_m: 1, bandwidth_nm: 40}\n"
        "    bands:\n"
        "      - {name: green, center_wavelength_nm: 550}\n"
        "      - {name: red, center_wavelength_nm: 650}\n"
        "      - {name: green2, center_wavelength_nm: 550}\n")
    before = list_sensors()
    with pytest.raises(ValueError) as err:
        load_sensors_yaml(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: 2 problem(s)")
    sar, cam = msg.split("\n  - ")[1:]
    assert sar.startswith("sensors[0].bands[1]: band 'HV' of sensor 'my_sar_l' has the same "
                          "(center_wavelength_nm, bandwidth_nm) = (236000000, 3) as bands[0] "
                          "'HH'; expected a distinct pair per band")
    assert "SAR_POLARISATION_CODES: VV 1, VH 2, HH 3, HV 4" in sar
    assert cam.startswith("sensors[1].bands[2]: band 'green2' of sensor 'my_cam' has the same "
                          "(center_wavelength_nm, bandwidth_nm) = (550, 40) as bands[0] 'green'")
    assert "POLARISATION" not in cam
    assert list_sensors() == before  # nothing registered
    # the same rule for a definition made in code (built-in sensors: the check at the end of
    # test_wavelengths_inside_plausible_ranges)
    with pytest.raises(ValueError, match=r"bands\[1\]: band 'B' of sensor 'x' has the same"):
        Sensor(id="x", name="x", modality="x", dtype="uint8", bands=(_band("A"), _band("B")))


def _cam(order: str, **band_kw) -> dict:
    wl = {"R": 650, "G": 550, "B": 450}
    return {"id": "g1_cam", "name": "My cam", "modality": "cam", "dtype": "uint8",
            "bands": [{"name": n, "center_wavelength_nm": wl[n], "bandwidth_nm": 10, "gsd_m": 1,
                       "units": "DN", **band_kw} for n in order]}


def test_recorded_sensor_clash_is_an_error_naming_the_fields(restore_registry):
    """Dataset B recording another 'g1_cam' than dataset A (already read) would be read with
    A's band names/wavelengths: refused, naming B's manifest, the id and what differs."""
    assert S.register_recorded_sensors({"g1_cam": _cam("RGB")}, "dsA/manifest.json") == ["g1_cam"]
    assert S.register_recorded_sensors({"g1_cam": _cam("RGB")}, "dsC/manifest.json") == []
    with pytest.raises(ValueError) as err:
        S.register_recorded_sensors({"g1_cam": _cam("BGR")}, "dsB/manifest.json")
    msg = str(err.value)
    for part in ("dsB/manifest.json: extra.user_sensors.g1_cam", "(recorded in dsA/manifest.json)",
                 "bands[0].name ('R' vs 'B')", "bands[0].center_wavelength_nm (650.0 vs 450.0)",
                 "rename the sensor id"):
        assert part in msg, part
    assert "bands[1]" not in msg  # G is the same in both
    assert get_sensor("g1_cam").band_names == ["R", "G", "B"]


def test_recorded_sensors_validated_before_any_is_registered(restore_registry):
    bad = {**_cam("RGB"), "id": "g1_bad", "dtype": "uint17"}
    with pytest.raises(ValueError, match=r"extra\.user_sensors\.g1_bad"):
        S.register_recorded_sensors({"g1_cam": _cam("RGB"), "g1_bad": bad}, "ds/manifest.json")
    assert "g1_cam" not in list_sensors()


def test_manifest_with_clashing_sensor_is_a_manifest_error(tmp_path, restore_registry):
    from eofm.data_shards.manifest import FORMAT, FORMAT_VERSION, Manifest, ManifestError

    def manifest(order: str) -> dict:
        mod = {"sensor": "g1_cam", "bands": list(order), "dtype": "uint8", "shape": [3, 4, 4],
               "nodata": [None] * 3, "gsd_m": 1.0}
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "modalities": {"cam": mod},
                "extra": {"user_sensors": {"g1_cam": _cam(order)}}}

    Manifest.from_dict(manifest("RGB"), source="dsA/manifest.json")
    with pytest.raises(ManifestError, match=r"dsB/manifest\.json.*'g1_cam'.*bands\[0\]\.name"):
        Manifest.from_dict(manifest("BGR"), source="dsB/manifest.json")
    # the YAML the first dataset was built with loads after reading it (identical definition)
    path = tmp_path / "cam.yaml"
    path.write_text(yaml.safe_dump({"sensors": [_cam("RGB")]}))
    assert load_sensors_yaml(path)[0].band_names == ["R", "G", "B"]


def test_user_yaml_refuses_micrometres(tmp_path, restore_registry):
    """A band table copied in micrometres (USGS lists 0.655 um) was registered as 0.655 nm:
    the spectral tokenizer's code and matching by spectrum meaningless. Radar bands keep their
    polarisation codes as bandwidth."""
    path = tmp_path / "um_sensors.yaml"
    path.write_text(
        "sensors:\n"
        "  - id: um_sensor\n"
        "    name: in micrometres\n"
        "    modality: x\n"
        "    dtype: uint16\n"
        "    band_defaults: {gsd_m: 30, units: DN}\n"
        "    bands:\n"
        "      - {name: red, center_wavelength_nm: 0.6545, bandwidth_nm: 0.037}\n"
        "      - {name: nir, center_wavelength_nm: 865, bandwidth_nm: 28}\n"
        "  - id: radar_codes\n"
        "    name: radar\n"
        "    modality: y\n"
        "    dtype: float32\n"
        "    band_defaults: {gsd_m: 10, units: dB}\n"
        "    bands: [{name: VV, center_wavelength_nm: 5.55e7, bandwidth_nm: 1}]\n"
    )
    with pytest.raises(ValueError) as err:
        load_sensors_yaml(path)
    msg = str(err.value)
    assert ("sensors[0].bands[0].center_wavelength_nm: expected nanometres (optical bands lie "
            "above 100 nm), got 0.6545: micrometres? write 654.5") in msg
    assert "sensors[0].bands[0].bandwidth_nm: expected nanometres" in msg and "write 37" in msg
    assert "bands[1]" not in msg and "sensors[1]" not in msg and "2 problem(s)" in msg
