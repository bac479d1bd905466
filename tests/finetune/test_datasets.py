"""Labelled data for the probe: EuroSAT folders, tar shards and zarr stores, by band name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.layouts import EUROSAT_FILE_BANDS, LayoutOptions
from eofm.data_shards.sensors import get_sensor
from eofm.finetune.datasets import open_labelled

S2_L1C = get_sensor("s2_l1c").band_names


def write_eurosat(root: Path, classes: int = 3, per_class: int = 4, size: int = 16,
                  seed: int = 0) -> Path:
    """A EuroSAT-layout folder: ROOT/<Class>/<Class>_<i>.tif, (H, W, 13) uint16 in file order."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"Class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            x = rng.integers(500, 3000, (size, size, 13)).astype(np.uint16)
            x[..., c] += 2000  # class-dependent brightness in one band
            tifffile.imwrite(d / f"Class{c}_{i}.tif", x, photometric="minisblack",
                             planarconfig="contig")
    return root


def test_eurosat_folder_named_bands_and_labels(tmp_path: Path) -> None:
    src = write_eurosat(tmp_path / "eurosat")
    data = open_labelled(src, progress=False)
    assert len(data) == 12 and data.kind == "class"
    assert data.classes == ["Class0", "Class1", "Class2"]
    assert data.bands == S2_L1C  # sensor order, not EuroSAT's file order (B8A last)
    assert data.sensor == "s2_l1c" and data.size == (16, 16)
    assert sorted(np.bincount(data.labels).tolist()) == [4, 4, 4]
    for i in range(len(data)):
        x, y = data[i]
        cls = data.classes[y]
        raw = tifffile.imread(src / cls / f"{data.keys[i].removeprefix(cls + '_')}.tif")
        for b in ("B02", "B8A", "B10"):  # by name: band b is file band EUROSAT_FILE_BANDS.index(b)
            assert np.array_equal(x[data.bands.index(b)], raw[..., EUROSAT_FILE_BANDS.index(b)])
    assert set(data.stats) == set(data.bands) and data.stats["B02"]["std"] > 0


def test_eurosat_real(shared_data: Path) -> None:
    src = shared_data / "eurosat_ms"
    data = open_labelled(src, progress=False)
    assert len(data) == 202
    assert len(data.classes) == 10 and data.classes[0] == "AnnualCrop"
    assert data.bands == S2_L1C and len(data.bands) == 13
    assert data.bands[8] == "B8A" and data.bands[-1] == "B12"
    assert int(np.bincount(data.labels).min()) >= 20
    i = data.keys.index("Forest_Forest_7")
    x, y = data[i]
    raw = tifffile.imread(src / "Forest" / "Forest_7.tif")
    assert data.classes[y] == "Forest"
    assert np.array_equal(x[data.bands.index("B8A")], raw[..., 12])
    assert np.array_equal(x[data.bands.index("B09")], raw[..., 8])


@pytest.fixture(scope="module")
def bigearthnet_shards(sample_data: Path, tmp_path_factory) -> Path:
    """The bundled BigEarthNet sample (S2 + S1, multi-labels) built as tar shards."""
    out = tmp_path_factory.mktemp("ben") / "shards"
    build(BuildConfig(str(sample_data / "bigearthnet"), str(out), progress=False))
    return out


def test_shards_multilabel(bigearthnet_shards: Path) -> None:
    data = open_labelled(bigearthnet_shards, modality="s2")
    assert len(data) == 6 and data.kind == "multilabel"
    assert data.labels.shape == (6, len(data.classes)) and data.labels.dtype == np.uint8
    assert data.labels.sum(axis=1).min() >= 1  # every patch has a label
    x, y = data[0]
    assert x.shape == (len(data.bands), 120, 120) and y.shape == (len(data.classes),)
    assert "B10" not in data.bands and data.sensor == "s2_l2a"


def test_modality_choice(bigearthnet_shards: Path) -> None:
    assert open_labelled(bigearthnet_shards, prefer_bands=["VV", "VH"]).modality == "s1"
    assert open_labelled(bigearthnet_shards, prefer_bands=["B02", "B03"]).modality == "s2"
    with pytest.raises(ValueError, match="modality 'hsi' not in the dataset"):
        open_labelled(bigearthnet_shards, modality="hsi")


@pytest.mark.parametrize("in_memory", [True, False])
def test_zarr_store_matches_folder(tmp_path: Path, monkeypatch, in_memory: bool) -> None:
    """Read whole (a small store, the default) or one chunk per sample (a store larger than
    ZARR_IN_MEMORY_BYTES), a zarr store gives the folder's samples."""
    import eofm.finetune.datasets as datasets

    if not in_memory:
        monkeypatch.setattr(datasets, "ZARR_IN_MEMORY_BYTES", 0)
    src = write_eurosat(tmp_path / "eurosat", classes=2, per_class=3)
    store = tmp_path / "eurosat.zarr"
    build(BuildConfig(str(src), str(store), format="zarr", progress=False))
    z, f = open_labelled(store), open_labelled(src, progress=False)
    assert z.keys == f.keys and z.bands == f.bands and z.classes == f.classes
    assert np.array_equal(z.labels, f.labels)
    for _ in range(2):  # a second pass reads the same (nothing cached is changed)
        for i in range(len(z)):
            assert np.array_equal(z.pixels(i), f.pixels(i))


def test_shards_in_any_write_order_read_as_the_folder_does(tmp_path: Path) -> None:
    """Builds mix items across shards (--order-seed, --num-writers): read back in that order,
    the same samples got another held-out split and other probe folds than the raw folder's."""
    src = write_eurosat(tmp_path / "eurosat", classes=3, per_class=4)
    f = open_labelled(src, progress=False)
    assert f.keys == sorted(f.keys)
    for name, kw in (("mixed", {"order_seed": 3, "num_writers": 2, "shard_samples": 5}),
                     ("mixed.zarr", {"order_seed": 3, "format": "zarr"})):
        build(BuildConfig(str(src), str(tmp_path / name), progress=False, **kw))
        d = open_labelled(tmp_path / name)
        assert d.keys == f.keys, name
        assert np.array_equal(d.labels, f.labels)
        for i in range(len(d)):
            assert np.array_equal(d.pixels(i), f.pixels(i))


def test_unlabelled_and_missing_refused(tmp_path: Path) -> None:
    src = tmp_path / "flat"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", np.ones((16, 16, 13), np.uint16), photometric="minisblack",
                     planarconfig="contig")
    out = tmp_path / "unlabelled"
    build(BuildConfig(str(src), str(out), layout="multiband",
                      layout_options=LayoutOptions(sensor="s2_l1c"), progress=False))
    with pytest.raises(ValueError, match="expected class or multilabel labels, got none"):
        open_labelled(out)
    with pytest.raises(ValueError, match="labelled data not found"):
        open_labelled(tmp_path / "nowhere")


def test_raw_folder_takes_the_s2_offset_setting(tmp_path: Path) -> None:
    """A raw labelled folder is built with the given --s2-offset: -1000 removes the baseline
    offset from every valid pixel; a bad value is refused by name."""
    src = write_eurosat(tmp_path / "eurosat", classes=2, per_class=2)
    plain = open_labelled(src, progress=False, s2_offset="none")
    shifted = open_labelled(src, progress=False, s2_offset="-1000")
    assert plain.keys == shifted.keys
    for i in range(len(plain)):
        a, b = plain.pixels(i).astype(np.int64), shifted.pixels(i).astype(np.int64)
        assert np.array_equal(b, np.maximum(a - 1000, 1))  # valid pixels never become nodata
    with pytest.raises(ValueError, match="s2_offset: expected 'auto', 'none'"):
        open_labelled(src, progress=False, s2_offset="sometimes")


def test_a_raw_folder_records_the_s2_offset_its_build_applied(tmp_path: Path) -> None:
    """The offset a raw folder's build applied is in the data (and so in the probe's report),
    from the build's extra.s2_offset record: forced -1000, or auto's decision (0, unknown)."""
    src = write_eurosat(tmp_path / "eurosat", classes=2, per_class=2)
    forced = open_labelled(src, progress=False, s2_offset="-1000").describe()["s2_offset"]
    assert forced["mode"] == "-1000"
    assert [(g["offset"], g["status"], g["items"]) for g in forced["groups"]] == [
        (-1000, "forced", 4)]
    auto = open_labelled(src, progress=False).s2_offset
    assert auto["mode"] == "auto"
    assert [(g["offset"], g["status"]) for g in auto["groups"]] == [(0, "unknown")]


@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_a_built_dataset_refuses_an_s2_offset_its_build_did_not_apply(tmp_path: Path,
                                                                      fmt: str) -> None:
    """A built dataset's pixels got their Sentinel-2 offset at build time: a forced
    s2_offset (eofm-probe --s2-offset, eofm-finetune data.s2_offset) used to be ignored for
    shards and zarr. It is refused, naming the recorded decision, unless it is what the
    build applied; the data carries the stored record."""
    src = write_eurosat(tmp_path / "eurosat", classes=2, per_class=2)
    suffix = ".zarr" if fmt == "zarr" else ""
    built, forced = tmp_path / f"auto{suffix}", tmp_path / f"forced{suffix}"
    build(BuildConfig(str(src), str(built), format=fmt, progress=False))
    build(BuildConfig(str(src), str(forced), format=fmt, s2_offset="-1000", progress=False))
    with pytest.raises(ValueError) as e:
        open_labelled(built, s2_offset="-1000")
    msg = str(e.value)
    assert msg.startswith(f"{built}: s2_offset '-1000'") and "extra.s2_offset" in msg, msg
    assert f"offset +0 DN for 4 item(s) of {src}" in msg and "not corrected" in msg, msg
    assert "--s2-offset auto" in msg
    data = open_labelled(built, s2_offset="none")  # what the build applied: accepted
    assert [g["offset"] for g in data.describe()["s2_offset"]["groups"]] == [0]
    assert open_labelled(built).s2_offset == data.s2_offset
    stored = open_labelled(forced, s2_offset="-1000").s2_offset
    assert [(g["offset"], g["status"]) for g in stored["groups"]] == [(-1000, "forced")]
    with pytest.raises(ValueError, match="offset -1000 DN for 4 item"):
        open_labelled(forced, s2_offset="none")
    with pytest.raises(ValueError, match="s2_offset: expected 'auto', 'none'"):
        open_labelled(built, s2_offset="sometimes")


def test_raw_folder_needing_layout_options_says_build_shards_first(tmp_path: Path) -> None:
    """Class folders of 3-band GeoTIFFs need --layout/--sensor/--file-bands, which eofm-probe
    and eofm-finetune do not take: the error keeps the layout's reason and says to build
    labelled shards with eofm-shard build first, then pass them as --data."""
    for cls in ("Forest", "River"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        tifffile.imwrite(tmp_path / "src" / cls / "a.tif", np.ones((8, 8, 3), np.uint16),
                         photometric="minisblack", planarconfig="contig")
    with pytest.raises(ValueError) as e:
        open_labelled(tmp_path / "src", progress=False)
    msg = str(e.value)
    assert "the multiband layout needs --sensor" in msg  # the reason
    assert (f"build labelled shards first, e.g. `eofm-shard build {tmp_path / 'src'} --layout "
            "eurosat --sensor SENSOR --file-bands B1,B2,... --out DATASET`") in msg
    assert msg.endswith("then pass --data DATASET")


@pytest.mark.parametrize("fmt", ["shards", "zarr"])
def test_pixels_a_build_marked_invalid_read_as_nodata(tmp_path: Path, fmt: str) -> None:
    """A pixel that is nodata in one band (B10) is invalid for pretraining in every band (the
    build's ``s2.valid.npy`` / ``s2_valid``): it reads as nodata in every band, so an encoder
    fed other bands gets 0s there (as pretraining feeds) and the band-statistics baseline
    leaves it out (the probe used to read the pixels alone and feed B04's value as data)."""
    from eofm.finetune.features import apply_contract
    from eofm.finetune.probe import band_stats_features
    from eofm.models import InputContract

    root = write_eurosat(tmp_path / "eurosat", classes=2, per_class=2)
    first = sorted((root / "Class0").glob("*.tif"))[0]
    raw = tifffile.imread(first)  # (H, W, 13) in EUROSAT_FILE_BANDS order
    raw[:4, :4, EUROSAT_FILE_BANDS.index("B10")] = 0  # s2_l1c nodata
    tifffile.imwrite(first, raw, photometric="minisblack", planarconfig="contig")
    out = tmp_path / ("ds.zarr" if fmt == "zarr" else "ds")
    build(BuildConfig(source=str(root), out=str(out), progress=False, order_seed=None))
    data = open_labelled(out, progress=False)
    i = data.keys.index(f"Class0_{first.stem}")
    nodata = data.nodata[data.bands.index("B04")]
    assert nodata == 0
    x = data.pixels(i)
    assert (x[:, :4, :4] == 0).all()  # every band, not only B10
    b04 = data.bands.index("B04")
    np.testing.assert_array_equal(x[b04, 4:, 4:], raw[4:, 4:, EUROSAT_FILE_BANDS.index("B04")])
    stats = {"B04": {"mean": 1000.0, "std": 500.0}}
    contract = InputContract(sensors=("s2_l1c",), bands=["B04"], gsd=10.0,
                             units=data.units, processing_level="L1C", nodata=0.0,
                             normalisation="meanstd", stats=stats, input_size=(16, 16),
                             patch_size=8)
    fed = apply_contract(data, contract)(x[None])
    assert (fed[0, 0, :4, :4] == 0).all() and (fed[0, 0, 4:, 4:] != 0).all()
    mean_std = band_stats_features(data, ["B04"])[i]
    kept = raw[..., EUROSAT_FILE_BANDS.index("B04")].astype(np.float64)
    keep = np.ones(kept.shape, bool)
    keep[:4, :4] = False
    np.testing.assert_allclose(mean_std, [kept[keep].mean(), kept[keep].std()], rtol=1e-5)


def _mostly_nodata(root: Path) -> Path:
    """Zero 10 of the 16 rows (62.5 %, every band) of the first image of Class0, as a tile at
    a swath edge: over ``eofm-shard build``'s default --max-nodata 0.5."""
    first = sorted((root / "Class0").glob("*.tif"))[0]
    raw = tifffile.imread(first)
    raw[:10] = 0
    tifffile.imwrite(first, raw, photometric="minisblack", planarconfig="contig")
    return first


def test_raw_folder_keeps_a_mostly_nodata_labelled_image(tmp_path: Path) -> None:
    """A raw labelled folder loses no sample to the build's nodata screening (it silently
    dropped an image over 50 % nodata: 'files 12, samples 11'); its nodata pixels read as
    nodata, and nothing is reported as dropped."""
    root = write_eurosat(tmp_path / "eurosat")
    first = _mostly_nodata(root)
    data = open_labelled(root, progress=False)
    assert len(data) == 12
    x = data.pixels(data.keys.index(f"Class0_{first.stem}"))
    assert (x[:, :10] == 0).all() and (x[:, 10:] != 0).any()
    assert data.dropped == {} and "dropped_samples" not in data.describe()


@pytest.mark.parametrize("fmt", ["shards", "zarr"])
def test_a_built_dataset_says_how_many_tiles_its_build_dropped(tmp_path: Path,
                                                               fmt: str) -> None:
    """A dataset built with eofm-shard build's default --max-nodata 0.5 lacks the mostly-nodata
    image; the manifest's dropped_nodata counter reaches describe() (report.json) and a note."""
    root = write_eurosat(tmp_path / "eurosat")
    _mostly_nodata(root)
    out = tmp_path / ("ds.zarr" if fmt == "zarr" else "ds")
    build(BuildConfig(source=str(root), out=str(out), progress=False, order_seed=None))
    data = open_labelled(out, progress=False)
    assert len(data) == 11 and data.dropped == {"nodata": 1}
    d = data.describe()["dropped_samples"]
    assert d["nodata"] == 1 and d["limits"] == {"max_nodata": 0.5}
    assert d["note"] == (f"{out}: its build dropped 1 tile(s) (1 for more than 50% nodata "
                         "(eofm-shard build --max-nodata 0.5)); they are not among these 11 "
                         "samples")


def test_bands_split_over_paired_modalities_are_refused_with_the_way_out() -> None:
    """An S2 + S1 (stacked) encoder on a dataset holding S2 and S1 as two paired modalities:
    the S2 modality alone was read, and VV/VH reported absent from the data."""
    from eofm.data_shards.manifest import Manifest, ModalityInfo
    from eofm.finetune.datasets import pick_modality

    s2 = ["B02", "B03", "B04", "B08"]
    m = Manifest({"s2": ModalityInfo("s2_l2a", s2, "uint16", [4, 8, 8], 0, 10.0, None),
                  "s1": ModalityInfo("s1_grd", ["VV", "VH"], "float32", [2, 8, 8], None, 10.0,
                                     None)})
    with pytest.raises(ValueError) as err:
        pick_modality("ben", m, None, [*s2, "VV", "VH"])
    msg = str(err.value)
    assert "['VV', 'VH'] in modality s1, the others in s2" in msg
    assert "eofm-shard build --stack s2,s1" in msg and "--modality s2" in msg
    assert pick_modality("ben", m, None, s2) == "s2"  # all in one modality: as before
    assert pick_modality("ben", m, None, ["VV", "VH"]) == "s1"
    assert pick_modality("ben", m, "s2", [*s2, "VV", "VH"]) == "s2"  # asked for: its bands alone
