"""A damaged ``manifest.json`` is refused field by field when it is read.

Every field's type and the fields' agreement (``shape`` and ``nodata`` with ``bands``, stats of
listed bands, ``sample_count`` with the shards) are checked by :meth:`Manifest.from_dict`; all
problems are reported at once in one :class:`ManifestError` naming the manifest, the field,
what was expected and what came. The commands print one ``error:`` line and exit 2, never a
traceback. Manifests the code writes (tar, zarr, labelled, older ones) load unchanged.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.checks import verify
from eofm.data_shards.cli import main
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.manifest import MANIFEST_NAME, Manifest, ManifestError, load_manifest
from eofm.data_shards.s2_baseline import OffsetDecision, describe, summarise

Change = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def l8(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled Landsat 8 scene as 64 px tiles (16 samples, 11 bands; read only)."""
    out = tmp_path_factory.mktemp("l8") / "l8"
    build(BuildConfig(str(sample_data / "landsat8_scene"), str(out), progress=False,
                      ingest=IngestOptions(tile=64, resample="nearest")))
    return out


def _manifest(ds: Path) -> dict[str, Any]:
    return json.loads((ds / MANIFEST_NAME).read_text())


def damaged(l8: Path, where: Path, change: Change, *, shards: bool = False) -> Path:
    """A dataset folder at ``where`` whose manifest is ``l8``'s after ``change`` (its shards
    copied too with ``shards``: only ``verify`` reads them)."""
    if shards:
        shutil.copytree(l8, where)
    else:
        where.mkdir(parents=True)
    d = _manifest(l8)
    change(d)
    (where / MANIFEST_NAME).write_text(json.dumps(d))
    return where


def _problems(ds: Path) -> list[str]:
    """The problem lines of the ManifestError that loading ``ds`` raises (format checked)."""
    with pytest.raises(ManifestError) as e:
        load_manifest(ds)
    head, *lines = str(e.value).split("\n")
    assert head == f"{ds / MANIFEST_NAME}: invalid manifest:"
    assert lines and all(line.startswith("  ") for line in lines)
    return [line.strip() for line in lines]


def _landsat(d: dict[str, Any]) -> dict[str, Any]:
    return d["modalities"]["landsat"]


def _set_labels_classes_str(d: dict[str, Any]) -> None:
    d["labels"] = {"kind": "class", "classes": "forest,water"}


def _drop_last_band(d: dict[str, Any]) -> None:
    _landsat(d)["bands"] = _landsat(d)["bands"][:-1]


# (id, change, the only problem expected: substrings of its line)
def _record() -> dict[str, Any]:
    """An ``extra.s2_offset`` record as a build writes it."""
    d = OffsetDecision(-1000, "05.09", "product id", "S2B_MSIL2A_..._N0509_", "found")
    return summarise([("in", "landsat", "in/a.tif", d), ("in", "landsat", "in/b.tif", d)],
                     "auto")


def _offset(record: object) -> Change:
    return lambda d: d["extra"].__setitem__("s2_offset", record)


def _group(**change: object) -> Change:
    def f(d: dict[str, Any]) -> None:
        record = _record()
        record["groups"][0].update(change)
        d["extra"]["s2_offset"] = record
    return f


def _drop_group_field(key: str) -> Change:
    def f(d: dict[str, Any]) -> None:
        record = _record()
        record["groups"][0].pop(key)
        d["extra"]["s2_offset"] = record
    return f


def _labels(kind: str, classes: object) -> Change:
    return lambda d: d.__setitem__("labels", {"kind": kind, "classes": classes})


CASES: list[tuple[str, Change, tuple[str, ...]]] = [
    ("modlist", lambda d: d.update(modalities=list(d["modalities"].values())),
     ("modalities: expected a mapping of modality name -> modality fields", "got a list")),
    ("samplesstr", lambda d: d["shards"][0].update(samples="16"),
     ("shards[0].samples: expected a whole number >= 0", "got a string '16'")),
    ("shards_mapping", lambda d: d.update(shards={"name": d["shards"][0]["name"]}),
     ("shards: expected a list of shard entries", "got a mapping")),
    ("modnull", lambda d: d["modalities"].update(landsat=None),
     ("modalities.landsat: expected a mapping of modality fields", "got null")),
    ("count", lambda d: d.update(sample_count="sixty-four"),
     ("sample_count: expected a whole number >= 0", "got a string 'sixty-four'")),
    ("count_wrong", lambda d: d.update(sample_count=15),
     ("sample_count: 15 disagrees with the shards' sum 16",)),
    ("bands_str", lambda d: _landsat(d).update(bands="B1,B2"),
     ("modalities.landsat.bands: expected a non-empty list of band names",
      "got a string 'B1,B2'")),
    ("bands_empty", lambda d: _landsat(d).update(bands=[]),
     ("modalities.landsat.bands: expected a non-empty list", "got a list []")),
    ("shape_str", lambda d: _landsat(d).update(shape="12x32x32"),
     ("modalities.landsat.shape: expected [channels, height, width]",
      "got a string '12x32x32'")),
    ("shape_zero", lambda d: _landsat(d).update(shape=[11, 0, 64]),
     ("modalities.landsat.shape: expected [channels, height, width] (whole numbers > 0)",
      "got a list [11, 0, 64]")),
    ("shape_channels", lambda d: _landsat(d).update(shape=[12, 64, 64]),
     ("modalities.landsat.shape: expected 11 channels first",
      "modalities.landsat.bands, which lists 11", "got [12, 64, 64]")),
    ("stats_str", lambda d: _landsat(d)["stats"]["B1"].update(mean="high"),
     ("modalities.landsat.stats.B1.mean: expected a number or null", "got a string 'high'")),
    ("stats_list", lambda d: _landsat(d).update(stats=[]),
     ("modalities.landsat.stats: expected a mapping of band name -> statistics",
      "got a list []")),
    ("stats_band_entry", lambda d: _landsat(d)["stats"].update(B1=3.0),
     ("modalities.landsat.stats.B1: expected a mapping of statistic name -> number",
      "got a number 3.0")),
    ("stats_unknown_band", lambda d: _landsat(d)["stats"].update(B99={"mean": 1.0}),
     ("modalities.landsat.stats.B99: expected statistics of bands listed in "
      "modalities.landsat.bands", "'B99'")),
    ("dtype", lambda d: _landsat(d).update(dtype="uint17"),
     ("modalities.landsat.dtype: expected a numeric numpy dtype name", "got a string 'uint17'")),
    ("dtype_text", lambda d: _landsat(d).update(dtype="<U5"),
     ("modalities.landsat.dtype: expected a numeric numpy dtype name", "'<U5'")),
    ("nodata_scalar", lambda d: _landsat(d).update(nodata=0),
     ("modalities.landsat.nodata: expected a list of one no-data value", "got a number 0")),
    ("nodata_text", lambda d: _landsat(d)["nodata"].__setitem__(0, "zero"),
     ("modalities.landsat.nodata: expected a list of one no-data value (a number or null)",)),
    ("nodata_count", lambda d: _landsat(d)["nodata"].pop(),
     ("modalities.landsat.nodata: expected 11 entries", "got 10")),
    ("gsd", lambda d: _landsat(d).update(gsd_m=-30),
     ("modalities.landsat.gsd_m: expected a ground sampling distance in metres",
      "got a number -30")),
    ("sensor", lambda d: _landsat(d).update(sensor=7),
     ("modalities.landsat.sensor: expected a sensor id", "got a number 7")),
    ("sensors", lambda d: _landsat(d).update(sensors=["s2_l1c", "landsat8_oli_tirs"]),
     ("modalities.landsat.sensors: expected the modality's sensor 'landsat8_oli_tirs' first",)),
    ("missing_field", lambda d: _landsat(d).pop("dtype"),
     ("modalities.landsat.dtype: required field missing",)),
    ("unknown_field", lambda d: _landsat(d).update(colour="red"),
     ("modalities.landsat.colour: unknown field (expected one of sensor, bands",)),
    ("shard_sha", lambda d: d["shards"][0].update(sha256="abc"),
     ("shards[0].sha256: expected 64 hexadecimal digits", "got a string 'abc'")),
    ("shard_bytes", lambda d: d["shards"][0].update(bytes=-1),
     ("shards[0].bytes: expected a whole number >= 0", "got a number -1")),
    ("shard_entry", lambda d: d["shards"].__setitem__(0, "shard-00-000000.tar"),
     ("shards[0]: expected a mapping of shard fields", "got a string")),
    ("shard_missing", lambda d: d["shards"][0].pop("samples"),
     ("shards[0].samples: expected a whole number >= 0", "nothing (field missing)")),
    ("shard_twice", lambda d: d.update(shards=d["shards"] * 2, sample_count=32),
     ("shards[1].name: expected a name listed once", "also shards[0].name")),
    ("labels_classes_str", _set_labels_classes_str,
     ("labels.classes: expected a list of class names (strings)",
      "got a string 'forest,water'")),
    ("labels_kind", lambda d: d.update(labels={"kind": "regression", "classes": []}),
     ("labels.kind: expected one of class, multilabel, segmentation",
      "got a string 'regression'")),
    ("labels_list", lambda d: d.update(labels=["forest"]),
     ("labels: expected null or a mapping with kind and classes", "got a list")),
    ("extra_list", lambda d: d.update(extra=[]),
     ("extra: expected a mapping", "got a list []")),
    ("counter_str", lambda d: d["extra"]["counters"].update(tiles="many"),
     ("extra.counters.tiles: expected a whole number >= 0", "got a string 'many'")),
    ("layout", lambda d: d.update(layout=None),
     ("layout: expected a string", "got null")),
    ("version_bool", lambda d: d.update(format_version=True),
     ("format_version: expected 1, got True",)),
    # extra.s2_offset and labels.classes (round 27: readers crashed or accepted them)
    ("s2_offset_str", _offset("x"),
     ("extra.s2_offset: expected a mapping with mode (a string) and groups", "got a string 'x'")),
    ("s2_offset_null", _offset(None), ("extra.s2_offset: expected a mapping", "got null")),
    ("s2_offset_groups_str", _offset({"mode": "auto", "groups": "x"}),
     ("extra.s2_offset.groups: expected a list of mappings", "got a string 'x'")),
    ("s2_offset_mode_int", _offset({"mode": -1000, "groups": []}),
     ("extra.s2_offset.mode: expected a string", "got a number -1000")),
    ("s2_offset_group_str", _offset({"mode": "auto", "groups": ["x"]}),
     ("extra.s2_offset.groups[0]: expected a mapping of input, modality, offset", "'x'")),
    ("s2_offset_group_no_status", _drop_group_field("status"),
     ("extra.s2_offset.groups[0].status: required field missing",)),
    ("s2_offset_offset_str", _group(offset="-1000"),
     ("extra.s2_offset.groups[0].offset: expected a whole number of DN", "got a string")),
    ("s2_offset_examples_str", _group(examples="in/a.tif"),
     ("extra.s2_offset.groups[0].examples: expected a list of item sources", "a string")),
    ("s2_offset_items_neg", _group(items=-1),
     ("extra.s2_offset.groups[0].items: expected a whole number >= 0", "got a number -1")),
    ("s2_offset_baseline_num", _group(baseline=4.0),
     ("extra.s2_offset.groups[0].baseline: expected a processing baseline", "a number 4.0")),
    ("classes_dup", _labels("class", ["A", "A", "B"]),
     ("labels.classes: expected distinct class names, got ['A'] more than once",)),
    ("classes_empty_name", _labels("multilabel", ["A", "", "B"]),
     ("labels.classes: expected non-empty class names, got an empty name at position(s) [1]",)),
    ("classes_none_for_class", _labels("class", []),
     ("labels.classes: expected at least one class name for kind 'class'", "got []")),
]


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_each_damage_is_one_named_problem(l8: Path, tmp_path: Path, change: Change,
                                          expected: tuple[str, ...]) -> None:
    problems = _problems(damaged(l8, tmp_path / "ds", change))
    assert len(problems) == 1, problems  # no follow-on problem (e.g. "no modality")
    for part in expected:
        assert part in problems[0], (part, problems[0])
    for internal in ("argument after **", "ShardInfo(", "ModalityInfo(", "LabelInfo(",
                     "positional argument", "keyword argument"):
        assert internal not in problems[0]


def test_bands_that_disagree_with_the_data_are_refused(l8: Path, tmp_path: Path) -> None:
    """10 valid band names for 11-channel data: shape, nodata and stats all say 11."""
    problems = _problems(damaged(l8, tmp_path / "ds", _drop_last_band))
    assert len(problems) == 3, problems
    assert problems[0] == ("modalities.landsat.shape: expected 10 channels first (one per entry "
                           "of modalities.landsat.bands, which lists 10), got [11, 64, 64]")
    assert problems[1].startswith("modalities.landsat.nodata: expected 10 entries")
    assert problems[2].startswith("modalities.landsat.stats.B11: expected statistics of bands "
                                  "listed in modalities.landsat.bands")


def test_duplicate_band_names_are_refused(l8: Path, tmp_path: Path) -> None:
    def twice(d: dict[str, Any]) -> None:
        _landsat(d)["bands"][1] = "B1"

    problems = _problems(damaged(l8, tmp_path / "ds", twice))
    assert problems[0] == ("modalities.landsat.bands: expected distinct band names, got ['B1'] "
                           "more than once")


def test_every_problem_is_reported_at_once(l8: Path, tmp_path: Path) -> None:
    def many(d: dict[str, Any]) -> None:
        _landsat(d).update(bands="B1,B2", shape="12x32x32", gsd_m=None, sensors="landsat")
        _landsat(d)["stats"]["B1"]["mean"] = "high"
        d["shards"][0]["samples"] = "16"
        d["sample_count"] = "sixty-four"
        _set_labels_classes_str(d)

    problems = _problems(damaged(l8, tmp_path / "ds", many))
    fields = [p.split(":", 1)[0] for p in problems]
    assert fields == ["modalities.landsat.bands", "modalities.landsat.shape",
                      "modalities.landsat.gsd_m", "modalities.landsat.stats.B1.mean",
                      "modalities.landsat.sensors",
                      "shards[0].samples", "labels.classes", "sample_count"]


@pytest.mark.parametrize("change", [c[1] for c in CASES[:10]] + [_drop_last_band],
                         ids=[c[0] for c in CASES[:10]] + ["bands10"])
@pytest.mark.parametrize("command", ["inspect", "verify", "stats"])
def test_commands_refuse_a_damaged_manifest_in_one_line(l8: Path, tmp_path: Path, capsys,
                                                        command: str, change: Change) -> None:
    """``inspect`` and ``stats`` refuse it (exit 2); for ``verify`` it is the damage found
    (exit 1, one FAIL line at the manifest), as every other problem it reports."""
    ds = damaged(l8, tmp_path / "ds", change, shards=True)
    found = command == "verify"
    assert main([command, str(ds)]) == (1 if found else 2)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "OK" not in captured.out
    assert [line for line in captured.err.splitlines() if "error:" in line or "FAIL" in line] \
        == [f"{'FAIL' if found else f'eofm-shard {command}: error:'} {ds / MANIFEST_NAME}: "
            "invalid manifest:"]


def test_a_file_instead_of_a_dataset_folder(tmp_path: Path, capsys) -> None:
    afile = tmp_path / "afile.txt"
    afile.write_text("not a dataset\n")
    with pytest.raises(ManifestError, match=r"afile\.txt: expected a dataset folder holding "
                                            r"manifest\.json, got a file"):
        load_manifest(afile)
    for command in ("inspect", "verify", "stats"):
        assert main([command, str(afile)]) == 2
        err = capsys.readouterr().err
        assert err == (f"eofm-shard {command}: error: {afile}: expected a dataset folder "
                       "holding manifest.json, got a file\n")


def test_unreadable_manifests_are_manifest_errors(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dirds" / MANIFEST_NAME).mkdir(parents=True)
    with pytest.raises(ManifestError, match=r"manifest\.json: expected the manifest file, "
                                            r"got a folder"):
        load_manifest(tmp_path / "dirds")
    (tmp_path / "utf").mkdir()
    (tmp_path / "utf" / MANIFEST_NAME).write_bytes(b'{"format": "\xff"}')
    with pytest.raises(ManifestError, match=r"manifest is not UTF-8 JSON text"):
        load_manifest(tmp_path / "utf")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # root reads any file: simulate the mode
    with pytest.raises(ManifestError, match=r"utf/manifest\.json: cannot read the manifest: "
                                            r"permission denied"):
        load_manifest(tmp_path / "utf")


def test_a_failed_manifest_write_is_not_hidden_by_its_cleanup(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a read-only filesystem the write fails and so does removing its temporary file: the
    removal's raw PermissionError used to replace the clear error naming the manifest. Now the
    write's own error (errno kept, the path and the cause named) is raised, for an interrupt
    the interrupt; the file that was there is left as it was."""
    import errno
    import os
    import re

    from eofm.data_shards import manifest as manifest_mod

    path = tmp_path / MANIFEST_NAME
    path.write_text("old\n")
    unlinks: list[Path] = []

    def read_only(fd: int) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    def refused(self: Path, missing_ok: bool = False) -> None:
        unlinks.append(self)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refused)
    monkeypatch.setattr(os, "fsync", read_only)
    with pytest.raises(OSError) as e:
        manifest_mod.atomic_write_text(path, "new\n")
    assert e.value.errno == errno.EROFS and not isinstance(e.value, PermissionError)
    assert re.fullmatch(rf"\[Errno {errno.EROFS}\] cannot write {re.escape(str(path))}: OSError: "
                        rf"\[Errno {errno.EROFS}\] Read-only file system \([0-9.]+ MiB free on "
                        r"its filesystem; the filesystem is mounted read-only\)", str(e.value))

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        manifest_mod.atomic_write_text(path, "new\n")
    assert unlinks == [path.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")] * 2  # tried
    assert path.read_text() == "old\n"


def test_from_dict_of_a_non_mapping() -> None:
    with pytest.raises(ManifestError, match=r"attrs: expected a JSON object, got a list"):
        Manifest.from_dict([], source="attrs")  # type: ignore[arg-type]


# ---------------------------------------------------------------- what the code writes loads
def test_written_manifests_load_unchanged(l8: Path, ben: Path) -> None:
    for ds in (l8, ben):
        d = _manifest(ds)
        m = load_manifest(ds)
        assert m.to_dict() == d  # every field kept as written
        assert Manifest.from_dict(m.to_dict()) == m
    assert load_manifest(ben).labels.kind == "multilabel"  # type: ignore[union-attr]
    assert verify(l8) == []


def test_zarr_store_manifest_loads_and_a_damaged_one_is_refused(
        sample_data: Path, tmp_path: Path) -> None:
    import zarr

    from eofm.data_shards.zarr_store import ZarrDataset

    z = tmp_path / "l8.zarr"
    build(BuildConfig(str(sample_data / "landsat8_scene"), str(z), format="zarr",
                      progress=False, ingest=IngestOptions(tile=64, resample="nearest")))
    assert len(ZarrDataset(z)) == 16
    group = zarr.open_group(str(z), mode="r+")
    attrs = dict(group.attrs)
    attrs["eofm_manifest"]["modalities"]["landsat"]["bands"] = "B1,B2"
    group.attrs.update(attrs)
    with pytest.raises(ManifestError, match=rf"{z}: invalid manifest:\n  modalities\.landsat"
                                            r"\.bands: expected a non-empty list"):
        ZarrDataset(z)


def test_older_and_minimal_manifests_still_load(l8: Path, tmp_path: Path) -> None:
    """Fields added over time are optional: ``sensors``, ``stats``, ``sample_count``, a
    shard's ``writer``, ``source``/``layout``/``tile``/``extra``, ``labels``."""
    def old(d: dict[str, Any]) -> None:
        for key in ("sample_count", "source", "layout", "tile", "extra", "labels"):
            d.pop(key)
        _landsat(d).pop("stats")
        d["shards"][0].pop("writer")

    m = load_manifest(damaged(l8, tmp_path / "ds", old))
    assert m.modalities["landsat"].stats == {} and m.shards[0].writer == 0 and m.extra == {}


def test_statistics_of_a_band_without_valid_pixels_are_null(l8: Path, tmp_path: Path) -> None:
    """What BandStats.summary writes for a band that had no valid pixel."""
    def empty_band(d: dict[str, Any]) -> None:
        st = _landsat(d)["stats"]["B1"]
        for k in st:
            st[k] = 0 if k == "count" else None

    assert load_manifest(damaged(l8, tmp_path / "ds", empty_band)).modalities[
        "landsat"].stats["B1"]["mean"] is None


def test_variable_tile_shapes_and_verify_counts_channels(l8: Path, tmp_path: Path,
                                                         capsys) -> None:
    """``shape: []`` (tiles of several sizes) loads; ``verify`` then checks each sample's
    channels against ``bands`` (10 names for 11-channel data), and the 11 band names each
    sample's ``meta.json`` records against the manifest's 10."""
    def ten_bands_any_shape(d: dict[str, Any]) -> None:
        info = _landsat(d)
        info.update(shape=[], bands=info["bands"][:10], nodata=info["nodata"][:10])
        info["stats"].pop("B11")

    ds = damaged(l8, tmp_path / "ds", ten_bands_any_shape, shards=True)
    assert load_manifest(ds).modalities["landsat"].shape == []
    problems = [str(p) for p in verify(ds)]
    assert len(problems) == 2 * 16  # two per sample
    assert "landsat is [11, 64, 64], manifest lists 10 bands" in problems[0]
    assert "meta.json records landsat bands ['B1', " in problems[1]
    assert problems[1].endswith("'B11'], the manifest lists ['B1', "
                                "'B2', 'B3', 'B4', 'B5', 'B6', 'B7', 'B8', 'B9', 'B10']"), problems[1]
    assert main(["verify", str(ds)]) == 1
    assert "manifest lists 10 bands" in capsys.readouterr().err  # FAIL lines


@pytest.mark.parametrize("record", ["x", {"mode": "auto", "groups": "x"}],
                         ids=["str", "groups_str"])
def test_inspect_refuses_a_damaged_s2_offset_record_in_one_line(l8: Path, tmp_path: Path,
                                                               capsys, record: object) -> None:
    """The reviewer's cases: an AttributeError/TypeError traceback from ``inspect``."""
    ds = damaged(l8, tmp_path / "ds", _offset(record))
    assert main(["inspect", str(ds)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith(f"eofm-shard inspect: error: {ds / MANIFEST_NAME}: invalid manifest:\n"
                          "  extra.s2_offset")


def test_records_and_label_spaces_as_builds_write_them_load(l8: Path, tmp_path: Path) -> None:
    def written(d: dict[str, Any]) -> None:
        d["extra"]["s2_offset"] = _record()
        d["labels"] = {"kind": "class", "classes": ["forest", "water"]}

    assert load_manifest(damaged(l8, tmp_path / "empty", _offset({}))).extra["s2_offset"] == {}
    m = load_manifest(damaged(l8, tmp_path / "a", written))
    assert m.extra["s2_offset"] == _record() and m.labels is not None
    assert describe(m.extra["s2_offset"])[1].startswith("  offset -1000 DN for 2 item(s) of in")
    for kind in ("segmentation", "multilabel"):  # a build may list no class for these
        labels = load_manifest(damaged(l8, tmp_path / kind, _labels(kind, []))).labels
        assert labels is not None and labels.kind == kind and labels.classes == []
