"""``eofm-shard build`` flags that were silently accepted or reported without naming the flag
(the hostile-input audit): each is refused with status 2, a message naming the flag, what was
expected and what came, and nothing written to ``--out``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards.build import BuildConfig
from eofm.data_shards.cli import main
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.sensors import get_sensor


def _refused(capsys, argv: list[str], out: Path, *needles: str) -> str:
    """Run the CLI; assert status 2, every needle in the error line and ``out`` not created."""
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith(f"eofm-shard {argv[0]}: error: "), err
    for needle in needles:
        assert needle in err, err
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    return err


def _l8(sample_data: Path, out: Path, *flags: str) -> list[str]:
    """A small build of the bundled Landsat 8 scene with extra flags."""
    return ["build", str(sample_data / "landsat8_scene"), "--out", str(out),
            "--resample", "nearest", "--tile", "32", "--quiet", *flags]


@pytest.mark.parametrize(("flags", "needles"), [  # b09, b10, b14
    (["--shard-samples", "-1"], ["--shard-samples: expected a positive number", "got -1"]),
    (["--shard-samples", "0"], ["--shard-samples: expected a positive number", "got 0"]),
    (["--shard-size", "0"], ["--shard-size", "expected a positive number of bytes", "got 0"]),
])
def test_non_positive_shard_limits_are_refused(sample_data, tmp_path, capsys, flags,
                                               needles) -> None:
    out = tmp_path / "ds"
    _refused(capsys, _l8(sample_data, out, *flags), out, *needles)


@pytest.mark.parametrize("workers", ["0", "-2"])  # b11, b39
def test_workers_below_one_are_refused(sample_data, tmp_path, capsys, workers) -> None:
    out = tmp_path / "ds"
    _refused(capsys, _l8(sample_data, out, "--workers", workers), out,
             "--workers: expected at least 1", f"got {workers}")


def test_writer_id_outside_the_writers_is_refused(sample_data, tmp_path, capsys) -> None:  # b20
    out = tmp_path / "ds"
    _refused(capsys, _l8(sample_data, out, "--writer-id", "3", "--num-writers", "2"), out,
             "--writer-id: expected 0..1", "--num-writers 2", "got 3")
    _refused(capsys, _l8(sample_data, out, "--writer-id", "-1", "--num-writers", "2"), out,
             "--writer-id", "got -1")
    # without --num-writers the writers are --workers (here 1): writer 1 would write nothing
    _refused(capsys, _l8(sample_data, out, "--writer-id", "1"), out,
             "--writer-id: expected 0..0", "got 1", "--num-writers")


def test_zero_num_writers_is_refused(sample_data, tmp_path, capsys) -> None:  # b21
    out = tmp_path / "ds"
    _refused(capsys, _l8(sample_data, out, "--num-writers", "0", "--writer-id", "0"), out,
             "--num-writers: expected at least 1 writer, got 0")


@pytest.mark.parametrize("value", ["-0.1", "1.5"])  # b38, b13
def test_max_nodata_outside_zero_one_is_refused(sample_data, tmp_path, capsys, value) -> None:
    out = tmp_path / "ds"
    _refused(capsys, _l8(sample_data, out, "--max-nodata", value), out,
             "--max-nodata: expected a fraction in [0, 1]", f"got {value}")


def test_wds_build_that_keeps_no_tile_fails(tmp_path, capsys) -> None:  # b38's empty dataset
    src, out = tmp_path / "src", tmp_path / "ds"
    src.mkdir()
    sensor = get_sensor("s2_l2a")
    np.save(src / "a.npy", np.zeros((len(sensor.band_names), 32, 32), sensor.dtype))  # nodata
    _refused(capsys, ["build", str(src), "--out", str(out), "--layout", "array", "--sensor",
                      "s2_l2a", "--quiet"], out,
             "no tiles passed the nodata limit (--max-nodata 0.5); nothing to write",
             "1 tile(s) cut, 1 dropped for nodata")


@pytest.mark.parametrize(("flags", "needles"), [  # b07, b08, b12 (r15 goes through the CLI)
    (["--tile", "0"], ["--tile: expected a positive number of pixels", "got 0"]),
    (["--tile", "-5"], ["--tile: expected a positive number of pixels", "got -5"]),
    (["--tile", "32", "--stride", "0"],
     ["--stride: expected a positive number of pixels", "the tile size", "got 0"]),
])
def test_non_positive_tile_or_stride_is_refused(sample_data, tmp_path, capsys, flags,
                                                needles) -> None:
    out = tmp_path / "ds"
    argv = ["build", str(sample_data / "landsat8_scene"), "--out", str(out), "--resample",
            "nearest", "--quiet", *flags]
    err = _refused(capsys, argv, out, *needles)
    assert "None" not in err


def test_python_api_passes_the_same_checks(tmp_path) -> None:
    """The checks live in IngestOptions / BuildConfig, which every entry point builds."""
    with pytest.raises(ValueError, match="--tile: expected a positive number of pixels"):
        IngestOptions(tile=0)
    with pytest.raises(ValueError, match=r"--max-nodata: expected a fraction in \[0, 1\]"):
        IngestOptions(max_nodata=float("nan"))
    with pytest.raises(ValueError, match="--workers: expected at least 1"):
        BuildConfig("in", str(tmp_path / "ds"), workers=0)
    with pytest.raises(ValueError, match=r"--writer-id: expected 0\.\.1"):
        BuildConfig("in", str(tmp_path / "ds"), num_writers=2, writer_id=2)


def test_symlink_loop_source_is_named(tmp_path, capsys) -> None:  # b24
    a, b, out = tmp_path / "loop_a", tmp_path / "loop_b", tmp_path / "ds"
    a.symlink_to(b)
    b.symlink_to(a)
    _refused(capsys, ["build", str(a), "--out", str(out)], out,
             f"{a}: input is a symlink loop")


def test_missing_classes_file_names_the_flag(sample_data, tmp_path, capsys) -> None:  # b30
    out, missing = tmp_path / "ds", tmp_path / "nonexistent.txt"
    _refused(capsys, _l8(sample_data, out, "--classes", str(missing)), out,
             "--classes: expected a readable text file", str(missing),
             "No such file or directory")


def test_missing_seg_dir_is_refused(sample_data, tmp_path, capsys) -> None:  # b31
    out, missing = tmp_path / "ds", tmp_path / "nonexistent"
    _refused(capsys, _l8(sample_data, out, "--seg-dir", str(missing)), out,
             "--seg-dir: expected a folder of segmentation rasters", str(missing),
             "does not exist")


def test_seg_dir_for_a_layout_without_segmentation_is_refused(sample_data, tmp_path,
                                                              capsys) -> None:  # b37
    out, seg = tmp_path / "ds", tmp_path / "seg"
    seg.mkdir()
    _refused(capsys, _l8(sample_data, out, "--seg-dir", str(seg)), out,
             "--seg-dir: the per_band layout", "multiband and array layouts use --seg-dir",
             f"got --seg-dir {seg}")


def test_missing_sensors_yaml_names_the_flag(tmp_path, capsys) -> None:  # y03
    ds, missing = tmp_path / "ds", tmp_path / "nonexistent.yaml"
    _refused(capsys, ["stats", str(ds), "--sensors-yaml", str(missing)], ds,
             "--sensors-yaml: expected a readable text file", str(missing),
             "No such file or directory")


def test_stride_without_tile_is_refused(sample_data, tmp_path, capsys) -> None:
    """Without --tile each raster is one tile: a stride there would be silently ignored."""
    out = tmp_path / "ds"
    _refused(capsys, ["build", str(sample_data / "landsat8_scene"), "--out", str(out),
                      "--stride", "16", "--quiet"], out, "--stride: 16 given without --tile")


@pytest.mark.parametrize(("damage", "needle"), [
    (lambda p: [p], "expected a JSON object, got list"),
    (lambda p: {**p, "counters": [1, 2]}, "counters: expected a mapping of name -> whole number"),
    (lambda p: {k: v for k, v in p.items() if k != "shards"}, "shards: expected a list"),
    (lambda p: {**p, "writer": "0"}, "writer: expected a whole number >= 0, got '0'"),
    (lambda p: {**p, "shards": [{"name": "x.tar"}]}, "shards[0].samples"),
], ids=["list", "counters", "no_shards", "writer_str", "shard_entry"])
def test_merge_names_a_damaged_writer_part(sample_data, tmp_path, capsys, damage,
                                           needle) -> None:
    """A writer part that is not what eofm-shard wrote is named with the field, not a
    KeyError/TypeError traceback from the merge."""
    import json

    from eofm.data_shards.build import PARTS

    out = tmp_path / "ds"
    assert main(_l8(sample_data, out, "--num-writers", "1", "--writer-id", "0")) == 0
    part = out / PARTS / "writer-00.json"
    part.write_text(json.dumps(damage(json.loads(part.read_text()))))
    capsys.readouterr()
    assert main(["merge", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eofm-shard merge: error: {part}: not a writer part") and needle in err
    assert not (out / "manifest.json").exists()


def test_merge_names_missing_or_changed_shards_and_statistics(sample_data, tmp_path,
                                                              capsys) -> None:
    """A shard a part lists that is gone or truncated, a statistics file that is gone or
    damaged: named, and no manifest claims the dataset (round 2 of the audit: merged anyway, or
    numpy's allow_pickle message / a bare [Errno 2])."""
    from eofm.data_shards.build import PARTS

    out = tmp_path / "ds"
    assert main(_l8(sample_data, out, "--num-writers", "1", "--writer-id", "0")) == 0
    shard = sorted(out.glob("shard-*.tar"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[:100])
    capsys.readouterr()
    assert main(["merge", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{shard.name} (100 bytes, written {len(data)})" in err and "missing or changed" in err
    shard.write_bytes(data)
    stats = next((out / PARTS).glob("*.npz"))
    stats.write_bytes(b"not an npz")
    assert main(["merge", str(out)]) == 2
    assert f"{stats}: not the statistics file its writer wrote" in capsys.readouterr().err
    stats.unlink()
    assert main(["merge", str(out)]) == 2
    assert f"{stats}: missing; its writer did not finish" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


def test_a_band_given_twice_is_refused(sample_data, tmp_path, capsys) -> None:
    """--bands landsat=B4,B4 wrote shards and an invalid manifest (round 2 of the audit)."""
    out = tmp_path / "ds"
    with pytest.raises(SystemExit) as e:
        main(_l8(sample_data, out, "--bands", "landsat=B4,B4"))
    assert e.value.code == 2 and not out.exists()
    assert "expected each band once, got ['B4'] more than once" in capsys.readouterr().err


# ---------------------------------------------------------------- round 3 of the audit


def _ben(sample_data: Path, out: Path, *flags: str) -> list[str]:
    """A build of the bundled BigEarthNet S1+S2 pairs (modalities s2, s1) with extra flags."""
    return ["build", str(sample_data / "bigearthnet"), "--out", str(out), "--tile", "60",
            "--quiet", *flags]


@pytest.mark.parametrize(("stack", "needles"), [
    ("", ["--stack: expected two or more modalities", "got ''"]),
    ("s2,s1=", ["--stack: expected a name after '='", "got 's2,s1='"]),
    ("s2,,s1", ["--stack: expected modality names separated by commas", "got 's2,,s1'",
                "an empty entry"]),
    ("s2,s1=s2", ["--stack: expected a name for the stacked modality that is not one of its "
                  "parts (s2, s1", "got 's2,s1=s2'", "'s2,s1=s2s1'"]),
], ids=["empty", "unnamed", "empty_entry", "name_of_a_part"])
def test_empty_unnamed_or_clashing_stack_is_refused(sample_data, tmp_path, capsys, stack,
                                                    needles) -> None:
    """--stack '' built the modalities apart, 's2,s1=' named the stack s2s1 anyway and
    's2,s1=s2' wrote radar bands into a modality called s2: refused before any input is read."""
    out = tmp_path / "ds"
    _refused(capsys, _ben(sample_data, out, "--stack", stack), out, *needles)


def test_s2_offset_given_twice_is_refused(sample_data, tmp_path, capsys) -> None:
    """Two modes for every input were recorded as the one mode 'auto -1000' (the last applied);
    one input named twice kept the last. Several inputs decided one by one stay fine."""
    out = tmp_path / "ds"
    _refused(capsys, _ben(sample_data, out, "--s2-offset", "auto", "--s2-offset", "-1000"), out,
             "--s2-offset: expected one mode for every input", "given twice: 'auto' and '-1000'")
    _refused(capsys, _ben(sample_data, out, "--s2-offset", "bigearthnet=-1000", "--s2-offset",
                          "bigearthnet=none"), out,
             "--s2-offset: expected each input once", "'bigearthnet' given twice")
    with pytest.raises(ValueError, match="--s2-offset: expected one mode for every input"):
        BuildConfig("in", str(tmp_path / "ds"), s2_offset=["none", "-1000"])
    BuildConfig("in", str(tmp_path / "ds"), s2_offset=["none", "a=-1000", "b=auto"])


def test_s2_offset_without_a_sentinel2_input_is_refused(sample_data, tmp_path, capsys) -> None:
    """--s2-offset -1000 on Landsat was silently ignored (a wrong --sensor goes unnoticed)."""
    out = tmp_path / "ds"
    _refused(capsys, _l8(sample_data, out, "--s2-offset", "-1000"), out,
             "--s2-offset: expected Sentinel-2 inputs", "offset -1000", "got none",
             "landsat (landsat8_oli_tirs)")


def _array_input(root: Path) -> Path:
    """One 32 px Sentinel-2 L2A array file (every pixel valid) in folder ``root``."""
    root.mkdir()
    sensor = get_sensor("s2_l2a")
    np.save(root / "a.npy", np.full((len(sensor.band_names), 32, 32), 500, sensor.dtype))
    return root


@pytest.mark.parametrize("value", ["", "B04,,B03", " "])
def test_empty_file_bands_is_refused(tmp_path, capsys, value) -> None:
    """--file-bands '' was taken as not given: the sensor's order assumed without a word."""
    src, out = _array_input(tmp_path / "src"), tmp_path / "ds"
    _refused(capsys, ["build", str(src), "--out", str(out), "--layout", "array", "--sensor",
                      "s2_l2a", "--file-bands", value, "--quiet"], out,
             "--file-bands: expected band names in file order", f"got {value!r}")


def test_empty_sensor_is_refused(sample_data, tmp_path, capsys) -> None:
    """--sensor '' was taken as not given: the sensor detected instead."""
    out = tmp_path / "ds"
    _refused(capsys, _l8(sample_data, out, "--sensor", ""), out,
             "--sensor: expected a sensor id (e.g. s2_l1c", "got ''")
    from eofm.data_shards.layouts import LayoutOptions

    with pytest.raises(ValueError, match="--sensor: expected a sensor id"):
        LayoutOptions(sensor=" ")
    with pytest.raises(ValueError, match="--file-bands: expected band names"):
        LayoutOptions(file_bands=[])


def test_eurosat_l1c_files_as_l2a_are_refused(shared_data, tmp_path, capsys) -> None:
    """EuroSAT-MS (13 bands, L1C) built with --sensor s2_l2a dropped B10 without a word and
    labelled top-of-atmosphere pixels L2A."""
    out = tmp_path / "ds"
    _refused(capsys, ["build", str(shared_data / "eurosat_ms"), "--out", str(out), "--sensor",
                      "s2_l2a", "--quiet"], out,
             "--sensor s2_l2a: the EuroSAT-MS files hold 13 bands (Sentinel-2 L1C, with B10",
             "sensor s2_l2a has 12 (no B10, which would be dropped)", "--sensor s2_l1c")


@pytest.mark.parametrize("which", ["landsat8_scene", "bigearthnet"])
def test_file_bands_for_a_layout_of_band_files_is_refused(sample_data, tmp_path, capsys,
                                                          which) -> None:
    """per_band (and bigearthnet) folders name each band by its file: --file-bands was
    ignored."""
    out = tmp_path / "ds"
    layout = {"landsat8_scene": "per_band", "bigearthnet": "bigearthnet"}[which]
    _refused(capsys, ["build", str(sample_data / which), "--out", str(out), "--resample",
                      "nearest", "--tile", "60", "--file-bands", "B2,B3,B4", "--quiet"], out,
             f"--file-bands: the {layout} layout (of {sample_data / which}) names each band by "
             "its file", "got --file-bands B2,B3,B4")


def test_classes_file_with_a_name_twice_is_refused(sample_data, tmp_path, capsys) -> None:
    """A class named twice gave a class list with a duplicate (two indices, one label)."""
    out, classes = tmp_path / "ds", tmp_path / "classes.txt"
    classes.write_text("Pastures\n\nConiferous forest\nPastures\n", encoding="utf-8")
    _refused(capsys, _ben(sample_data, out, "--classes", str(classes)), out,
             f"--classes {classes}: expected each class name once, got 'Pastures' on lines 1 "
             "and 4")
    with pytest.raises(ValueError, match=r"--classes: expected each class name once, got "
                                         r"\['a'\] more than once"):
        BuildConfig("in", str(tmp_path / "ds"), classes=["a", "b", "a"])
