"""Manifest fields that readers use and that were not checked when the manifest is read:

- ``extra.s2_offset`` (the build's Sentinel-2 offset record, read by ``eofm-shard inspect`` and
  the fine-tuning readers): a string or a ``groups`` that is not a list of groups crashed
  ``inspect`` (AttributeError/TypeError) and made ``eofm-probe --s2-offset none`` say the
  manifest has no record;
- ``labels.classes``: repeated or empty class names (and no class at all for kind ``class``)
  passed every command.

Each is now one problem of the ManifestError naming the manifest and the field. Records and
label spaces as builds write them still load.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.cli import main
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.manifest import MANIFEST_NAME, ManifestError, load_manifest
from eofm.data_shards.s2_baseline import OffsetDecision, describe, summarise

Change = Callable[[dict[str, Any]], object]


@pytest.fixture(scope="module")
def l8(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled Landsat 8 scene as 64 px tiles (read only)."""
    out = tmp_path_factory.mktemp("l8") / "l8"
    build(BuildConfig(str(sample_data / "landsat8_scene"), str(out), progress=False,
                      ingest=IngestOptions(tile=64, resample="nearest")))
    return out


def damaged(l8: Path, where: Path, change: Change) -> Path:
    """A dataset folder at ``where`` holding ``l8``'s manifest after ``change``."""
    where.mkdir(parents=True)
    d = json.loads((l8 / MANIFEST_NAME).read_text())
    change(d)
    (where / MANIFEST_NAME).write_text(json.dumps(d))
    return where


def _problems(ds: Path) -> list[str]:
    """The problem lines of the ManifestError that loading ``ds`` raises."""
    with pytest.raises(ManifestError) as e:
        load_manifest(ds)
    head, *lines = str(e.value).split("\n")
    assert head == f"{ds / MANIFEST_NAME}: invalid manifest:"
    return [line.strip() for line in lines]


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


# (id, change, substrings of the one problem expected)
CASES: list[tuple[str, Change, tuple[str, ...]]] = [
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
    assert len(problems) == 1, problems
    for part in expected:
        assert part in problems[0], (part, problems[0])


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
