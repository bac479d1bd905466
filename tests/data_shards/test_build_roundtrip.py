"""Raster -> shards -> reader reproduces pixels and metadata exactly, on real tiles."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.checks import verify
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.layouts import EUROSAT_FILE_BANDS
from eofm.data_shards.loader import ShardLoader
from eofm.data_shards.manifest import load_manifest
from eofm.data_shards.raster_io import read_raster
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.sensors import get_sensor
from eofm.data_shards.zarr_store import ZarrDataset


@pytest.fixture(scope="module")
def eurosat(shared_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "eurosat"
    build(BuildConfig(str(shared_data / "eurosat_ms"), str(out), shard_samples=50, progress=False))
    return out


def _all(ds: ShardDataset) -> dict[str, dict]:
    return {s["__key__"]: s for s in ds}


def test_eurosat_pixels_labels_and_band_order(eurosat: Path, shared_data: Path) -> None:
    m = load_manifest(eurosat)
    s2 = get_sensor("s2_l1c")
    assert m.sample_count == 202 and len(m.shards) == 5
    assert m.modalities["s2"].bands == s2.band_names  # stored in ESA order, not file order
    assert m.labels is not None and m.labels.kind == "class" and len(m.labels.classes) == 10
    samples = _all(ShardDataset(eurosat, with_meta=True, shuffle_shards=False))
    assert len(samples) == 202
    f = shared_data / "eurosat_ms" / "Forest" / "Forest_7.tif"
    raw = tifffile.imread(f)  # (64, 64, 13) in EuroSAT's file order
    s = samples["Forest_Forest_7"]
    for i, band in enumerate(m.modalities["s2"].bands):
        np.testing.assert_array_equal(s["s2"][i], raw[:, :, EUROSAT_FILE_BANDS.index(band)])
    assert s["s2"].dtype == np.uint16
    assert m.labels.classes[int(s["label"])] == "Forest"
    assert s["meta"]["source"] == str(f)
    geo = s["meta"]["modalities"]["s2"]["geo"]
    ref = read_raster(f).geo
    assert ref is not None and (geo["x0"], geo["y0"], geo["crs"]) == (ref.x0, ref.y0, ref.crs)


def _shard_labels(ds: Path) -> list[list[int]]:
    """The class index of every sample, shard by shard in manifest order, as stored."""
    out = []
    for shard in load_manifest(ds).shards:
        with tarfile.open(ds / shard.name) as tf:
            out.append([int(np.load(io.BytesIO(tf.extractfile(m).read())))  # type: ignore[union-attr]
                        for m in tf.getmembers() if m.name.endswith(".labels.npy")])
    return out


def test_shards_mix_the_classes(eurosat: Path) -> None:
    """Items are written in a seeded random order, not by key: EuroSAT keys start with the
    class, so 50-sample shards in key order held 3 of its 10 classes (20 samples each), which
    no reader's shuffle buffer can mix."""
    full = [set(labels) for labels in _shard_labels(eurosat) if len(labels) == 50]
    assert len(full) == 4 and all(len(classes) >= 8 for classes in full), full


def _keys_by_writer(ds: Path) -> dict[int, list[str]]:
    """Sample keys as each writer wrote them (its shards in order, samples in tar order)."""
    out: dict[int, list[str]] = {}
    for shard in load_manifest(ds).shards:
        with tarfile.open(ds / shard.name) as tf:
            out.setdefault(shard.writer, []).extend(
                m.name.split(".")[0] for m in tf.getmembers() if m.name.endswith(".meta.json"))
    return out


def test_write_order_is_seeded_and_the_same_for_any_number_of_processes(
        shared_data: Path, tmp_path: Path) -> None:
    """The same input and options give byte-identical shards (one process or two for the
    same writers); the seed is recorded with the plan; ``order_seed=None`` keeps key order."""
    src = str(shared_data / "eurosat_ms")

    def run(name: str, **kw) -> list[tuple[str, str]]:
        m = build(BuildConfig(src, str(tmp_path / name), shard_samples=30, num_writers=2,
                              progress=False, **kw))
        assert m is not None and m.sample_count == 202
        return [(s.name, s.sha256) for s in m.shards]

    one = run("one")
    assert run("two", workers=2) == one
    part = json.loads((tmp_path / "one" / ".parts" / "writer-01.json").read_text())
    assert part["plan"]["order"]["seed"] == 0 and len(part["plan"]["order"]["keys_sha256"]) == 64
    assert load_manifest(tmp_path / "one").extra["order"] == part["plan"]["order"]
    assert run("other", order_seed=1) != one
    run("key", order_seed=None)
    shuffled, by_key = _keys_by_writer(tmp_path / "one"), _keys_by_writer(tmp_path / "key")
    assert all(keys == sorted(keys) for keys in by_key.values())
    assert all(keys != sorted(keys) for keys in shuffled.values())
    everything = sorted(k for keys in by_key.values() for k in keys)
    assert sorted(k for keys in shuffled.values() for k in keys) == everything
    assert len(everything) == 202


def test_band_selection_by_name(eurosat: Path) -> None:
    full = _all(ShardDataset(eurosat, shuffle_shards=False))
    rgb = _all(ShardDataset(eurosat, shuffle_shards=False, bands={"s2": ["B4", "B03", "b02"]}))
    names = load_manifest(eurosat).modalities["s2"].bands
    for k, s in rgb.items():
        np.testing.assert_array_equal(s["s2"], full[k]["s2"][[names.index(b) for b in
                                                               ("B04", "B03", "B02")]])
    with pytest.raises(ValueError, match="B99"):
        ShardDataset(eurosat, bands={"s2": ["B04", "B99"]})


def test_loader_batches_keep_integers(eurosat: Path) -> None:
    batch = next(iter(ShardLoader(ShardDataset(eurosat), batch_size=8)))
    assert batch["s2"].shape == (8, 13, 64, 64)
    assert str(batch["s2"].dtype) == "torch.uint16"
    assert batch["s2_valid"].dtype.is_floating_point is False and batch["label"].shape == (8,)


def test_verify_healthy_and_inspect(eurosat: Path) -> None:
    assert verify(eurosat) == []
    from eofm.data_shards.checks import summary

    text = summary(eurosat)
    assert "202" in text and "AnnualCrop" in text and "B8A" in text


def test_scene_per_band_files_aligned(sample_data: Path, tmp_path: Path) -> None:
    """10/20/60 m per-band files -> 13-band tiles equal to replicated source pixels."""
    src = sample_data / "sentinel2_l1c_scene"
    out = tmp_path / "scene"
    m = build(BuildConfig(str(src), str(out), ingest=IngestOptions(tile=96), progress=False))
    assert m is not None and m.modalities["s2"].bands == get_sensor("s2_l1c").band_names
    assert m.sample_count == 16  # 384 px at 10 m -> 4 x 4 tiles of 96
    s = _all(ShardDataset(out, shuffle_shards=False, with_meta=True))
    tile = next(v for k, v in s.items() if k.endswith("_r96_c192"))
    b05 = read_raster(src / "s2_B05.jp2").data[0]  # 20 m
    b01 = read_raster(src / "s2_B01.jp2").data[0]  # 60 m
    b02 = read_raster(src / "s2_B02.jp2").data[0]  # 10 m
    bands = m.modalities["s2"].bands
    np.testing.assert_array_equal(tile["s2"][bands.index("B02")], b02[96:192, 192:288])
    np.testing.assert_array_equal(tile["s2"][bands.index("B05")],
                                  np.repeat(np.repeat(b05[48:96, 96:144], 2, 0), 2, 1))
    np.testing.assert_array_equal(tile["s2"][bands.index("B01")],
                                  np.repeat(np.repeat(b01[16:32, 32:48], 6, 0), 6, 1))
    assert tile["meta"]["modalities"]["s2"]["gsd_m"] == 10.0


def test_bigearthnet_pairs_and_multilabels(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ben"
    m = build(BuildConfig(str(shared_data / "bigearthnet"), str(out), progress=False))
    assert m is not None and set(m.modalities) == {"s1", "s2"} and m.sample_count == 6
    assert m.modalities["s1"].bands == ["VV", "VH"] and m.modalities["s1"].dtype == "float32"
    assert len(m.modalities["s2"].bands) == 12 and "B10" not in m.modalities["s2"].bands
    assert m.labels is not None and m.labels.kind == "multilabel"
    for s in ShardDataset(out, with_meta=True):
        names = [m.labels.classes[i] for i in np.flatnonzero(s["label"])]
        assert sorted(names) == sorted(s["meta"]["label_names"])
        assert s["s1"].shape == (2, 120, 120) and s["s2"].shape == (12, 120, 120)
        patch = Path(s["meta"]["s1_source"])
        vv = tifffile.imread(next(patch.glob("*_VV.tif")))
        np.testing.assert_array_equal(s["s1"][0], vv)
        assert json.loads(next(patch.glob("*labels_metadata.json")).read_text())[
            "corresponding_s2_patch"] == Path(s["meta"]["source"]).name


def test_enmap_nodata_bands(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "enmap"
    m = build(BuildConfig(str(shared_data / "enmap_hyspecnet"), str(out),
                          ingest=IngestOptions(tile=64), progress=False))
    assert m is not None and m.modalities["hsi"].dtype == "int16"
    assert len(m.modalities["hsi"].bands) == 224 and m.sample_count == 8
    stats = m.modalities["hsi"].stats
    dead = [b for b, st in stats.items() if st["nodata_fraction"] == 1.0]
    assert len(dead) == 22  # the water-vapour bands are entirely -32768
    s = next(iter(ShardDataset(out, with_meta=True)))
    assert sorted(s["meta"]["modalities"]["hsi"]["empty_bands"]) == sorted(dead)
    assert s["hsi_valid"].mean() > 0.5  # the dead bands do not make every pixel invalid


def test_zarr_store_matches_shards(eurosat: Path, shared_data: Path, tmp_path: Path) -> None:
    z = tmp_path / "eurosat.zarr"
    build(BuildConfig(str(shared_data / "eurosat_ms"), str(z), format="zarr", progress=False))
    ds = ZarrDataset(z)
    shards = _all(ShardDataset(eurosat, shuffle_shards=False))
    assert len(ds) == 202
    for i in (0, 57, 201):
        s = ds[i]
        np.testing.assert_array_equal(s["s2"], shards[s["__key__"]]["s2"])
        assert int(s["label"]) == int(shards[s["__key__"]]["label"])
    assert ZarrDataset(z).manifest.modalities["s2"].stats == load_manifest(eurosat).modalities["s2"].stats


def test_zarr_store_opens_without_a_meta_jsonl_warning(sample_data: Path, tmp_path: Path) -> None:
    """Every ZarrDataset open used to print zarr's "Object at meta.jsonl is not recognized as a
    component of a Zarr hierarchy" (the per-sample metadata file eofm keeps in the store); that
    one warning is silenced, the file stays where readers expect it, and any other stray object
    in the store is still warned about."""
    z = tmp_path / "scene.zarr"
    build(BuildConfig(str(sample_data / "sentinel2_l1c_scene"), str(z), format="zarr",
                      ingest=IngestOptions(tile=192), progress=False))
    assert len((z / "meta.jsonl").read_text().splitlines()) == 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ZarrDataset(z)
        assert len(ds) == 4 and ds[0]["s2"].shape == (13, 192, 192)
    assert [str(w.message) for w in caught if "meta.jsonl" in str(w.message)] == []
    (z / "notes.txt").write_text("not a zarr node")
    with pytest.warns(UserWarning, match=r"^Object at notes\.txt is not recognized"):
        ZarrDataset(z)
