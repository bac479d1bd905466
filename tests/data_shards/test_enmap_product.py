"""EnMAP products: processing level (L1B/L1C radiance refused for the L2A sensor) and the
per-scene METADATA.XML (band count, L2A scale/offset/nodata, centre wavelengths) checked against
the registry, on a 32x32 crop of a real HySpecNet L2A cube placed under product names."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile

from eofm.data_shards import enmap_metadata as em
from eofm.data_shards import sensors
from eofm.data_shards.cli import main
from eofm.data_shards.layouts import LayoutError, LayoutOptions, detect_layout, discover
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.sensors import get_sensor

PRODUCT = "ENMAP01-____{level}-DT0000004950_20221103T162438Z_001_V010110_20221118T145147Z-" \
          "Y01460273_X03110438"
LOGGER = "eofm.data_shards.enmap_metadata"


@pytest.fixture(scope="module")
def crop(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32x32 crop of a real L2A cube, all 224 bands, int16, GDAL_NODATA -32768."""
    cubes = sorted((shared_data / "enmap_hyspecnet").glob("*/*SPECTRAL_IMAGE.TIF"))
    if not cubes:
        pytest.skip("../shared/data/enmap_hyspecnet not available")
    cube = tifffile.imread(cubes[0])
    assert cube.shape[0] == 224 and cube.dtype == np.int16
    out = tmp_path_factory.mktemp("enmap_crop") / "crop.tif"
    tifffile.imwrite(out, np.ascontiguousarray(cube[:, 48:80, 48:80]), photometric="minisblack",
                     planarconfig="separate", extratags=[(42113, "s", 0, "-32768", True)])
    return out


def metadata_xml(level: str = "L2A", n: int = 224, shift: dict[int, float] | None = None,
                 gain: float = 1.0e-4, offset: float = 0.0, wavelengths: list[float] | None = None,
                 extra: str = "", fwhm: list[float] | None = None) -> str:
    """A METADATA.XML in DLR's structure (root level_X; level in metadata/schema/
    processingLevel, base/level, base/format, specific/code; per band specific/
    bandCharacterisation/bandID[@number] with wavelengthCenterOfBand, FWHMOfBand, GainOfBand,
    OffsetOfBand), values from the registry (or ``wavelengths``/``fwhm``), band ``i`` (1-based)
    shifted by ``shift[i]`` nm."""
    bands = get_sensor("enmap_hsi").bands
    wl = wavelengths or [b.center_wavelength_nm for b in bands]
    fw = fwhm or [b.bandwidth_nm for b in bands]
    root = ET.Element("level_X")
    meta = ET.SubElement(root, "metadata")
    ET.SubElement(ET.SubElement(meta, "schema"), "processingLevel").text = level
    ET.SubElement(meta, "name").text = PRODUCT.format(level=level) + "-METADATA.XML"
    base = ET.SubElement(root, "base")
    ET.SubElement(base, "format").text = f"ENMAP_{level}"
    ET.SubElement(base, "level").text = level
    specific = ET.SubElement(root, "specific")
    ET.SubElement(specific, "code").text = level
    chars = ET.SubElement(specific, "bandCharacterisation")
    for i in range(n):
        b = ET.SubElement(chars, "bandID", number=str(i + 1))
        w = wl[i % 224] + (shift or {}).get(i + 1, 0.0)
        ET.SubElement(b, "wavelengthCenterOfBand").text = f"{w:.3f}"
        ET.SubElement(b, "FWHMOfBand").text = f"{fw[i % 224]:.2f}"
        ET.SubElement(b, "GainOfBand").text = repr(gain)
        ET.SubElement(b, "OffsetOfBand").text = repr(offset)
    text = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + text.replace("</level_X>",
                                                                     extra + "</level_X>")


def product(root: Path, crop: Path, level: str | None = "L2A", xml: str | None = None,
            suffix: str = "SPECTRAL_IMAGE.TIF", name: str | None = None) -> Path:
    """``root/<product>/<product>-<suffix>`` (a copy of the crop) and, with ``xml``, its
    ``<product>-METADATA.XML``; ``level`` None names it like a renamed HySpecNet patch."""
    name = name or (PRODUCT.format(level=level) if level else "patch_0001")
    folder = root / name
    folder.mkdir(parents=True)
    image = folder / f"{name}-{suffix}"
    shutil.copy(crop, image)
    if xml is not None:
        (folder / f"{name}-METADATA.XML").write_text(xml, encoding="utf-8")
    return image


# ---------------------------------------------------------------- level from the name
@pytest.mark.parametrize("name, level", [
    (PRODUCT.format(level="L2A") + "-SPECTRAL_IMAGE.TIF", "L2A"),
    (PRODUCT.format(level="L1C") + "-SPECTRAL_IMAGE.TIF", "L1C"),
    (PRODUCT.format(level="L1B") + "-SPECTRAL_IMAGE_VNIR.TIF", "L1B"),
    ("enmap01-____l2a-dt0000004950-spectral_image.tif", "L2A"),
    ("patch_0001-SPECTRAL_IMAGE.TIF", None),
    ("L2A_notes.TIF", None),  # a level not in an ENMAPnn- product id is not one
])
def test_level_from_name(name: str, level: str | None) -> None:
    assert em.level_from_name(name) == level


@pytest.mark.parametrize("level, suffix", [("L1C", "SPECTRAL_IMAGE.TIF"),
                                           ("L1B", "SPECTRAL_IMAGE_VNIR.TIF"),
                                           ("L1B", "SPECTRAL_IMAGE_SWIR.TIF")])
def test_radiance_products_refused(crop: Path, tmp_path: Path, level: str, suffix: str) -> None:
    image = product(tmp_path, crop, level, suffix=suffix)
    assert detect_layout(tmp_path) == "enmap"  # L1B detector files are found, not skipped
    with pytest.raises(LayoutError) as e:
        discover(tmp_path)
    msg = str(e.value)
    assert str(image) in msg and f"EnMAP {level} product" in msg
    assert "sensor enmap_hsi expects L2A surface reflectance" in msg
    assert "top-of-atmosphere radiance" in msg


@pytest.mark.parametrize("layout", ["multiband", "array"])
def test_a_forced_layout_still_checks_the_level(crop: Path, tmp_path: Path, layout: str) -> None:
    """--layout multiband --sensor enmap_hsi (or array, for the same cube as .npy) must not
    let radiance through as reflectance: the level is the sensor's business, not the layout's."""
    image = product(tmp_path / "l1c", crop, "L1C")
    if layout == "array":
        np.save(image.with_suffix(".npy"), tifffile.imread(image))
        image.unlink()
        image = image.with_suffix(".npy")
    with pytest.raises(LayoutError) as e:
        discover(tmp_path / "l1c", layout, LayoutOptions(sensor="enmap_hsi"))
    assert str(image) in str(e.value) and "EnMAP L1C product" in str(e.value)
    product(tmp_path / "l2a", crop, "L2A", xml=metadata_xml("L2A"))
    _, items = discover(tmp_path / "l2a", "multiband", LayoutOptions(sensor="enmap_hsi"))
    assert items[0].meta["enmap_product"]["level"] == "L2A"


@pytest.mark.parametrize("sensor", ["s2_l1c", "s2_l2a"])
def test_sentinel2_levels_are_not_read_as_enmap(tmp_path: Path, caplog, sensor: str) -> None:
    """Sentinel-2 shares the level names L1C and L2A: its multiband/array files used to be
    checked as EnMAP products, each recorded as one, with a warning about EnMAP radiance."""
    np.save(tmp_path / "tile.npy", np.ones((3, 8, 8), np.uint16))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, items = discover(tmp_path, "array",
                            LayoutOptions(sensor=sensor, file_bands=["B04", "B03", "B02"]))
    assert "enmap_product" not in items[0].meta
    assert not [r for r in caplog.records if r.name == LOGGER]
    assert em.expected_level(get_sensor(sensor)) is None
    assert em.expected_level(get_sensor("enmap_hsi")) == "L2A"


def test_l2a_accepted_and_recorded(crop: Path, tmp_path: Path, caplog) -> None:
    product(tmp_path, crop, "L2A")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        layout, items = discover(tmp_path)
    assert layout == "enmap" and len(items) == 1 and not caplog.records
    assert items[0].meta["enmap_product"] == {"level": "L2A", "level_from": ["product name"]}


def test_unknown_level_accepted_and_warned_once(crop: Path, tmp_path: Path, caplog) -> None:
    product(tmp_path, crop, None, name="patch_0001")
    product(tmp_path, crop, None, name="patch_0002")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, items = discover(tmp_path)
    assert len(items) == 2 and all(i.meta["enmap_product"] == {} for i in items)
    warned = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warned) == 1
    assert "2 EnMAP product(s) name no processing level" in warned[0] and "patch_0001" in warned[0]


# ---------------------------------------------------------------- level from METADATA.XML
def test_xml_level_refuses_a_renamed_l1c(crop: Path, tmp_path: Path) -> None:
    product(tmp_path, crop, None, xml=metadata_xml("L1C", gain=2.5e-3, offset=-0.1))
    with pytest.raises(LayoutError, match=r"EnMAP L1C product \(from the .*METADATA.XML "
                                          r"metadata/schema/processingLevel\).*expects L2A"):
        discover(tmp_path)


def test_name_and_xml_disagreeing_refused(crop: Path, tmp_path: Path) -> None:
    product(tmp_path, crop, "L2A", xml=metadata_xml("L1C"))
    with pytest.raises(LayoutError, match=r"processing level is contradictory \(.*product name: "
                                          r"L2A.*: L1C\)"):
        discover(tmp_path)


def test_explicit_sensor_for_another_level(crop: Path, tmp_path: Path, monkeypatch) -> None:
    """A sensor the user defines for L1C (--sensors-yaml, --sensor) reads L1C, and refuses L2A;
    the L2A-only scale check does not apply to radiance."""
    monkeypatch.setattr(sensors, "_REGISTRY", dict(sensors._REGISTRY))
    sensors.register_sensor(dataclasses.replace(get_sensor("enmap_hsi"), id="enmap_l1c_test",
                                                processing_level="L1C"))
    product(tmp_path / "l1c", crop, "L1C", xml=metadata_xml("L1C", gain=2.5e-3, offset=-0.1))
    _, items = discover(tmp_path / "l1c", opts=LayoutOptions(sensor="enmap_l1c_test"))
    assert items[0].meta["enmap_product"]["level"] == "L1C"
    assert items[0].modalities["hsi"].sensor == "enmap_l1c_test"
    product(tmp_path / "l2a", crop, "L2A")
    with pytest.raises(LayoutError, match="sensor enmap_l1c_test expects L1C"):
        discover(tmp_path / "l2a", opts=LayoutOptions(sensor="enmap_l1c_test"))


# ---------------------------------------------------------------- per-band metadata
def test_wavelength_deviations_warned_once_and_recorded(crop: Path, tmp_path: Path,
                                                        caplog) -> None:
    product(tmp_path, crop, "L2A", xml=metadata_xml(shift={10: 2.0, 150: -1.2, 200: 0.4}))
    other = PRODUCT.format(level="L2A").replace("X03110438", "X04390566")
    product(tmp_path, crop, "L2A", xml=metadata_xml(shift={30: -3.1}), name=other)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, items = discover(tmp_path)
    rec = {i.key[-9:]: i.meta["enmap_product"] for i in items}
    first, second = rec["X03110438"], rec["X04390566"]
    assert first["level"] == "L2A" and first["metadata_xml"].endswith("X03110438-METADATA.XML")
    assert first["level_from"] == ["product name", "METADATA.XML metadata/schema/processingLevel"]
    assert first["wavelength_max_abs_dev_nm"] == pytest.approx(2.0, abs=1e-3)
    assert first["wavelength_max_dev_band"] == "B010"
    assert first["wavelength_dev_beyond_tolerance_nm"] == {"B010": pytest.approx(2.0, abs=1e-3)}
    assert first["fwhm_max_abs_dev_nm"] < 0.01
    assert second["wavelength_max_dev_band"] == "B030"
    warned = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warned) == 1  # once per build, the largest deviation named
    assert "2 EnMAP scene(s)" in warned[0] and "3.10 nm at band B030" in warned[0]
    assert "X04390566-METADATA.XML" in warned[0]


def test_deviation_within_tolerance_is_recorded_not_warned(crop: Path, tmp_path: Path,
                                                           caplog) -> None:
    product(tmp_path, crop, "L2A", xml=metadata_xml(shift={100: 1.0}))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, items = discover(tmp_path)
    rec = items[0].meta["enmap_product"]
    assert rec["wavelength_max_dev_band"] == "B100" and "wavelength_dev_beyond_tolerance_nm" \
        not in rec
    assert not [r for r in caplog.records if r.name == LOGGER]


def physical_bands(order: str) -> list[sensors.Band]:
    """The registry's EnMAP bands (each a physical band: centre, FWHM, detector) listed in
    ``order``, whatever order the registry keeps them in: ``"wavelength"`` (an L2A product's:
    by centre wavelength, VNIR first at the two VNIR/SWIR pairs < 0.5 nm apart, as the real
    cubes show) or ``"detector"`` (all VNIR bands, then all SWIR bands)."""
    bands = sorted(get_sensor("enmap_hsi").bands, key=lambda b: b.center_wavelength_nm)
    if order == "detector":
        return sorted(bands, key=lambda b: b.description.split()[0] != "VNIR")
    for i in range(len(bands) - 1):
        a, b = bands[i], bands[i + 1]
        if (b.center_wavelength_nm - a.center_wavelength_nm < 0.5
                and (a.description, b.description) == ("SWIR", "VNIR")):
            bands[i], bands[i + 1] = b, a
    return bands


def test_metadata_in_the_products_band_order_builds(crop: Path, tmp_path: Path,
                                                    capsys) -> None:
    """A METADATA.XML listing the bands as a real L2A product does (wavelength order, VNIR
    and SWIR interleaved at 900-1000 nm) agrees with the registry band by band and builds."""
    real = physical_bands("wavelength")
    assert [b.description for b in real[79:83]] == ["SWIR", "VNIR", "VNIR", "SWIR"]
    xml = metadata_xml(wavelengths=[b.center_wavelength_nm for b in real],
                       fwhm=[b.bandwidth_nm for b in real])
    src, out = tmp_path / "in", tmp_path / "ds"
    product(src, crop, "L2A", xml=xml)
    assert main(["build", str(src), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    (s,) = list(ShardDataset(out, with_meta=True))
    rec = s["meta"]["enmap_product"]
    assert rec["wavelength_max_abs_dev_nm"] < 0.01 and rec["fwhm_max_abs_dev_nm"] < 0.01


def test_other_band_order_refused(crop: Path, tmp_path: Path) -> None:
    """A scene listing the same wavelengths in detector order (all VNIR, then all SWIR) is not
    smile: its bands 80..100 are other bands than the registry's."""
    nominal = [b.center_wavelength_nm for b in physical_bands("detector")]
    product(tmp_path, crop, "L2A", xml=metadata_xml(wavelengths=nominal))
    with pytest.raises(LayoutError, match=r"band B\d{3} has centre wavelength .* nm off, more "
                                          r"than 5 nm.*another band order"):
        discover(tmp_path)


@pytest.mark.parametrize("kw, field, value", [({"gain": 1.0}, "GainOfBand", "1"),
                                              ({"gain": 1.0e-3}, "GainOfBand", "0.001"),
                                              ({"offset": 0.05}, "OffsetOfBand", "0.05")])
def test_scale_or_offset_mismatch_refused(crop: Path, tmp_path: Path, kw: dict, field: str,
                                          value: str) -> None:
    product(tmp_path, crop, "L2A", xml=metadata_xml(**kw))
    with pytest.raises(LayoutError, match=rf"{field} {value} for band B001 \(224 band\(s\).*"
                                          r"reads pixels x 0.0001 \+0.*silently mis-scaled"):
        discover(tmp_path)


def test_gain_written_another_way_is_the_same_scale(crop: Path, tmp_path: Path) -> None:
    xml = metadata_xml().replace("<GainOfBand>0.0001<", "<GainOfBand>1.0E-4<")
    assert "1.0E-4" in xml
    product(tmp_path, crop, "L2A", xml=xml)
    assert discover(tmp_path)[1][0].meta["enmap_product"]["level"] == "L2A"


def test_nodata_mismatch_refused(crop: Path, tmp_path: Path) -> None:
    product(tmp_path, crop, "L2A", xml=metadata_xml(extra="<product><noDataValue>0"
                                                          "</noDataValue></product>"))
    with pytest.raises(LayoutError, match=r"no-data value 0, but sensor enmap_hsi expects "
                                          r"-32768"):
        discover(tmp_path)


@pytest.mark.parametrize("n", [223, 91])
def test_band_count_mismatch_refused(crop: Path, tmp_path: Path, n: int) -> None:
    product(tmp_path, crop, "L2A", xml=metadata_xml(n=n))
    with pytest.raises(LayoutError, match=rf"{n} bands in specific/bandCharacterisation/bandID, "
                                          r"but .*SPECTRAL_IMAGE.TIF is read as 224 bands"):
        discover(tmp_path)


def test_oversized_xml_refused_without_reading(crop: Path, tmp_path: Path) -> None:
    image = product(tmp_path, crop, "L2A", xml=metadata_xml())
    xml = image.with_name(image.name.replace("SPECTRAL_IMAGE.TIF", "METADATA.XML"))
    with xml.open("r+b") as fh:  # sparse: 50 MiB + 1 byte declared, nothing written
        fh.truncate(em.MAX_METADATA_BYTES + 1)
    with pytest.raises(LayoutError, match=r"METADATA.XML is 50.0 MiB, more than the 50 MiB .* "
                                          r"refused without parsing it"):
        discover(tmp_path)


def test_entity_declarations_refused(crop: Path, tmp_path: Path) -> None:
    xml = metadata_xml().replace(
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        '<?xml version="1.0"?>\n<!DOCTYPE level_X [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n')
    product(tmp_path, crop, "L2A", xml=xml.replace("<code>L2A</code>", "<code>&x;</code>"))
    with pytest.raises(LayoutError, match=r"declares a document type or entities"):
        discover(tmp_path)


def test_malformed_xml_named(crop: Path, tmp_path: Path) -> None:
    product(tmp_path, crop, "L2A", xml=metadata_xml()[:-40])
    with pytest.raises(LayoutError, match=r"METADATA.XML is not well-formed XML"):
        discover(tmp_path)


# ---------------------------------------------------------------- the CLI end to end
def test_cli_build_of_an_l2a_product_with_metadata(crop: Path, tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "in", tmp_path / "ds"
    product(src, crop, "L2A", xml=metadata_xml(shift={10: 2.0}))
    assert main(["build", str(src), "--out", str(out), "--quiet"]) == 0
    assert "sensor enmap_hsi" in capsys.readouterr().out
    (s,) = list(ShardDataset(out, with_meta=True))
    assert s["hsi"].shape == (224, 32, 32) and s["hsi"].dtype == np.int16
    np.testing.assert_array_equal(s["hsi"], tifffile.imread(crop))
    rec = s["meta"]["enmap_product"]
    assert rec["level"] == "L2A" and rec["wavelength_max_dev_band"] == "B010"
    assert rec["wavelength_max_abs_dev_nm"] == pytest.approx(2.0, abs=1e-3)

    bad = tmp_path / "l1c"
    product(bad, crop, "L1C")
    assert main(["build", str(bad), "--out", str(tmp_path / "ds_l1c"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "eofm-shard build: error:" in err and "EnMAP L1C product" in err
    assert "expects L2A" in err and not (tmp_path / "ds_l1c" / "manifest.json").exists()


def test_bands_are_matched_by_number_not_document_order(crop: Path, tmp_path: Path) -> None:
    root = ET.fromstring(metadata_xml(shift={5: 1.0}))
    chars = root.find("specific/bandCharacterisation")
    assert chars is not None
    listed = list(chars)
    for b in listed:
        chars.remove(b)
    chars.extend(reversed(listed))  # bandID 224 first
    product(tmp_path, crop, "L2A", xml=ET.tostring(root, encoding="unicode"))
    rec = discover(tmp_path)[1][0].meta["enmap_product"]
    assert rec["wavelength_max_dev_band"] == "B005"
    assert rec["wavelength_max_abs_dev_nm"] == pytest.approx(1.0, abs=1e-3)
