"""What a raster says about its bands: GeoTIFF band descriptions (GDAL_METADATA DESCRIPTION
items) name the file's bands in the multiband layout; an array's band axis is the one as long
as the bands it is read for; a per-band folder's malformed metadata.json is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.layouts import EUROSAT_FILE_BANDS, LayoutError, LayoutOptions, discover
from eofm.data_shards.raster_io import RasterError, read_raster
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.sensors import get_sensor

ASSUMED = "nothing in the files says so"


def _gdal_metadata(names: list[str]) -> str:
    """A GDAL_METADATA XML text describing bands ``names`` as GDAL writes it."""
    items = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">{n}</Item>'
                    for i, n in enumerate(names))
    return ('<GDALMetadata><Item name="interleave" domain="rio_creation_kwds">pixel</Item>'
            f"{items}</GDALMetadata>")


def _described_tif(path: Path, names: list[str] | None, bands: int = 13,
                   planar: str = "contig") -> np.ndarray:
    """A (16, 16, bands) uint16 GeoTIFF-like file, each band a distinct ramp,
    with band descriptions ``names`` (None: none); returns the pixels as (H, W, C)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = (np.arange(16 * 16 * bands, dtype=np.uint16).reshape(16, 16, bands) % 997) + 1
    extra = [] if names is None else [(42112, "s", 0, _gdal_metadata(names), True)]
    data = x if planar == "contig" else np.moveaxis(x, -1, 0)
    tifffile.imwrite(path, data, photometric="minisblack", planarconfig=planar,
                     extratags=extra)
    return x


# ---------------------------------------------------------------- band descriptions
def test_read_raster_returns_gdal_band_descriptions(tmp_path: Path) -> None:
    """read_raster gives the descriptions in band order, for pixel- and band-interleaved
    files; a file without DESCRIPTION items (only dataset-level GDAL metadata) has none."""
    names = ["B04", "B03", "Band 3"]
    for planar in ("contig", "separate"):
        f = tmp_path / f"{planar}.tif"
        _described_tif(f, names, bands=3, planar=planar)
        r = read_raster(f)
        assert r.data.shape == (3, 16, 16), planar
        assert r.band_names == names, planar
    plain = tmp_path / "plain.tif"
    _described_tif(plain, None, bands=3)
    assert read_raster(plain).band_names is None


def test_multiband_reads_band_order_from_descriptions(tmp_path: Path, caplog) -> None:
    """A EuroSAT-order file (B8A last) whose descriptions say so is read by its descriptions,
    not in the sensor's order: B8A lands as B8A, no "assumed" warning, and the sample's
    meta.json says the order was ``described`` (it used to be assumed: B8A got B09's data)."""
    src = tmp_path / "flat"
    x = _described_tif(src / "a.tif", EUROSAT_FILE_BANDS)
    caplog.set_level("WARNING")
    out = tmp_path / "out"
    build(BuildConfig(str(src), str(out), layout="multiband", progress=False,
                      layout_options=LayoutOptions(sensor="s2_l1c")))
    assert ASSUMED not in caplog.text
    s = next(iter(ShardDataset(out, with_meta=True, bands={"s2": ["B8A", "B09", "B12"]})))
    assert s["meta"]["file_band_order"] == "described"
    assert s["meta"]["file_bands"] == EUROSAT_FILE_BANDS
    want = [EUROSAT_FILE_BANDS.index(b) for b in ("B8A", "B09", "B12")]
    np.testing.assert_array_equal(s["s2"], np.moveaxis(x, -1, 0)[want])


def test_descriptions_resolve_aliases_and_case(tmp_path: Path) -> None:
    """Descriptions resolve as --file-bands does: ``b4``, ``B3``, ``b02`` are B04, B03, B02."""
    root = tmp_path / "rgbish"
    _described_tif(root / "a.tif", ["b4", "B3", "b02"], bands=3)
    _, items = discover(root, "multiband", LayoutOptions(sensor="s2_l2a"))
    assert items[0].modalities["s2"].files[0][1] == ["B04", "B03", "B02"]
    assert items[0].meta["file_band_order"] == "described"


def test_descriptions_contradicting_file_bands_are_refused(tmp_path: Path) -> None:
    """--file-bands that contradict the file's descriptions are refused naming the file and
    both orders; agreeing ones are read as declared."""
    root = tmp_path / "flat"
    f = root / "a.tif"
    _described_tif(f, EUROSAT_FILE_BANDS)
    declared = list(get_sensor("s2_l1c").band_names)  # B8A after B08
    with pytest.raises(LayoutError) as e:
        discover(root, "multiband", LayoutOptions(sensor="s2_l1c", file_bands=declared))
    msg = str(e.value)
    assert str(f) in msg
    assert ",".join(EUROSAT_FILE_BANDS) in msg and ",".join(declared) in msg
    _, items = discover(root, "multiband",
                        LayoutOptions(sensor="s2_l1c", file_bands=EUROSAT_FILE_BANDS))
    assert items[0].meta["file_band_order"] == "declared"
    assert items[0].modalities["s2"].files[0][1] == EUROSAT_FILE_BANDS


def test_descriptions_naming_one_band_twice_are_refused(tmp_path: Path) -> None:
    """Descriptions ``B8`` and ``B08`` (alias and name of one band) cannot say the order."""
    root = tmp_path / "flat"
    f = root / "a.tif"
    _described_tif(f, ["B04", "B8", "B08"], bands=3)
    with pytest.raises(LayoutError, match=rf"{f}: band descriptions .*B04,B8,B08.* B08"):
        discover(root, "multiband", LayoutOptions(sensor="s2_l2a"))


@pytest.mark.parametrize("names", [
    [f"Band {i + 1}" for i in range(13)],                     # GDAL's generic names
    [*EUROSAT_FILE_BANDS[:12], ""],                            # one band undescribed
    [*EUROSAT_FILE_BANDS[:12], "cloud mask"],                  # one names no S2 band
])
def test_descriptions_not_naming_sensor_bands_are_ignored(tmp_path: Path, caplog,
                                                          names: list[str]) -> None:
    """Descriptions that do not name a sensor band for every file band say nothing about the
    order: the sensor's order is assumed, with the warning, as for files without any."""
    root = tmp_path / "flat"
    _described_tif(root / "a.tif", names)
    _described_tif(root / "b.tif", None)
    caplog.set_level("WARNING")
    _, items = discover(root, "multiband", LayoutOptions(sensor="s2_l1c"))
    assert {i.meta["file_band_order"] for i in items} == {"assumed_sensor_order"}
    assert ASSUMED in caplog.text and "2 of 2 multiband files" in caplog.text


def test_assumed_warning_counts_only_undescribed_files(tmp_path: Path, caplog) -> None:
    """With some files described, the warning names only the others."""
    root = tmp_path / "flat"
    _described_tif(root / "a.tif", EUROSAT_FILE_BANDS)
    _described_tif(root / "b.tif", None)
    caplog.set_level("WARNING")
    _, items = discover(root, "multiband", LayoutOptions(sensor="s2_l1c"))
    assert [i.meta["file_band_order"] for i in items] == ["described", "assumed_sensor_order"]
    assert "1 of 2 multiband files (e.g. " in caplog.text and "b.tif" in caplog.text


# ---------------------------------------------------------------- array band axis
def test_array_band_axis_is_the_one_of_the_expected_length(tmp_path: Path) -> None:
    """A (C, H, W) array with more bands than rows, (13, 8, 10), is read with its bands first
    (the smallest axis, 8 rows, used to be taken for the bands: "expected 13 bands ... file
    has 8")."""
    root = tmp_path / "arr"
    root.mkdir()
    x = (np.arange(13 * 8 * 10, dtype=np.uint16).reshape(13, 8, 10) % 997) + 1
    np.save(root / "a.npy", x)
    out = tmp_path / "out"
    build(BuildConfig(str(root), str(out), layout="array", progress=False,
                      layout_options=LayoutOptions(sensor="s2_l1c")))
    s = next(iter(ShardDataset(out, with_meta=True)))
    assert s["s2"].shape == (13, 8, 10)
    np.testing.assert_array_equal(s["s2"], x)


def test_array_band_axis_ambiguous_or_absent_is_named(tmp_path: Path) -> None:
    """When the expected band count fits two axes the guess cannot pick, or none, the error
    names the file, the shape and the axes of that length."""
    f = tmp_path / "a.npy"
    np.save(f, np.ones((6, 6, 4), np.uint16))
    with pytest.raises(RasterError, match=r"a\.npy: expected 6 bands .*shape \(6, 6, 4\): "
                                          r"axes \[0, 1\] all have that length"):
        read_raster(f, expected_bands=6)
    with pytest.raises(RasterError, match=r"expected 5 bands .*shape \(6, 6, 4\): no axis"):
        read_raster(f, expected_bands=5)
    np.save(f, np.ones((13, 20, 13), np.uint16))  # ambiguous, but the guess (axis 0) fits
    assert read_raster(f, expected_bands=13).data.shape == (13, 20, 13)
    assert read_raster(f).data.shape == (13, 20, 13)  # without expected_bands: as before


# ---------------------------------------------------------------- per-band metadata.json
@pytest.mark.parametrize("content", [b'{"PRODUCT_ID": "S1A_IW', b"\xff\xfe not utf-8"])
def test_per_band_malformed_metadata_json_is_named(tmp_path: Path, content: bytes) -> None:
    """A per-band folder's metadata.json that is not JSON (truncated, or not UTF-8) is a
    LayoutError naming the file (it used to fail with bare JSON/codec text, no path)."""
    folder = tmp_path / "s1" / "S1A_IW_GRDH_1SDV_20200607T010800"
    for band in ("VV", "VH"):
        folder.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / f"{band}.tif", np.full((8, 8), -12.5, np.float32))
    (folder / "metadata.json").write_bytes(content)
    with pytest.raises(LayoutError, match=rf"{folder / 'metadata.json'}: cannot read the "
                                          "folder's metadata"):
        discover(tmp_path / "s1", "per_band", LayoutOptions())
