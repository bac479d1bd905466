"""Sentinel-2 processing-baseline offset: decided per product, removed at ingest, recorded."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile

from eofm.data_shards import s2_baseline as s2b
from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.checks import summary
from eofm.data_shards.cli import main as shard_main
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.manifest import (
    MANIFEST_NAME,
    Manifest,
    load_manifest,
    warn_unrecorded_s2_offset,
)
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.zarr_store import ZarrDataset

N0400 = "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"
N9999 = "S2B_MSIL2A_20200223T032739_N9999_R018_T48QUE_20230924T183543"
BANDS = ["B02", "B04", "B8A", "B12"]  # 10 m and 20 m: a quick build on the real products


# ---------------------------------------------------------------- deciding
@pytest.mark.parametrize(("name", "baseline", "offset"), [
    (N0400, "04.00", -1000),
    ("S2B_MSIL1C_20230101T101010_N0509_R065_T32TQM_20230101T120000.SAFE", "05.09", -1000),
    ("S2B_MSIL2A_20200604T054639_N0214_R048_T43RCP_20200604T094332", "02.14", 0),
    ("S2A_MSIL1C_20211231T000000_N0301_R001_T01ABC_20211231T000000", "03.01", 0),
])
def test_baseline_from_product_id(name: str, baseline: str, offset: int) -> None:
    found = s2b.baseline_from_name(name)
    assert found is not None and found[0] == baseline
    assert s2b.offset_for_baseline(baseline) == offset


def test_n9999_and_names_without_a_product_id_are_unknown(tmp_path: Path) -> None:
    assert s2b.baseline_from_name(N9999) == ("99.99", N9999[:32])
    assert s2b.offset_for_baseline("99.99") is None and s2b.offset_for_baseline(None) is None
    for name in ("patch_N0400_x", "0U_199R", "s2_B02", "T33NZA"):
        assert s2b.baseline_from_name(name) is None
    d = _band_dir(tmp_path / N9999)
    got = s2b.decide([d / "B02.tif"], tmp_path)
    assert (got.offset, got.status, got.baseline) == (0, "unknown", "99.99")
    bare = _band_dir(tmp_path / "scene")
    got = s2b.decide([bare / "B02.tif"], tmp_path)
    assert (got.offset, got.status, got.origin, got.baseline) == (0, "unknown", "none", None)


def _band_dir(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "B02.tif").write_bytes(b"")  # decide() reads names and metadata only
    return d


def test_metadata_json_decides_before_the_name(tmp_path: Path) -> None:
    d = _band_dir(tmp_path / N0400)
    (d / "metadata.json").write_text(json.dumps({"PROCESSING_BASELINE": "02.14"}))
    got = s2b.decide([d / "B02.tif"], tmp_path)
    assert (got.offset, got.baseline, got.origin, got.status) == (0, "02.14", "metadata.json",
                                                                  "found")
    (d / "metadata.json").write_text(json.dumps({"PROCESSING_BASELINE": "04.00"}))
    assert s2b.decide([d / "B02.tif"], tmp_path).offset == -1000
    (d / "metadata.json").write_text(json.dumps({"PRODUCT_ID": N0400.replace("N0400", "N0500")}))
    assert s2b.decide([d / "B02.tif"], tmp_path).baseline == "05.00"
    # Earth Engine's harmonised collection has already removed the offset
    (d / "metadata.json").write_text(json.dumps({
        "PROCESSING_BASELINE": "04.00", "system:id": "COPERNICUS/S2_SR_HARMONIZED/x"}))
    assert s2b.decide([d / "B02.tif"], tmp_path).offset == 0
    (d / "metadata.json").write_text(json.dumps({"PROCESSING_BASELINE": "soon"}))
    with pytest.raises(ValueError, match=r"PROCESSING_BASELINE expected .*'soon'"):
        s2b.decide([d / "B02.tif"], tmp_path)


MTD = """<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
 <n1:General_Info><Product_Info><PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
  <Product_Image_Characteristics>
   <QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>
   {offsets}
  </Product_Image_Characteristics></Product_Info></n1:General_Info>
</n1:Level-2A_User_Product>"""


@pytest.mark.parametrize(("tag", "name"), [("BOA_ADD_OFFSET", "MTD_MSIL2A.xml"),
                                           ("RADIO_ADD_OFFSET", "MTD_MSIL1C.xml")])
def test_esa_mtd_xml_add_offsets(tmp_path: Path, tag: str, name: str) -> None:
    """A SAFE product: MTD at the top, bands three folders down (found walking up to the root)."""
    safe = tmp_path / "product.SAFE"
    bands = _band_dir(safe / "GRANULE" / "L2A_T33NZA" / "IMG_DATA")
    offsets = "<{t}_VALUES_LIST>{v}</{t}_VALUES_LIST>".format(
        t=tag, v="".join(f'<{tag} band_id="{i}">-1000</{tag}>' for i in range(13)))
    (safe / name).write_text(MTD.format(baseline="04.00", offsets=offsets))
    got = s2b.decide([bands / "B02.tif"], tmp_path)
    assert (got.offset, got.baseline, got.origin, got.status) == (-1000, "04.00", name, "found")
    # no offset list: the baseline decides; IMG_DATA as the input root still reads the
    # enclosing SAFE product's MTD (test_img_data_given_directly_reads_its_enclosing_safe)
    (safe / name).write_text(MTD.format(baseline="02.09", offsets=""))
    assert s2b.decide([bands / "B02.tif"], tmp_path).offset == 0
    got = s2b.decide([bands / "B02.tif"], bands)
    assert (got.offset, got.baseline, got.origin) == (0, "02.09", name)


def test_img_data_given_directly_reads_its_enclosing_safe(tmp_path: Path, monkeypatch) -> None:
    """``X.SAFE/GRANULE/*/IMG_DATA`` as the input root: the walk goes on above the root up to
    the first ``*.SAFE`` folder (its MTD_MSIL1C.xml, else its name); it was "baseline unknown"
    (+0) for a 04.00 product. Above the SAFE, or without one, nothing above the root is read."""
    outer = tmp_path / "archive"
    outer.mkdir()
    (outer / "metadata.json").write_text(json.dumps({"PROCESSING_BASELINE": "02.09"}))
    safe = outer / "S2A_MSIL1C_20220706T085611_N0400_R007_T33NZA_20220706T093000.SAFE"
    bands = _band_dir(safe / "GRANULE" / "L1C_T33NZA_A036752_20220706T085611" / "IMG_DATA")
    offsets = '<RADIO_ADD_OFFSET band_id="0">-1000</RADIO_ADD_OFFSET>'
    (safe / "MTD_MSIL1C.xml").write_text(MTD.format(baseline="04.00", offsets=offsets))
    got = s2b.decide([bands / "B02.tif"], bands)
    assert (got.offset, got.baseline, got.origin, got.status) == (-1000, "04.00",
                                                                  "MTD_MSIL1C.xml", "found")
    monkeypatch.chdir(bands)  # given as "." from inside IMG_DATA
    assert s2b.decide([Path("B02.tif")], ".").offset == -1000
    (safe / "MTD_MSIL1C.xml").unlink()  # the SAFE's name is the product id
    got = s2b.decide([bands / "B02.tif"], bands)
    assert (got.offset, got.origin, got.status) == (-1000, "product id", "found")
    nameless = _band_dir(outer / "product.SAFE" / "GRANULE" / "g" / "IMG_DATA")
    got = s2b.decide([nameless / "B02.tif"], nameless)  # archive/metadata.json is above it
    assert (got.offset, got.status) == (0, "unknown")
    plain = _band_dir(outer / "plain" / "IMG_DATA")  # no SAFE above: only the root is read
    assert s2b.decide([plain / "B02.tif"], plain).status == "unknown"


def test_forced_offset_and_bad_modes(tmp_path: Path) -> None:
    d = _band_dir(tmp_path / N9999)
    got = s2b.resolve([d / "B02.tif"], "-1000", tmp_path)
    assert (got.offset, got.status, got.origin) == (-1000, "forced", "--s2-offset")
    got = s2b.resolve([_band_dir(tmp_path / N0400) / "B02.tif"], "none", tmp_path)
    assert (got.offset, got.status) == (0, "forced")
    assert s2b.parse_mode("AUTO") == "auto" and s2b.parse_mode(-1000) == -1000
    for bad in ("1000", "sometimes", "-20000"):
        with pytest.raises(ValueError, match=r"s2_offset: expected 'auto', 'none'"):
            s2b.parse_mode(bad)


# ---------------------------------------------------------------- applying
def test_apply_keeps_nodata_and_does_not_wrap() -> None:
    x = np.array([[[0, 1, 999, 1000, 1001, 1500, 65535]],
                  [[0, 0, 2000, 3000, 0, 1000, 12]]], np.uint16)
    y, clipped = s2b.apply_offset(x, -1000, [0, 0])
    assert y.dtype == np.uint16
    np.testing.assert_array_equal(y[0, 0], [0, 1, 1, 1, 1, 500, 64535])
    np.testing.assert_array_equal(y[1, 0], [0, 0, 1000, 2000, 0, 1, 1])
    assert (y == 0).sum() == (x == 0).sum() and np.array_equal(y == 0, x == 0)  # nodata stays
    assert clipped == 5  # valid pixels <= 1000 (negative reflectance) become 1, not 0 or 6xxxx
    same, n = s2b.apply_offset(x, 0, [0, 0])
    assert same is x and n == 0


def test_looks_offset() -> None:
    x = np.full((2, 4, 4), 1200, np.uint16)
    x[:, 0, 0] = 0  # nodata does not count as a dark pixel
    assert s2b.looks_offset(x, [0, 0])
    x[1, 1, 1] = 999
    assert not s2b.looks_offset(x, [0, 0])
    assert not s2b.looks_offset(np.zeros((2, 4, 4), np.uint16), [0, 0])  # all nodata


# ---------------------------------------------------------------- real Major-TOM products
def _majortom(shared_data: Path) -> Path:
    root = shared_data / "majortom_s2l2a"
    if not root.is_dir():
        pytest.skip("../shared/data/majortom_s2l2a is not available")
    return root


def _cfg(src: Path, out: Path, **kw) -> BuildConfig:
    return BuildConfig(str(src), str(out), progress=False,
                       ingest=IngestOptions(tile=534, bands={"s2": BANDS}), **kw)


def _per_product(out: Path) -> dict[str, dict]:
    """Per product folder: its pixels' per-band valid minimum and its sample meta."""
    got: dict[str, dict] = {}
    for s in ShardDataset(str(out), with_meta=True, shuffle_buffer=0):
        name = Path(s["meta"]["source"]).name
        x = s["s2"]
        mins = [int(b[b > 0].min()) for b in x]
        prev = got.setdefault(name, {"min": mins, "meta": s["meta"]})
        prev["min"] = [min(a, b) for a, b in zip(prev["min"], mins, strict=True)]
    return got


def _raw_min(product: Path) -> list[int]:
    out = []
    for b in BANDS:
        x = tifffile.imread(product / f"{b}.tif")
        out.append(int(x[x > 0].min()))
    return out


@pytest.fixture(scope="module")
def majortom_built(shared_data: Path, tmp_path_factory) -> tuple[Path, Manifest, list[str]]:
    root = _majortom(shared_data)
    out = tmp_path_factory.mktemp("s2off") / "majortom"
    handler = _Capture()
    logger = logging.getLogger("eofm.data_shards")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        m = build(_cfg(root, out))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert m is not None
    return out, m, handler.messages


class _Capture(logging.Handler):
    """Keeps ``LEVEL: message`` of every INFO-or-higher record."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname}: {record.getMessage()}")


def test_majortom_n0400_product_is_corrected(majortom_built, shared_data: Path) -> None:
    out, _, _ = majortom_built
    root = _majortom(shared_data)
    got = _per_product(out)
    assert set(got) == {N0400, N9999}
    raw_new = _raw_min(next(root.rglob(N0400)))
    raw_old = _raw_min(next(root.rglob(N9999)))
    assert min(raw_new) >= 1000  # the evidence: every band offset in the raw product
    assert got[N0400]["min"] == [v - 1000 for v in raw_new]
    # blue, red and SWIR now start below 0.1 reflectance, as they do in the other product
    assert all(got[N0400]["min"][BANDS.index(b)] < 1000 for b in ("B02", "B04", "B12"))
    assert got[N9999]["min"] == raw_old  # unknown baseline: pixels untouched
    assert got[N0400]["meta"]["s2_offset"]["offset"] == -1000
    assert got[N9999]["meta"]["s2_offset"]["status"] == "unknown"


def test_majortom_manifest_records_the_correction(majortom_built) -> None:
    out, m, messages = majortom_built
    record = load_manifest(out).extra["s2_offset"]
    assert record == m.extra["s2_offset"] and record["mode"] == "auto"
    by_status = {g["status"]: g for g in record["groups"]}
    assert set(by_status) == {"found", "unknown"}
    found, unknown = by_status["found"], by_status["unknown"]
    assert (found["offset"], found["baseline"], found["origin"]) == (-1000, "04.00", "product id")
    assert [Path(e).name for e in found["examples"]] == [N0400]
    assert (unknown["offset"], unknown["baseline"]) == (0, "99.99")
    assert [Path(e).name for e in unknown["examples"]] == [N9999]
    text = summary(out)
    assert "s2 offset mode auto" in text and N0400 in text
    assert "offset -1000 DN for 1 item(s) of " in text
    assert ": baseline 04.00 (found in product id), e.g. " in text
    assert ": baseline unknown (N9999) (from product id) tells no offset: not corrected, e.g. " \
        in text
    # one INFO line for the build, naming the input and how to force it; no warning, since
    # the N9999 product's pixels do not look offset
    said = [w for w in messages if "baseline unknown" in w]
    assert len(said) == 1 and "majortom_s2l2a" in said[0] and "--s2-offset" in said[0]
    assert said[0].startswith("INFO: ")
    assert not [w for w in messages if w.startswith("WARNING")]


def test_forced_none_keeps_the_offset(shared_data: Path, tmp_path: Path) -> None:
    root = _majortom(shared_data)
    m = build(_cfg(next(root.rglob(N0400)), tmp_path / "none", s2_offset="none"))
    assert m is not None
    assert m.extra["s2_offset"]["groups"][0]["status"] == "forced"
    assert all(s["min"] >= 1000 for s in m.modalities["s2"].stats.values())
    assert "s2_looks_offset" not in m.extra["counters"]  # forced: no second-guessing


def test_offset_looking_product_without_baseline_warns(shared_data: Path, tmp_path: Path,
                                                       caplog) -> None:
    """The N0400 product under a name without its product id: unknown, but its pixels say
    offset, so the build warns naming the product (and counts it)."""
    product = next(_majortom(shared_data).rglob(N0400))
    src = tmp_path / "cells" / "cell_a"
    src.mkdir(parents=True)
    for b in BANDS:
        (src / f"{b}.tif").symlink_to(product / f"{b}.tif")
    with caplog.at_level(logging.WARNING, logger="eofm.data_shards"):
        m = build(_cfg(tmp_path / "cells", tmp_path / "ds"))
    assert m is not None and m.extra["counters"]["s2_looks_offset"] == 1
    looks = [r.getMessage() for r in caplog.records if ">= 1000" in r.getMessage()]
    assert len(looks) == 1 and "cell_a" in looks[0] and "--s2-offset -1000" in looks[0]
    # forcing the offset fixes it (zarr store: same record)
    z = build(_cfg(tmp_path / "cells", tmp_path / "ds.zarr", format="zarr", s2_offset="-1000"))
    assert z is not None and z.extra["s2_offset"]["groups"][0]["offset"] == -1000
    ds = ZarrDataset(tmp_path / "ds.zarr")
    assert min(int(ds[i]["s2"][ds[i]["s2"] > 0].min()) for i in range(len(ds))) < 1000


def test_ssl4eo_metadata_baseline_means_no_correction(shared_data: Path) -> None:
    folders = sorted((shared_data / "ssl4eo_s12" / "s2a").glob("*/*/"))
    assert folders
    for d in folders:
        got = s2b.decide(sorted(d.glob("B*.tif")), shared_data / "ssl4eo_s12" / "s2a")
        assert (got.offset, got.baseline, got.origin, got.status) == (0, "02.14",
                                                                      "metadata.json", "found")


def test_old_manifest_without_record_still_reads(majortom_built, tmp_path: Path) -> None:
    out, _, _ = majortom_built
    d = json.loads((out / MANIFEST_NAME).read_text())
    del d["extra"]["s2_offset"]
    old = tmp_path / "old"
    old.mkdir()
    (old / MANIFEST_NAME).write_text(json.dumps(d))
    handler = _Capture()
    logging.getLogger("eofm.data_shards").addHandler(handler)
    try:
        assert "s2_offset" not in load_manifest(old).extra
        assert "s2 offset" not in summary(old) and "modality s2" in summary(old)
        load_manifest(out)  # recorded: nothing to say
    finally:
        logging.getLogger("eofm.data_shards").removeHandler(handler)
    # the old one is warned about, once per process, naming the dataset and the fix
    warned = [w for w in handler.messages if "built before eofm removed" in w]
    assert len(warned) == 1 and str(old) in warned[0] and "eofm-shard build" in warned[0]
    s2 = d["modalities"]["s2"]
    s1 = Manifest.from_dict({**d, "modalities": {"s1": {
        **s2, "sensor": "s1_grd", "bands": ["VV"], "shape": [1, *s2["shape"][1:]],
        "nodata": [None], "stats": {}}}}, source="s1-only")
    assert not warn_unrecorded_s2_offset(s1, "s1-only")  # not Sentinel-2: no record needed


def test_cli_option(shared_data: Path, tmp_path: Path, capsys) -> None:
    product = next(_majortom(shared_data).rglob(N0400))
    base = ["build", str(product), "--tile", "534", "--bands", "s2=" + ",".join(BANDS), "--quiet"]
    assert shard_main([*base, "--out", str(tmp_path / "a"), "--s2-offset", "sometimes"]) == 2
    assert "s2_offset: expected 'auto', 'none'" in capsys.readouterr().err
    assert shard_main([*base, "--out", str(tmp_path / "b"), "--s2-offset", "-1000"]) == 0
    assert load_manifest(tmp_path / "b").extra["s2_offset"]["groups"][0]["status"] == "forced"


@pytest.mark.parametrize(("spec", "default", "per"), [
    ("auto", "auto", {}),
    (["none"], 0, {}),
    (["none", "majortom_s2l2a=-1000"], 0, {"majortom_s2l2a": -1000}),
    (["a/b=none", "-1000", "c=auto"], -1000, {"a/b": 0, "c": "auto"}),
])
def test_offset_spec_per_input(spec, default, per) -> None:
    assert s2b.parse_spec(spec) == (default, per)
    assert s2b.mode_for("../x/majortom_s2l2a", default, per) == per.get(
        "majortom_s2l2a", default)


@pytest.mark.parametrize("bad", ["=none", "x=sometimes", "x=+1000"])
def test_bad_offset_spec_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="s2_offset: expected"):
        s2b.parse_spec(["auto", bad])


def test_one_input_forced_beside_another(shared_data: Path, tmp_path: Path) -> None:
    """Two inputs of one build, each decided on its own: the N0400 product left alone
    (`none`), the N9999 product forced to -1000 by its folder name; naming an input that is
    not in the build is refused with the build's inputs listed."""
    root = _majortom(shared_data)
    a, b = next(root.rglob(N0400)), next(root.rglob(N9999))
    build(_cfg(a, tmp_path / "raw", more_sources=[str(b)], s2_offset="none"))
    build(_cfg(a, tmp_path / "mixed", more_sources=[str(b)],
               s2_offset=["none", f"{N9999}=-1000"]))
    raw, got = _per_product(tmp_path / "raw"), _per_product(tmp_path / "mixed")
    assert got[N0400]["min"] == raw[N0400]["min"]  # left as it is
    assert got[N9999]["min"] == [max(m - 1000, 1) for m in raw[N9999]["min"]]  # forced
    assert got[N9999]["meta"]["s2_offset"]["status"] == "forced"
    with pytest.raises(ValueError, match=r"s2_offset: \['elsewhere'\] name no Sentinel-2 input"):
        build(_cfg(a, tmp_path / "bad", s2_offset=["elsewhere=-1000"]))
