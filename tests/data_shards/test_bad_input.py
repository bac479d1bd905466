"""Each kind of bad input gets an error naming the file and what was expected; nothing
half-written is ever listed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from geotiff_like import write_like

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.checks import verify
from eofm.data_shards.cli import main
from eofm.data_shards.grid import AlignmentError, align, crs_unit
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.layouts import LayoutOptions
from eofm.data_shards.manifest import ManifestError, load_manifest
from eofm.data_shards.raster_io import Geo, Raster
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.writer import ShardWriter


def _copy_scene(sample_data: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "scene"
    shutil.copytree(sample_data / "sentinel2_l1c_scene", dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst





def _build(src: Path, out: Path, **kw) -> None:
    build(BuildConfig(str(src), str(out), progress=False, **kw))


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope: input not found"):
        _build(tmp_path / "nope", tmp_path / "out")


def test_empty_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no known input layout"):
        _build(tmp_path / "empty", tmp_path / "out")


def test_missing_band_file(sample_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "ben"
    shutil.copytree(sample_data / "bigearthnet", src)
    victim = next(src.rglob("*_B05.tif"))
    victim.chmod(0o644)
    victim.unlink()
    with pytest.raises(ValueError, match=rf"{victim.parent.name}: missing band files for s2_l2a: \['B05'\]"):
        _build(src, tmp_path / "out")


def test_band_list_that_does_not_match_sensor(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "eurosat_ms"
    # the first item in write order (seeded, not by key): any EuroSAT tile, named by its path
    with pytest.raises(ValueError, match=r"eurosat_ms/(\w+)/\1_\d+\.tif: expected 12 bands "
                                         r".* file has 13"):
        _build(src, tmp_path / "out", layout_options=LayoutOptions(
            file_bands=["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B11",
                        "B12", "B8A"]))
    with pytest.raises(ValueError, match="B13"):
        _build(src, tmp_path / "out2", ingest=IngestOptions(bands={"s2": ["B04", "B13"]}))


def test_mixed_resolutions_that_cannot_align(sample_data: Path, tmp_path: Path) -> None:
    src = _copy_scene(sample_data, tmp_path)
    b05 = tifffile.imread(src / "s2_B05.jp2")
    write_like(src / "s2_B05.jp2", src / "s2_B05.jp2", b05, tiepoint_shift=5.0)  # half a 10 m px
    with pytest.raises(ValueError, match=r"s2_B05\.jp2: band B05 origin x=.* not on the 10.0 m grid"):
        _build(src, tmp_path / "out", ingest=IngestOptions(tile=96))


@pytest.mark.parametrize(("crs", "unit"), [("EPSG:4326", "degrees"), ("EPSG:32633", "m"),
                                           ("EPSG:2056", "CRS units"), ("", "CRS units")])
def test_grids_that_cannot_align_are_told_in_the_crs_unit(crs: str, unit: str) -> None:
    """Pixel sizes and origins are printed in the CRS's unit (degrees for EPSG:4326, whose
    grids were called "m grid"), else "CRS units"."""
    step = 0.0002 if unit == "degrees" else 20.0
    fine = step / 2
    a = Raster(np.zeros((1, 4, 4), np.uint16), "a.tif", Geo(0.0, 0.0, fine, fine, crs))
    off = Raster(np.zeros((1, 2, 2), np.uint16), "b.tif",
                 Geo(fine / 2, 0.0, step, step, crs))  # origin half a fine pixel off
    with pytest.raises(AlignmentError, match=rf"^b\.tif: band B origin x={fine / 2} is not on "
                                             rf"the {fine} {unit} grid starting at 0\.0"):
        align([("A", a), ("B", off)], "item")
    odd = Raster(np.zeros((1, 2, 2), np.uint16), "c.tif", Geo(0.0, 0.0, 1.5 * fine, step, crs))
    with pytest.raises(AlignmentError, match=rf"^c\.tif: band C pixel size {1.5 * fine} {unit} "
                                             rf"is not an integer multiple of the finest "
                                             rf"{fine} {unit}"):
        align([("A", a), ("C", odd)], "item")
    assert crs_unit(crs) == (None if unit == "CRS units" else unit)


def test_wrong_dtype(sample_data: Path, tmp_path: Path) -> None:
    src = _copy_scene(sample_data, tmp_path)
    b02 = tifffile.imread(src / "s2_B02.jp2").astype(np.float32)
    write_like(src / "s2_B02.jp2", src / "s2_B02.jp2", b02)
    with pytest.raises(ValueError, match=r"s2_B02\.jp2: expected pixels of dtype uint16 .* got float32"):
        _build(src, tmp_path / "out")


def test_nan_pixels(sample_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "ben"
    shutil.copytree(sample_data / "bigearthnet", src)
    vv = next(src.rglob("*_VV.tif"))
    data = tifffile.imread(vv)
    data[3, 4] = np.nan
    data[5, 5] = np.inf
    write_like(vv, vv, data)
    with pytest.raises(ValueError, match=r"NaN/inf pixels in bands \{'VV': 2\}"):
        _build(src, tmp_path / "out")
    _build(src, tmp_path / "ok", ingest=IngestOptions(nan_policy="nodata"))
    assert load_manifest(tmp_path / "ok").modalities["s1"].stats["VV"]["nodata_fraction"] > 0


def test_corrupt_raster(sample_data: Path, tmp_path: Path) -> None:
    src = _copy_scene(sample_data, tmp_path)
    (src / "s2_B03.jp2").write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match=r"s2_B03\.jp2: cannot read as GeoTIFF"):
        _build(src, tmp_path / "out")


@pytest.fixture
def small(sample_data: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    _build(sample_data / "bigearthnet", out, shard_samples=2)
    return out


def test_truncated_tar_is_named_by_verify_and_skipped_by_reader(small: Path, capsys) -> None:
    shard = small / load_manifest(small).shards[1].name
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert main(["verify", str(small)]) == 1
    err = capsys.readouterr().err
    assert shard.name in err and "truncated" in err
    with pytest.raises(ValueError, match="truncated"):
        list(ShardDataset(small, errors="strict", shuffle_shards=False))
    with pytest.raises(RuntimeError, match=r"skipped .* > max_skip_fraction"):
        list(ShardDataset(small, shuffle_shards=False))  # 1-2 of 6 lost > 1 %
    got = list(ShardDataset(small, shuffle_shards=False, max_skip_fraction=0.5))
    assert 4 <= len(got) < 6


def test_corrupt_sample_payload(small: Path) -> None:
    shard = small / load_manifest(small).shards[0].name
    data = bytearray(shard.read_bytes())
    i = data.find(b"\x93NUMPY")
    data[i : i + 6] = b"XXXXXX"
    shard.write_bytes(bytes(data))
    assert any("bad magic" in str(p) and shard.name in str(p) for p in verify(small))
    with pytest.raises(ValueError, match="bad magic"):
        list(ShardDataset(small, errors="strict", shuffle_shards=False))


def test_corrupt_npy_header_text(small: Path, capsys, caplog) -> None:
    """A damaged header dict (not just its magic) reads as a bad sample: verify prints a FAIL
    line naming the shard, the reader skips and counts it (strict: ValueError)."""
    shard = small / load_manifest(small).shards[0].name
    data = bytearray(shard.read_bytes())
    i = data.find(b"{'descr'")
    data[i : i + 2] = b"{("  # ast.literal_eval would raise SyntaxError
    shard.write_bytes(bytes(data))
    assert main(["verify", str(small)]) == 1
    err = capsys.readouterr().err
    assert f"FAIL {shard}" in err and "not a valid .npy header" in err
    with pytest.raises(ValueError, match=r"not a valid \.npy header"):
        list(ShardDataset(small, errors="strict", shuffle_shards=False))
    caplog.set_level("WARNING")
    got = list(ShardDataset(small, shuffle_shards=False, max_skip_fraction=0.5))
    assert len(got) == load_manifest(small).sample_count - 1
    assert f"skipping sample {shard.name}/" in caplog.text


def test_local_shard_cut_at_member_boundary(small: Path, caplog) -> None:
    """A local (memory-mapped) shard that ends after a whole member but without the
    end-of-archive blocks is truncated: strict raises naming it, skip mode counts its lost
    sample instead of yielding it without its last members."""
    import tarfile

    m = load_manifest(small)
    shard = small / m.shards[-1].name
    with tarfile.open(shard) as tf:
        last = tf.getmembers()[-1]
    shard.write_bytes(shard.read_bytes()[: last.offset])  # drop the last member + end blocks
    with pytest.raises(ValueError, match=rf"{shard.name}: truncated tar .*end-of-archive"):
        list(ShardDataset(small, errors="strict", shuffle_shards=False))
    caplog.set_level("WARNING")
    got = list(ShardDataset(small, shuffle_shards=False, max_skip_fraction=0.5))
    assert len(got) == m.sample_count - 1
    assert f"skipping 1 samples of shard {shard.name}" in caplog.text


def test_manifest_that_disagrees_with_shards(small: Path) -> None:
    mpath = small / "manifest.json"
    d = json.loads(mpath.read_text())
    d["shards"][0]["samples"] += 1
    d["sample_count"] += 1
    mpath.write_text(json.dumps(d))
    problems = [str(p) for p in verify(small)]
    assert any(d["shards"][0]["name"] in p and "manifest says 3" in p for p in problems)
    d["format_version"] = 99
    mpath.write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="format_version: expected 1, got 99"):
        load_manifest(small)


def test_interrupted_write_is_never_listed(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, max_samples=2) as w:
        for i in range(3):
            w.write({"__key__": f"k{i}", "x.npy": b"0123"})
        raise RuntimeError("killed")
    assert [s.name for s in w.finished] == ["shard-000000.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar"]


def test_rerun_after_interruption(sample_data: Path, tmp_path: Path, monkeypatch) -> None:
    """A crash mid-build leaves no manifest; the re-run rebuilds and lists only whole shards."""
    import eofm.data_shards.build as b

    out = tmp_path / "ds"
    real = b.sample_bytes
    calls = {"n": 0}

    def dying(s):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(s)

    monkeypatch.setattr(b, "sample_bytes", dying)
    with pytest.raises(KeyboardInterrupt):
        _build(sample_data / "bigearthnet", out, shard_samples=2)
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(b, "sample_bytes", real)
    _build(sample_data / "bigearthnet", out, shard_samples=2)
    assert verify(out) == [] and load_manifest(out).sample_count == 6
    with pytest.raises(FileExistsError, match="--overwrite"):
        _build(sample_data / "bigearthnet", out)


def test_rerun_with_other_options_rewrites_everything(sample_data: Path, tmp_path: Path) -> None:
    """Parts from an interrupted run are reused only when the options match."""
    import eofm.data_shards.build as b

    src, out = str(sample_data / "bigearthnet"), tmp_path / "ds"
    b.build(BuildConfig(src, str(out), num_writers=3, writer_id=2, progress=False))
    assert (out / b.PARTS / "writer-02.json").exists()
    m = b.build(BuildConfig(src, str(out), num_writers=2, progress=False,
                            ingest=IngestOptions(tile=60)))
    assert m is not None and m.sample_count == 24 and verify(out) == []
    assert not list(out.glob("shard-02-*")) and not (out / b.PARTS / "writer-02.json").exists()


def test_a_writer_leaves_the_other_writers_shards_in_progress(sample_data: Path,
                                                              tmp_path: Path) -> None:
    """--writer-id writers (one per machine) share --out: starting writer 1 must not delete
    writer 0's shard being written (it deleted every *.tmp, so writer 0's rename failed as if
    the disk were full); a build by one writer clears every dead temporary file."""
    import eofm.data_shards.build as b

    src, out = str(sample_data / "bigearthnet"), tmp_path / "ds"
    out.mkdir()
    other = out / "shard-00-000000.tar.tmp"  # writer 0, mid-shard
    own = out / "shard-01-000007.tar.tmp"  # writer 1's own dead write from an earlier run
    other.write_bytes(b"x" * 100)
    own.write_bytes(b"x" * 100)
    b.build(BuildConfig(src, str(out), num_writers=2, writer_id=1, progress=False))
    assert other.read_bytes() == b"x" * 100 and not own.exists()
    single = tmp_path / "single"  # one build writing alone: every *.tmp is a dead write
    single.mkdir()
    (single / "shard-05-000000.tar.tmp").write_bytes(b"x")
    b.build(BuildConfig(src, str(single), progress=False))
    assert not list(single.glob("*.tmp"))
