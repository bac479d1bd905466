"""``eofm-shard merge`` reads every field of a writer part's ``plan`` record it uses: a damaged
or hand-edited plan is a ManifestError naming the part file and the field (``plan.labels``,
``plan.modalities.s2.dtype``), never a KeyError/TypeError traceback from the merge, and no
manifest is written. Plans as the build writes them still merge."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eofm.data_shards.build import PARTS
from eofm.data_shards.cli import main
from eofm.data_shards.manifest import MANIFEST_NAME

Plan = dict[str, Any]


@pytest.fixture(scope="module")
def parts(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One writer's output (shards and part, no manifest) of the bundled Landsat 8 scene, 32 px
    tiles (read only: tests copy it)."""
    out = tmp_path_factory.mktemp("merge") / "ds"
    assert main(["build", str(sample_data / "landsat8_scene"), "--out", str(out),
                 "--resample", "nearest", "--tile", "32", "--quiet",
                 "--num-writers", "1", "--writer-id", "0"]) == 0
    assert not (out / MANIFEST_NAME).exists()
    return out


def _mod(plan: Plan) -> dict[str, Any]:
    return next(iter(plan["modalities"].values()))


def _offset_groups_str(plan: Plan) -> None:
    plan["s2_offset"] = {"mode": "auto", "groups": "x"}


# (id, change to the plan, substrings of the one problem line expected)
DAMAGES: list[tuple[str, Callable[[Plan], object], tuple[str, ...]]] = [
    ("mod_extra_key", lambda p: _mod(p).update(foo=1),
     ("plan.modalities.landsat.foo: unknown field (expected one of sensor, bands, dtype",)),
    ("mod_missing_key", lambda p: _mod(p).pop("dtype"),
     ("plan.modalities.landsat.dtype: required field missing",)),
    ("mod_not_mapping", lambda p: p["modalities"].update(landsat=[1]),
     ("plan.modalities.landsat: expected a mapping of sensor, bands", "got a list [1]")),
    ("bands_not_list", lambda p: _mod(p).update(bands="B1"),
     ("plan.modalities.landsat.bands: expected a non-empty list of band names",
      "got a string 'B1'")),
    ("hist_range", lambda p: _mod(p).update(hist_range="wide"),
     ("plan.modalities.landsat.hist_range: expected null or [low, high]",)),
    ("labels_missing", lambda p: p.pop("labels"),
     ("plan.labels: required field missing",)),
    ("labels_bad_kind", lambda p: p.update(labels={"kind": "nope", "classes": ["a"]}),
     ("plan.labels.kind: expected one of class, multilabel, segmentation", "'nope'")),
    ("source_missing", lambda p: p.pop("source"),
     ("plan.source: expected a string, got nothing (field missing)",)),
    ("layout_number", lambda p: p.update(layout=3),
     ("plan.layout: expected a string, got a number 3",)),
    ("tile_missing", lambda p: p.pop("tile"),
     ("plan.tile: expected a mapping of the tiling options, got nothing (field missing)",)),
    ("sensors_list", lambda p: p.update(sensors=["landsat8_oli_tirs"]),
     ("plan.sensors: expected a mapping of modality -> list of the sensor ids",)),
    ("s2_offset_groups_str", _offset_groups_str,
     ("plan.s2_offset.groups: expected a list of mappings", "got a string 'x'")),
]


@pytest.mark.parametrize(("change", "needles"), [d[1:] for d in DAMAGES],
                         ids=[d[0] for d in DAMAGES])
def test_a_damaged_plan_is_named_not_a_traceback(parts: Path, tmp_path: Path, capsys,
                                                 change: Callable[[Plan], object],
                                                 needles: tuple[str, ...]) -> None:
    out = tmp_path / "ds"
    shutil.copytree(parts, out)
    part = out / PARTS / "writer-00.json"
    d = json.loads(part.read_text())
    change(d["plan"])
    part.write_text(json.dumps(d))
    capsys.readouterr()
    assert main(["merge", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eofm-shard merge: error: {part}: not a writer part"), err
    assert "Traceback" not in err
    lines = [line.strip() for line in err.splitlines()[1:]]
    assert len(lines) == 1, lines  # one problem, no follow-on one
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (out / MANIFEST_NAME).exists()


def test_plans_as_the_build_writes_them_merge(parts: Path, tmp_path: Path) -> None:
    from eofm.data_shards.merge import PLAN_MODALITY_FIELDS, merge, plan_problems

    out = tmp_path / "ds"
    shutil.copytree(parts, out)
    plan = json.loads((out / PARTS / "writer-00.json").read_text())["plan"]
    assert plan_problems(plan) == []
    assert set(_mod(plan)) == set(PLAN_MODALITY_FIELDS)
    assert merge(out).sample_count > 0
    no_labels = {**plan, "labels": None, "sensors": {"landsat": ["landsat8_oli_tirs"]},
                 "s2_offset": {"mode": "auto", "groups": []}}
    assert plan_problems(no_labels) == []
